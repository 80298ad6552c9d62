"""Faults at every stage: the demo killed (SIGKILL, its whole process group) inside each stage, then rerun.

    python benchmarks/kill_points.py --out runs/kill-points --results benchmarks/results/kill_points

On the smoke preset and the tests' cipher data: one uninterrupted reference run, then for every stage of
it (corpus, sentencepiece, binarize, teacher, pseudo-labels, each student, CTranslate2, and the final
evaluation and report) ``--points`` runs that are killed at a random moment inside that stage (drawn
from the reference's duration of the stage, ``--seed``) and rerun with the same command to the end. A
point survives when the rerun finishes and its results equal the reference's: every score, p-value and
interval of results.json (speeds and timings aside), and every translation of valid and test.

A killed run does not start from nothing: the reference run is paused (SIGSTOP) as each stage starts and
its run directory copied, and a kill point in that stage starts from that copy, in the same directory (the
run records absolute paths), so that only the killed stage and those after it run again. A copy is the
state of a run stopped as its stage began, which is itself a state a kill leaves. ``--stages`` sweeps only
the stages whose names start with one of the given prefixes.

Writes RESULTS.json and RESULTS.md: each kill point, the stage and second it was killed at, whether the
rerun finished, and what differed.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from fairseq_kd.io import write_json, write_text  # noqa: E402
from tests.test_demo_pipeline import comparable, run_and_kill, write_data  # noqa: E402


def command(args, out):
    return [sys.executable, "-m", "fairseq_kd.demo", "--preset", "smoke", "--data", os.path.join(args.out, "data"),
            "-s", "in", "-t", "out", "--out", out]  # fmt: skip


STAGE_OPENS = re.compile(r"^(\S.*) \.\.\.$")


def slug(stage):
    return re.sub(r"[^\w.-]+", "_", stage)


def stage_windows(lines):
    """[(stage, start line, seconds, the stage its snapshot is of)] from a run's output: "NAME ..." opens a
    stage, "NAME: finished in" closes it; after the last stage closes, the evaluation and report run until
    the end (killed from the snapshot of the last stage, which runs again first)."""
    windows, opened = [], {}
    for t, line in lines:
        match = STAGE_OPENS.match(line)
        if match:
            opened[match[1]] = t
        match = re.match(r"^(\S.*): finished in", line)
        if match and match[1] in opened:
            windows.append((match[1], f"{match[1]} ...", t - opened[match[1]], match[1]))
    if windows:
        # the evaluation prints nothing until its table: its window opens as the last stage closes
        last = max((t, line) for t, line in lines if ": finished in" in line)
        closing = last[1][: last[1].index(": finished in") + len(": finished in")]
        windows.append(("evaluation and report", closing, lines[-1][0] - last[0], windows[-1][0]))
    return windows


def reference_run(args, run_dir, snapshots):
    """Runs the demo uninterrupted into RUN_DIR, copying RUN_DIR into SNAPSHOTS/STAGE (the run paused) as each
    stage starts. Returns the run's output lines."""

    def snapshot(line, process):
        match = STAGE_OPENS.match(line)
        if match and os.path.isdir(run_dir):
            os.killpg(process.pid, signal.SIGSTOP)
            try:
                shutil.copytree(run_dir, os.path.join(snapshots, slug(match[1])), symlinks=True)
            finally:
                os.killpg(process.pid, signal.SIGCONT)

    _, status, lines = run_and_kill(command(args, run_dir), on_line=snapshot)
    if status != 0:
        raise RuntimeError("the reference run failed:\n" + "\n".join(line for _, line in lines[-30:]))
    return lines


def differences(reference, found):
    return sorted(k for k in set(reference) | set(found) if reference.get(k) != found.get(k))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        required=True,
        help="work directory (emptied first, unless it holds a sweep of the same settings: that one resumes)",
    )
    parser.add_argument("--results", required=True, help="writes RESULTS.json and RESULTS.md")
    parser.add_argument("--points", type=int, default=1, help="kill points per stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", default="", help="comma-separated prefixes of the stages to sweep (default: all)")
    args = parser.parse_args()
    run_dir, snapshots = os.path.join(args.out, "run"), os.path.join(args.out, "snapshots")
    state_path = os.path.join(args.out, "sweep.json")
    if os.path.exists(state_path):  # a sweep stopped part-way resumes after its last finished point
        with open(state_path) as f:
            state = json.load(f)
        if state["settings"] != vars(args):
            raise SystemExit(f"{args.out} holds a sweep with other settings ({state['settings']}): use another --out")
    else:
        shutil.rmtree(args.out, ignore_errors=True)
        write_data(os.path.join(args.out, "data"))
        lines = reference_run(args, run_dir, snapshots)
        state = {"settings": vars(args), "lines": lines, "reference": comparable(run_dir), "points": []}
        write_json(state_path, state)
    reference, points = state["reference"], state["points"]
    prefixes = [p for p in args.stages.split(",") if p]
    rng = random.Random(args.seed)
    n = 0
    for stage, first_line, seconds, snapshot_of in stage_windows(state["lines"]):
        if prefixes and not any(stage.startswith(p) for p in prefixes):
            continue
        for _ in range(args.points):
            delay = round(rng.uniform(0, max(seconds, 0.1)), 2)
            n += 1
            if n <= len(points):
                continue
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.copytree(os.path.join(snapshots, slug(snapshot_of)), run_dir, symlinks=True)
            killed, _, _ = run_and_kill(command(args, run_dir), kill_after_line=first_line, delay=delay)
            _, status, rerun_lines = run_and_kill(command(args, run_dir))
            point = {"stage": stage, "stage_seconds": seconds, "killed_after_s": delay, "killed": killed,
                     "rerun_status": status}  # fmt: skip
            if status == 0:
                point["differences"] = differences(reference, comparable(run_dir))
            else:
                point["rerun_tail"] = [line for _, line in rerun_lines[-10:]]
            point["survived"] = status == 0 and not point.get("differences")
            points.append(point)
            write_json(state_path, state)
            print(f"{stage}: killed after {delay} s (killed: {killed}), rerun exit {status}, "
                  f"survived: {point['survived']}", flush=True)  # fmt: skip
    survived = sum(p["survived"] for p in points)
    write_json(args.results + ".json", {"command": " ".join(sys.argv), "points": points, "tried": len(points),
                                        "survived": survived})  # fmt: skip
    rows = [
        f"| {p['stage']} | {p['killed_after_s']} of {p['stage_seconds']:.1f} | {'yes' if p['killed'] else 'finished first'} | "
        f"{p['rerun_status']} | {'yes' if p['survived'] else 'no: ' + ', '.join(p.get('differences') or ['rerun failed'])} |"
        for p in points
    ]
    write_text(args.results + ".md", "\n".join([
        f"The smoke demo killed (SIGKILL) inside each stage, then rerun (`{' '.join(sys.argv)}`): "
        f"{survived} of {len(points)} kill points survived (the rerun finished and its scores and translations "
        "equal the uninterrupted run's). Each kill point started from a copy of the reference run's directory "
        "taken, the run paused, as its stage began.", "",
        "| stage | killed after (s) of the stage's | killed | rerun exit | survived |", "|---|---|---|---|---|",
    ] + rows) + "\n")  # fmt: skip
    print(f"{survived} of {len(points)} kill points survived")
    return 0 if survived == len(points) else 1


if __name__ == "__main__":
    sys.exit(main())
