"""Copies the small files of a demo run into a results folder, the run directory's paths made relative.

    python benchmarks/collect_run.py runs/demo-full benchmarks/results/demo_full_guide

What it copies, each where the run has it (a rerun as stages finish copies what is new):
demo.json, pipeline.json, results.json, results.md, bleu_vs_speed.png, low-data.json, the pseudo-labels'
summaries (``pseudolabels_summary.json``, ``pseudolabels_sampled_summary.json``), every stage's seconds
(``stage_seconds.txt``, from OUT/stages/*.done), the teacher's fairseq-train command
(``teacher_command.txt``) and its validations (``teacher_valid.txt``), and every student's last validation
(``students_valid.tsv``: valid NLL against the references at its last update).
"""

import argparse
import glob
import json
import os
import re
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fairseq_kd.runs import validations  # noqa: E402

FILES = {
    "demo.json": "demo.json",
    "pipeline.json": "pipeline.json",
    "results.json": "results.json",
    "results.md": "results.md",
    "bleu_vs_speed.png": "bleu_vs_speed.png",
    "low-data.json": "low_data.json",
    "pseudolabels/summary.json": "pseudolabels_summary.json",
    "pseudolabels-sampled/summary.json": "pseudolabels_sampled_summary.json",
}
VALID = re.compile(r"valid on 'valid' subset \| (.*)$")


def relative(text, run):
    """TEXT with the run directory's absolute path written as the run's relative one."""
    return text.replace(os.path.abspath(run) + "/", os.path.normpath(run) + "/")


def portable(command):
    """A logged command ("$ /venv/bin/fairseq-train ... --user-dir /checkout/fairseq_kd ...") as a user runs it."""
    words = command.split(" ")
    words[1] = os.path.basename(words[1])
    return " ".join("fairseq_kd" if i > 0 and words[i - 1] == "--user-dir" else w for i, w in enumerate(words))


def collect(run, dest):
    os.makedirs(dest, exist_ok=True)
    written = []
    for source, name in FILES.items():
        path = os.path.join(run, source)
        if not os.path.isfile(path):
            continue
        if name.endswith(".png"):
            shutil.copyfile(path, os.path.join(dest, name))
        else:
            with open(path) as f:
                text = relative(f.read(), run)
            with open(os.path.join(dest, name), "w") as f:
                f.write(text)
        written.append(name)
    stages = sorted(glob.glob(os.path.join(run, "stages", "*.done")))
    if stages:
        lines = [f"# stage\tseconds, from {os.path.normpath(run)}/stages/*.done"]
        for path in stages:
            with open(path) as f:
                lines.append(f"{os.path.basename(path)[: -len('.done')]}\t{json.load(f)['seconds']}")
        _write(dest, "stage_seconds.txt", lines, written)
    teacher_log = os.path.join(run, "logs", "teacher.log")
    if os.path.isfile(teacher_log):
        with open(teacher_log, errors="replace") as f:
            log = f.read().splitlines()
        commands = [line for line in log if line.startswith("$ ")]
        _write(dest, "teacher_command.txt", [portable(relative(commands[-1], run))] if commands else [], written)
        _write(dest, "teacher_valid.txt", [m.group(1) for m in map(VALID.search, log) if m], written)
    rows = ["student\tnum_updates\tvalid_nll_loss (base 2, against the references)"]
    for path in sorted(glob.glob(os.path.join(run, "logs", "*.log"))):
        name = os.path.basename(path)[: -len(".log")]
        found = validations(path)
        if found and name != "teacher":
            last = found[-1]
            rows.append(f"{name}\t{last['num_updates']:.0f}\t{last['nll_loss']:g}")
    if len(rows) > 1:
        _write(dest, "students_valid.tsv", rows, written)
    return written


def _write(dest, name, lines, written):
    with open(os.path.join(dest, name), "w") as f:
        f.write("".join(line + "\n" for line in lines))
    written.append(name)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="the demo's run directory")
    parser.add_argument("dest", help="the results folder")
    args = parser.parse_args(argv)
    print("written: " + ", ".join(collect(args.run, args.dest)))


if __name__ == "__main__":
    main()
