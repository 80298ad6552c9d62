"""The big preset's teacher, measured: its valid curve, and its test BLEU against the full preset's 4+2 teacher
trained on the same data, with both timed in fairseq and CTranslate2.

    python benchmarks/big_teacher.py --run runs/demo-big --out runs/big-teacher \
        --results benchmarks/results/big_teacher [--timing-rounds 5]

On a run of ``python -m fairseq_kd.demo --preset big`` whose teacher stage is done (``--teacher-only``):

1. **valid curve**: every validation of the teacher (valid NLL in bits, per update) from OUT/logs/teacher.log,
   as RESULTS/teacher_valid.tsv and RESULTS/teacher_valid.png.
2. **small teacher**: the full preset's teacher recipe (4+2 pre-norm layers, 128 wide, 2,000 updates;
   ``fairseq_kd.demo.presets``) trained on the big run's own data-bin into OUT/small_teacher (it resumes).
3. **conversions**: both teachers exported and converted to CTranslate2 float32 and int8.
4. **evaluation**: valid and test, every system with the evaluation's settings (beam 4, batches of 64, length
   1.5 x source + 10, CTranslate2 on one thread), ``--timing-rounds`` more runs by turns for the speeds,
   sacreBLEU's paired bootstrap against the small teacher in fairseq.

With ``--pack DIR``, the teacher's best checkpoint is also written to DIR as a plain fairseq checkpoint with
its weights in float16 (``fairseq-kd-export``, then halved: 24 MB instead of 145 MB with the optimizer's
state), beside its dictionaries and sentencepiece model: what a later run on another machine needs to use
this teacher (``--teacher-path DIR/teacher.pt``; fairseq casts the weights back to float32 on loading).

Writes RESULTS/summary.json (the teacher; the students of the later stages are added to the same file by
the same function), RESULTS/teachers_{valid,test}.{json,md} and the curve. Every stage resumes.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fairseq_kd.demo.presets import PRESETS  # noqa: E402
from fairseq_kd.evaluate import Settings, evaluate, pyplot  # noqa: E402
from fairseq_kd.io import sha256_file, write_json, write_text  # noqa: E402
from fairseq_kd.pipeline import load_config  # noqa: E402
from fairseq_kd.runs import checkpoint_updates, validations  # noqa: E402

BIN = os.path.dirname(sys.executable)


def run(cmd):
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True)


def valid_curve(log_path):
    """[(update, valid NLL in bits)] of every validation in a fairseq-train log, in order."""
    return [(int(v["num_updates"]), v["nll_loss"]) for v in validations(log_path)]


def write_curve(curve, results, patience):
    plt = pyplot()
    best = min(curve, key=lambda point: point[1])
    lines = ["update\tvalid_nll_bits"] + [f"{u}\t{nll}" for u, nll in curve]
    write_text(os.path.join(results, "teacher_valid.tsv"), "\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([u for u, _ in curve], [n for _, n in curve], marker=".")
    ax.axvline(best[0], color="grey", linestyle=":")
    ax.set_xlabel("update")
    ax.set_ylabel("valid NLL (bits per token)")
    ax.set_title(f"big teacher: best {best[1]} at update {best[0]}")
    ax.set_ylim(top=min(max(n for _, n in curve), best[1] + 3))
    fig.tight_layout()
    fig.savefig(os.path.join(results, "teacher_valid.png"), dpi=120)
    plt.close(fig)
    after = [u for u, _ in curve if u > best[0]]
    return {"best_update": best[0], "best_valid_nll": best[1], "validations": len(curve),
            "validations_after_best": len(after), "stopped_early": len(after) >= patience}  # fmt: skip


def train_small_teacher(config, out):
    """The full preset's teacher on this run's data-bin, into OUT/small_teacher."""
    preset = PRESETS["full"]
    save_dir = os.path.join(out, "small_teacher")
    training = preset["teacher_training"]
    done = checkpoint_updates(os.path.join(save_dir, "checkpoint_last.pt"))
    if done is not None and done >= training.max_update:
        return os.path.join(save_dir, "checkpoint_best.pt")
    flags = [config.data_bin, "--source-lang", config.src, "--target-lang", config.tgt]
    flags += preset["teacher"].flags(layout=preset["teacher_layout"])
    flags += ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", preset["teacher_label_smoothing"]]
    flags += training.flags() + ["--save-dir", save_dir]
    os.makedirs(save_dir, exist_ok=True)
    with open(os.path.join(out, "small_teacher.log"), "a") as log:
        log.write("$ fairseq-train " + " ".join(str(f) for f in flags) + "\n")
        log.flush()
        subprocess.run([os.path.join(BIN, "fairseq-train")] + [str(f) for f in flags], stdout=log, stderr=subprocess.STDOUT,
                       check=True)  # fmt: skip
    return os.path.join(save_dir, "checkpoint_best.pt")


def ctranslate2(name, checkpoint, config, out, weights, vmap=False):
    """NAME's CTranslate2 model at WEIGHTS (float32 or int8; with VMAP, with the vocabulary map learned from the
    training split), converted once per content of CHECKPOINT (a teacher still in training is converted again
    once its best checkpoint changed)."""
    target = os.path.join(out, "models", f"{name}.ct2_{weights}" + ("_vmap" if vmap else ""))
    digest = sha256_file(checkpoint)
    stamp = os.path.join(target, "source_sha256.txt")
    if not (os.path.isfile(stamp) and open(stamp).read().strip() == digest):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        run([os.path.join(BIN, "fairseq-kd-export"), checkpoint, os.path.join(out, "models", name + ".pt"), "--overwrite",
             "--ctranslate2", target + ".tmp", "--data", config.data_bin, "--quantization", weights]
            + (["--vocab-map-split", "train"] if vmap else []))  # fmt: skip
        write_text(os.path.join(target + ".tmp", "source_sha256.txt"), digest + "\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(target + ".tmp", target)
    return target


def pack(checkpoint, config, run_dir, out_dir):
    """The teacher's weights as a float16 plain fairseq checkpoint in OUT_DIR, with its dictionaries and
    sentencepiece model; returns the checkpoint's path."""
    import torch

    os.makedirs(out_dir, exist_ok=True)
    exported = os.path.join(out_dir, "teacher.pt")
    run([os.path.join(BIN, "fairseq-kd-export"), checkpoint, exported + ".fp32", "--overwrite"])
    state = torch.load(exported + ".fp32", map_location="cpu", weights_only=True)
    state["model"] = {k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, exported + ".tmp")
    os.replace(exported + ".tmp", exported)
    os.remove(exported + ".fp32")
    for name in (f"dict.{config.src}.txt", f"dict.{config.tgt}.txt"):
        shutil.copyfile(os.path.join(config.data_bin, name), os.path.join(out_dir, name))
    shutil.copyfile(os.path.join(run_dir, "spm.model"), os.path.join(out_dir, "spm.model"))
    return exported


def summary(teacher_shape, teacher_record, small_record, int8_record, curve_summary, students=()):
    """The summary.json of the issue's form: the teacher, and one entry per student and runtime."""
    return {
        "teacher": {
            "encoder_layers": teacher_shape.encoder_layers,
            "decoder_layers": teacher_shape.decoder_layers,
            "embed_dim": teacher_shape.embed_dim,
            "ffn_dim": teacher_shape.ffn_dim,
            "params": teacher_record.params,
            "test_bleu": teacher_record.bleu,
            "test_chrf": teacher_record.chrf,
            "small_teacher_test_bleu": small_record.bleu,
            "small_teacher_params": small_record.params,
            "p_vs_small_teacher": teacher_record.significance["bleu"]["p_value"],
            "verdict_vs_small_teacher": teacher_record.significance["bleu"]["verdict"],
            "sentences_per_s": {"fairseq": teacher_record.sentences_per_s, "ctranslate2_int8": int8_record.sentences_per_s},
            "ctranslate2_int8_test_bleu": int8_record.bleu,
            **curve_summary,
        },
        "students": list(students),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a big-preset demo run whose teacher is trained")
    parser.add_argument("--out", required=True, help="work directory (resumable)")
    parser.add_argument("--results", required=True, help="directory for summary.json and the tables")
    parser.add_argument("--timing-rounds", type=int, default=5)
    parser.add_argument("--pack", metavar="DIR", help="also write the teacher in float16 with its vocabulary to DIR")
    parser.add_argument(
        "--unfinished", action="store_true", help="measure a teacher still in training (its best checkpoint so far)"
    )
    args = parser.parse_args()
    with open(os.path.join(args.run, "demo.json")) as f:
        demo = json.load(f)
    if demo["preset"] != "big":
        raise SystemExit(f"{args.run} is a run of preset {demo['preset']!r}, not big")
    config = load_config(args.run)
    finished = os.path.isfile(os.path.join(args.run, "stages", "teacher.done"))
    if not finished and not args.unfinished:
        raise SystemExit(f"{args.run}: the teacher stage is not done (python -m fairseq_kd.demo --preset big --teacher-only)")
    os.makedirs(args.results, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)

    preset = PRESETS["big"]
    curve = valid_curve(os.path.join(args.run, "logs", "teacher.log"))
    curve_summary = dict(write_curve(curve, args.results, preset["teacher_training"].patience), finished=finished)
    if args.pack:
        print(f"packed: {pack(config.teacher, config, args.run, args.pack)}")
    small = train_small_teacher(config, args.out)
    systems = {"small_teacher": small, "teacher": config.teacher}
    for name, path in list(systems.items()):
        for weights in ("float32", "int8"):
            systems[f"{name}.ct2_{weights}"] = ctranslate2(name, path, config, args.out, weights)
    settings = Settings()
    records = {}
    for split in ("valid", "test"):
        records[split] = evaluate(
            systems, config.data_bin, os.path.join(config.references, f"{split}.{config.tgt}"), split=split,
            out_dir=os.path.join(args.out, "eval", split), baseline="small_teacher",
            timing_rounds=args.timing_rounds if split == "test" else 0, settings=settings, source_lang=config.src,
            target_lang=config.tgt, quiet=True,
        )  # fmt: skip
        write_json(os.path.join(args.results, f"teachers_{split}.json"), [r.as_dict() for r in records[split]])
        shutil.copyfile(
            os.path.join(args.out, "eval", split, "results.md"), os.path.join(args.results, f"teachers_{split}.md")
        )
    test = {r.name: r for r in records["test"]}
    result = summary(preset["teacher"], test["teacher"], test["small_teacher"], test["teacher.ct2_int8"], curve_summary)
    result["command"] = "python benchmarks/big_teacher.py " + " ".join(sys.argv[1:])
    result["timing_rounds"] = args.timing_rounds
    write_json(os.path.join(args.results, "summary.json"), result)
    print(json.dumps(result["teacher"], indent=2))


if __name__ == "__main__":
    main()
