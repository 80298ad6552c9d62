"""The KD criterion's settings: its config (every flag, its default and its help, written once: fairseq builds
the criterion from it) and the checks of their values, each a one-line error naming the flag."""

import math
from dataclasses import dataclass, field
from typing import Optional

from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterionConfig
from fairseq.dataclass import ChoiceEnum

from .kd_losses import DEFAULT_BETA, DIVERGENCES, defined_on_topk, effective_divergence

HIDDEN_LOSS_CHOICES = ChoiceEnum(["cosine", "mse"])
DIVERGENCE_CHOICES = ChoiceEnum(list(DIVERGENCES))
KD_SELECTION_CHOICES = ChoiceEnum(["none", "batch", "global"])


@dataclass
class LabelSmoothedCrossEntropyWithKDCriterionConfig(LabelSmoothedCrossEntropyCriterionConfig):
    nll_weight: float = field(
        default=0.5,
        metadata={"help": "weight of the (label-smoothed) NLL on the references"},
    )
    kd_weight: float = field(
        default=0.5,
        metadata={"help": "weight of word-level KD, T^2 * KL(teacher^T || student^T); needs --teacher-path"},
    )
    kd_temperature: float = field(
        default=1.0,
        metadata={"help": "softmax temperature T of word-level KD (training only; validation uses T=1)"},
    )
    kd_divergence: DIVERGENCE_CHOICES = field(
        default="forward_kl",
        metadata={
            "help": "the divergence of word-level KD between teacher q and student p: forward_kl KL(q||p), reverse_kl "
            "KL(p||q), jsd (generalised Jensen-Shannon of weight --kd-beta), tvd (total variation), skew_kl "
            "KL(q || beta q + (1-beta) p) (fairseq_kd/criterions/kd_losses.py)"
        },
    )
    kd_beta: Optional[float] = field(
        default=None,
        metadata={
            "help": "jsd's beta in [0, 1] as TRL's GKD (0: forward KL, 1: reverse KL; default 0.5) or skew_kl's "
            "weight in [0, 1) as DistiLLM's alpha (default 0.1); only with those two"
        },
    )
    cosine_weight: float = field(
        default=0.0,
        metadata={
            "help": "weight of the hidden-state loss between paired student and teacher layers: 1 - cos(h_student, "
            "h_teacher), or the MSE with --hidden-loss mse; a learned projection maps unequal student widths "
            "to the teacher's"
        },
    )
    cosine_encoder: bool = field(
        default=False,
        metadata={"help": "apply the hidden-state loss to encoder layers too, not only the decoder's"},
    )
    kd_topk: int = field(
        default=0,
        metadata={
            "help": "word-level KD against the teacher's k most probable tokens only, renormalised (0: the whole "
            "vocabulary); a --teacher-topk-cache always uses its own k"
        },
    )
    kd_selection: KD_SELECTION_CHOICES = field(
        default="none",
        metadata={
            "help": "selective KD (Wang et al., 2021): apply word-level KD only to the --kd-selection-ratio share of "
            "target tokens with the highest student cross-entropy, chosen per batch or against a global queue"
        },
    )
    kd_selection_ratio: float = field(
        default=0.5, metadata={"help": "share of target tokens that get the KD loss with --kd-selection"}
    )
    kd_selection_queue_size: int = field(
        default=30000,
        metadata={"help": "--kd-selection global: how many recent tokens' cross-entropies set the threshold"},
    )
    hidden_loss: HIDDEN_LOSS_CHOICES = field(
        default="cosine",
        metadata={"help": "hidden-state loss weighted by --cosine-weight: cosine distance, or mean squared error"},
    )


def check_criterion_settings(nll_weight: float, kd_weight: float, kd_temperature: float, cosine_weight: float, cosine_encoder: bool,
                   kd_topk: int, kd_selection: str, kd_selection_ratio: float, kd_selection_queue_size: int,
                   kd_divergence: str = "forward_kl", kd_beta: Optional[float] = None) -> None:  # fmt: skip
    """Every check of the criterion's own settings; raises ValueError naming the flag."""
    for name, value in [("--nll-weight", nll_weight), ("--kd-weight", kd_weight), ("--cosine-weight", cosine_weight)]:
        if not value >= 0 or math.isinf(value):
            raise ValueError(f"{name} must be >= 0 and finite, got {value}")
    if nll_weight == kd_weight == cosine_weight == 0:
        raise ValueError("--nll-weight, --kd-weight and --cosine-weight are all 0: nothing would be trained")
    if not 0 < kd_temperature < math.inf:
        raise ValueError(f"--kd-temperature must be > 0 and finite, got {kd_temperature}")
    if kd_topk < 0:
        raise ValueError(f"--kd-topk must be >= 0 (0: the whole vocabulary), got {kd_topk}")
    if kd_selection != "none":
        if kd_weight == 0:
            raise ValueError(f"--kd-selection {kd_selection} selects tokens for word-level KD, but --kd-weight is 0")
        if not 0 < kd_selection_ratio <= 1:
            raise ValueError(f"--kd-selection-ratio must be in (0, 1], got {kd_selection_ratio}")
        if kd_selection == "global" and kd_selection_queue_size < 1:
            raise ValueError(f"--kd-selection-queue-size must be >= 1, got {kd_selection_queue_size}")
    if kd_beta is not None and kd_divergence not in DEFAULT_BETA:
        raise ValueError(
            f"--kd-beta {kd_beta} has no effect with --kd-divergence {kd_divergence}: drop it or use jsd or skew_kl"
        )
    effective_divergence(kd_divergence, kd_beta)  # --kd-beta's range
    if kd_topk > 0 and not defined_on_topk(kd_divergence, kd_beta):
        raise ValueError(
            f"--kd-divergence {kd_divergence} is infinite with --kd-topk: the teacher gives no probability off its top "
            "k tokens; drop --kd-topk or choose forward_kl, jsd (beta < 1), tvd or skew_kl"
        )
    if cosine_encoder and cosine_weight == 0:
        raise ValueError("--cosine-encoder has no effect with --cosine-weight 0: set a cosine weight or drop it")
