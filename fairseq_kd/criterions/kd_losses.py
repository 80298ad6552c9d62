"""The pure losses of distillation, in plain torch: what the criterion computes and what its fused
versions (:mod:`fairseq_kd.criterions.fused_kd`) are tested against.

Word-level divergences D(q, p) per target position, between the teacher's distribution q and the
student's p (both at temperature T, over the whole vocabulary or the teacher's top-k tokens):

=============  ==========================================================  =====================================
``--kd-divergence``  D(q, p)                                                 source
=============  ==========================================================  =====================================
forward_kl     KL(q || p) = sum q (log q - log p)                          Hinton et al. 2015; Kim & Rush 2016
reverse_kl     KL(p || q) = sum p (log p - log q)                          Gu et al. 2024 (MiniLLM)
jsd            beta KL(q || m) + (1 - beta) KL(p || m),                     Agarwal et al. 2024 (GKD), as TRL's
               m = beta q + (1 - beta) p; beta 0: forward KL, 1: reverse KL  ``generalized_jsd_loss``
tvd            1/2 sum |p - q|                                             Wen et al. 2023 (f-DISTILL)
skew_kl        KL(q || beta q + (1 - beta) p); beta 0: forward KL          Ko et al. 2024 (DistiLLM)
=============  ==========================================================  =====================================

``beta`` follows TRL's GKDTrainer for JSD (its ``beta``: 0 is forward KL, 1 reverse KL, both taken as
those KLs exactly, since the mixture's JSD vanishes at either end) and DistiLLM's skew weight alpha for
skew KL. Every loss is 0 when p = q and a sum over non-padding positions, like fairseq's losses; the
temperature is already in both distributions, the T^2 scale is the criterion's.
"""

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tvd", "skew_kl")
# --kd-beta when none is given: TRL's GKDTrainer default (0.5) and DistiLLM's skew weight (0.1)
DEFAULT_BETA = {"jsd": 0.5, "skew_kl": 0.1}


def effective_divergence(kind: str, beta: Optional[float] = None) -> Tuple[str, Optional[float]]:
    """(kind, beta) as computed: JSD at beta 0 or 1 is forward or reverse KL (TRL's convention), skew KL at
    beta 0 is forward KL; BETA None takes :data:`DEFAULT_BETA`."""
    if kind not in DIVERGENCES:
        raise ValueError(f"unknown divergence {kind!r}: choose one of {', '.join(DIVERGENCES)}")
    if kind not in DEFAULT_BETA:
        return kind, None
    beta = DEFAULT_BETA[kind] if beta is None else float(beta)
    if not (0 <= beta <= 1 if kind == "jsd" else 0 <= beta < 1):
        interval = "[0, 1]" if kind == "jsd" else "[0, 1) (at 1 the mixture is the teacher: nothing to learn)"
        raise ValueError(f"--kd-beta of {kind} must be in {interval}, got {beta}")
    if kind == "jsd" and beta in (0.0, 1.0):
        return ("forward_kl" if beta == 0.0 else "reverse_kl"), None
    if kind == "skew_kl" and beta == 0.0:
        return "forward_kl", None
    return kind, beta


def defined_on_topk(kind: str, beta: Optional[float] = None) -> bool:
    """Whether D(q~, p) is finite for a teacher given on its top-k tokens only (q~ = 0 elsewhere): reverse KL
    (and JSD at beta 1) weighs log q~ where the student puts mass, which is -inf off the k tokens."""
    return effective_divergence(kind, beta)[0] != "reverse_kl"


def _kl(log_a, log_b):
    """sum a (log a - log b) over the last dimension, 0 * log 0 counting as 0."""
    a = log_a.exp()
    return torch.where(a > 0, a * (log_a - log_b), torch.zeros_like(a)).sum(-1)


def divergence(student_lprobs: Tensor, teacher_lprobs: Tensor, kind: str = "forward_kl", beta: Optional[float] = None,
               ignore_mask: Optional[Tensor] = None, reduce: bool = True) -> Tensor:  # fmt: skip
    """D(q, p) per position of :data:`DIVERGENCES`, by its definition (autograd gives the gradient).

    Args:
        student_lprobs (Tensor): (..., V) log p, with gradient
        teacher_lprobs (Tensor): (..., V) log q (-inf where q is 0), no gradient needed
        kind (str): one of :data:`DIVERGENCES`
        beta (float, optional): JSD's beta or skew KL's weight, in [0, 1] (default :data:`DEFAULT_BETA`)
        ignore_mask (BoolTensor, optional): (...) True where the position is padding
        reduce (bool): sum over positions
    """
    kind, beta = effective_divergence(kind, beta)
    log_p, log_q = _at_least_float32(student_lprobs), _at_least_float32(teacher_lprobs.detach())
    if kind == "forward_kl":
        d = _kl(log_q, log_p)
    elif kind == "reverse_kl":
        d = _kl(log_p, log_q)
    elif kind == "tvd":
        d = 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)
    elif kind == "jsd":
        log_m = torch.logaddexp(log_q + math.log(beta), log_p + math.log(1 - beta))
        d = beta * _kl(log_q, log_m) + (1 - beta) * _kl(log_p, log_m)
    else:  # skew_kl
        log_m = torch.logaddexp(log_q + math.log(beta), log_p + math.log(1 - beta))
        d = _kl(log_q, log_m)
    if ignore_mask is not None:
        d = d.masked_fill(ignore_mask, 0.0)
    return d.sum() if reduce else d


def _at_least_float32(x):
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def tempered_log_probs(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / T) in float32; a list of logits (an ensemble) gives the log of the
    mean of the members' tempered distributions.

    Args:
        logits (Tensor or list of Tensor): (..., V) unnormalised scores
        temperature (float): T > 0

    Returns:
        Tensor: (..., V) float32 log-probabilities
    """
    if torch.is_tensor(logits):
        return F.log_softmax(_at_least_float32(logits) / temperature, dim=-1)
    if len(logits) == 1:
        return tempered_log_probs(logits[0], temperature)
    lprobs = torch.stack([tempered_log_probs(x, temperature) for x in logits])  # K x ... x V
    return torch.logsumexp(lprobs, dim=0) - math.log(len(logits))


def kd_kl_loss(
    student_lprobs: Tensor, teacher_lprobs: Tensor, ignore_mask: Optional[Tensor] = None, reduce: bool = True
) -> Tensor:
    """Word-level KD loss KL(q || p) = sum_v q_v (log q_v - log p_v) per position
    (Hinton et al., 2015, https://arxiv.org/abs/1503.02531; Kim & Rush, 2016,
    https://arxiv.org/abs/1606.07947). The temperature is already in both distributions; the
    T^2 gradient-scale correction is the caller's (it is applied once, in the criterion's loss).

    Args:
        student_lprobs (Tensor): (..., V) log p, with gradient
        teacher_lprobs (Tensor): (..., V) log q, no gradient needed
        ignore_mask (BoolTensor, optional): (...) True where the position is padding
        reduce (bool): sum over positions

    Returns:
        Tensor: the summed KL (a scalar) if *reduce*, else per-position KL of shape (...)
    """
    teacher_lprobs = _at_least_float32(teacher_lprobs.detach())
    q = teacher_lprobs.exp()
    # sum_v q log q does not depend on the student: computed without a graph, it keeps the loss a
    # true KL (0 when p == q) at no extra memory; xlogy makes 0 * log 0 = 0.
    with torch.no_grad():
        neg_entropy = torch.xlogy(q, q).sum(-1)
    kl = neg_entropy - (q * _at_least_float32(student_lprobs)).sum(-1)
    if ignore_mask is not None:
        kl = kl.masked_fill(ignore_mask, 0.0)
    return kl.sum() if reduce else kl


def topk_log_probs(lprobs: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """The k most probable tokens of each distribution, and their log-probabilities renormalised over
    those k: ``log q_i - log sum_{j in top-k} q_j``.

    Args:
        lprobs (Tensor): (..., V) log-probabilities
        k (int): 1 <= k <= V

    Returns:
        (LongTensor, Tensor): (..., k) token ids and (..., k) log-probabilities
    """
    values, ids = lprobs.topk(k, dim=-1)
    return ids, values - values.logsumexp(-1, keepdim=True)


def kd_kl_loss_topk(student_lprobs: Tensor, teacher_ids: Tensor, teacher_lprobs: Tensor, ignore_mask: Optional[Tensor] = None,
                    reduce: bool = True) -> Tensor:  # fmt: skip
    """KL(q~ || p) for a teacher distribution q~ given on k tokens only (its top-k, renormalised):
    ``sum_{i in top-k} q~_i (log q~_i - log p_i)``, p being the student's distribution over the whole
    vocabulary gathered at the k ids. It is 0 when the student puts exactly q~ on those tokens. Training
    computes it fused, from the logits (:func:`~fairseq_kd.criterions.fused_kd.tempered_topk_kl_from_logits`);
    this is its definition in plain torch, which the fused loss is tested against.

    Args:
        student_lprobs (Tensor): (..., V) log p, with gradient
        teacher_ids (LongTensor): (..., k) the teacher's tokens
        teacher_lprobs (Tensor): (..., k) log q~, summing (in probability) to 1 over the k tokens
        ignore_mask (BoolTensor, optional): (...) True where the position is padding
        reduce (bool): sum over positions
    """
    teacher_lprobs = _at_least_float32(teacher_lprobs.detach())
    q = teacher_lprobs.exp()
    with torch.no_grad():
        neg_entropy = torch.xlogy(q, q).sum(-1)
    kl = neg_entropy - (q * _at_least_float32(student_lprobs).gather(-1, teacher_ids)).sum(-1)
    if ignore_mask is not None:
        kl = kl.masked_fill(ignore_mask, 0.0)
    return kl.sum() if reduce else kl


def _check_same_shape(student_states, teacher_states):
    if student_states.shape != teacher_states.shape:
        raise ValueError(
            f"hidden-state loss needs states of equal shape, got student {tuple(student_states.shape)} "
            f"and teacher {tuple(teacher_states.shape)}"
        )


def hidden_cosine_loss(student_states: Tensor, teacher_states: Tensor, ignore_mask: Optional[Tensor] = None,
                       reduce: bool = True) -> Tensor:  # fmt: skip
    """1 - cos(h_student, h_teacher) per position, computed in float32.

    Args:
        student_states (Tensor): (..., C)
        teacher_states (Tensor): (..., C), no gradient needed
        ignore_mask (BoolTensor, optional): (...) True where the position is padding
        reduce (bool): sum over positions
    """
    _check_same_shape(student_states, teacher_states)
    student_states, teacher_states = _at_least_float32(student_states), _at_least_float32(teacher_states.detach())
    loss = 1.0 - F.cosine_similarity(student_states, teacher_states, dim=-1)
    if ignore_mask is not None:
        loss = loss.masked_fill(ignore_mask, 0.0)
    return loss.sum() if reduce else loss


def hidden_mse_loss(student_states: Tensor, teacher_states: Tensor, ignore_mask: Optional[Tensor] = None,
                    reduce: bool = True) -> Tensor:  # fmt: skip
    """Mean over channels of (h_student - h_teacher)^2 per position, computed in float32.

    Args: as :func:`hidden_cosine_loss`.
    """
    _check_same_shape(student_states, teacher_states)
    student_states, teacher_states = _at_least_float32(student_states), _at_least_float32(teacher_states.detach())
    loss = (student_states - teacher_states).pow(2).mean(-1)
    if ignore_mask is not None:
        loss = loss.masked_fill(ignore_mask, 0.0)
    return loss.sum() if reduce else loss


HIDDEN_LOSSES = {"cosine": hidden_cosine_loss, "mse": hidden_mse_loss}
