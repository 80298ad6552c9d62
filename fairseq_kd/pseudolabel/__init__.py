"""Teacher pseudo-labels for sequence-level KD (Kim & Rush, 2016, https://arxiv.org/abs/1606.07947).

The teacher's translations of a transfer set become the student's training targets:

* :mod:`.engines`: decoding a shard with fairseq-generate (a teacher or an ensemble) or CTranslate2;
* :mod:`.labels`: n-best lists back in the transfer set's order, shards merged, one hypothesis chosen per
  sentence (the best-scored, or the best by sentence chrF against the reference), filters, integrity;
* :mod:`.run`: the whole run of ``fairseq-kd-pseudolabel``, resumable by shard.
"""

from ..generate_log import Hypothesis, read_nbest
from .labels import (
    Filters,
    PseudoLabelError,
    PseudoLabels,
    check_pseudolabels,
    chrf_scores,
    merge_shards,
    select,
    write_pseudolabels,
)

__all__ = [
    "Filters",
    "Hypothesis",
    "PseudoLabelError",
    "PseudoLabels",
    "check_pseudolabels",
    "chrf_scores",
    "merge_shards",
    "read_nbest",
    "select",
    "write_pseudolabels",
]
