"""Median step times of two codes, from ``kd_step.py`` and ``topk_cache.py`` runs taken by turns.

    python benchmarks/ab_compare.py --before DIR1 DIR3 ... --after DIR2 DIR4 ... --out RESULTS.md

Each DIR holds one run's ``kd_step_*.json`` and ``topk_cache_*.json`` (``--output-dir DIR`` of each
benchmark). Writes a markdown table: every step's seconds per run, the medians of each side, the change of
the medians, and whether the two sides' ranges overlap (with a handful of runs a median's change inside the
runs' own spread separates nothing).
"""

import argparse
import glob
import json
import os
import statistics


def load(dirs):
    """{(benchmark, step): [seconds per run]} and {(benchmark, step): [peak bytes per run]}."""
    seconds, peaks = {}, {}
    for d in dirs:
        for path in sorted(glob.glob(os.path.join(d, "*.json"))):
            bench = "kd_step" if os.path.basename(path).startswith("kd_step") else "topk_cache"
            with open(path) as f:
                results = json.load(f)["results"]
            for step, r in results.items():
                if "seconds" in r:
                    seconds.setdefault((bench, step), []).append(r["seconds"])
                    peaks.setdefault((bench, step), []).append(r.get("peak_bytes", 0))
    return seconds, peaks


def table(before, after):
    (sb, pb), (sa, pa) = load(before), load(after)
    lines = [
        f"{len(before)} runs before, {len(after)} after.",
        "",
        "| benchmark | step | before: ms per run | after: ms per run | median ms, before -> after | change |"
        " ranges overlap | peak MB, before -> after |",
        "|---|---|---|---|---:|---:|---|---:|",
    ]
    for key in sorted(set(sb) | set(sa)):
        b, a = sb.get(key, []), sa.get(key, [])
        ms = lambda xs: ", ".join(f"{1000 * x:.0f}" for x in xs) or "-"  # noqa: E731
        med = lambda xs: f"{1000 * statistics.median(xs):.0f}" if xs else "-"  # noqa: E731
        peak = lambda xs: f"{max(xs) / 2**20:.0f}" if xs else "-"  # noqa: E731
        change = f"{100 * (statistics.median(a) / statistics.median(b) - 1):+.1f}%" if a and b else "-"
        overlap = ("yes" if min(a) <= max(b) and min(b) <= max(a) else "no") if a and b else "-"
        lines.append(
            f"| {key[0]} | {key[1]} | {ms(b)} | {ms(a)} | {med(b)} -> {med(a)} | {change} | {overlap}"
            f" | {peak(pb.get(key, []))} -> {peak(pa.get(key, []))} |"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", nargs="+", required=True, help="run directories of the earlier code")
    parser.add_argument("--after", nargs="+", required=True, help="run directories of the later code")
    parser.add_argument("--out", required=True, help="the markdown table to write")
    args = parser.parse_args()
    text = table(args.before, args.after)
    with open(args.out, "w") as f:
        f.write(text)
    print(text, end="")


if __name__ == "__main__":
    main()
