"""Students of the big teacher: deep-encoder, shallow-decoder shapes at the teacher's width and narrower, each
method with its baseline at the same shape and budget, trained by the distillation pipeline.

    python benchmarks/big_students.py --run runs/demo-big --out runs/big-students \
        --results benchmarks/results/big_teacher [--shapes 6x1,3x1,6x1-w192,6x1-w128,6x1-w64] [--seeds 3] [--max-update N]

On a run of ``python -m fairseq_kd.demo --preset big`` whose teacher stage is done, one pipeline run
(``fairseq_kd.pipeline.Pipeline``) per shape of SHAPES into OUT/SHAPE, in the order given, each resuming
where it stopped: its students trained from the run's data-bin against the run's teacher (its layer layout:
pre-norm), exported, evaluated on valid and test against their baseline (sacreBLEU's paired bootstrap) and written;
then with ``--seeds N`` the baseline and the best by valid BLEU trained again with seeds 2..N, each kept as its
valid and test translations in RESULTS/seeds_SHAPE/translations as it lands (a rerun, on this machine or another,
trains only the students whose translations are not there; ``--seeds-only`` skips seed 1, whose results
RESULTS/students_SHAPE.json then holds) and RESULTS/seeds_SHAPE.{json,md} (BLEU by seed, mean and standard
deviation, paired bootstrap against the baseline of the same seed) written after each. Every student logs its
valid BLEU at every validation (fairseq's ``--eval-bleu``, beam 4, the evaluation's length bound): the curve
that shows whether its budget was long enough (fairseq's training-time estimate, computed batch by batch; the
reported scores are fairseq-kd-evaluate's).

Shapes (Kasai et al. 2021, "Deep Encoder, Shallow Decoder": the decoder's depth is what costs at inference):

* ``6x1``: 6 encoder layers, 1 decoder layer, the teacher's width (256, FFN 1,024, 4 heads);
* ``3x1``: 3 + 1 at the same width;
* ``6x1-w192``, ``6x1-w128`` and ``6x1-w64``: 6 + 1 at three quarters, half and a quarter of the width (the
  pruned initialisation: the teacher's sub-network chosen by activation importance; heads of the teacher's head
  size, 64).

``--max-update N`` sets every student's budget (default 1,600); a rerun with a larger one continues the
shapes' students from their last checkpoints (the pipeline's raised budget). The ``6x1-w128`` shape also trains
word_kd_nll: the guide's claim (c), init_kd against word_kd_nll (the same loss, NLL + word-level KD, from random
initialisation: the two differ in nothing else), compared at every budget it is run with (RESULTS/claim_c.{json,md}: x1, x2, x4 ... of the first budget, the same students continued);
and the sequence-level recipes, init_seq_kd and seq_kd (NLL on the teacher's beam translations of the training
sources, made once by the pipeline's pseudo-label stage, from the teacher's layers and from random
initialisation). Hybrid (interpolation + word-level KD) is not trained: at 6,400 updates it costs as much as
init_kd (the teacher in every step), and its word-level part is what word_kd_nll measures.

Writes RESULTS/students_curve.{tsv,png} (update, valid NLL, valid BLEU of every student in OUT) and, per shape, the pipeline's
results (OUT/SHAPE/results.{json,md}) copied to RESULTS/students_SHAPE.{json,md}.

With ``--measure`` (once the shapes' students exist), the deployment measurement instead: the teacher in
fairseq and CTranslate2 (float32, int8) and every seed-1 student in fairseq and CTranslate2 (float32, int8,
int8 with the vocabulary map learned from the training split), evaluated on valid and test with the
evaluation's settings (beam 4; CTranslate2 on one thread) and ``--timing-rounds`` translations by turns,
paired bootstrap against the teacher; greedy (beam 1) for the teacher and the recommended student (the best
valid BLEU among the students that reach the speed targets, else the best); each student's int8 drop; the
targets (>= 97% of the teacher's test BLEU, >= 10x the teacher's fairseq speed, >= 3x the teacher's speed in
the same runtime); RESULTS/students.md, RESULTS/students.png (BLEU and chrF against speed) and the students of RESULTS/summary.json.
"""

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import big_teacher  # noqa: E402
import divergences  # noqa: E402

from fairseq_kd.evaluate import evaluate, paired_bootstrap, pyplot, score  # noqa: E402
from fairseq_kd.io import read_lines, run_lock, write_json, write_text  # noqa: E402
from fairseq_kd.pipeline import Pipeline, Shape, Training, load_config  # noqa: E402
from fairseq_kd.pipeline.config import check_inputs  # noqa: E402
from fairseq_kd.runs import digest, validations  # noqa: E402

# name: (shape, methods)
SHAPES = {
    "6x1": (Shape(6, 1, 256, 1024, 4), ["baseline", "init_kd"]),
    "3x1": (Shape(3, 1, 256, 1024, 4), ["baseline", "init_kd"]),
    "6x1-w192": (Shape(6, 1, 192, 768, 3), ["baseline", "init_kd"]),
    # and word_kd_nll: the guide's claim (c), init_kd against the same loss from random initialisation, at several
    # budgets; and the sequence-level recipes that compete with init_kd (on the teacher's beam translations of the
    # training sources, from the teacher's layers and from random initialisation)
    "6x1-w128": (Shape(6, 1, 128, 512, 2), ["baseline", "init_kd", "word_kd_nll", "init_seq_kd", "seq_kd"]),
    "6x1-w64": (Shape(6, 1, 64, 256, 1), ["baseline", "init_kd"]),
}
# the methods every shape's measurement needs (the others are measured once trained)
MEASURED = ("baseline", "init_kd")
# every student's budget: the big teacher's valid NLL was within 0.03 bits of its best after 1,600 updates
STUDENT_TRAINING = Training(max_update=1600, warmup_updates=400, lr=0.002, max_tokens=4096, eval_bleu="sentencepiece")
RUNTIMES = ("fairseq", "ct2_float32", "ct2_int8", "ct2_int8_vmap")
# the teacher's system that a student's runtime is compared with ("same runtime"); the vocabulary map is the
# students' own addition to CTranslate2 int8
SAME_RUNTIME = {"fairseq": "teacher", "ct2_float32": "teacher.ct2_float32", "ct2_int8": "teacher.ct2_int8",
                "ct2_int8_vmap": "teacher.ct2_int8"}  # fmt: skip
BLEU_KEPT, SPEEDUP_FAIRSEQ, SPEEDUP_SAME_RUNTIME = 0.97, 10.0, 3.0


def valid_curve(log_path):
    """[(update, valid NLL in bits, valid BLEU)] of every validation that a fairseq-train log with
    --eval-bleu reports."""
    return [(int(v["num_updates"]), v["nll_loss"], v["bleu"]) for v in validations(log_path) if "bleu" in v]


def config_for(run_config, shape, seeds, max_update):
    """The pipeline's settings for SHAPE: the big run's teacher, data and evaluation; STUDENT_TRAINING with
    MAX_UPDATE updates."""
    return dataclasses.replace(
        run_config, student=shape, training=dataclasses.replace(STUDENT_TRAINING, max_update=max_update), seeds=seeds,
        timing_rounds=0, evaluation=dataclasses.replace(run_config.evaluation),
    )  # fmt: skip


CLAIM_C = ("baseline", "word_kd_nll", "init_kd")


def pipeline_translations(pipeline, names):
    """({split: {name: hypotheses}}, {split: references}) of NAMES in a finished pipeline run's evaluation."""
    c = pipeline.config
    translations, references = {}, {}
    for split in divergences.SPLITS:
        directory = pipeline.path("eval", split, "translations")
        translations[split] = {n: read_lines(os.path.join(directory, f"{n}.txt")) for n in names}
        references[split] = read_lines(os.path.join(c.references, f"{split}.{c.tgt}"))
    return translations, references


def claim_c(pipeline, budget, results):
    """The guide's claim (c) at BUDGET: init_kd (the teacher's layers) against word_kd_nll (the same loss from random
    initialisation), seed 1, on valid and test by sacreBLEU's paired bootstrap (the pipeline's translations),
    added to RESULTS/claim_c.json (one entry per budget) and written as RESULTS/claim_c.md with the students'
    valid curves (fairseq's estimate at every validation so far)."""
    translations, references = pipeline_translations(pipeline, CLAIM_C)
    entry = {}
    for split, hypotheses in translations.items():
        bleu = {n: score(h, references[split])["bleu"] for n, h in hypotheses.items()}
        tests, _ = paired_bootstrap(("word_kd_nll", hypotheses["word_kd_nll"]), {"init_kd": hypotheses["init_kd"]},
                                    references[split])  # fmt: skip
        entry[split] = {**{f"{n}_bleu": b for n, b in bleu.items()},
                        "init_kd_minus_word_kd_nll": round(bleu["init_kd"] - bleu["word_kd_nll"], 2),
                        "p_value": tests["init_kd"]["bleu"]["p_value"], "verdict": tests["init_kd"]["bleu"]["verdict"]}  # fmt: skip
    curves = {}  # update: {student: valid BLEU}
    for name in CLAIM_C:
        log = pipeline.path("logs", f"{name}.log")
        for update, _, bleu in valid_curve(log) if os.path.isfile(log) else []:
            curves.setdefault(update, {})[name] = bleu
    path = os.path.join(results, "claim_c.json")
    found = {"budgets": {}}
    if os.path.exists(path):
        with open(path) as f:
            found = json.load(f)
    found["budgets"][str(budget)] = entry
    found["valid_curve"] = {str(u): curves[u] for u in sorted(curves)}
    found["shape"] = dataclasses.asdict(pipeline.config.student)
    found["command"] = "python benchmarks/big_students.py " + " ".join(sys.argv[1:])
    write_json(path, found)
    lines = ["| updates | split | baseline | word_kd_nll | init_kd | init_kd - word_kd_nll | p | verdict |", "|" + "---|" * 8]
    for updates in sorted(found["budgets"], key=int):
        for split, e in found["budgets"][updates].items():
            lines.append(f"| {int(updates):,} | {split} | {e['baseline_bleu']:.2f} | {e['word_kd_nll_bleu']:.2f} | "
                         f"{e['init_kd_bleu']:.2f} | {e['init_kd_minus_word_kd_nll']:+.2f} | {e['p_value']} | {e['verdict']} |")  # fmt: skip
    curve = ["| update | baseline | word_kd_nll | init_kd | init_kd - word_kd_nll |", "|" + "---|" * 5]
    for update in sorted(curves):
        row = curves[update]
        if update % pipeline.config.training.save_interval_updates or not {"word_kd_nll", "init_kd"} <= set(row):
            continue  # the save interval's validations (the others fall on epoch ends)
        cells = " | ".join(f"{row[n]:.2f}" if n in row else "" for n in CLAIM_C)
        curve.append(f"| {update:,} | {cells} | {row['init_kd'] - row['word_kd_nll']:+.2f} |")
    write_text(os.path.join(results, "claim_c.md"),
               "The guide's claim (c) at the big teacher's scale: init_kd (the teacher's sub-network, NLL + word-level "
               "KD) against word_kd_nll (the same loss from random initialisation: nothing else differs) at one shape (6+1 layers, 128 wide), "
               "seed 1, each budget the same students continued (the inverse_sqrt schedule does not depend on the "
               "budget); BLEU by fairseq-kd-evaluate, p: sacreBLEU's paired bootstrap, init_kd against word_kd_nll.\n\n"
               + "\n".join(lines) + "\n\nValid BLEU while training (fairseq's --eval-bleu estimate, beam 4, at every "
               "save interval; every validation is in claim_c.json):\n\n" + "\n".join(curve) + "\n")  # fmt: skip


def write_curves(out, results):
    """RESULTS/students_curve.tsv and .png: the validations so far of every student of every shape in OUT, and
    those already in the file of the students whose logs OUT does not have (a shape trained on another machine)."""
    path, curves = os.path.join(results, "students_curve.tsv"), {}
    for line in read_lines(path)[1:] if os.path.exists(path) else []:
        shape, student, update, nll, bleu = line.split("\t")
        curves.setdefault(shape, {}).setdefault(student, []).append((int(update), float(nll), float(bleu)))
    for name in SHAPES:
        logs = os.path.join(out, name, "logs")
        for log in sorted(os.listdir(logs)) if os.path.isdir(logs) else []:
            student = log[: -len(".log")]
            if student in ("export", "pseudolabels", "topk_cache"):
                continue
            curve = valid_curve(os.path.join(logs, log))
            if curve:
                curves.setdefault(name, {})[student] = curve
    order = {name: i for i, name in enumerate(SHAPES)}
    curves = {shape: dict(sorted(curves[shape].items())) for shape in sorted(curves, key=lambda s: order.get(s, len(order)))}
    lines = ["shape\tstudent\tupdate\tvalid_nll\tvalid_bleu"] + [
        f"{shape}\t{student}\t{update}\t{nll}\t{bleu}"
        for shape, students in curves.items() for student, curve in students.items() for update, nll, bleu in curve
    ]  # fmt: skip
    write_text(path, "\n".join(lines) + "\n")
    if curves:
        curves_plot(curves, os.path.join(results, "students_curve.png"))


def curves_plot(curves, path):
    """Valid BLEU (fairseq's estimate) against updates, one panel per shape. CURVES: {shape: {student: curve}}."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4), squeeze=False)
    for ax, (shape, students) in zip(axes[0], curves.items()):
        for student, curve in sorted(students.items()):
            ax.plot([u for u, _, _ in curve], [b for _, _, b in curve], marker=".", label=student)
        ax.set_title(shape)
        ax.set_xlabel("updates")
        ax.set_ylabel("valid BLEU (fairseq --eval-bleu)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("The big teacher's students: valid BLEU while training")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def runtime_of(name):
    """(student or "teacher", runtime) of a system's name: "6x1.init_kd.ct2_int8" -> ("6x1.init_kd", "ct2_int8")."""
    for runtime in RUNTIMES[1:]:
        if name.endswith("." + runtime):
            return name[: -len(runtime) - 1], runtime
    return name, "fairseq"


def student_entries(records, shapes, params, updates):
    """The summary's students: one entry per student and runtime, from the test records ({name: Record}), the
    fairseq checkpoints' parameter counts and each shape's budget ({shape: updates})."""
    teacher = records["teacher"]
    entries = []
    for name, record in records.items():
        student, runtime = runtime_of(name)
        if student == "teacher":
            continue
        shape_name = student.split(".")[0]
        shape = shapes[shape_name]
        same = records[SAME_RUNTIME[runtime]]
        sig = record.significance.get("bleu", {})
        entries.append({
            "name": name, "student": student, "method": student.split(".", 1)[1], "encoder_layers": shape.encoder_layers,
            "decoder_layers": shape.decoder_layers, "embed_dim": shape.embed_dim, "params": params[student],
            "updates": updates[shape_name],
            "runtime": runtime, "test_bleu": record.bleu, "test_chrf": record.chrf,
            "pct_teacher_bleu": round(100 * record.bleu / teacher.bleu, 1),
            "sentences_per_s": record.sentences_per_s,
            "x_teacher_fairseq": round(record.sentences_per_s / teacher.sentences_per_s, 2),
            "x_teacher_same_runtime": round(record.sentences_per_s / same.sentences_per_s, 2),
            "p_vs_teacher": sig.get("p_value"), "verdict_vs_teacher": sig.get("verdict"),
            "int8_drop": round(record.bleu - records[f"{student}.ct2_float32"].bleu, 2) if runtime.startswith("ct2_int8") else None,
        })  # fmt: skip
    return entries


def meets_targets(entry):
    return (entry["pct_teacher_bleu"] >= 100 * BLEU_KEPT and entry["x_teacher_fairseq"] >= SPEEDUP_FAIRSEQ
            and entry["x_teacher_same_runtime"] >= SPEEDUP_SAME_RUNTIME)  # fmt: skip


def students_table(entries, teacher):
    head = ["student", "runtime", "params", "updates", "test BLEU", "% teacher", "p vs teacher", "chrF", "sentences/s",
            "x teacher (fairseq)", "x teacher (same runtime)", "int8 drop", "targets"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append(f"| teacher | fairseq | {teacher.params:,} | | {teacher.bleu:.2f} | 100 | | {teacher.chrf:.2f} | "
                 f"{teacher.sentences_per_s:.1f} | 1.0 | 1.0 | | |")  # fmt: skip
    for e in entries:
        drop = "" if e["int8_drop"] is None else f"{e['int8_drop']:+.2f}"
        lines.append(f"| {e['student']} | {e['runtime']} | {e['params']:,} | {e['updates']:,} | {e['test_bleu']:.2f} | {e['pct_teacher_bleu']} | "
                     f"{e['p_vs_teacher']} | {e['test_chrf']:.2f} | {e['sentences_per_s']:.1f} | {e['x_teacher_fairseq']} | "
                     f"{e['x_teacher_same_runtime']} | {drop} | {'met' if meets_targets(e) else ''} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def students_plot(entries, teachers, path):
    """BLEU and chrF (test) against speed: every student in every runtime (colour: runtime; marker: student),
    the teacher in each of its runtimes (red stars); the targets as lines: 97% of the teacher's BLEU, 10x the
    teacher's speed in fairseq, 3x its speed in CTranslate2 int8. TEACHERS: {name: Record}."""
    plt = pyplot()
    from matplotlib.lines import Line2D

    colours = dict(zip(RUNTIMES, ("tab:blue", "tab:green", "tab:orange", "tab:purple")))
    students = list(dict.fromkeys(e["student"] for e in entries))
    markers = dict(zip(students, "os^vDP<>Xph*"))
    fairseq, int8 = teachers["teacher"], teachers["teacher.ct2_int8"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, metric, label in zip(axes, ("bleu", "chrf"), ("BLEU", "chrF")):
        for e in entries:
            ax.scatter(e["sentences_per_s"], e[f"test_{metric}"], color=colours[e["runtime"]],
                       marker=markers[e["student"]], zorder=3)  # fmt: skip
        for i, (name, record) in enumerate(teachers.items()):
            ax.scatter(record.sentences_per_s, getattr(record, metric), color="tab:red", marker="*", s=120, zorder=4)
            text = "teacher " + runtime_of(name)[1].replace("ct2_", "")
            ax.annotate(text, (record.sentences_per_s, getattr(record, metric)), fontsize=7, ha="center",
                        xytext=(0, 8 if i % 2 == 0 else -14), textcoords="offset points")  # fmt: skip
        ax.axvline(SPEEDUP_FAIRSEQ * fairseq.sentences_per_s, color="0.4", ls="--", lw=0.8)
        ax.axvline(SPEEDUP_SAME_RUNTIME * int8.sentences_per_s, color="0.4", ls=":", lw=0.8)
        if metric == "bleu":
            ax.axhline(BLEU_KEPT * fairseq.bleu, color="0.4", ls="-.", lw=0.8)
        ax.set_xscale("log")
        ax.margins(x=0.1, y=0.1)
        ax.set_xlabel("sentences per second, test, one thread (log scale)")
        ax.set_ylabel(f"test {label}")
        ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], color=c, marker="o", ls="", label=r) for r, c in colours.items()]
    handles += [Line2D([], [], color="0.2", marker=markers[n], ls="", label=n) for n in students]
    handles += [Line2D([], [], color="0.4", ls="-.", label=f"{BLEU_KEPT:.0%} of the teacher's BLEU"),
                Line2D([], [], color="0.4", ls="--", label=f"{SPEEDUP_FAIRSEQ:g}x the teacher in fairseq"),
                Line2D([], [], color="0.4", ls=":", label=f"{SPEEDUP_SAME_RUNTIME:g}x the teacher in CTranslate2 int8")]  # fmt: skip
    fig.legend(handles=handles, loc="center right", fontsize=8)
    fig.suptitle("The big teacher's students: quality against speed (beam 4)")
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def measure(args, shapes, run_config):
    """The deployment measurement of the shapes' seed-1 students against the teacher (see the module's doc)."""
    c = run_config
    out = os.path.join(args.out, "measure")
    systems = {"teacher": c.teacher}
    for weights in ("float32", "int8"):
        systems[f"teacher.ct2_{weights}"] = big_teacher.ctranslate2("teacher", c.teacher, c, out, weights)
    shape_of, updates, not_measured = {}, {}, []
    for name in shapes:
        shape, methods = SHAPES[name]
        updates[name] = load_config(os.path.join(args.out, name)).training.max_update
        for method in methods:
            model = os.path.join(args.out, name, "models", f"{method}.pt")
            student = f"{name}.{method}"
            if not os.path.isfile(model) and method in MEASURED:
                raise SystemExit(f"{model} does not exist: train the shape {name} first (without --measure)")
            if not os.path.isfile(model):
                print(f"{student}: not trained yet, not measured (summary.json's not_measured)", flush=True)
                not_measured.append(student)
                continue
            shape_of[name] = shape
            systems[student] = model
            systems[f"{student}.ct2_float32"] = big_teacher.ctranslate2(student, model, c, out, "float32")
            systems[f"{student}.ct2_int8"] = big_teacher.ctranslate2(student, model, c, out, "int8")
            systems[f"{student}.ct2_int8_vmap"] = big_teacher.ctranslate2(student, model, c, out, "int8", vmap=True)
    vmap = [n for n in systems if n.endswith(".ct2_int8_vmap")]
    records = {}
    for split in ("valid", "test"):
        found = evaluate(
            systems, c.data_bin, os.path.join(c.references, f"{split}.{c.tgt}"), split=split,
            out_dir=os.path.join(out, "eval", split), baseline="teacher", settings=dataclasses.replace(c.evaluation),
            timing_rounds=args.timing_rounds if split == "test" else 0, source_lang=c.src, target_lang=c.tgt,
            quiet=True, vmap=vmap,
        )  # fmt: skip
        records[split] = {r.name: r for r in found}
    params = {runtime_of(n)[0]: r.params for n, r in records["test"].items() if runtime_of(n)[1] == "fairseq"}
    entries = student_entries(records["test"], shape_of, params, updates)
    valid = records["valid"]
    fast = [
        e for e in entries if e["x_teacher_fairseq"] >= SPEEDUP_FAIRSEQ and e["x_teacher_same_runtime"] >= SPEEDUP_SAME_RUNTIME
    ]
    # the recommended student: chosen on valid, among those that reach the speed targets (else all)
    recommended = max(fast or entries, key=lambda e: valid[e["name"]].bleu)
    greedy_systems = {n: systems[n] for n in ("teacher", "teacher.ct2_int8", recommended["student"], recommended["name"])}
    greedy = evaluate(
        greedy_systems, c.data_bin, os.path.join(c.references, f"test.{c.tgt}"), split="test",
        out_dir=os.path.join(out, "eval", "test_greedy"), baseline="teacher",
        settings=dataclasses.replace(c.evaluation, beam=1), timing_rounds=args.timing_rounds, source_lang=c.src,
        target_lang=c.tgt, quiet=True, vmap=[n for n in greedy_systems if n in vmap],
    )  # fmt: skip
    teacher = records["test"]["teacher"]
    summary_path = os.path.join(args.results, "summary.json")
    with open(summary_path) as f:
        summary = json.load(f)
    # the teacher's speeds that the students' speed-ups are computed against: measured by turns with theirs (the
    # teacher's own "sentences_per_s" come from benchmarks/big_teacher.py's run)
    summary["teacher"]["sentences_per_s_with_the_students"] = {
        "fairseq": teacher.sentences_per_s, "ctranslate2_float32": records["test"]["teacher.ct2_float32"].sentences_per_s,
        "ctranslate2_int8": records["test"]["teacher.ct2_int8"].sentences_per_s,
    }  # fmt: skip
    summary["students"] = entries
    summary["recommended"] = {"name": recommended["name"], "chosen_on": "valid BLEU, among the students that reach "
                              "the speed targets", "meets_targets": meets_targets(recommended)}  # fmt: skip
    summary["targets"] = {"bleu_kept": BLEU_KEPT, "x_teacher_fairseq": SPEEDUP_FAIRSEQ,
                          "x_teacher_same_runtime": SPEEDUP_SAME_RUNTIME,
                          "met_by": [e["name"] for e in entries if meets_targets(e)]}  # fmt: skip
    summary["greedy"] = [{"name": r.name, "test_bleu": r.bleu, "sentences_per_s": r.sentences_per_s,
                          "p_vs_teacher_greedy": r.significance.get("bleu", {}).get("p_value"),
                          "verdict_vs_teacher_greedy": r.significance.get("bleu", {}).get("verdict")} for r in greedy]  # fmt: skip
    summary["students_command"] = "python benchmarks/big_students.py " + " ".join(sys.argv[1:])
    summary["students_timing_rounds"] = args.timing_rounds
    summary["not_measured"] = not_measured
    write_json(summary_path, summary)
    table = students_table(entries, teacher)
    greedy_lines = "".join(f"| {g['name']} | {g['test_bleu']:.2f} | {g['sentences_per_s']:.1f} | "
                           f"{g['p_vs_teacher_greedy'] or ''} | {g['verdict_vs_teacher_greedy'] or ''} |\n" for g in summary["greedy"])  # fmt: skip
    write_text(os.path.join(args.results, "students.md"),
               f"Test split, beam 4, medians of {args.timing_rounds} timings by turns, one thread, the same machine "
               f"in one run; p: sacreBLEU's paired bootstrap against the teacher.\n\n{table}\n"
               f"Greedy (beam 1; p: paired bootstrap against the teacher's greedy translations in fairseq):\n\n"
               f"| system | test BLEU | sentences/s | p | verdict |\n|---|---|---|---|---|\n{greedy_lines}")  # fmt: skip
    teachers = {n: r for n, r in records["test"].items() if runtime_of(n)[0] == "teacher"}
    students_plot(entries, teachers, os.path.join(args.results, "students.png"))
    print(table)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a big-preset demo run whose teacher is trained")
    parser.add_argument("--out", required=True, help="work directory: one pipeline run per shape (resumable)")
    parser.add_argument("--results", required=True, help="directory for the curves and the tables")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, in order (default: {','.join(SHAPES)})")
    parser.add_argument("--measure", action="store_true", help="the deployment measurement of the trained shapes")
    parser.add_argument("--timing-rounds", type=int, default=5, help="with --measure: timings by turns per system")
    parser.add_argument(
        "--max-update",
        type=int,
        default=STUDENT_TRAINING.max_update,
        help="every student's budget (a rerun may raise it: the shapes' students continue)",
    )
    parser.add_argument("--seeds", type=int, default=1,
                        help="seeds of each shape's baseline and best student (a rerun may raise it: more are added)")  # fmt: skip
    parser.add_argument("--seeds-only", action="store_true",
                        help="only the seeds 2..N, of the methods that RESULTS/students_SHAPE.json (seed 1) chooses")  # fmt: skip
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
    missing = [s for s in shapes if args.seeds_only and seed_one(args.results, s, args.max_update) is None]
    if missing or (args.seeds_only and args.seeds < 2):
        raise SystemExit(f"--seeds-only needs --seeds 2 or more and seed 1 at {args.max_update:,} updates in "
                         f"{args.results}/students_SHAPE.json (missing for {', '.join(missing) or 'none'})")  # fmt: skip
    run_config = load_config(args.run)
    os.makedirs(args.results, exist_ok=True)
    if args.measure:
        measure(args, shapes, run_config)
        return
    pipelines = {}
    for name in shapes:
        shape, methods = SHAPES[name]
        config = config_for(run_config, shape, args.seeds, args.max_update)
        config.methods = list(methods)
        pipelines[name] = Pipeline(os.path.join(args.out, name), config)
        pipelines[name].check_run_dir(inputs=False)  # every shape's settings checked before the first trains
        pipelines[name].check_students_fit()
    for name in shapes:
        print(f"== {name}", flush=True)
        pipeline = pipelines[name]
        if not args.seeds_only:
            first = Pipeline(pipeline.out, dataclasses.replace(pipeline.config, seeds=1))
            first.run()  # seed 1 of every method, evaluated and written
            publish(first, name, args)
        if args.seeds > 1:
            more_seeds(pipeline, name, args)


def seed_one(results, name, budget):
    """RESULTS/students_NAME.json when it holds seed 1 of shape NAME's methods at BUDGET, else None."""
    path = os.path.join(results, f"students_{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        found = json.load(f)
    return found if found["settings"]["training"]["max_update"] == budget else None


def more_seeds(pipeline, name, args):
    """With --seeds N: the baseline and the best seed-1 student by valid BLEU (RESULTS/students_NAME.json) trained
    with seeds 2..N, each kept as its valid and test translations in RESULTS/seeds_NAME/translations (a rerun, on
    this machine or another, trains only the students whose translations are not there), and
    RESULTS/seeds_NAME.{json,md} written after each."""
    first = seed_one(args.results, name, args.max_update)
    students = [r for r in first["systems"] if r["name"] in SHAPES[name][1]]
    best = max((r for r in students if r["name"] != "baseline"), key=lambda r: r["valid_bleu"])["name"]
    seeded = ["baseline", best]
    kept_dir = os.path.join(args.results, f"seeds_{name}")
    config = dataclasses.replace(pipeline.config, methods=seeded, seeded=seeded)
    divergences.check_settings(kept_dir, {
        "shape": dataclasses.asdict(config.student), "training": dataclasses.asdict(config.training),
        "teacher": digest(config.teacher), "evaluation": dataclasses.asdict(config.evaluation),
    })  # fmt: skip
    check_inputs(config)
    pipeline = Pipeline(pipeline.out, config)
    names = [f"{m}.seed{s}" for s in range(2, args.seeds + 1) for m in seeded]
    with run_lock(pipeline.out, "pipeline"):
        pipeline.check_run_dir()
        write_seeds(kept_dir, config, first, seeded, names, args)
        for student in names:
            divergences.train_and_translate(pipeline, student, kept_dir)
            write_seeds(kept_dir, config, first, seeded, names, args)


def write_seeds(kept_dir, config, first, seeded, names, args):
    """KEPT_DIR.{json,md}: BLEU of every seed of the SEEDED methods on valid and test (seed 1 from FIRST, the
    seed-1 results; the others from their kept translations), the best against the baseline of its seed (sacreBLEU's
    paired bootstrap), and each method's mean and standard deviation over the seeds there are."""
    baseline, best = seeded
    records = {r["name"]: r for r in first["systems"]}
    done = [n for n in names if all(os.path.exists(divergences.kept(kept_dir, n, split)) for split in divergences.SPLITS)]
    rows = {split: {} for split in divergences.SPLITS}  # {split: {seed: {method: bleu, "p": p of best vs baseline}}}
    for split, key, significance in (("valid", "valid_bleu", "valid_significance"), ("test", "bleu", "significance")):
        rows[split][1] = {baseline: records[baseline][key], best: records[best][key],
                          "p": records[best][significance]["bleu"]["p_value"]}  # fmt: skip
        references = read_lines(os.path.join(config.references, f"{split}.{config.tgt}"))
        for seed in range(2, args.seeds + 1):
            pair = [f"{m}.seed{seed}" for m in seeded]
            if not set(pair) <= set(done):
                continue
            hypotheses = {n: read_lines(divergences.kept(kept_dir, n, split)) for n in pair}
            tests, _ = paired_bootstrap((pair[0], hypotheses[pair[0]]), {pair[1]: hypotheses[pair[1]]}, references)
            rows[split][seed] = {m: score(hypotheses[n], references)["bleu"] for m, n in zip(seeded, pair)}
            rows[split][seed]["p"] = tests[pair[1]]["bleu"]["p_value"]
    summary = {}
    for split, by_seed in rows.items():
        summary[split] = {}
        for m in seeded:
            values = [row[m] for row in by_seed.values()]
            summary[split][m] = {"seeds": len(values), "mean": round(statistics.mean(values), 2),
                                 "std": round(statistics.stdev(values), 2) if len(values) > 1 else None}  # fmt: skip
    missing = [n for n in names if n not in done]
    command = "python benchmarks/big_students.py " + " ".join(sys.argv[1:])
    write_json(kept_dir + ".json", {"command": command, "methods": seeded, "budget": args.max_update,
                                    "seeds": args.seeds, "complete": not missing, "missing": missing,
                                    "bleu_by_seed": rows, "summary": summary})  # fmt: skip
    lines = [f"`{command}`", "", f"{best} and {baseline}, {args.max_update:,} updates, by seed (seed 1: the seed-1 "
             f"results, {os.path.basename(kept_dir).replace('seeds_', 'students_')}.json); p: sacreBLEU's paired "
             f"bootstrap, {best} against {baseline} of the same seed.", ""]  # fmt: skip
    for split, by_seed in rows.items():
        lines += [f"### {split}", "", f"| seed | {baseline} | {best} | difference | p |", "|---|---|---|---|---|"]
        for seed, row in sorted(by_seed.items()):
            lines.append(f"| {seed} | {row[baseline]:.2f} | {row[best]:.2f} | {row[best] - row[baseline]:+.2f} | {row['p']} |")
        cells = [f"{summary[split][m]['mean']:.2f}" + (f" ± {summary[split][m]['std']:.2f}" if summary[split][m]["std"] else "")
                 for m in seeded]  # fmt: skip
        lines += [f"| mean ± sd ({len(by_seed)} seeds) | {cells[0]} | {cells[1]} | | |", ""]
    lines.append(f"Still to train: {', '.join(missing)} (rerun the command)." if missing else "Every seed is in.")
    write_text(kept_dir + ".md", "\n".join(lines) + "\n")


def publish(pipeline, name, args):
    """The results of the shape NAME's finished pipeline run in RESULTS: the curves, students_NAME.{json,md} and,
    where init_kd and word_kd_nll were trained, claim (c) at this budget."""
    write_curves(args.out, args.results)
    for ext in ("json", "md"):
        shutil.copyfile(os.path.join(pipeline.out, f"results.{ext}"), os.path.join(args.results, f"students_{name}.{ext}"))
    if {"init_kd", "word_kd_nll"} <= set(pipeline.config.methods):
        claim_c(pipeline, args.max_update, args.results)


if __name__ == "__main__":
    main()
