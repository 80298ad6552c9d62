"""What the DistilBERT-style student owes to its initialisation, to word-level KD and to the cosine loss.

Adds to a demo run the two ablation methods of :mod:`fairseq_kd.methods`, ``init_nll`` (the teacher's
layers, then NLL on the references) and ``init_kd`` (the same with word-level KD, no cosine loss), trained
and evaluated as every student of the demo; with ``baseline`` (no init), ``distilbert`` (init, KD, cosine),
``seq_kd`` and ``init_seq_kd`` this separates the ingredients.

    python benchmarks/init_ablation.py --preset full [--out runs/demo-full] [--data DIR -s SRC -t TGT]

Writes benchmarks/results/init_ablation_PRESET_N_updates.md (N: the students' budget; ``--results DIR``
writes it elsewhere). Finished stages are not done again.
"""

import argparse
import json
import os

from fairseq_kd.cli import run
from fairseq_kd.demo.presets import PRESETS
from fairseq_kd.demo.stages import Demo

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ABLATION = ["init_nll", "init_kd"]
ROWS = ["teacher", "baseline", "init_nll", "init_kd", "distilbert", "seq_kd", "init_seq_kd"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="full")
    parser.add_argument("--out", help="the demo's run directory (default: the demo's)")
    parser.add_argument("--data", help="the corpus the run was made on, if not the built-in one")
    parser.add_argument("--source-lang", "-s", default="de")
    parser.add_argument("--target-lang", "-t", default="en")
    parser.add_argument("--results", default=RESULTS, help="where the table is written")
    args = parser.parse_args(argv)
    out = args.out or ("runs/demo" if args.preset == "default" else f"runs/demo-{args.preset}")
    preset = PRESETS[args.preset]
    methods = list(preset["methods"]) + [m for m in ABLATION if m not in preset["methods"]]
    Demo(out, args.preset, args.data, args.source_lang, args.target_lang, methods=methods).run()
    with open(os.path.join(out, "results.json")) as f:
        systems = {r["name"]: r for r in json.load(f)["systems"]}
    lines = [
        f"# DistilBERT-style initialisation: ablation (preset `{args.preset}`, test split)",
        "",
        f"Made by `python benchmarks/init_ablation.py --preset {args.preset}`; every row from {out}/results.json. "
        "p: sacreBLEU's paired bootstrap against the baseline.",
        "",
        "| system | method | BLEU | p | chrF | valid BLEU |",
        "|---|---|---|---|---|---|",
    ]
    for name in ROWS:
        if name in systems:
            r = systems[name]
            p = r["significance"].get("bleu", {}).get("p_value", "")
            lines.append(f"| {name} | {r['method']} | {r['bleu']:.2f} | {p} | {r['chrf']:.2f} | {r['valid_bleu']:.2f} |")
    os.makedirs(args.results, exist_ok=True)
    path = os.path.join(args.results, f"init_ablation_{args.preset}_{preset['student_training'].max_update}_updates.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"written: {path}")


if __name__ == "__main__":
    raise SystemExit(run(main, "init_ablation"))
