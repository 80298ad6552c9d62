"""The divergences and on-policy distillation, measured: every ``--kd-divergence`` and the on-policy variant
against forward-KL init_kd and word_kd, at one student shape and budget, on the big teacher.

    python benchmarks/divergences.py --run runs/demo-big --out runs/divergences \
        --results benchmarks/results/divergences [--seeds 2] [--max-update 800]

One pipeline run (``fairseq_kd.pipeline.Pipeline``) into OUT/pipeline with the methods of METHODS, all of one
shape (SHAPE: 6 encoder layers and 1 decoder layer, half the teacher's width, initialised from the teacher's
sub-network where the method says so) and one budget, every method trained with ``--seeds`` seeds
(``Config.seeded``) once with seed 1, then with seeds 2..``--seeds`` for init_kd, word_kd and every method
within CLOSE (1 BLEU) of init_kd on valid or better (one seed settles that a method a BLEU or more behind is
not better); every seed's student scored on valid and test against init_kd (forward KL, the default) and
against word_kd of its seed by sacreBLEU's paired bootstrap (the translations of the pipeline's evaluation
are reused). A method is recommended over forward KL only when it beats init_kd with p < 0.05 on valid for
every seed it was trained with (the test split reports, it does not choose).

Each student's valid and test translations are kept in RESULTS/translations/SPLIT/NAME.txt (and its
fairseq-train log in RESULTS/logs/NAME.log) as soon as it is trained: a student whose translations are there is
not trained again, so that a run interrupted on one machine goes on from the committed files on another
(RESULTS/settings.json records what they were made with; other settings are refused). RESULTS/results.json
(every comparison so far, with the command) and RESULTS/results.md are written after every student; "complete"
says whether every student is in them. Every stage resumes.
"""

import argparse
import dataclasses
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fairseq_kd.evaluate import SIGNIFICANCE, evaluate, paired_bootstrap, score  # noqa: E402
from fairseq_kd.io import read_lines, run_lock, write_json, write_text  # noqa: E402
from fairseq_kd.pipeline import Pipeline, Shape, Training, load_config  # noqa: E402
from fairseq_kd.pipeline.config import check_inputs  # noqa: E402
from fairseq_kd.runs import digest, log  # noqa: E402

# in the order they train: the references first, then on-policy (the costliest and least tried), then the divergences
METHODS = ["baseline", "word_kd", "init_kd", "init_kd_on_policy", "init_kd_rkl", "init_kd_jsd", "init_kd_tvd",
           "init_kd_skl"]  # fmt: skip
REFERENCES = ("init_kd", "word_kd")  # forward KL with the teacher's layers, and from random initialisation
SHAPE = Shape(6, 1, 128, 512, 2)
# BLEU on valid below init_kd from which one seed settles that a method is not better
CLOSE = 1.0


def student_names(methods, seeds, seeded=None):
    """The students of METHODS with seed 1, and those of SEEDED (default: all) with seeds 2..SEEDS."""
    seeded = methods if seeded is None else seeded
    return list(methods) + [f"{m}.seed{s}" for s in range(2, seeds + 1) for m in methods if m in seeded]


def seeds_of(results, method):
    """METHOD's students in RESULTS, seed 1 first."""
    split = next(iter(results.values()))
    return [n for n in split if n == method or n.startswith(method + ".seed")]


def needs_seeds(results):
    """The methods to train with more seeds after seed 1: the references, and every method within CLOSE BLEU of
    init_kd on valid, or better (a method CLOSE or more below it is not recommended on one seed)."""
    valid = results["valid"]
    close = [n for n, r in valid.items() if "init_kd" in r["vs"] and r["vs"]["init_kd"]["difference"] > -CLOSE]
    return [n for n in valid if n in REFERENCES or n in close]


def comparisons(translations, references, names, seeds):
    """{split: {student: {"bleu", "vs": {reference: {difference, p_value, verdict}}}}} from the translations
    ({split: {name: hypotheses}}) and the references ({split: lines}); a student is compared with the
    reference method of its own seed."""
    out = {}
    for split, hypotheses in translations.items():
        out[split] = {}
        for name in names:
            out[split][name] = {"bleu": score(hypotheses[name], references[split])["bleu"], "vs": {}}
        for reference in REFERENCES:
            for seed in range(1, seeds + 1):
                base = reference if seed == 1 else f"{reference}.seed{seed}"
                same_seed = [n for n in names if (n.partition(".seed")[2] or "1") == str(seed) and n != base]
                if base not in hypotheses or not same_seed:
                    continue
                tests, _ = paired_bootstrap((base, hypotheses[base]), {n: hypotheses[n] for n in same_seed},
                                            references[split])  # fmt: skip
                for name in same_seed:
                    bleu = tests[name]["bleu"]
                    out[split][name]["vs"][reference] = {
                        "difference": round(out[split][name]["bleu"] - out[split][base]["bleu"], 2),
                        "p_value": bleu["p_value"], "verdict": bleu["verdict"],
                    }  # fmt: skip
    return out


def recommendation(results, methods):
    """The methods that beat init_kd on valid with p < SIGNIFICANCE for every seed they were trained with (empty:
    forward KL stays)."""
    better = []
    for method in methods:
        if method in ("baseline",) + REFERENCES:
            continue
        tests = [results["valid"][n]["vs"]["init_kd"] for n in seeds_of(results, method)]
        if all(t["difference"] > 0 and t["p_value"] < SIGNIFICANCE for t in tests):
            better.append(method)
    return better


def table(results, methods, seeds, split):
    head = ["method"] + [f"seed {s}" for s in range(1, seeds + 1)] + ["vs init_kd (per seed)", "vs word_kd (per seed)"]
    lines = [f"### {split}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in methods:
        names = seeds_of(results, method)
        cells = [method] + [f"{results[split][n]['bleu']:.2f}" for n in names] + [""] * (seeds - len(names))
        for reference in REFERENCES:
            parts = []
            for n in names:
                t = results[split][n]["vs"].get(reference)
                parts.append("" if t is None else f"{t['difference']:+.2f} (p {t['p_value']:.3f})")
            cells.append("; ".join(p for p in parts if p))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


SPLITS = ("valid", "test")


def kept(results_dir, name, split):
    return os.path.join(results_dir, "translations", split, f"{name}.txt")


def check_settings(results_dir, settings):
    """The translations kept in RESULTS_DIR were made with SETTINGS: others are refused before any work."""
    path = os.path.join(results_dir, "settings.json")
    if os.path.exists(path):
        with open(path) as f:
            then = json.load(f)
        if then != settings:
            changed = ", ".join(k for k in settings if then.get(k) != settings[k])
            sys.exit(f"error: {results_dir} holds students made with other settings ({changed}): give another --results "
                     f"or the same settings")  # fmt: skip
    else:
        write_json(path, settings)


def train_and_translate(pipeline, name, results_dir):
    """Student NAME (METHOD or METHOD.seedN) trained and its valid and test translations kept in RESULTS_DIR,
    unless they are there; whether it was trained."""
    if all(os.path.exists(kept(results_dir, name, split)) for split in SPLITS):
        log(f"student {name}: its translations are in {results_dir}")
        return False
    method, _, seed = name.partition(".seed")
    pipeline.student_stage(method, int(seed or 1))
    c = pipeline.config
    for split in SPLITS:
        evaluate({name: pipeline.path("models", f"{name}.pt")}, c.data_bin, os.path.join(c.references, f"{split}.{c.tgt}"),
                 split=split, out_dir=pipeline.path("eval", split), settings=c.evaluation, source_lang=c.src,
                 target_lang=c.tgt, quiet=True)  # fmt: skip
        os.makedirs(os.path.dirname(kept(results_dir, name, split)), exist_ok=True)
        shutil.copyfile(pipeline.path("eval", split, "translations", f"{name}.txt"), kept(results_dir, name, split) + ".tmp")
        os.replace(kept(results_dir, name, split) + ".tmp", kept(results_dir, name, split))
    # its fairseq-train log: the training's losses and times, with the translations
    os.makedirs(os.path.join(results_dir, "logs"), exist_ok=True)
    shutil.copyfile(pipeline.path("logs", f"{name}.log"), os.path.join(results_dir, "logs", f"{name}.log"))
    return True


def read_translations(config, results_dir, names):
    """({split: {name: hypotheses}}, {split: references}, the NAMES translated so far) from RESULTS_DIR."""
    done = [n for n in names if all(os.path.exists(kept(results_dir, n, split)) for split in SPLITS)]
    translations, references = {}, {}
    for split in SPLITS:
        translations[split] = {n: read_lines(kept(results_dir, n, split)) for n in done}
        references[split] = read_lines(os.path.join(config.references, f"{split}.{config.tgt}"))
    return translations, references, done


def publish(args, config, names, seeds, seeded, complete):
    """RESULTS/results.{json,md} from the translations kept so far."""
    translations, references, done = read_translations(config, args.results, names)
    if not done:
        return
    results = comparisons(translations, references, done, seeds)
    methods = [m for m in METHODS if m in done]
    better = recommendation(results, methods) if complete else []
    command = "python benchmarks/divergences.py " + " ".join(sys.argv[1:])
    write_json(os.path.join(args.results, "results.json"), {
        "command": command, "shape": dataclasses.asdict(SHAPE), "max_update": args.max_update, "seeds": seeds,
        "methods": METHODS, "seeded": seeded, "complete": complete, "missing": [n for n in names if n not in done],
        "results": results, "better_than_forward_kl": better,
    })  # fmt: skip
    if not complete:
        verdict = f"Incomplete: {', '.join(n for n in names if n not in done)} still to train (rerun the command)."
    elif better:
        verdict = f"Better than forward KL (init_kd) on valid for every seed: {', '.join(better)}."
    else:
        verdict = "No method beat forward KL (init_kd) on valid for every seed: forward KL stays the default."
    write_text(os.path.join(args.results, "results.md"),
               f"`{command}`\n\nBLEU per seed; differences with sacreBLEU's paired bootstrap p (same seed).\n\n"
               + table(results, methods, seeds, "valid") + "\n" + table(results, methods, seeds, "test")
               + f"\n{verdict}\n")  # fmt: skip
    return results, better


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a big-preset demo run whose teacher is trained")
    parser.add_argument("--out", required=True, help="work directory (resumable)")
    parser.add_argument("--results", required=True)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--max-update", type=int, default=800)
    args = parser.parse_args()
    run_config = load_config(args.run)
    training = Training(max_update=args.max_update, warmup_updates=200, lr=0.002, max_tokens=4096)
    config = dataclasses.replace(
        run_config, student=SHAPE, methods=list(METHODS), seeds=args.seeds, seeded=list(METHODS), timing_rounds=0,
        training=training, evaluation=dataclasses.replace(run_config.evaluation),
    )  # fmt: skip
    check_inputs(config)
    pipeline = Pipeline(os.path.join(args.out, "pipeline"), config)
    pipeline.check_students_fit()
    os.makedirs(args.results, exist_ok=True)
    check_settings(args.results, {
        "shape": dataclasses.asdict(SHAPE), "training": dataclasses.asdict(training), "teacher": digest(config.teacher),
        "evaluation": dataclasses.asdict(config.evaluation),
    })  # fmt: skip
    with run_lock(pipeline.out, "pipeline"):
        pipeline.check_run_dir()
        pipeline.data_stages()
        # seed 1 of every method; then more seeds for the references and the methods that come close to init_kd
        first = student_names(METHODS, 1)
        for name in first:
            if train_and_translate(pipeline, name, args.results):
                publish(args, config, first, 1, None, complete=False)
        results, _ = publish(args, config, first, 1, None, complete=args.seeds == 1)
        seeded = needs_seeds(results)
        names = student_names(METHODS, args.seeds, seeded)
        publish(args, config, names, args.seeds, seeded, complete=False)  # names the seeds still to train
        for name in names:
            if train_and_translate(pipeline, name, args.results):
                publish(args, config, names, args.seeds, seeded, complete=False)
        _, better = publish(args, config, names, args.seeds, seeded, complete=True)
    print(json.dumps({"better_than_forward_kl": better}))


if __name__ == "__main__":
    main()
