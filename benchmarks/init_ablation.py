"""What the DistilBERT-style student owes to its initialisation, to word-level KD and to the cosine loss.

Trains, in a finished demo run directory, more students of the demo's student shape and budget, all
initialised from the teacher like the demo's ``distilbert`` student (1 of every n layers):

* ``init_nll``: then label-smoothed NLL on the references only (no teacher during training);
* ``init_kd``: then word-level KD as the demo's (0.5 NLL + 0.5 KL, T = 2), without the cosine loss;

and evaluates them exactly as the demo evaluates its systems (stock fairseq-generate of the exported model,
same beam, batch and length bound; sacreBLEU and chrF). With the demo's ``baseline`` (no init, NLL),
``distilbert`` (init, KD, cosine) and ``init_seq_kd`` (init, NLL on the teacher's translations) this
separates the ingredients.

    python benchmarks/init_ablation.py --out runs/demo-full --preset full [--data DIR] [--only init_nll]

(``--data``: the corpus the run was made on, if it was not the built-in one.) Writes OUT/eval/init_*.json
and benchmarks/results/init_ablation_PRESET_N_updates.md (N, the students' budget, keeps the results of
another budget; ``--results DIR`` writes it elsewhere). A finished student is not trained again (its stage
marker is kept in OUT/stages, as the demo's).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fairseq_kd.demo.pipeline import DemoError, Pipeline, log  # noqa: E402
from fairseq_kd.demo.presets import WORD_KD  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

NLL = ["--criterion", "label_smoothed_cross_entropy"]
KD = ["--criterion", "label_smoothed_cross_entropy_with_kd"] + WORD_KD

# name: (method, criterion)
STUDENTS = {
    "init_nll": ("DistilBERT-style init + NLL", NLL),
    "init_kd": ("DistilBERT-style init + word-level KD", KD),
}


def train(pipeline, name, criterion):
    p = pipeline.preset
    teacher = pipeline.teacher_checkpoint()
    save_dir = pipeline.path("students", name)
    flags = (
        [pipeline.path("data-bin")]
        + pipeline.arch(p["student"], "transformer_student")
        + ["--init-from-teacher", "--task", "translation_kd", "--teacher-path", teacher]
        + criterion
    )
    pipeline.train(flags, save_dir, name, p["student_max_update"], p["student_warmup_updates"])
    pipeline.export(os.path.join(save_dir, "checkpoint_last.pt"), pipeline.path("models", f"{name}.pt"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="a demo run directory whose teacher stage is finished")
    parser.add_argument("--preset", required=True, help="the preset that run was made with")
    parser.add_argument("--data", help="the corpus that run was made on (DATA=...), if not the built-in one")
    parser.add_argument("--results", default=RESULTS, help="where the table goes (default: %(default)s)")
    parser.add_argument("--only", choices=sorted(STUDENTS), help="train and evaluate only this student")
    args = parser.parse_args()
    try:
        run(args)
    except DemoError as e:
        sys.exit(f"error: {e}")


def run(args):
    pipeline = Pipeline(args.out, args.preset, args.data)
    pipeline.check_run_dir()  # the run's preset, settings and corpus, else refused
    for stage in ("teacher", "evaluate baseline", "evaluate distilbert", "evaluate init_seq_kd"):
        if not os.path.exists(pipeline.done_marker(stage)):
            sys.exit(f"{args.out}: the demo's stage '{stage}' is not finished; run the demo first")
    for name in [args.only] if args.only else STUDENTS:
        marker = pipeline.done_marker(f"ablation {name}")
        if os.path.exists(marker):
            log(f"{name}: done earlier")
            continue
        method, criterion = STUDENTS[name]
        log(f"{name} ...")
        train(pipeline, name, criterion)
        pipeline.evaluate(name, method)
        with open(marker, "w") as f:
            f.write("{}")

    rows = []
    for name in ("teacher", "baseline", "init_nll", "init_kd", "distilbert", "seq_kd", "init_seq_kd"):
        path = pipeline.path("eval", f"{name}.json")
        if os.path.exists(path):
            with open(path) as f:
                r = json.load(f)
            rows.append(f"| {name} | {r['method']} | {r['bleu']} | {r['chrf']} | {r['valid_bleu']} |")
    table = "\n".join(["| system | method | BLEU | chrF | valid BLEU |", "|---|---|---:|---:|---:|", *rows])
    os.makedirs(args.results, exist_ok=True)
    out = os.path.join(args.results, f"init_ablation_{args.preset}_{pipeline.preset['student_max_update']}_updates.md")
    with open(out, "w") as f:
        f.write(
            f"# Student initialisation, word-level KD and cosine loss, preset `{args.preset}`\n\n"
            f"Test split; students of {pipeline.preset['student_max_update']} updates; "
            f"`python benchmarks/init_ablation.py --out {args.out} --preset {args.preset}`\n\n{table}\n"
        )
    log(table)
    log(f"written: {out}")


if __name__ == "__main__":
    main()
