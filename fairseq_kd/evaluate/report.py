"""The report of an evaluation: one :class:`Record` per system, results.json, the Markdown table, the plot of
BLEU against speed, and the seed spread of methods trained with several seeds (shared by the pipeline)."""

import dataclasses
import logging
import os
import statistics
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from ..io import write_json, write_text
from .scores import SIGNIFICANCE
from .systems import Source
from .translation import Settings


@dataclass
class Record:
    name: str
    path: str
    kind: str
    bleu: float
    chrf: float
    sentences_per_s: float
    tokens_per_s: float
    params: Optional[int]
    size_mb: float
    bleu_signature: str = ""
    chrf_signature: str = ""
    significance: Dict = field(default_factory=dict)  # against the baseline (paired bootstrap)
    speed_runs: List[Dict] = field(default_factory=list)

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: Dict[str, Any]) -> "Record":
        """The record of a results.json entry (its fields; others, such as a pipeline's, left out)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})


def results_table(records: List[Record], baseline: Optional[str] = None) -> str:
    """A Markdown table of RECORDS; with a baseline, each score carries its paired-bootstrap p-value."""
    head = ["system", "BLEU", "chrF"]
    if baseline:
        head += [f"BLEU vs {baseline}", "p (BLEU)"]
    head += ["sentences/s", "tokens/s", "params", "MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        bleu = r.significance.get("bleu", {})
        cells = [r.name, f"{r.bleu:.2f} ± {bleu['ci']:.2f}" if bleu else f"{r.bleu:.2f}", f"{r.chrf:.2f}"]
        if baseline:
            if r.name == baseline:
                cells += ["(baseline)", ""]
            else:
                base = next(x for x in records if x.name == baseline)
                cells += [f"{r.bleu - base.bleu:+.2f} ({bleu['verdict']})", f"{bleu['p_value']:.4f}"]
        cells += [f"{r.sentences_per_s:.1f}", f"{r.tokens_per_s:.0f}", f"{r.params:,}" if r.params else "-", f"{r.size_mb}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(out_dir: str, records: List[Record], source: Source, settings: Settings, baseline: Optional[str], timing_rounds: int,
                 significance_signatures: Dict[str, str], quiet: bool = False) -> None:  # fmt: skip
    speeds = (
        f"speeds: median of {timing_rounds} translations per system, taken by turns"
        if timing_rounds
        else "speeds: the scoring translation of each system"
    )
    note = (
        f"{source.split} split of {source.data_bin} ({len(source.tokens)} sentences, {source.src}->{source.tgt}); beam "
        f"{settings.beam}, batch {settings.batch_size} sentences, length bound {settings.max_len_a:g} x source + "
        f"{settings.max_len_b}, CPU; {speeds}"
        + (f"; ± is sacreBLEU's 95% bootstrap interval, p its paired bootstrap against {baseline} "
           f"({settings.bootstrap_samples} resamples; a gain or loss only when p < {SIGNIFICANCE})" if baseline else "")  # fmt: skip
    )
    write_json(
        os.path.join(out_dir, "results.json"),
        {
            "split": source.split,
            "data_bin": os.path.abspath(source.data_bin),
            "sentences": len(source.tokens),
            "languages": [source.src, source.tgt],
            "settings": dataclasses.asdict(settings),
            "timing_rounds": timing_rounds,
            "baseline": baseline,
            "significance_signatures": significance_signatures,
            "note": note,
            "systems": [r.as_dict() for r in records],
        },
    )
    table = results_table(records, baseline)
    write_text(os.path.join(out_dir, "results.md"), f"{note}.\n\n{table}")
    plot(records, os.path.join(out_dir, "bleu_vs_speed.png"))
    if not quiet:
        print("\n" + table + f"({note})", flush=True)


def pyplot():
    """matplotlib.pyplot, drawing to files (the Agg backend). Imported here, not at the top of a module:
    matplotlib logs at its import, so its logger is quieted first, and its backend is chosen before pyplot is
    imported."""
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(records: List[Record], path: str, highlight: Sequence[str] = ("teacher",)) -> None:
    """BLEU against speed (log scale), one labelled point per system; labels placed by adjustText so that
    they overlap neither each other nor the points."""
    plt = pyplot()
    from adjustText import adjust_text

    logging.getLogger("adjustText").setLevel(logging.WARNING)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs, ys = [r.sentences_per_s for r in records], [r.bleu for r in records]
    colors = ["tab:red" if r.name in highlight else "tab:blue" for r in records]
    ax.scatter(xs, ys, color=colors, zorder=3)
    ax.set_xscale("log")
    ax.margins(x=0.2, y=0.15)
    ax.set_xlabel("sentences per second (log scale)")
    ax.set_ylabel("BLEU")
    ax.set_title("BLEU against translation speed")
    ax.grid(True, alpha=0.3)
    texts = [ax.text(x, y, r.name, fontsize=8) for r, x, y in zip(records, xs, ys)]
    adjust_text(texts, x=xs, y=ys, ax=ax, arrowprops=dict(arrowstyle="-", color="0.6", lw=0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def seed_summary(records: List[Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
    """{method: {seeds, bleu_mean, bleu_std, chrf_mean, chrf_std}} of every method trained with several seeds
    (records named METHOD and METHOD.seedN; the teacher and CTranslate2 systems are left out)."""
    by_method = {}
    for r in records:
        base, _, seed = r["name"].partition(".seed")
        if r["name"] in ("teacher", "ctranslate2_int8"):
            continue
        by_method.setdefault(base, []).append(r)
    out = {}
    for method, runs in by_method.items():
        if len(runs) > 1:
            out[method] = {"seeds": len(runs)}
            for key in ("bleu", "chrf"):
                values = [r[key] for r in runs]
                out[method][f"{key}_mean"] = round(statistics.mean(values), 2)
                out[method][f"{key}_std"] = round(statistics.stdev(values), 2)
    return out
