"""Students of the big teacher: deep-encoder, shallow-decoder shapes at the teacher's width and narrower, each
method with its baseline at the same shape and budget, trained by the distillation pipeline.

    python benchmarks/big_students.py --run runs/demo-big --out runs/big-students \
        --results benchmarks/results/big_teacher [--shapes 6x1,3x1,6x1-w128,6x1-w64] [--seeds 3]

On a run of ``python -m fairseq_kd.demo --preset big`` whose teacher stage is done, one pipeline run
(``fairseq_kd.pipeline.Pipeline``) per shape of SHAPES into OUT/SHAPE, in the order given, each resuming
where it stopped: its students trained from the run's data-bin against the run's teacher (its layer layout:
pre-norm), exported, evaluated on valid and test against their baseline (sacreBLEU's paired bootstrap), and
with ``--seeds N`` the baseline and the best by valid BLEU trained again with seeds 2..N. Every student logs its
valid BLEU at every validation (fairseq's ``--eval-bleu``, beam 4, the evaluation's length bound): the curve
that shows whether its budget was long enough (fairseq's training-time estimate, computed batch by batch; the
reported scores are fairseq-kd-evaluate's).

Shapes (Kasai et al. 2021, "Deep Encoder, Shallow Decoder": the decoder's depth is what costs at inference):

* ``6x1``: 6 encoder layers, 1 decoder layer, the teacher's width (256, FFN 1,024, 4 heads);
* ``3x1``: 3 + 1 at the same width;
* ``6x1-w128`` and ``6x1-w64``: 6 + 1 at half and a quarter of the width (the pruned initialisation: the
  teacher's sub-network chosen by activation importance; heads of the teacher's head size, 64).

Writes RESULTS/students_curve.tsv (update, valid NLL, valid BLEU per student) and, per shape, the pipeline's
results (OUT/SHAPE/results.{json,md}) copied to RESULTS/students_SHAPE.{json,md}.
"""

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fairseq_kd.io import write_text  # noqa: E402
from fairseq_kd.pipeline import Pipeline, Shape, Training, load_config  # noqa: E402

# name: (shape, methods)
SHAPES = {
    "6x1": (Shape(6, 1, 256, 1024, 4), ["baseline", "init_kd"]),
    "3x1": (Shape(3, 1, 256, 1024, 4), ["baseline", "init_kd"]),
    "6x1-w128": (Shape(6, 1, 128, 512, 2), ["baseline", "init_kd"]),
    "6x1-w64": (Shape(6, 1, 64, 256, 1), ["baseline", "init_kd"]),
}
# every student's budget: the big teacher's valid NLL was within 0.03 bits of its best after 1,600 updates
STUDENT_TRAINING = Training(max_update=1600, warmup_updates=400, lr=0.002, max_tokens=4096, eval_bleu="sentencepiece")
VALID_LINE = re.compile(r"valid on 'valid' subset \| .*?\| nll_loss ([\d.]+) .*?\| bleu ([\d.]+) .*?\| num_updates (\d+)")


def valid_curve(log_path):
    """[(update, valid NLL in bits, valid BLEU)] of every validation that a fairseq-train log with
    --eval-bleu reports."""
    with open(log_path, errors="replace") as f:
        return [(int(m[3]), float(m[1]), float(m[2])) for m in VALID_LINE.finditer(f.read())]


def config_for(run_config, shape, seeds):
    """The pipeline's settings for SHAPE: the big run's teacher, data and evaluation; STUDENT_TRAINING."""
    return dataclasses.replace(
        run_config, student=shape, training=dataclasses.replace(STUDENT_TRAINING), seeds=seeds, timing_rounds=0,
        evaluation=dataclasses.replace(run_config.evaluation),
    )  # fmt: skip


def write_curves(out, shapes, results):
    """RESULTS/students_curve.tsv: every student's validations so far."""
    lines = ["shape\tstudent\tupdate\tvalid_nll\tvalid_bleu"]
    for name in shapes:
        logs = os.path.join(out, name, "logs")
        for log in sorted(os.listdir(logs)) if os.path.isdir(logs) else []:
            student = log[: -len(".log")]
            if student in ("export", "pseudolabels", "topk_cache"):
                continue
            for update, nll, bleu in valid_curve(os.path.join(logs, log)):
                lines.append(f"{name}\t{student}\t{update}\t{nll}\t{bleu}")
    write_text(os.path.join(results, "students_curve.tsv"), "\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a big-preset demo run whose teacher is trained")
    parser.add_argument("--out", required=True, help="work directory: one pipeline run per shape (resumable)")
    parser.add_argument("--results", required=True, help="directory for the curves and the tables")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, in order (default: {','.join(SHAPES)})")
    parser.add_argument("--seeds", type=int, default=1,
                        help="seeds of each shape's baseline and best student (a rerun may raise it: more are added)")  # fmt: skip
    args = parser.parse_args()
    with open(os.path.join(args.run, "demo.json")) as f:
        if json.load(f)["preset"] != "big":
            raise SystemExit(f"{args.run} is not a run of preset big")
    if not os.path.isfile(os.path.join(args.run, "stages", "teacher.done")):
        raise SystemExit(f"{args.run}: the teacher is not trained (python -m fairseq_kd.demo --preset big --teacher-only)")
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise SystemExit(f"--shapes {','.join(unknown)}: choose from {','.join(SHAPES)}")
    run_config = load_config(args.run)
    os.makedirs(args.results, exist_ok=True)
    pipelines = {}
    for name in shapes:
        shape, methods = SHAPES[name]
        config = config_for(run_config, shape, args.seeds)
        config.methods = list(methods)
        pipelines[name] = Pipeline(os.path.join(args.out, name), config)
        pipelines[name].check_run_dir(inputs=False)  # every shape's settings checked before the first trains
        pipelines[name].check_students_fit()
    for name in shapes:
        print(f"== {name}", flush=True)
        pipelines[name].run()
        write_curves(args.out, shapes, args.results)
        for ext in ("json", "md"):
            shutil.copyfile(
                os.path.join(args.out, name, f"results.{ext}"), os.path.join(args.results, f"students_{name}.{ext}")
            )


if __name__ == "__main__":
    main()
