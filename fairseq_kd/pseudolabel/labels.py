"""Pseudo-labels as a training corpus: reading a decoder's n-best lists back into the transfer set's
order, merging shards, choosing one hypothesis per sentence, filtering, and the integrity check.

Both engines (:mod:`fairseq_kd.pseudolabel.engines`) write fairseq-generate's ``H-ID\tSCORE\tTOKENS``
lines, n-best per id and best first, in any order of ids.
"""

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from sacrebleu.metrics import CHRF

from ..generate_log import Hypothesis
from ..io import UserError


class PseudoLabelError(UserError):
    pass


def chrf_scores(nbest: Dict[int, List[Hypothesis]], references: List[str],
                detokenize: Callable[[str], str]) -> Dict[int, List[float]]:  # fmt: skip
    """{sentence id: the sentence chrF (sacreBLEU's) of each of its hypotheses against the reference}, on
    text that DETOKENIZE made of the token lines. An empty reference scores every hypothesis 0."""

    chrf = CHRF()
    scores = {}
    for i, hypotheses in nbest.items():
        reference = detokenize(references[i])
        scores[i] = [
            chrf.sentence_score(detokenize(h.text), [reference]).score if reference.strip() else 0.0 for h in hypotheses
        ]
    return scores


def merge_shards(shard_hypotheses: List[Dict[int, Hypothesis]], num_sentences: int, skipped=()) -> Dict[int, Hypothesis]:
    """Merges the hypotheses of all shards. Every id in [0, num_sentences) must come from exactly one
    shard, except the *skipped* ones (sentences too long for the teacher, which generate skips)."""
    merged = {}
    for shard, hypotheses in enumerate(shard_hypotheses):
        for i, hypothesis in hypotheses.items():
            if i in merged:
                raise PseudoLabelError(f"sentence {i} was translated by two shards (shard {shard} and an earlier one)")
            if not 0 <= i < num_sentences:
                raise PseudoLabelError(
                    f"shard {shard} has sentence id {i}, but the transfer set has {num_sentences} sentences"
                )
            merged[i] = hypothesis
    skipped = set(skipped)
    missing = [i for i in range(num_sentences) if i not in merged and i not in skipped]
    if missing:
        raise PseudoLabelError(
            f"{len(missing)} sentences have no translation (ids {missing[:10]}{' ...' if len(missing) > 10 else ''}): "
            "a generate log is incomplete"
        )
    return merged


@dataclass
class Filters:
    max_length_ratio: float = 3.0  # drop when len(hyp) / len(src) or its inverse exceeds this
    max_len_a: float = 0.0  # generate's length limit a * len(src) + b: outputs that reach it ran away
    max_len_b: int = 200
    min_score: Optional[float] = None  # drop hypotheses whose score is below this


@dataclass
class PseudoLabels:
    ids: List[int] = field(default_factory=list)
    sources: List[str] = field(default_factory=list)
    targets: List[str] = field(default_factory=list)
    scores: List[float] = field(default_factory=list)
    dropped: Dict[str, List[int]] = field(default_factory=dict)


def select(
    sources: List[str], hypotheses: Dict[int, Hypothesis], filters: Filters, skipped: Sequence[int] = ()
) -> PseudoLabels:
    """Pairs each source with its hypothesis, in the transfer set's order, and drops (and records)
    the pairs the filters reject."""
    out = PseudoLabels()
    reasons = {"too long for the teacher": list(skipped)}
    for i, source in enumerate(sources):
        if i not in hypotheses:
            continue
        hypothesis = hypotheses[i]
        src_len, hyp_len = len(source.split()), len(hypothesis.text.split())
        if src_len == 0:
            reason = "empty source"
        elif hyp_len == 0:
            reason = "empty translation"
        elif hyp_len >= int(filters.max_len_a * src_len + filters.max_len_b):
            reason = "runaway translation (reached the length limit)"
        elif max(hyp_len / src_len, src_len / hyp_len) > filters.max_length_ratio:
            reason = f"length ratio beyond {filters.max_length_ratio:g}"
        elif filters.min_score is not None and hypothesis.score < filters.min_score:
            reason = f"score below {filters.min_score:g}"
        else:
            out.ids.append(i)
            out.sources.append(source)
            out.targets.append(hypothesis.text)
            out.scores.append(hypothesis.score)
            continue
        reasons.setdefault(reason, []).append(i)
    out.dropped = {reason: ids for reason, ids in reasons.items() if ids}
    return out


def write_pseudolabels(labels: PseudoLabels, prefix: str, src: str, tgt: str) -> None:
    """Writes PREFIX.{src,tgt} (tokens, one pair per line), PREFIX.ids (the transfer-set line of each
    pair) and PREFIX.scores, each through a temporary file renamed into place."""
    columns = {src: labels.sources, tgt: labels.targets, "ids": labels.ids, "scores": labels.scores}
    for suffix, values in columns.items():
        path = f"{prefix}.{suffix}"
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(f"{v}\n" for v in values)
        os.replace(path + ".tmp", path)


def _read_lines(path):
    with open(path, encoding="utf-8") as f:
        return f.read().split("\n")[:-1]


def check_pseudolabels(prefix: str, src: str, tgt: str, sources: List[str], filters: Filters) -> int:
    """The final integrity check of written pseudo-labels: equal line counts, ids strictly
    increasing and in range, each source line equal to the transfer set's line of its id, and no
    empty or out-of-ratio targets. Raises PseudoLabelError saying what is wrong."""
    files = {suffix: f"{prefix}.{suffix}" for suffix in (src, tgt, "ids", "scores")}
    for path in files.values():
        if not os.path.isfile(path):
            raise PseudoLabelError(f"{path} is missing")
    lines = {suffix: _read_lines(path) for suffix, path in files.items()}
    counts = {suffix: len(v) for suffix, v in lines.items()}
    if len(set(counts.values())) != 1:
        raise PseudoLabelError(f"pseudo-label files have different line counts: {counts}: a file is truncated or misaligned")
    previous = -1
    for n, (i, source, target) in enumerate(zip(lines["ids"], lines[src], lines[tgt])):
        where = f"line {n + 1} of {files['ids']}"
        if not i.isdigit() or not previous < int(i) < len(sources):
            raise PseudoLabelError(f"{where}: id {i!r} is not increasing or not a transfer-set line (0..{len(sources) - 1})")
        previous = int(i)
        if source != sources[previous]:
            raise PseudoLabelError(f"{where}: the source differs from transfer-set line {previous}: the files are misaligned")
        hyp_len, src_len = len(target.split()), len(source.split())
        if hyp_len == 0 or max(hyp_len / src_len, src_len / hyp_len) > filters.max_length_ratio:
            raise PseudoLabelError(f"{where}: empty or out-of-ratio translation {target!r}")
    return counts[src]
