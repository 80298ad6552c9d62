"""Word-level KD losses as autograd Functions with the gradient in closed form.

For p = softmax(z_s / T) and a fixed teacher distribution q, d KL(q || p) / d z_s = (p - q) / T. Written
out, forward and backward each need one vocabulary-sized buffer and a few in-place passes over it, where
autograd through log_softmax keeps more vocabulary-sized intermediates alive and makes more passes. The
values equal :func:`kd_kl_loss` / :func:`kd_kl_loss_topk` of the tempered log-probabilities (tests compare
values and gradients).
"""

import torch


def _f32(x):
    # float32 at least: half-precision logits are upcast, float64 ones (tests) kept
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _masked_sum(kl, ignore_mask, reduce):
    if ignore_mask is not None:
        kl = kl.masked_fill(ignore_mask, 0.0)
    return kl.sum() if reduce else kl


class _TemperedKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student_logits, teacher_logits, temperature):
        # (N, V) each. With t = z_t / T shifted by its row maximum and s = z_s / T, per row
        # KL(q || p) = sum_v q_v (t_v - s_v) - log sum_v exp(t_v) + lse(s), as sum_v q_v = 1.
        # Two vocabulary-sized buffers: t becomes q in place, s becomes t - s in place.
        t = _f32(teacher_logits) / temperature
        t.sub_(t.amax(dim=-1, keepdim=True))
        s = _f32(student_logits) / temperature
        lse_s = torch.logsumexp(s, dim=-1, keepdim=True)
        d = s.sub_(t).neg_()  # t - s
        q = t.exp_()
        z = q.sum(dim=-1, keepdim=True)
        q.div_(z)
        kl = torch.linalg.vecdot(q, d) - z.log().squeeze(-1) + lse_s.squeeze(-1)
        del d, s
        ctx.temperature = temperature
        ctx.save_for_backward(student_logits, q, lse_s)
        return kl

    @staticmethod
    def backward(ctx, grad_kl):
        student_logits, q, lse_s = ctx.saved_tensors
        T = ctx.temperature
        grad = _f32(student_logits) / T
        grad.sub_(lse_s).exp_().sub_(q).mul_(grad_kl.unsqueeze(-1) / T)  # (p - q) / T
        return grad.to(student_logits.dtype), None, None


class _TemperedTopKKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student_logits, teacher_ids, teacher_lprobs, temperature):
        # per-row sum_{i in top-k} q_i (log q_i - s_i + lse(s)), q given on k ids only, summing to 1
        q = _f32(teacher_lprobs).exp()
        s = _f32(student_logits) / temperature
        lse_s = torch.logsumexp(s, dim=-1)
        kl = torch.xlogy(q, q).sum(-1) - torch.linalg.vecdot(q, s.gather(-1, teacher_ids)) + lse_s
        del s
        ctx.temperature = temperature
        ctx.save_for_backward(student_logits, teacher_ids, q, lse_s)
        return kl

    @staticmethod
    def backward(ctx, grad_kl):
        student_logits, teacher_ids, q, lse_s = ctx.saved_tensors
        T = ctx.temperature
        grad = _f32(student_logits) / T
        grad.sub_(lse_s.unsqueeze(-1)).exp_().scatter_add_(-1, teacher_ids, -q)
        grad.mul_(grad_kl.unsqueeze(-1) / T)  # (p - q) / T, q being 0 outside the top-k
        return grad.to(student_logits.dtype), None, None, None


def tempered_kl_from_logits(student_logits, teacher_logits, temperature=1.0, ignore_mask=None, reduce=True):
    """KL(softmax(z_t / T) || softmax(z_s / T)) per row of (N, V) logits, in float32; the gradient flows to
    the student's logits only.

    Args:
        student_logits (Tensor): (N, V), with gradient
        teacher_logits (Tensor): (N, V)
        temperature (float): T > 0
        ignore_mask (BoolTensor, optional): (N,) True where the position is padding
        reduce (bool): sum over rows
    """
    kl = _TemperedKL.apply(student_logits, teacher_logits.detach(), temperature)
    return _masked_sum(kl, ignore_mask, reduce)


def tempered_topk_kl_from_logits(student_logits, teacher_ids, teacher_lprobs, temperature=1.0, ignore_mask=None, reduce=True):
    """KL(q~ || softmax(z_s / T)) over the teacher's k tokens, q~ given by *teacher_lprobs* (N, k) at *teacher_ids*
    (N, k), renormalised; see :func:`~fairseq_kd.criterions.label_smoothed_cross_entropy_with_kd.kd_kl_loss_topk`."""
    kl = _TemperedTopKKL.apply(student_logits, teacher_ids, teacher_lprobs.detach(), temperature)
    return _masked_sum(kl, ignore_mask, reduce)
