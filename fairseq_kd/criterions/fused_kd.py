"""Word-level KD losses as autograd Functions with the gradient in closed form.

For p = softmax(z_s / T) and a fixed teacher distribution q, d KL(q || p) / d z_s = (p - q) / T. Written
out, the full-vocabulary loss needs one vocabulary-sized buffer (the gradient, computed in the forward pass
row chunk by row chunk), where autograd through log_softmax keeps several vocabulary-sized intermediates
alive. The values equal :func:`kd_kl_loss` / :func:`kd_kl_loss_topk` of the tempered log-probabilities
(tests compare values and gradients).
"""

import torch


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


class _TemperedKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher_logits, temperature, overwrite_teacher):
        # (N, V) each. The forward pass also computes the gradient (p - q) / T, row chunk by row chunk, so
        # that the only vocabulary-sized buffer is the gradient itself: the teacher's logits when the caller
        # gives them up (float32 and contiguous), else a new one. *student* may be logits or log-probabilities:
        # softmax(z / T) is the same for both.
        n, v = student.shape
        dtype = _compute_dtype(student, teacher_logits)
        if not ctx.needs_input_grad[0]:
            grad = None  # evaluation: the loss only
        elif overwrite_teacher and teacher_logits.dtype == dtype and teacher_logits.is_contiguous():
            grad = teacher_logits
        else:
            grad = torch.empty((n, v), dtype=dtype, device=student.device)
        kl = torch.empty(n, dtype=dtype, device=student.device)
        rows = _row_chunk(n, v)
        for i in range(0, n, rows):
            log_p = torch.log_softmax(student[i : i + rows].to(dtype) / temperature, dim=-1)
            log_q = torch.log_softmax(teacher_logits[i : i + rows].to(dtype) / temperature, dim=-1)
            q = log_q.exp()
            kl[i : i + rows] = torch.linalg.vecdot(q, log_q.sub_(log_p))
            if grad is not None:
                torch.sub(log_p.exp_(), q, out=grad[i : i + rows]).div_(temperature)
        ctx.in_place = grad is teacher_logits
        ctx.student_dtype = student.dtype
        ctx.save_for_backward(grad)
        return kl

    @staticmethod
    def backward(ctx, grad_kl):
        (grad,) = ctx.saved_tensors
        if ctx.in_place:
            # the buffer is this Function's own: scaled in place (a second backward pass through the same
            # graph is refused by autograd's check of saved tensors)
            grad = grad.mul_(grad_kl.unsqueeze(-1))
        else:
            grad = grad * grad_kl.unsqueeze(-1)
        return grad.to(ctx.student_dtype), None, None, None


class _TemperedTopKKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student_logits, teacher_ids, teacher_lprobs, temperature):
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
    def backward(ctx, grad_kl):
        student_logits, teacher_ids, q, lse_s = ctx.saved_tensors
        T = ctx.temperature
        grad = student_logits.to(q.dtype) / T  # the one vocabulary-sized buffer
        grad.sub_(lse_s.unsqueeze(-1)).exp_().scatter_add_(-1, teacher_ids, -q)
        grad.mul_(grad_kl.unsqueeze(-1) / T)  # (p - q) / T, q being 0 outside the top-k
        return grad.to(student_logits.dtype), None, None, None


def tempered_kl_from_logits(
    student_logits, teacher_logits, temperature=1.0, ignore_mask=None, reduce=True, overwrite_teacher=False
):
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


def tempered_topk_kl_from_logits(student_logits, teacher_ids, teacher_lprobs, temperature=1.0, ignore_mask=None, reduce=True):
    """KL(q~ || softmax(z_s / T)) over the teacher's k tokens, q~ given by *teacher_lprobs* (N, k) at *teacher_ids*
    (N, k), renormalised; see :func:`~fairseq_kd.criterions.label_smoothed_cross_entropy_with_kd.kd_kl_loss_topk`."""
    kl = _TemperedTopKKL.apply(student_logits, teacher_ids, teacher_lprobs.detach(), temperature)
    return _masked_sum(kl, ignore_mask, reduce)
