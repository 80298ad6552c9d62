"""Fast students: half-width students (random and pruned from the teacher) and every system timed in one runtime.

    python benchmarks/fast_students.py --run runs/guide-full --out runs/fast-students \
        --results benchmarks/results/fast_students

On a finished full-preset run (its teacher, data-bin, pseudo-labels and students):

1. **Narrow students**, through the pipeline (``python -m fairseq_kd.pipeline``), into OUT/narrow: shape
   ``--narrow`` (default 2+1 layers, width 64, FFN 256, 2 heads of the teacher's head width 32), the run's
   training budget, methods baseline (NLL on the references), seq_kd (random initialisation),
   init_seq_kd (initialised from the teacher's sub-network by activation importance, then sequence-level
   KD) and init_kd (the same initialisation, then NLL + word-level KD: the recommended recipe). The run's
   pseudo-labels are reused, not made again.
2. **Every system in every runtime**: the teacher and the students (the run's baseline, seq_kd, init_seq_kd,
   word_kd_nll, hybrid and its best by valid BLEU, and the narrow ones) in
   fairseq-generate (fp32), and converted to CTranslate2 float32 and int8 (the students' int8 also with a
   vocabulary map learned from the training split), evaluated on test with ``fairseq-kd-evaluate``'s
   settings (beam 4, batches of 64, length bound 1.5 x source + 10; CTranslate2 with one thread, see
   ``ct2_threads.py``) and ``--timing-rounds`` rounds by turns; valid is translated too, for choices.
3. **Targets**: which students reach 3x the teacher's speed in the same runtime, and 10x the teacher's
   fairseq-generate speed in CTranslate2 int8, each keeping at least 95% of the teacher's test BLEU; the
   paired bootstrap of pruned against random initialisation (same shape, same budget), and of init_kd
   against init_seq_kd at the narrow shape, on valid and test.

Writes RESULTS.json and RESULTS.md (and RESULTS.png, BLEU against speed). Every stage resumes.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fairseq_kd.evaluate import Settings, evaluate, paired_bootstrap  # noqa: E402
from fairseq_kd.io import read_lines, write_json, write_text  # noqa: E402
from fairseq_kd.pipeline import load_config  # noqa: E402

BIN = os.path.dirname(sys.executable)
SPEED_TARGET_SAME_RUNTIME = 3.0
SPEED_TARGET_CT2_INT8 = 10.0
BLEU_KEPT = 0.95
# the paired comparisons at the narrow shape: (key in RESULTS.json, reference, system, what they test)
COMPARISONS = [
    ("pruned_vs_random", "narrow_seq_kd", "narrow_init_seq_kd",
     "Pruned (init_seq_kd) against random (seq_kd) initialisation, both sequence-level KD"),
    ("init_kd_vs_init_seq_kd", "narrow_init_seq_kd", "narrow_init_kd",
     "NLL + word-level KD (init_kd) against sequence-level KD (init_seq_kd), both pruned"),
]  # fmt: skip


def run(cmd):
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def narrow_students(args):
    narrow = os.path.join(args.out, "narrow")
    os.makedirs(narrow, exist_ok=True)
    link = os.path.join(narrow, "pseudolabels")
    if not os.path.exists(link):
        os.symlink(os.path.abspath(os.path.join(args.run, "pseudolabels")), link)
    config = load_config(args.run)
    training = config.training
    cmd = [sys.executable, "-m", "fairseq_kd.pipeline", "--teacher", config.teacher, "--data-bin", config.data_bin,
           "--references", config.references, "-s", config.src, "-t", config.tgt,
           "--student", args.narrow, "--methods", "baseline,seq_kd,init_seq_kd,init_kd",
           "--max-update", str(training.max_update), "--warmup-updates", str(training.warmup_updates),
           "--lr", str(training.lr), "--max-tokens", str(training.max_tokens),
           "--dropout", str(training.dropout), "--pseudolabel-engine", config.pseudolabel_engine,
           "--pseudolabel-beam", str(config.pseudolabel_beam),
           "--out", narrow]  # fmt: skip
    if config.spm_model:
        cmd += ["--spm-model", config.spm_model]
    run(cmd)
    return config


def systems(args, config):
    """{name: path}: every model in fairseq and in CTranslate2 (converted here once)."""
    models = os.path.join(args.out, "models")
    os.makedirs(models, exist_ok=True)
    fairseq = {"teacher": config.teacher}
    names = ["baseline", "seq_kd", "init_seq_kd", "word_kd_nll", "hybrid"]
    best = os.path.join(args.run, "models", "ctranslate2_int8.json")  # the run's best student by valid BLEU
    if os.path.isfile(best):
        with open(best) as f:
            names += [n for n in [json.load(f)["student"]] if n not in names]
    for prefix, directory in (("", os.path.join(args.run, "models")), ("narrow_", os.path.join(args.out, "narrow", "models"))):
        for name in names:
            path = os.path.join(directory, name + ".pt")
            if os.path.exists(path):
                fairseq[prefix + name] = path
    found = dict(fairseq)
    for name, path in fairseq.items():
        exported = os.path.join(models, name + ".pt")
        for weights in ("float32", "int8"):
            target = os.path.join(models, f"{name}.ct2_{weights}")
            flags = ["--vocab-map-split", "train"] if weights == "int8" and name != "teacher" else []
            if not os.path.isdir(target):
                run([os.path.join(BIN, "fairseq-kd-export"), path, exported, "--overwrite", "--ctranslate2", target + ".tmp",
                     "--data", config.data_bin, "--quantization", weights] + flags)  # fmt: skip
                shutil.rmtree(target, ignore_errors=True)
                os.replace(target + ".tmp", target)
            found[f"{name}.ct2_{weights}"] = target
            if flags:
                found[f"{name}.ct2_{weights}_vmap"] = target
    return found


def runtime_of(name):
    """ "fairseq", "ctranslate2 float32", "ctranslate2 int8" or "ctranslate2 int8+vmap", from the system's name."""
    if ".ct2_" not in name:
        return "fairseq"
    weights = name.split(".ct2_")[1]
    return "ctranslate2 " + (weights.replace("_vmap", "+vmap"))


def summarise(records):
    """One row per system and runtime: BLEU kept, speed against the teacher, the targets met, and whether no
    other system is both better and faster (the Pareto front of BLEU against speed)."""
    by_name = {r["name"]: r for r in records}
    teacher = by_name["teacher"]
    rows = []
    for r in records:
        base, runtime = r["name"].split(".ct2_")[0], runtime_of(r["name"])
        same = by_name.get("teacher" if runtime == "fairseq" else "teacher.ct2_" + runtime.split()[1].replace("+vmap", ""))
        row = {
            "system": base, "runtime": runtime, "bleu": r["bleu"], "chrf": r["chrf"],
            "bleu_kept": round(r["bleu"] / teacher["bleu"], 3), "sentences_per_s": r["sentences_per_s"],
            "x_teacher_same_runtime": round(r["sentences_per_s"] / same["sentences_per_s"], 2) if same else None,
            "x_teacher_fairseq": round(r["sentences_per_s"] / teacher["sentences_per_s"], 2),
            "params": r["params"], "mb": r["size_mb"],
        }  # fmt: skip
        kept = row["bleu_kept"] >= BLEU_KEPT
        row["meets_3x_same_runtime"] = (
            base != "teacher" and kept and (row["x_teacher_same_runtime"] or 0) >= SPEED_TARGET_SAME_RUNTIME
        )
        row["meets_10x_ct2_int8"] = (
            base != "teacher"
            and kept
            and runtime.startswith("ctranslate2 int8")
            and row["x_teacher_fairseq"] >= SPEED_TARGET_CT2_INT8
        )
        rows.append(row)
    for row in rows:
        row["pareto"] = not any(o["bleu"] > row["bleu"] and o["sentences_per_s"] > row["sentences_per_s"] for o in rows)
    return rows


def write_results(args, rows, significance, config, settings):
    write_json(args.results + ".json", {
        "command": " ".join(sys.argv), "run": os.path.abspath(args.run), "narrow_shape": args.narrow,
        "timing_rounds": args.timing_rounds, "settings": settings.__dict__, "test": rows,
        **significance,
        "targets": {"same_runtime": SPEED_TARGET_SAME_RUNTIME, "ct2_int8_vs_teacher_fairseq": SPEED_TARGET_CT2_INT8,
                    "bleu_kept": BLEU_KEPT},
    })  # fmt: skip
    lines = [
        f"Test BLEU and decoding speed of every system of `{args.run}` and the narrow students ({args.narrow}: "
        f"encoder layers, decoder layers, width, FFN, heads), each in fairseq-generate (fp32) and CTranslate2 "
        f"(float32, int8, int8 with the vocabulary map), beam {settings.beam}, batches of {settings.batch_size}, "
        f"CTranslate2 with {settings.threads} thread(s); speed: median of {args.timing_rounds} runs by turns "
        f"(translation loop only). Command: `{' '.join(sys.argv)}`.",
        "",
        "| system | runtime | BLEU | % teacher BLEU | sentences/s | x teacher, same runtime | x teacher in fairseq | params | 3x same runtime, >= 95% | 10x in int8, >= 95% | Pareto |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['system']} | {r['runtime']} | {r['bleu']:.2f} | {100 * r['bleu_kept']:.1f} | {r['sentences_per_s']:.0f} | "
            f"{r['x_teacher_same_runtime'] if r['x_teacher_same_runtime'] is not None else ''} | {r['x_teacher_fairseq']} | "
            f"{r['params'] or ''} | {'yes' if r['meets_3x_same_runtime'] else ''} | {'yes' if r['meets_10x_ct2_int8'] else ''} | {'yes' if r['pareto'] else ''} |"
        )
    for key, reference, system, what in COMPARISONS:
        lines += ["", f"{what}, at the narrow shape, paired bootstrap:", ""]
        lines += [f"| split | metric | {reference} | {system} | p | verdict |", "|---|---|---|---|---|---|"]
        for split, result in significance[key].items():
            for metric in ("bleu", "chrf"):
                a, b = result[reference][metric], result[system][metric]
                lines.append(
                    f"| {split} | {metric} | {a['mean']} ± {a['ci']} | {b['mean']} ± {b['ci']} | {b['p_value']} | {b['verdict']} |"
                )
    write_text(args.results + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished full-preset run directory")
    parser.add_argument("--out", required=True, help="work directory (resumable)")
    parser.add_argument("--results", required=True, help="writes RESULTS.json, RESULTS.md and RESULTS.png")
    parser.add_argument("--narrow", default="2,1,64,256,2", help="the narrow students' shape (as the pipeline's --student)")
    parser.add_argument("--timing-rounds", type=int, default=5)
    args = parser.parse_args()

    config = narrow_students(args)
    found = systems(args, config)
    vmap = [n for n in found if n.endswith("_vmap")]
    settings = Settings(beam=4, batch_size=64, max_len_a=1.5, max_len_b=10)
    references = config.references
    significance = {key: {} for key, *_ in COMPARISONS}
    for split, rounds in (("valid", 0), ("test", args.timing_rounds)):
        records = evaluate(found, config.data_bin, os.path.join(references, f"{split}.{config.tgt}"), split=split,
                           out_dir=os.path.join(args.out, "eval", split), baseline="teacher", timing_rounds=rounds,
                           settings=settings, source_lang=config.src, target_lang=config.tgt, vmap=vmap)  # fmt: skip
        refs = read_lines(os.path.join(references, f"{split}.{config.tgt}"))
        for key, reference, system, _ in COMPARISONS:
            pair = {
                n: read_lines(os.path.join(args.out, "eval", split, "translations", n + ".txt")) for n in (reference, system)
            }
            significance[key][split], _ = paired_bootstrap((reference, pair[reference]), pair, refs)
    rows = summarise([r.as_dict() for r in records])
    write_results(args, rows, significance, config, settings)
    shutil.copyfile(os.path.join(args.out, "eval", "test", "bleu_vs_speed.png"), args.results + ".png")


if __name__ == "__main__":
    main()
