"""A short word-level KD run in fairseq-train with --fp16 (or --bf16) on a GPU: are its losses finite?

    python benchmarks/fp16_kd_check.py --out benchmarks/results/gpu    # writes fp16_kd_check.json

Trains a tiny teacher on the tests' letter cipher (fp32, 3 epochs), then a student by word-level KD
(NLL 1, KD 1, T 1: the guide's settings) for --updates updates in the chosen precision, and reads every
logged loss (train and valid) from fairseq-train's output. ``--device cpu`` runs the same in fp32 (what a
machine without a GPU can check).
"""

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from tests.utils import TINY_ARCH, create_dummy_data, preprocess_translation_data, quiet  # noqa: E402


def train(data, save_dir, flags, device):
    script = shutil.which("fairseq-train") or os.path.join(os.path.dirname(sys.executable), "fairseq-train")
    cmd = [script, data, "--save-dir", save_dir,
           "--optimizer", "adam", "--lr", "0.005", "--max-tokens", "1000", "--no-progress-bar", "--log-format", "simple",
           "--log-interval", "5", "--num-workers", "0", "--seed", "1", "--no-epoch-checkpoints"] + TINY_ARCH + flags  # fmt: skip
    if device == "cpu":
        cmd.append("--cpu")
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"fairseq-train failed:\n{out.stderr[-3000:]}")
    return out.stdout + out.stderr


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--precision", default="fp16", choices=["fp16", "bf16"])
    parser.add_argument("--updates", type=int, default=100)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        os.makedirs(data)
        with quiet():
            create_dummy_data(data, num_examples=1000)
            preprocess_translation_data(data, ["--joined-dictionary"])
        train(data, os.path.join(tmp, "teacher"), ["--max-epoch", "3"], args.device)
        precision = [f"--{args.precision}"] if args.device == "cuda" else []
        kd = ["--user-dir", os.path.join(ROOT, "fairseq_kd"), "--task", "translation_kd",
              "--teacher-path", os.path.join(tmp, "teacher", "checkpoint_last.pt"),
              "--criterion", "label_smoothed_cross_entropy_with_kd", "--label-smoothing", "0",
              "--nll-weight", "1", "--kd-weight", "1", "--kd-temperature", "1", "--max-update", str(args.updates)]  # fmt: skip
        log = train(data, os.path.join(tmp, "student"), kd + precision, args.device)
    losses = {name: [float(v) for v in re.findall(rf"\| {name} ([-\w.]+)", log)] for name in ("loss", "nll_loss", "kd_loss")}
    finite = all(losses[n] and all(math.isfinite(v) for v in losses[n]) for n in losses)
    record = {"command": " ".join(sys.argv), "device": args.device, "precision": precision or ["fp32"],
              "updates": args.updates, "losses": losses, "all_finite": finite}  # fmt: skip
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "fp16_kd_check.json"), "w") as f:
        json.dump(record, f, indent=1)
    print(f"{args.device} {record['precision']}: {sum(map(len, losses.values()))} logged losses, all finite: {finite}")
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main())
