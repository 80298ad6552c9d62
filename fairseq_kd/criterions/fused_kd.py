"""Word-level KD losses as autograd Functions with the gradient in closed form.

For p = softmax(z_s / T) and a fixed teacher distribution q, d KL(q || p) / d z_s = (p - q) / T. Written
out, the full-vocabulary loss needs one vocabulary-sized buffer (the gradient, computed in the forward pass
row chunk by row chunk), where autograd through log_softmax keeps several vocabulary-sized intermediates
alive. The values equal :func:`kd_kl_loss` / :func:`kd_kl_loss_topk` of the tempered log-probabilities
(tests compare values and gradients).
"""

import math
from typing import Any, Optional, Tuple

import torch
from torch import Tensor

from .kd_losses import defined_on_topk, effective_divergence


def _compute_dtype(*tensors):
    """float64 if any input is (tests), else float32, half-precision inputs included: the dtype the losses
    are computed in."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _row_chunk(n, v):
    """Rows per chunk: about n / _CHUNKS, none smaller than _MIN_CHUNK_ELEMENTS values."""
    return max(-(-n // _CHUNKS), -(-_MIN_CHUNK_ELEMENTS // max(v, 1)), 1)


def _masked_sum(kl, ignore_mask, reduce):
    if ignore_mask is not None:
        kl = kl.masked_fill(ignore_mask, 0.0)
    return kl.sum() if reduce else kl


# The forward pass works through the rows in about _CHUNKS chunks (a few vocabulary-sized temporaries per
# chunk, so about 1/8 of one buffer in all), none smaller than _MIN_CHUNK_ELEMENTS values.
_CHUNKS = 32
_MIN_CHUNK_ELEMENTS = 1 << 16


def _gradient_buffer(ctx, student, dtype, reusable=None):
    """The one vocabulary-sized buffer of a fused loss, the gradient: None in evaluation (the loss only),
    REUSABLE (teacher logits the caller gave up) where it has the computation's dtype and is contiguous, else
    a new one of the student's shape."""
    if not ctx.needs_input_grad[0]:
        return None
    if reusable is not None and reusable.dtype == dtype and reusable.is_contiguous():
        return reusable
    return torch.empty(student.shape, dtype=dtype, device=student.device)


def _save_gradient(ctx, grad, teacher, student):
    ctx.in_place = grad is teacher  # the teacher's memory: the backward pass may scale it in place
    ctx.student_dtype = student.dtype
    ctx.save_for_backward(grad)


def _saved_gradient_times(ctx, grad_rows):
    """The gradient that the forward pass saved, scaled by the incoming per-row gradient."""
    (grad,) = ctx.saved_tensors
    if ctx.in_place:
        # the buffer is the Function's own: scaled in place (a second backward pass through the same graph is
        # refused by autograd's check of saved tensors)
        grad = grad.mul_(grad_rows.unsqueeze(-1))
    else:
        grad = grad * grad_rows.unsqueeze(-1)
    return grad.to(ctx.student_dtype)


class _TemperedKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, student: Tensor, teacher_logits: Tensor, temperature: float, overwrite_teacher: bool) -> Tensor:
        # (N, V) each. The forward pass also computes the gradient (p - q) / T, row chunk by row chunk, so
        # that the only vocabulary-sized buffer is the gradient itself: the teacher's logits when the caller
        # gives them up (float32 and contiguous), else a new one. *student* may be logits or log-probabilities:
        # softmax(z / T) is the same for both.
        n, v = student.shape
        dtype = _compute_dtype(student, teacher_logits)
        grad = _gradient_buffer(ctx, student, dtype, teacher_logits if overwrite_teacher else None)
        kl = torch.empty(n, dtype=dtype, device=student.device)
        rows = _row_chunk(n, v)
        for i in range(0, n, rows):
            log_p = torch.log_softmax(student[i : i + rows].to(dtype) / temperature, dim=-1)
            log_q = torch.log_softmax(teacher_logits[i : i + rows].to(dtype) / temperature, dim=-1)
            q = log_q.exp()
            kl[i : i + rows] = torch.linalg.vecdot(q, log_q.sub_(log_p))
            if grad is not None:
                torch.sub(log_p.exp_(), q, out=grad[i : i + rows]).div_(temperature)
        _save_gradient(ctx, grad, teacher_logits, student)
        return kl

    @staticmethod
    def backward(ctx: Any, grad_kl: Tensor) -> Tuple[Optional[Tensor], ...]:
        return _saved_gradient_times(ctx, grad_kl), None, None, None


class _TemperedTopKKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, student_logits: Tensor, teacher_ids: Tensor, teacher_lprobs: Tensor, temperature: float) -> Tensor:
        # per-row sum_{i in top-k} q_i (log q_i - s_i + lse(s)), q given on k ids only, summing to 1; the
        # student's log-normaliser row chunk by row chunk, so that no vocabulary-sized buffer is made
        n, v = student_logits.shape
        dtype = _compute_dtype(student_logits, teacher_lprobs)
        q = teacher_lprobs.to(dtype).exp()
        lse_s = torch.empty(n, dtype=dtype, device=student_logits.device)
        rows = _row_chunk(n, v)
        for i in range(0, n, rows):
            lse_s[i : i + rows] = torch.logsumexp(student_logits[i : i + rows].to(dtype) / temperature, dim=-1)
        s_top = student_logits.gather(-1, teacher_ids).to(dtype) / temperature
        kl = torch.xlogy(q, q).sum(-1) - torch.linalg.vecdot(q, s_top) + lse_s
        ctx.temperature = temperature
        ctx.save_for_backward(student_logits, teacher_ids, q, lse_s)
        return kl

    @staticmethod
    def backward(ctx: Any, grad_kl: Tensor) -> Tuple[Optional[Tensor], ...]:
        student_logits, teacher_ids, q, lse_s = ctx.saved_tensors
        T = ctx.temperature
        grad = student_logits.to(q.dtype) / T  # the one vocabulary-sized buffer
        grad.sub_(lse_s.unsqueeze(-1)).exp_().scatter_add_(-1, teacher_ids, -q)
        grad.mul_(grad_kl.unsqueeze(-1) / T)  # (p - q) / T, q being 0 outside the top-k
        return grad.to(student_logits.dtype), None, None, None


def tempered_kl_from_logits(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0,
                            ignore_mask: Optional[Tensor] = None, reduce: bool = True,
                            overwrite_teacher: bool = False) -> Tensor:  # fmt: skip
    """KL(softmax(z_t / T) || softmax(z_s / T)) per row of (N, V) logits, in float32; the gradient flows to
    the student's logits only.

    Args:
        student_logits (Tensor): (N, V), with gradient; log-probabilities give the same result
        teacher_logits (Tensor): (N, V)
        temperature (float): T > 0
        ignore_mask (BoolTensor, optional): (N,) True where the position is padding
        reduce (bool): sum over rows
        overwrite_teacher (bool): the caller gives up *teacher_logits*: where they are float32, the gradient
            is kept in their memory (they are overwritten) and the loss can be differentiated only once
    """
    kl = _TemperedKL.apply(student_logits, teacher_logits.detach(), temperature, overwrite_teacher)
    return _masked_sum(kl, ignore_mask, reduce)


def tempered_topk_kl_from_logits(student_logits: Tensor, teacher_ids: Tensor, teacher_lprobs: Tensor, temperature: float = 1.0,
                                 ignore_mask: Optional[Tensor] = None, reduce: bool = True) -> Tensor:  # fmt: skip
    """KL(q~ || softmax(z_s / T)) over the teacher's k tokens, q~ given by *teacher_lprobs* (N, k) at *teacher_ids*
    (N, k), renormalised; see :func:`~fairseq_kd.criterions.label_smoothed_cross_entropy_with_kd.kd_kl_loss_topk`."""
    kl = _TemperedTopKKL.apply(student_logits, teacher_ids, teacher_lprobs.detach(), temperature)
    return _masked_sum(kl, ignore_mask, reduce)


def _divergence_rows(kind, beta, log_p, log_q):
    """(D, p * dD/dp) per row of one chunk, for :func:`tempered_divergence_from_logits`: the loss and the
    derivative in p, times p so that a p that underflows to 0 gives 0 instead of 0 / 0."""
    p, q = log_p.exp(), log_q.exp()
    if kind == "forward_kl":
        return torch.where(q > 0, q * (log_q - log_p), 0.0).sum(-1), -q
    if kind == "reverse_kl":  # the +1 of d/dp [p log p] cancels in the softmax's Jacobian
        r = log_p - log_q
        return torch.where(p > 0, p * r, 0.0).sum(-1), p * r
    if kind == "tvd":
        return 0.5 * (p - q).abs().sum(-1), 0.5 * p * torch.sign(p - q)
    log_m = torch.logaddexp(log_q + math.log(beta), log_p + math.log(1 - beta))
    kl_q_m = torch.where(q > 0, q * (log_q - log_m), 0.0).sum(-1)
    if kind == "jsd":  # d/dp [beta KL(q||m) + (1-beta) KL(p||m)] = (1 - beta)(log p - log m) + const
        r = log_p - log_m
        return beta * kl_q_m + (1 - beta) * torch.where(p > 0, p * r, 0.0).sum(-1), (1 - beta) * p * r
    # skew_kl: d/dp KL(q || beta q + (1 - beta) p) = -(1 - beta) q / m
    return kl_q_m, -(1 - beta) * (log_p + log_q - log_m).exp()


class _TemperedDivergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, student: Tensor, teacher: Tensor, teacher_ids: Optional[Tensor], kind: str, beta: Optional[float],
                temperature: float, teacher_is_log_probs: bool, overwrite_teacher: bool) -> Tensor:  # fmt: skip
        # As _TemperedKL, for any divergence D(q, p) with p = softmax(s / T): dD/ds = (g - p * sum(g)) / T with
        # g = p * dD/dp, computed row chunk by row chunk in the forward pass into the one vocabulary-sized
        # buffer. TEACHER is (N, V) logits (or log-probabilities, already tempered), or (N, k) log-probabilities
        # at TEACHER_IDS (the teacher's top-k, 0 elsewhere), spread over the vocabulary one chunk at a time.
        n, v = student.shape
        dtype = _compute_dtype(student, teacher)
        dense = teacher_ids is None
        grad = _gradient_buffer(ctx, student, dtype, teacher if dense and overwrite_teacher else None)
        loss = torch.empty(n, dtype=dtype, device=student.device)
        rows = _row_chunk(n, v)
        for i in range(0, n, rows):
            log_p = torch.log_softmax(student[i : i + rows].to(dtype) / temperature, dim=-1)
            if not dense:
                log_q = torch.full_like(log_p, -math.inf).scatter_(
                    -1, teacher_ids[i : i + rows], teacher[i : i + rows].to(dtype)
                )
            elif teacher_is_log_probs:
                log_q = teacher[i : i + rows].to(dtype)
            else:
                log_q = torch.log_softmax(teacher[i : i + rows].to(dtype) / temperature, dim=-1)
            loss[i : i + rows], g = _divergence_rows(kind, beta, log_p, log_q)
            if grad is not None:
                g.sub_(log_p.exp_().mul_(g.sum(-1, keepdim=True))).div_(temperature)
                grad[i : i + rows] = g
        _save_gradient(ctx, grad, teacher, student)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor) -> Tuple[Optional[Tensor], ...]:
        return (_saved_gradient_times(ctx, grad_loss),) + (None,) * 7


def tempered_divergence_from_logits(
    student_logits: Tensor, teacher: Tensor, kind: str, beta: Optional[float] = None, temperature: float = 1.0,
    teacher_ids: Optional[Tensor] = None, teacher_is_log_probs: bool = False, ignore_mask: Optional[Tensor] = None,
    reduce: bool = True, overwrite_teacher: bool = False,
) -> Tensor:  # fmt: skip
    """D(q^T, p^T) of :mod:`~fairseq_kd.criterions.kd_losses` (``divergence``) per row, with the memory of
    :func:`tempered_kl_from_logits`: one vocabulary-sized buffer, the gradient (the teacher's logits' own when
    they are given up).

    Args:
        student_logits (Tensor): (N, V), with gradient; log-probabilities give the same result
        teacher (Tensor): (N, V) the teacher's logits, or its log-probabilities at T with *teacher_is_log_probs*
            (an ensemble's mean), or (N, k) log-probabilities at *teacher_ids*, summing to 1 over the k tokens
        kind (str), beta (float, optional): as ``kd_losses.divergence``
        temperature (float): T > 0
        teacher_ids (LongTensor, optional): (N, k) the tokens of a top-k teacher
        ignore_mask (BoolTensor, optional): (N,) True where the position is padding
        reduce (bool): sum over rows
        overwrite_teacher (bool): as :func:`tempered_kl_from_logits`
    """
    kind, beta = effective_divergence(kind, beta)
    if teacher_ids is not None and not defined_on_topk(kind):
        raise ValueError(f"{kind} is infinite for a teacher given on its top-k tokens only: use the whole vocabulary")
    loss = _TemperedDivergence.apply(
        student_logits, teacher.detach(), teacher_ids, kind, beta, temperature, teacher_is_log_probs, overwrite_teacher
    )
    return _masked_sum(loss, ignore_mask, reduce)
