"""Sequence-level KD on the teacher's best-scored translation against the one of its n-best closest to the reference.

    python benchmarks/nbest_selection.py --run runs/guide-full --out runs/nbest-selection \
        --results benchmarks/results/nbest_selection

On a finished full-preset run (its teacher, data-bin and training settings): the teacher translates the
training sources once per selection with beam 8 and an 8-best list (``fairseq-kd-pseudolabel --nbest 8``,
CTranslate2 float32), keeping either the hypothesis of the best model score (``--select score``) or the one
of highest sentence chrF against the reference (``--select chrf``; Kim & Rush 2016's "sequence-level
interpolation" picks by a similarity to the reference this way). A seq_kd student of the run's shape and
budget learns from each; both are compared on valid and test with sacreBLEU's paired bootstrap (baseline:
the score-selected student). Every stage resumes.
"""

import argparse
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fairseq_kd import methods as M  # noqa: E402
from fairseq_kd.evaluate import Settings, evaluate  # noqa: E402
from fairseq_kd.io import write_json, write_text  # noqa: E402
from fairseq_kd.pipeline import Pipeline, load_config  # noqa: E402

SELECTIONS = ("score", "chrf")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished full-preset run directory")
    parser.add_argument("--out", required=True, help="work directory (resumable)")
    parser.add_argument("--results", required=True, help="writes RESULTS.json and RESULTS.md")
    parser.add_argument("--nbest", type=int, default=8)
    args = parser.parse_args()
    config = dataclasses.replace(load_config(args.run), methods=["seq_kd"])
    pipe = Pipeline(args.out, config)
    os.makedirs(args.out, exist_ok=True)
    systems = {}
    for select in SELECTIONS:
        labels = pipe.path(f"labels-{select}")
        pipe.command("fairseq-kd-pseudolabel", [
            "--teacher", config.teacher, "--data", config.data_bin, "--subset", "train", "--output", labels,
            "--beam", args.nbest, "--nbest", args.nbest, "--select", select, "--engine", "ctranslate2",
            "--max-tokens", "8000", "--source-lang", config.src, "--target-lang", config.tgt, "--cpu",
        ], f"labels_{select}")  # fmt: skip
        paths = M.MethodPaths(data=config.data_bin, pseudo=os.path.join(labels, "data-bin"))
        flags = (
            M.get("seq_kd").flags(paths) + config.student.flags() + ["--source-lang", config.src, "--target-lang", config.tgt]
        )
        save_dir = pipe.path("students", f"seq_kd_{select}")
        pipe.train(flags + config.training.flags(1), save_dir, f"seq_kd_{select}", config.training.max_update)
        systems[f"seq_kd_{select}"] = pipe.path("models", f"seq_kd_{select}.pt")
        if not os.path.exists(systems[f"seq_kd_{select}"]):
            pipe.export(os.path.join(save_dir, "checkpoint_last.pt"), systems[f"seq_kd_{select}"])
    settings = Settings(beam=4, batch_size=64, max_len_a=1.5, max_len_b=10)
    report = {"command": " ".join(sys.argv), "run": os.path.abspath(args.run), "nbest": args.nbest}
    for split in ("valid", "test"):
        records = evaluate(systems, config.data_bin, os.path.join(config.references, f"{split}.{config.tgt}"), split=split,
                           out_dir=pipe.path("eval", split), baseline="seq_kd_score", settings=settings,
                           source_lang=config.src, target_lang=config.tgt, quiet=True)  # fmt: skip
        report[split] = [r.as_dict() for r in records]
    with open(os.path.join(pipe.path("labels-chrf"), "summary.json")) as f:
        report["chrf_selection"] = json.load(f).get("selection")
    write_json(args.results + ".json", report)
    lines = [f"Sequence-level KD from the teacher's {args.nbest}-best (beam {args.nbest}): the best-scored hypothesis "
             f"against the one closest to the reference by sentence chrF. Command: `{report['command']}`.", "",
             "| split | student | BLEU | chrF | vs score-selected (paired bootstrap) |", "|---|---|---|---|---|"]  # fmt: skip
    for split in ("valid", "test"):
        for r in report[split]:
            sig = r["significance"].get("bleu", {})
            versus = f"p = {sig['p_value']}, {sig['verdict']}" if "p_value" in sig else "(baseline)"
            lines.append(f"| {split} | {r['name']} | {r['bleu']:.2f} | {r['chrf']:.2f} | {versus} |")
    lines += ["", f"Selection by chrF (`summary.json`): {json.dumps(report['chrf_selection'])}"]
    write_text(args.results + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
