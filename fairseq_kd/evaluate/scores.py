"""Scores: sacreBLEU's BLEU and chrF with their signatures, and sacreBLEU's paired bootstrap resampling."""

import logging
from typing import Any, Dict, List, Tuple

import sacrebleu
from sacrebleu.significance import PairedTest

SIGNIFICANCE = 0.05


def score(hypotheses: List[str], references: List[str]) -> Dict[str, Any]:
    bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
    return {
        "bleu": round(bleu.corpus_score(hypotheses, [references]).score, 2),
        "chrf": round(chrf.corpus_score(hypotheses, [references]).score, 2),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


def paired_bootstrap(baseline: Tuple[str, List[str]], systems: Dict[str, List[str]], references: List[str],
                     samples: int = 1000) -> Tuple[Dict[str, Dict[str, Dict[str, Any]]], Dict[str, str]]:  # fmt: skip
    """sacreBLEU's paired bootstrap resampling of every system in SYSTEMS against BASELINE (both
    {name: hypotheses}): {name: {metric: {p_value, mean, ci, verdict}}} for BLEU and chrF; the baseline
    gets its own mean and interval."""
    named = [baseline] + [(n, h) for n, h in systems.items() if n != baseline[0]]
    metrics = {"BLEU": sacrebleu.BLEU(), "chrF": sacrebleu.CHRF()}
    logging.getLogger("sacrebleu").setLevel(logging.WARNING)
    signatures, scores = PairedTest(named, metrics, [references], test_type="bs", n_samples=samples)()
    out = {}
    for i, (name, _) in enumerate(named):
        out[name] = {}
        for metric, results in scores.items():  # "BLEU", "chrF2": the metrics' own names
            if metric == "System":
                continue
            result = results[i]
            entry = {"mean": round(float(result.mean), 2), "ci": round(float(result.ci), 2)}
            if i > 0:
                entry["p_value"] = round(float(result.p_value), 4)
                entry["verdict"] = verdict(result.score - results[0].score, result.p_value)
            out[name]["bleu" if metric.startswith("BLEU") else "chrf"] = entry
    return out, {m: str(s) for m, s in signatures.items()}


def verdict(difference: float, p_value: float) -> str:
    """'gain' or 'loss' only when the paired bootstrap gives p < 0.05; else 'no significant difference'. Equal
    scores are never a difference: sacreBLEU gives identical outputs p = 1 / (samples + 1) on purpose
    (``sacrebleu.significance._compute_p_value``: "a zero difference should not be attributed to chance")."""
    if difference != 0 and p_value < SIGNIFICANCE:
        return "gain" if difference > 0 else "loss"
    return "no significant difference"
