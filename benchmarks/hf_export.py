"""A student served by transformers: exported with ``fairseq-kd-export --huggingface`` and evaluated beside
itself in fairseq and in CTranslate2.

    python benchmarks/hf_export.py --run runs/demo-big --student runs/big-students/6x1-w128/models/init_kd.pt \
        --out runs/hf-export --results benchmarks/results/big_teacher/hf_export [--timing-rounds 3]

On a big-preset run (its data-bin, references and sentencepiece model) and one of its students: the student
exported once (OUT/student.pt, OUT/hf: MarianMT for a post-norm student, M2M100 for a pre-norm one; OUT/ct2:
CTranslate2 int8 converted from fairseq), then ``fairseq-kd-evaluate`` on the test split, beam 4 and greedy,
with the evaluation's settings (batches of 64, length bound 1.5 x source + 10; CTranslate2 on one thread,
fairseq-generate and transformers on torch's default threads) and ``--timing-rounds`` translations by turns;
sacreBLEU's paired bootstrap against the student in fairseq, and the share of sentences that each runtime
translates exactly as fairseq does.

Writes RESULTS.json and RESULTS.md.
"""

import argparse
import dataclasses
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fairseq_kd.evaluate import evaluate, results_table  # noqa: E402
from fairseq_kd.io import read_lines, write_json, write_text  # noqa: E402
from fairseq_kd.pipeline import load_config  # noqa: E402

BIN = os.path.dirname(sys.executable)


def export(student, config, out):
    """OUT/student.pt, OUT/hf and OUT/ct2 (int8), once."""
    if not os.path.isfile(os.path.join(out, "hf", "vocab.json")) or not os.path.isfile(os.path.join(out, "ct2", "model.bin")):
        os.makedirs(out, exist_ok=True)
        cmd = [os.path.join(BIN, "fairseq-kd-export"), student, os.path.join(out, "student.pt"), "--overwrite",
               "--data", config.data_bin, "--huggingface", os.path.join(out, "hf"), "--spm-model", config.spm_model,
               "--ctranslate2", os.path.join(out, "ct2"), "--quantization", "int8"]  # fmt: skip
        print("$ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return {"fairseq": os.path.join(out, "student.pt"), "huggingface": os.path.join(out, "hf"),
            "ct2_int8": os.path.join(out, "ct2")}  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a big-preset demo run (its data-bin, references, sentencepiece model)")
    parser.add_argument("--student", required=True, help="a student checkpoint of that run")
    parser.add_argument("--out", required=True, help="work directory (the exports, the evaluations)")
    parser.add_argument("--results", required=True, help="RESULTS.json and RESULTS.md")
    parser.add_argument("--timing-rounds", type=int, default=3, help="timings by turns per system and beam")
    args = parser.parse_args()
    config = load_config(args.run)
    systems = export(args.student, config, args.out)
    report = {"command": "python benchmarks/hf_export.py " + " ".join(sys.argv[1:]), "student": args.student, "beams": {}}
    tables = []
    for beam in (4, 1):
        work = os.path.join(args.out, f"eval-beam{beam}")
        records = evaluate(
            systems, config.data_bin, os.path.join(config.references, f"test.{config.tgt}"), split="test", out_dir=work,
            baseline="fairseq", settings=dataclasses.replace(config.evaluation, beam=beam),
            timing_rounds=args.timing_rounds, source_lang=config.src, target_lang=config.tgt, quiet=True,
        )  # fmt: skip
        translations = {n: read_lines(os.path.join(work, "translations", f"{n}.txt")) for n in systems}
        report["beams"][beam] = {
            r.name: {"test_bleu": r.bleu, "test_chrf": r.chrf, "sentences_per_s": r.sentences_per_s,
                     "p_vs_fairseq": r.significance.get("bleu", {}).get("p_value"),
                     "verdict_vs_fairseq": r.significance.get("bleu", {}).get("verdict"),
                     "same_as_fairseq": round(sum(a == b for a, b in zip(translations[r.name], translations["fairseq"]))
                                              / len(translations["fairseq"]), 4)}
            for r in records
        }  # fmt: skip
        tables.append(f"Beam {beam}:\n\n{results_table(records, baseline='fairseq')}")
        print(tables[-1], flush=True)
    write_json(args.results + ".json", report)
    lines = [
        "| beam | runtime | test BLEU | vs fairseq | p | sentences/s | translations as fairseq's |",
        "|---|---|---|---|---|---|---|",
    ]
    for beam, rows in report["beams"].items():
        for name, r in rows.items():
            lines.append(f"| {beam} | {name} | {r['test_bleu']:.2f} | {r['verdict_vs_fairseq'] or ''} | {r['p_vs_fairseq'] or ''} | {r['sentences_per_s']:.1f} | "
                         f"{100 * r['same_as_fairseq']:.1f}% |")  # fmt: skip
    write_text(args.results + ".md",
               f"`{report['command']}`\n\nThe student {args.student} on the test split, medians of {args.timing_rounds} "
               "timings by turns; p: sacreBLEU's paired bootstrap against the student in fairseq.\n\n"
               + "\n".join(lines) + "\n\n" + "\n\n".join(tables))  # fmt: skip


if __name__ == "__main__":
    main()
