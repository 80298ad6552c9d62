"""The NeMo guide's claims about its methods, answered from a finished full-preset run.

    python benchmarks/guide_claims.py --run runs/demo-full --results benchmarks/results/demo_full_guide/claims

Each claim is answered by comparisons of two students of the run that differ in one thing (a loss term,
the initialisation, the data), both of the run's shape and budget. Each comparison is sacreBLEU's paired
bootstrap (:func:`fairseq_kd.evaluate.paired_bootstrap`, 1,000 resamples) of the two students' own
translations, the ones the run's evaluation scored (``RUN/eval/SPLIT/translations/NAME.txt``), on valid and
on test. What each comparison expects of the first student against the second:

* ``gain``: a significant gain (p < 0.05): "substantially improve", "beat";
* ``no gain``: no significant gain (a loss or no significant difference): "does not substantively improve",
  "not recommended";
* ``similar``: no significant difference in either direction: "similar performance". The bootstrap cannot
  show two systems equal: "no significant difference" at this test set's size is the most it can say.

A claim holds on a split where every comparison it expects something of does. The bootstrap measures the
test set's sampling, not the training's: the seed spread of the run (the baseline and the best student,
3 seeds each) is printed beside the answers for that.

Writes RESULTS.json (every comparison, both splits, the scores, p-values and intervals) and RESULTS.md.
"""

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import List, Optional, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fairseq_kd.evaluate import paired_bootstrap, score  # noqa: E402
from fairseq_kd.io import UserError, read_lines, write_json, write_text  # noqa: E402

GAIN, NO_GAIN, SIMILAR = "gain", "no gain", "similar"


@dataclass(frozen=True)
class Comparison:
    system: str
    reference: str  # what SYSTEM is compared with (the bootstrap's baseline)
    expects: Optional[str]  # GAIN, NO_GAIN, SIMILAR, or None: reported for context only
    what: str


@dataclass(frozen=True)
class Claim:
    key: str
    text: str
    guide: str
    comparisons: Tuple[Comparison, ...]


CLAIMS: List[Claim] = [
    Claim(
        "a", "word-level KD and NLL substantially improve the student",
        '"DistilBERT-style Distillation" (line 167): "while the word-level KD and NLL substantially improved '
        'performance, the cosine embedding loss did not"',
        (
            Comparison("hybrid", "interpolation", GAIN, "the word-level KD term added to interpolation (nothing else differs)"),
            Comparison("word_kd_nll", "word_kd", GAIN, "the NLL term added to word-level KD (nothing else differs)"),
            Comparison("word_kd_nll", "baseline", GAIN, "word-level KD + NLL against the baseline (NLL, label smoothing 0.1)"),
            Comparison("word_kd", "baseline", None, "word-level KD alone (the guide's script, alpha_NLL 0) against the baseline"),
        ),
    ),
    Claim(
        "b", "the cosine loss does not substantively improve the student",
        '"DistilBERT-style Distillation" (line 167)',
        (Comparison("distilbert", "init_kd", NO_GAIN, "the cosine term added to init + NLL + word-level KD (nothing else differs)"),),
    ),
    Claim(
        "c", "DistilBERT initialisation is not recommended for NMT",
        '"DistilBERT-style Distillation" (line 169): "We do not recommend DistilBERT initialization for NMT"',
        (
            Comparison("init_kd", "word_kd_nll", NO_GAIN, "the teacher's layers against random initialisation, both NLL + word-level KD"),
            Comparison("init_seq_kd", "seq_kd", NO_GAIN, "the teacher's layers against random initialisation, both sequence-level KD"),
            Comparison("distilbert", "baseline", None, "the guide's DistilBERT-style student against the baseline"),
        ),
    ),
    Claim(
        "d", "5% of the labels and pseudo-labels 1:2 with hybrid distillation perform like the whole data",
        '"Low Data Regime" (line 541): "we saw similar performance to training on the entire transfer dataset and '
        'teacher-generated dataset"',
        (
            Comparison("low_data", "hybrid", SIMILAR, "the low-data regime against hybrid on all the references"),
            Comparison("low_data", "low_data_baseline", None, "the low-data regime against a baseline on the same 5% alone"),
        ),
    ),
    Claim(
        "e", "beam-search pseudo-labels beat top-k sampling",
        '"Sequence-level Distillation" (line 208): top-k sampling "did not perform as well as the beam search method"',
        (Comparison("seq_kd", "seq_kd_sampled", GAIN, "sequence-level KD on beam-4 labels against top-10-sampled ones"),),
    ),
]  # fmt: skip

# what this project itself says of a method that the guide does not have, answered the same way
PROJECT_CLAIMS: List[Claim] = [
    Claim(
        "top-k cache", "word-level KD from a top-8 cache of the teacher teaches like the live teacher",
        "docs/scale.md, the top-k cache (the guide has none)",
        (Comparison("word_kd_topk", "word_kd_nll", SIMILAR, "the teacher's top 8 tokens per position, cached, against its whole distribution, live"),),
    ),
]  # fmt: skip


def holds(expects, verdict):
    """Whether a comparison's verdict ('gain', 'loss', 'no significant difference') is what it expects."""
    if expects is None:
        return None
    return {GAIN: verdict == "gain", NO_GAIN: verdict != "gain", SIMILAR: verdict == "no significant difference"}[expects]


def compare(comparison: Comparison, translations, references):
    """The paired bootstrap of one comparison on one split: both scores, the difference, the p-values, the
    intervals, the verdict and whether it is what the comparison expects."""
    pair = {n: translations[n] for n in (comparison.system, comparison.reference)}
    significance, _ = paired_bootstrap((comparison.reference, pair[comparison.reference]), pair, references)
    scores = {n: score(hypotheses, references) for n, hypotheses in pair.items()}
    out = {}
    for metric in ("bleu", "chrf"):
        a, b = (scores[n][metric] for n in (comparison.system, comparison.reference))
        s = significance[comparison.system][metric]
        out[metric] = {"system": a, "reference": b, "difference": round(a - b, 2), "p_value": s["p_value"],
                       "ci": s["ci"], "reference_ci": significance[comparison.reference][metric]["ci"],
                       "verdict": s["verdict"]}  # fmt: skip
    out["holds"] = holds(comparison.expects, out["bleu"]["verdict"])
    return out


def answer(claims, translations_of, references_of, splits=("valid", "test")):
    """{claim key: {...}} for every claim; a comparison whose students the run lacks is 'not measured'."""
    answers = {}
    for claim in claims:
        rows = []
        for c in claim.comparisons:
            row = {"system": c.system, "reference": c.reference, "expects": c.expects, "what": c.what}
            for split in splits:
                found = translations_of(split)
                if c.system in found and c.reference in found:
                    row[split] = compare(c, found, references_of(split))
                else:
                    row[split] = None
            rows.append(row)
        summary = {}
        for split in splits:
            checked = [r[split]["holds"] for r in rows if r["expects"] and r[split] is not None]
            missing = any(r["expects"] and r[split] is None for r in rows)
            summary[split] = ("not measured" if missing or not checked else "held" if all(checked)
                              else "did not hold" if not any(checked) else "partly held")  # fmt: skip
        answers[claim.key] = {"claim": claim.text, "guide": claim.guide, "comparisons": rows, "answer": summary}
    return answers


def run_files(run):
    """(translations_of(split) -> {name: hypotheses}, references_of(split), seeds, settings) of a run."""
    from fairseq_kd.pipeline import load_config

    config = load_config(run)
    results = os.path.join(run, "results.json")
    if not os.path.isfile(results):
        raise UserError(f"{run} has no results.json: run the full preset to its end first (make demo PRESET=full)")
    with open(results) as f:
        record = json.load(f)

    def translations_of(split):
        folder = os.path.join(run, "eval", split, "translations")
        names = [n[: -len(".txt")] for n in sorted(os.listdir(folder)) if n.endswith(".txt")]
        return {n: read_lines(os.path.join(folder, n + ".txt")) for n in names}

    def references_of(split):
        return read_lines(os.path.join(config.references, f"{split}.{config.tgt}"))

    return translations_of, references_of, record.get("seeds", {}), record["settings"]


def markdown(answers, seeds, command):
    def cell(r):
        if r is None:
            return "not measured", "", ""
        b = r["bleu"]
        text = f"{b['system']:.2f} vs {b['reference']:.2f} ({b['difference']:+.2f}), p = {b['p_value']:.3f}: {b['verdict']}"
        c = r["chrf"]
        return text, f"{c['difference']:+.2f}, p = {c['p_value']:.3f}", {True: "yes", False: "no", None: ""}[r["holds"]]

    lines = [f"# The guide's claims, answered\n\n`{command}`\n",
             "BLEU of the first system against the second (sacreBLEU's paired bootstrap, 1,000 resamples); "
             "a difference is a gain or a loss only when p < 0.05. Every student: one seed, the run's shape and budget.\n"]  # fmt: skip
    for key, a in answers.items():
        source = "The guide" if key in {c.key for c in CLAIMS} else "Not the guide's: this project"
        lines.append(f"## ({key}) {a['claim']}\n\n{source}: {a['guide']}. **Test: {a['answer']['test']}; valid: "
                     f"{a['answer']['valid']}.**\n")  # fmt: skip
        lines.append("| comparison | expects | test BLEU | test chrF | holds | valid BLEU | holds |")
        lines.append("|---|---|---|---|---|---|---|")
        for r in a["comparisons"]:
            test, test_chrf, test_holds = cell(r["test"])
            valid, _, valid_holds = cell(r["valid"])
            lines.append(f"| {r['system']} vs {r['reference']}: {r['what']} | {r['expects'] or '(context)'} | {test} | "
                         f"{test_chrf} | {test_holds} | {valid} | {valid_holds} |")  # fmt: skip
        lines.append("")
    if seeds:
        lines.append(
            "## Seed spread\n\nThe bootstrap above measures the test set's sampling; a new seed moves a student too:\n"
        )
        lines.append("| method | seeds | test BLEU mean ± std | chrF mean ± std |\n|---|---|---|---|")
        for method, s in seeds.items():
            if "bleu_mean" in s:
                lines.append(f"| {method} | {s['seeds']} | {s['bleu_mean']:.2f} ± {s['bleu_std']:.2f} | "
                             f"{s['chrf_mean']:.2f} ± {s['chrf_std']:.2f} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished full-preset run directory (its results.json)")
    parser.add_argument("--results", required=True, help="writes RESULTS.json and RESULTS.md")
    args = parser.parse_args(argv)
    translations_of, references_of, seeds, settings = run_files(args.run)
    answers = answer(CLAIMS + PROJECT_CLAIMS, translations_of, references_of)
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    command = "python benchmarks/guide_claims.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_json(args.results + ".json", {"command": command, "run_settings": settings, "claims": answers, "seeds": seeds})
    write_text(args.results + ".md", markdown(answers, seeds, command))
    print(markdown(answers, seeds, command))


if __name__ == "__main__":
    main()
