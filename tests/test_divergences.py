"""The divergences of --kd-divergence: the plain definitions (kd_losses.divergence) and the fused losses
(fused_kd.tempered_divergence_from_logits) against independent float64 formulas written here, gradcheck,
and the limits (beta 0 and 1, p = q, T != 1, top-k teachers)."""

import math
import unittest

import torch
import torch.nn.functional as F

import fairseq_kd  # noqa: F401
from fairseq_kd.criterions.fused_kd import tempered_divergence_from_logits, tempered_kl_from_logits
from fairseq_kd.criterions.kd_losses import DIVERGENCES, defined_on_topk, divergence, effective_divergence


def reference(student_logits, teacher_logits, kind, beta, temperature):
    """D(q, p) per row in float64, each from its textbook formula with probabilities (not log-probabilities)."""
    p = F.softmax(student_logits.double() / temperature, -1)
    q = F.softmax(teacher_logits.double() / temperature, -1)

    def kl(a, b):
        return (a * (a / b).log()).sum(-1)

    if kind == "forward_kl":
        return kl(q, p)
    if kind == "reverse_kl":
        return kl(p, q)
    if kind == "tvd":
        return (p - q).abs().sum(-1) / 2
    if kind == "jsd":
        m = beta * q + (1 - beta) * p
        return beta * kl(q, m) + (1 - beta) * kl(p, m)
    return kl(q, beta * q + (1 - beta) * p)  # skew_kl


CASES = [("forward_kl", None), ("reverse_kl", None), ("tvd", None), ("jsd", 0.1), ("jsd", 0.5), ("jsd", 0.9),
         ("skew_kl", 0.1), ("skew_kl", 0.7)]  # fmt: skip


class TestDivergences(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.student = torch.randn(6, 13, dtype=torch.float64) * 2
        self.teacher = torch.randn(6, 13, dtype=torch.float64) * 2
        self.mask = torch.tensor([False, True, False, False, True, False])

    def test_plain_and_fused_values_equal_the_textbook_formulas(self):
        for kind, beta in CASES:
            for temperature in (1.0, 2.5):
                with self.subTest(kind=kind, beta=beta, T=temperature):
                    expected = reference(self.student, self.teacher, kind, beta, temperature).masked_fill(self.mask, 0)
                    log_p = F.log_softmax(self.student / temperature, -1)
                    log_q = F.log_softmax(self.teacher / temperature, -1)
                    plain = divergence(log_p, log_q, kind, beta, self.mask, reduce=False)
                    fused = tempered_divergence_from_logits(
                        self.student, self.teacher, kind, beta, temperature, ignore_mask=self.mask, reduce=False
                    )
                    torch.testing.assert_close(plain, expected, rtol=1e-10, atol=1e-12)
                    torch.testing.assert_close(fused, expected, rtol=1e-10, atol=1e-12)
                    self.assertTrue((expected[~self.mask] > 0).all())

    def test_fused_gradient_equals_autograd_through_the_definition(self):
        for kind, beta in CASES:
            for temperature in (1.0, 2.5):
                with self.subTest(kind=kind, beta=beta, T=temperature):
                    weights = torch.rand(6, dtype=torch.float64)  # a non-uniform incoming gradient
                    s1 = self.student.clone().requires_grad_()
                    (reference(s1, self.teacher, kind, beta, temperature) * weights).sum().backward()
                    s2 = self.student.clone().requires_grad_()
                    fused = tempered_divergence_from_logits(s2, self.teacher, kind, beta, temperature, reduce=False)
                    (fused * weights).sum().backward()
                    torch.testing.assert_close(s2.grad, s1.grad, rtol=1e-8, atol=1e-10)

    def test_gradcheck(self):
        for kind, beta in CASES:
            with self.subTest(kind=kind, beta=beta):
                s = (torch.randn(3, 5, dtype=torch.float64) * 2).requires_grad_()
                t = torch.randn(3, 5, dtype=torch.float64) * 2
                self.assertTrue(
                    torch.autograd.gradcheck(
                        lambda x: tempered_divergence_from_logits(x, t, kind, beta, 1.7, reduce=False), (s,)
                    )
                )

    def test_identical_distributions_give_zero_and_zero_gradient(self):
        for kind, beta in CASES:
            with self.subTest(kind=kind, beta=beta):
                s = self.teacher.clone().requires_grad_()
                loss = tempered_divergence_from_logits(s, self.teacher, kind, beta, 2.0)
                loss.backward()
                self.assertLess(abs(loss.item()), 1e-12)
                if kind != "tvd":  # total variation has only a subgradient at p = q
                    self.assertLess(s.grad.abs().max().item(), 1e-12)

    def test_beta_limits(self):
        # TRL's convention: JSD at beta 0 is forward KL and at beta 1 reverse KL; skew KL at 0 is forward KL
        forward = reference(self.student, self.teacher, "forward_kl", None, 1.0)
        reverse = reference(self.student, self.teacher, "reverse_kl", None, 1.0)
        for kind, beta, expected in (("jsd", 0.0, forward), ("jsd", 1.0, reverse), ("skew_kl", 0.0, forward)):
            got = tempered_divergence_from_logits(self.student, self.teacher, kind, beta, reduce=False)
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
        # near the ends the mixture's JSD tends to 0, as beta times forward KL (beta -> 0) and as
        # (1 - beta) times reverse KL (beta -> 1)
        small = tempered_divergence_from_logits(self.student, self.teacher, "jsd", 1e-6, reduce=False)
        torch.testing.assert_close(small / 1e-6, forward, rtol=1e-3, atol=1e-6)
        large = tempered_divergence_from_logits(self.student, self.teacher, "jsd", 1 - 1e-6, reduce=False)
        torch.testing.assert_close(large / 1e-6, reverse, rtol=1e-3, atol=1e-6)
        self.assertEqual(effective_divergence("jsd", 0.0), ("forward_kl", None))
        self.assertEqual(effective_divergence("jsd"), ("jsd", 0.5))
        self.assertEqual(effective_divergence("skew_kl"), ("skew_kl", 0.1))

    def test_beta_out_of_range_is_refused(self):
        for kind, beta in (("jsd", -0.1), ("jsd", 1.5), ("skew_kl", 1.0), ("skew_kl", math.nan)):
            with self.subTest(kind=kind, beta=beta), self.assertRaisesRegex(ValueError, "--kd-beta"):
                effective_divergence(kind, beta)

    def test_forward_kl_equals_the_existing_fused_kl(self):
        for temperature in (1.0, 3.0):
            a = tempered_divergence_from_logits(self.student, self.teacher, "forward_kl", None, temperature, reduce=False)
            b = tempered_kl_from_logits(self.student, self.teacher, temperature, reduce=False)
            torch.testing.assert_close(a, b)

    def test_teacher_log_probs_and_overwritten_buffer(self):
        # an ensemble's mean comes as tempered log-probabilities; float32 teacher logits given up hold the gradient
        temperature = 2.0
        log_q = F.log_softmax(self.teacher / temperature, -1)
        for kind, beta in CASES:
            with self.subTest(kind=kind, beta=beta):
                s1 = self.student.clone().requires_grad_()
                a = tempered_divergence_from_logits(s1, log_q, kind, beta, temperature, teacher_is_log_probs=True)
                a.backward()
                s2 = self.student.float().requires_grad_()
                teacher = self.teacher.float().contiguous()
                b = tempered_divergence_from_logits(s2, teacher, kind, beta, temperature, overwrite_teacher=True)
                b.backward()
                torch.testing.assert_close(b.double(), a, rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(s2.grad.double(), s1.grad, rtol=1e-4, atol=1e-6)
                torch.testing.assert_close(teacher, s2.grad)  # the teacher's memory became the gradient

    def test_topk_teacher(self):
        # q given on k tokens (renormalised), 0 elsewhere: the fused loss equals the definition on that dense q
        k = 4
        values, ids = F.log_softmax(self.teacher, -1).topk(k, -1)
        q_topk = values - values.logsumexp(-1, keepdim=True)
        dense = torch.full_like(self.teacher, -math.inf).scatter(-1, ids, q_topk)
        for kind, beta in CASES:
            with self.subTest(kind=kind, beta=beta):
                if not defined_on_topk(kind, beta):
                    with self.assertRaisesRegex(ValueError, "top-k"):
                        tempered_divergence_from_logits(self.student, q_topk, kind, beta, teacher_ids=ids)
                    continue
                s1 = self.student.clone().requires_grad_()
                expected = divergence(F.log_softmax(s1, -1), dense, kind, beta, reduce=False)
                (expected * torch.arange(1.0, 7.0, dtype=torch.float64)).sum().backward()
                s2 = self.student.clone().requires_grad_()
                got = tempered_divergence_from_logits(s2, q_topk, kind, beta, teacher_ids=ids, reduce=False)
                (got * torch.arange(1.0, 7.0, dtype=torch.float64)).sum().backward()
                self.assertTrue(torch.isfinite(got).all())
                torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
                torch.testing.assert_close(s2.grad, s1.grad, rtol=1e-8, atol=1e-10)

    def test_many_rows_in_chunks_and_half_precision(self):
        torch.manual_seed(1)
        student = torch.randn(300, 700) * 3
        teacher = torch.randn(300, 700) * 3
        for kind, beta in CASES:
            with self.subTest(kind=kind, beta=beta):
                expected = reference(student, teacher, kind, beta, 1.5)
                got = tempered_divergence_from_logits(student.half(), teacher.half(), kind, beta, 1.5, reduce=False)
                self.assertEqual(got.dtype, torch.float32)
                expected_half = reference(student.half().float(), teacher.half().float(), kind, beta, 1.5)
                torch.testing.assert_close(got.double(), expected_half, rtol=1e-4, atol=1e-5)
                self.assertLess((got.double() - expected).abs().max().item(), 0.05)

    def test_every_choice_is_covered(self):
        self.assertEqual({kind for kind, _ in CASES}, set(DIVERGENCES))


if __name__ == "__main__":
    unittest.main()
