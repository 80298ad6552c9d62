"""Training speed of candidate teacher shapes on this machine, to size a teacher before training it.

    python benchmarks/teacher_speed.py --data-bin runs/demo-big/data-bin --out runs/teacher-speed \
        --results benchmarks/results/big_teacher/speed

For each shape, ``fairseq-train`` runs ``--updates`` updates on the data-bin (no validation, no checkpoint)
with the big preset's optimisation (``fairseq_kd.demo.presets``), pre-norm layers and one shared embedding
matrix, and logs every 10 updates. The first interval (start-up, warm-up of the allocator) is left out;
the speed is the median over the other intervals of fairseq's own ``ups`` (updates per second) and ``wps``
(target tokens per second). Writes RESULTS.json and RESULTS.md; nothing else runs meanwhile.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fairseq_kd.demo.presets import PRE_NORM_LAYOUT, PRESETS  # noqa: E402
from fairseq_kd.io import write_json, write_text  # noqa: E402
from fairseq_kd.pipeline import Shape  # noqa: E402

CANDIDATES = {
    "6+6x256": Shape(encoder_layers=6, decoder_layers=6, embed_dim=256, ffn_dim=1024, heads=4),
    "6+6x384": Shape(encoder_layers=6, decoder_layers=6, embed_dim=384, ffn_dim=1536, heads=6),
    "6+6x512": Shape(encoder_layers=6, decoder_layers=6, embed_dim=512, ffn_dim=2048, heads=8),
}


def measure(name, shape, args):
    training = PRESETS["big"]["teacher_training"]
    flags = [str(f) for f in shape.flags(layout=PRE_NORM_LAYOUT) + training.flags()]
    # one interval per 10 updates, as JSON; no validation and no checkpoint: only the training step is timed
    for flag in ("--log-format", "--log-interval", "--max-update"):
        i = flags.index(flag)
        del flags[i : i + 2]
    cmd = ["fairseq-train", args.data_bin, "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0"]
    cmd += flags + ["--log-format", "json", "--log-interval", "10", "--max-update", str(args.updates)]
    cmd += ["--disable-validation", "--no-save", "--save-dir", os.path.join(args.out, name)]
    log_path = os.path.join(args.out, f"{name}.log")
    os.makedirs(args.out, exist_ok=True)
    if not finished(log_path, args.updates):  # a finished measurement is read again, not rerun
        with open(log_path, "w") as log:
            subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)
    intervals, params = [], None
    for line in open(log_path):
        if "num. shared model params:" in line:
            params = int(line.split("params:")[1].split("(")[0].replace(",", "").strip())
        if "| train_inner |" in line:
            intervals.append(json.loads(line[line.index("{") :]))
    timed = intervals[1:]
    if not timed:
        raise SystemExit(f"{log_path}: fewer than two logged intervals; raise --updates")
    ups = statistics.median(float(r["ups"]) for r in timed)
    return {
        "shape": name,
        **{k: getattr(shape, k) for k in ("encoder_layers", "decoder_layers", "embed_dim", "ffn_dim", "heads")},
        "params": params,
        "updates": args.updates,
        "intervals": len(timed),
        "seconds_per_update": round(1 / ups, 3),
        "target_tokens_per_s": round(statistics.median(float(r["wps"]) for r in timed), 1),
        "target_tokens_per_update": round(statistics.median(float(r["wpb"]) for r in timed), 1),
        "hours_per_1000_updates": round(1000 / ups / 3600, 2),
    }


def finished(log_path, updates):
    if not os.path.exists(log_path):
        return False
    return any("| train |" in line and f'"train_num_updates": "{updates}"' in line for line in open(log_path))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-bin", required=True)
    parser.add_argument("--out", required=True, help="scratch directory for the logs")
    parser.add_argument("--results", required=True, help="RESULTS.json and RESULTS.md are written")
    parser.add_argument("--shapes", default=",".join(CANDIDATES), help=f"any of {', '.join(CANDIDATES)}")
    parser.add_argument("--updates", type=int, default=40)
    args = parser.parse_args()
    rows = [measure(name, CANDIDATES[name], args) for name in args.shapes.split(",")]
    command = "python benchmarks/teacher_speed.py " + " ".join(sys.argv[1:])
    write_json(args.results + ".json", {"command": command, "cpu_threads": os.cpu_count(), "shapes": rows})
    lines = [
        f"# Teacher training speed on {os.cpu_count()} CPU cores",
        "",
        f"`{command}`",
        "",
        "| shape | params | s / update | target tokens / s | target tokens / update | h / 1,000 updates |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} (FFN {r['ffn_dim']}, {r['heads']} heads) | {r['params']:,} | {r['seconds_per_update']} | "
            f"{r['target_tokens_per_s']:,} | {r['target_tokens_per_update']:,} | {r['hours_per_1000_updates']} |"
        )
    write_text(args.results + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
