import math
import unittest
from unittest import mock

import torch
import torch.nn.functional as F

import fairseq_kd  # noqa: F401
from fairseq_kd.criterions import fused_kd
from fairseq_kd.criterions.fused_kd import tempered_kl_from_logits, tempered_topk_kl_from_logits
from fairseq_kd.criterions.kd_losses import (
    hidden_cosine_loss,
    kd_kl_loss,
    kd_kl_loss_topk,
    tempered_log_probs,
    topk_log_probs,
)
from fairseq_kd.models.student_init import spread_layers


def reference_kl(student_logits, teacher_logits, temperature, mask=None):
    """KL(q^T || p^T) per position from torch.nn.functional.kl_div, independently of the code under test."""
    p = F.log_softmax(student_logits.double() / temperature, dim=-1)
    q = F.log_softmax(teacher_logits.double() / temperature, dim=-1)
    kl = F.kl_div(p, q, log_target=True, reduction="none").sum(-1)
    if mask is not None:
        kl = kl.masked_fill(mask, 0.0)
    return kl


class TestKDKLLoss(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.student = torch.randn(5, 7, 11) * 3
        self.teacher = torch.randn(5, 7, 11) * 3
        self.mask = torch.rand(5, 7) < 0.3

    def kd(self, student, teacher, temperature, mask=None, reduce=True):
        return kd_kl_loss(tempered_log_probs(student, temperature), tempered_log_probs(teacher, temperature), mask, reduce)

    def test_matches_kl_div(self):
        for temperature in (0.5, 1.0, 2.0, 5.0):
            expected = reference_kl(self.student, self.teacher, temperature, self.mask)
            got = self.kd(self.student, self.teacher, temperature, self.mask, reduce=False)
            torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(
                self.kd(self.student, self.teacher, temperature, self.mask).double(), expected.sum(), rtol=1e-5, atol=1e-5
            )

    def test_zero_when_student_equals_teacher(self):
        for temperature in (0.5, 1.0, 2.0, 5.0):
            kl = self.kd(self.teacher, self.teacher.clone(), temperature, reduce=False)
            self.assertLess(kl.abs().max().item(), 1e-5)

    def test_non_negative(self):
        for seed in range(5):
            torch.manual_seed(seed)
            kl = self.kd(torch.randn(4, 9) * 4, torch.randn(4, 9) * 4, 1.5, reduce=False)
            self.assertTrue((kl > -1e-6).all())

    def test_padding_contributes_nothing(self):
        # changing the logits at padded positions changes nothing
        noisy = self.student.clone()
        noisy[self.mask] = torch.randn_like(noisy[self.mask]) * 100
        a = self.kd(self.student, self.teacher, 2.0, self.mask)
        b = self.kd(noisy, self.teacher, 2.0, self.mask)
        torch.testing.assert_close(a, b)
        unreduced = self.kd(noisy, self.teacher, 2.0, self.mask, reduce=False)
        self.assertTrue((unreduced[self.mask] == 0).all())

    def test_all_padding_gives_zero_not_nan(self):
        loss = self.kd(self.student, self.teacher, 1.0, torch.ones(5, 7, dtype=torch.bool))
        self.assertEqual(loss.item(), 0.0)

    def test_teacher_zero_probabilities_are_finite(self):
        teacher = self.teacher.clone()
        teacher[..., 0] = -math.inf  # q_0 = 0: 0 * log 0 must count as 0
        loss = self.kd(self.student, teacher, 1.0)
        self.assertTrue(torch.isfinite(loss))
        p, q = F.log_softmax(self.student.double(), -1), F.softmax(teacher.double(), -1)
        expected = torch.where(q > 0, q * (q.log() - p), 0.0).sum()
        torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)

    def test_half_precision_inputs_computed_in_float32(self):
        for dtype in (torch.float16, torch.bfloat16):
            s, t = self.student.to(dtype), self.teacher.to(dtype)
            got = self.kd(s, t, 2.0, self.mask)
            self.assertEqual(got.dtype, torch.float32)
            expected = reference_kl(s.float(), t.float(), 2.0, self.mask).sum()
            torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-4)

    def test_gradient_is_softmax_difference_over_temperature(self):
        # d KL(q^T || softmax(z / T)) / dz = (p^T - q^T) / T
        for temperature in (1.0, 3.0):
            z = self.student.clone().requires_grad_(True)
            self.kd(z, self.teacher, temperature).backward()
            expected = (F.softmax(self.student / temperature, -1) - F.softmax(self.teacher / temperature, -1)) / temperature
            torch.testing.assert_close(z.grad, expected, rtol=1e-4, atol=1e-6)

    def test_gradient_against_finite_differences(self):
        z = torch.randn(2, 5, dtype=torch.double, requires_grad=True)
        t = torch.randn(2, 5, dtype=torch.double)
        self.assertTrue(
            torch.autograd.gradcheck(lambda x: kd_kl_loss(F.log_softmax(x / 2, -1), F.log_softmax(t / 2, -1)), (z,))
        )

    def test_ensemble_is_log_of_mean_distribution(self):
        a, b = torch.randn(3, 6), torch.randn(3, 6)
        expected = torch.log((F.softmax(a / 2, -1) + F.softmax(b / 2, -1)) / 2)
        torch.testing.assert_close(tempered_log_probs([a, b], 2.0), expected)
        torch.testing.assert_close(tempered_log_probs([a], 2.0), F.log_softmax(a / 2, -1))


class TestHiddenCosineLoss(unittest.TestCase):
    def test_matches_explicit_formula(self):
        torch.manual_seed(0)
        s, t = torch.randn(4, 3, 8), torch.randn(4, 3, 8)
        mask = torch.tensor([[False, False, True]] * 4)
        expected = 1 - (s * t).sum(-1) / (s.norm(dim=-1) * t.norm(dim=-1))
        expected = expected.masked_fill(mask, 0)
        torch.testing.assert_close(hidden_cosine_loss(s, t, mask, reduce=False), expected)
        torch.testing.assert_close(hidden_cosine_loss(s, t, mask), expected.sum())

    def test_zero_for_equal_or_parallel_states(self):
        s = torch.randn(5, 2, 8)
        self.assertLess(hidden_cosine_loss(s, s.clone()).abs().item(), 1e-5)
        self.assertLess(hidden_cosine_loss(s, 3.0 * s).abs().item(), 1e-5)
        self.assertAlmostEqual(hidden_cosine_loss(s, -s).item(), 2.0 * 10, places=4)

    def test_unequal_sizes_are_an_error(self):
        with self.assertRaisesRegex(ValueError, "equal shape"):
            hidden_cosine_loss(torch.randn(2, 3, 8), torch.randn(2, 3, 16))


class TestPairLayers(unittest.TestCase):
    def test_last_layer_of_each_block(self):
        self.assertEqual(spread_layers(6, 3), [1, 3, 5])
        self.assertEqual(spread_layers(24, 3), [7, 15, 23])
        self.assertEqual(spread_layers(2, 2), [0, 1])
        self.assertEqual(spread_layers(4, 1), [3])
        self.assertEqual(spread_layers(3, 2), [1, 2])

    def test_deeper_student_repeats_teacher_layers(self):
        self.assertEqual(spread_layers(2, 4), [0, 0, 1, 1])


if __name__ == "__main__":
    unittest.main()


class TestFusedKL(unittest.TestCase):
    """The closed-form-gradient losses against autograd through the pure functions."""

    def setUp(self):
        torch.manual_seed(0)
        self.student = torch.randn(9, 17, dtype=torch.float64, requires_grad=True)
        self.teacher = 4 * torch.randn(9, 17, dtype=torch.float64)
        self.mask = torch.tensor([0, 1, 0, 0, 0, 1, 0, 0, 0], dtype=torch.bool)

    def test_full_vocabulary_value_and_gradient(self):
        for T in (1.0, 0.5, 3.0):
            fused = tempered_kl_from_logits(self.student, self.teacher, T, self.mask)
            (g_fused,) = torch.autograd.grad(fused, self.student)
            reference = kd_kl_loss(tempered_log_probs(self.student, T), tempered_log_probs(self.teacher, T), self.mask)
            (g_reference,) = torch.autograd.grad(reference, self.student)
            torch.testing.assert_close(fused, reference)
            torch.testing.assert_close(g_fused, g_reference)
        self.assertTrue(
            torch.autograd.gradcheck(lambda z: tempered_kl_from_logits(z, self.teacher, 2.0, self.mask), (self.student,))
        )

    def test_chunked_rows_and_log_prob_inputs(self):
        # chunks of 2 rows and log-probabilities instead of logits give the same value and gradient
        reference = tempered_kl_from_logits(self.student, self.teacher, 2.0, self.mask)
        (g_reference,) = torch.autograd.grad(reference, self.student)
        with mock.patch.object(fused_kd, "_CHUNKS", 5), mock.patch.object(fused_kd, "_MIN_CHUNK_ELEMENTS", 1):
            lprobs = torch.log_softmax(self.student, dim=-1)
            chunked = tempered_kl_from_logits(lprobs, self.teacher, 2.0, self.mask)
            (g_chunked,) = torch.autograd.grad(chunked, self.student)
        torch.testing.assert_close(chunked, reference)
        torch.testing.assert_close(g_chunked, g_reference)

    def test_overwritten_teacher_holds_the_gradient_once(self):
        teacher = self.teacher.clone()
        reference = kd_kl_loss(tempered_log_probs(self.student, 2.0), tempered_log_probs(self.teacher, 2.0), self.mask)
        (g_reference,) = torch.autograd.grad(3 * reference, self.student)
        kl = tempered_kl_from_logits(self.student, teacher, 2.0, self.mask, overwrite_teacher=True)
        self.assertFalse(torch.equal(teacher, self.teacher))  # its memory now holds the gradient
        (g,) = torch.autograd.grad(3 * kl, self.student, retain_graph=True)
        torch.testing.assert_close(kl, reference)
        torch.testing.assert_close(g, g_reference)
        with self.assertRaisesRegex(RuntimeError, "modified by an inplace operation"):
            torch.autograd.grad(kl, self.student)
        # half-precision teacher logits are not overwritten: the gradient needs float32
        teacher = self.teacher.half()
        kept = teacher.clone()
        tempered_kl_from_logits(self.student.float(), teacher, 2.0, self.mask, overwrite_teacher=True)
        self.assertTrue(torch.equal(teacher, kept))

    def test_no_gradient_buffer_without_gradients(self):
        with torch.no_grad():
            kl = tempered_kl_from_logits(self.student, self.teacher, 2.0, self.mask)
        reference = kd_kl_loss(tempered_log_probs(self.student, 2.0), tempered_log_probs(self.teacher, 2.0), self.mask)
        torch.testing.assert_close(kl, reference.detach())

    def test_topk_value_and_gradient(self):
        for T in (1.0, 2.5):
            ids, q = topk_log_probs(tempered_log_probs(self.teacher, T), 5)
            fused = tempered_topk_kl_from_logits(self.student, ids, q, T, self.mask)
            (g_fused,) = torch.autograd.grad(fused, self.student)
            reference = kd_kl_loss_topk(tempered_log_probs(self.student, T), ids, q, self.mask)
            (g_reference,) = torch.autograd.grad(reference, self.student)
            torch.testing.assert_close(fused, reference)
            torch.testing.assert_close(g_fused, g_reference)
        self.assertTrue(
            torch.autograd.gradcheck(lambda z: tempered_topk_kl_from_logits(z, ids, q, 2.5, self.mask), (self.student,))
        )

    def test_topk_in_row_chunks_and_half_precision(self):
        ids, q = topk_log_probs(tempered_log_probs(self.teacher, 2.0), 5)
        reference = kd_kl_loss_topk(tempered_log_probs(self.student, 2.0), ids, q, self.mask)
        (g_reference,) = torch.autograd.grad(reference, self.student)
        with mock.patch.object(fused_kd, "_CHUNKS", 5), mock.patch.object(fused_kd, "_MIN_CHUNK_ELEMENTS", 1):
            chunked = tempered_topk_kl_from_logits(self.student, ids, q, 2.0, self.mask)
            (g_chunked,) = torch.autograd.grad(chunked, self.student)
        torch.testing.assert_close(chunked, reference)
        torch.testing.assert_close(g_chunked, g_reference)
        # half-precision logits: the loss in float32, the gradient in the logits' dtype
        student = self.student.detach().half().requires_grad_()
        kl = tempered_topk_kl_from_logits(student, ids, q.half(), 2.0, self.mask)
        self.assertEqual(kl.dtype, torch.float32)
        torch.testing.assert_close(kl.double(), reference.detach(), rtol=0.02, atol=0.02)
        kl.backward()
        self.assertEqual(student.grad.dtype, torch.float16)
        torch.testing.assert_close(student.grad.double(), g_reference, rtol=0.02, atol=0.02)

    def test_half_precision_logits_and_unreduced_rows(self):
        student = self.student.detach().half().requires_grad_()
        kl = tempered_kl_from_logits(student, self.teacher.half(), 2.0, self.mask, reduce=False)
        self.assertEqual(kl.dtype, torch.float32)
        self.assertTrue(torch.equal(kl[self.mask], torch.zeros(2)))
        reference = kd_kl_loss(
            tempered_log_probs(self.student.detach(), 2.0), tempered_log_probs(self.teacher, 2.0), self.mask, reduce=False
        )
        torch.testing.assert_close(kl.double(), reference, rtol=0.02, atol=0.02)
        kl.sum().backward()
        self.assertEqual(student.grad.dtype, torch.float16)
        self.assertTrue(torch.equal(student.grad[self.mask], torch.zeros(2, 17, dtype=torch.float16)))
