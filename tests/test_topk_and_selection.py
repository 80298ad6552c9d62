"""Top-k KD (live and cached) and selective KD: the math against independent computations."""

import copy
import math
import unittest

import torch
import torch.nn.functional as F

from fairseq_kd.criterions.kd_losses import kd_kl_loss, kd_kl_loss_topk, topk_log_probs
from fairseq_kd.criterions.token_selection import SelectionQueue, select_top_tokens
from fairseq_kd.teacher import TeacherTargets
from tests.test_kd_criterion import KDCriterionTestCase


class TestTopKMath(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.teacher = torch.randn(6, 11).log_softmax(-1)
        self.student = torch.randn(6, 11).log_softmax(-1)

    def test_renormalised_topk(self):
        ids, lprobs = topk_log_probs(self.teacher, 3)
        q = self.teacher.exp()
        for row in range(6):
            top = q[row].argsort(descending=True)[:3]
            self.assertEqual(set(ids[row].tolist()), set(top.tolist()))
            expected = q[row, ids[row]] / q[row, ids[row]].sum()
            torch.testing.assert_close(lprobs[row].exp(), expected)

    def test_topk_kl_against_the_formula(self):
        ids, lprobs = topk_log_probs(self.teacher, 4)
        q = lprobs.double().exp()
        p = self.student.double().gather(-1, ids)
        expected = (q * (q.log() - p)).sum(-1)
        torch.testing.assert_close(
            kd_kl_loss_topk(self.student, ids, lprobs, reduce=False).double(), expected, rtol=1e-5, atol=1e-6
        )

    def test_k_equal_to_vocabulary_is_the_full_kl(self):
        ids, lprobs = topk_log_probs(self.teacher, 11)
        torch.testing.assert_close(kd_kl_loss_topk(self.student, ids, lprobs), kd_kl_loss(self.student, self.teacher))

    def test_zero_when_student_equals_the_renormalised_teacher(self):
        ids, lprobs = topk_log_probs(self.teacher, 3)
        student = torch.full_like(self.teacher, -1e4).scatter(-1, ids, lprobs).log_softmax(-1)
        self.assertLess(kd_kl_loss_topk(student, ids, lprobs).abs().item(), 1e-5)

    def test_temperature_of_cached_log_probs(self):
        # the cache keeps log q at T=1; softmax(log q_topk / T) is the renormalised top-k of softmax(z / T)
        logits = torch.randn(5, 9)
        T = 2.5
        ids, cached = topk_log_probs(logits.log_softmax(-1), 4)
        from_cache = F.log_softmax(cached / T, dim=-1)
        ids_T, direct = topk_log_probs((logits / T).log_softmax(-1), 4)
        self.assertTrue(torch.equal(ids, ids_T))
        torch.testing.assert_close(from_cache, direct)


class TestSelectionMath(unittest.TestCase):
    def test_batch_selection_takes_the_highest_cross_entropies(self):
        nll = torch.tensor([0.5, 3.0, 0.1, 2.0, 9.0, 1.0])
        pad = torch.tensor([False, False, False, False, True, False])  # 9.0 is padding
        selected = select_top_tokens(nll, pad, 0.5)  # ceil(0.5 * 5) = 3 of the 5 real tokens
        self.assertEqual(selected.tolist(), [False, True, False, True, False, True])
        self.assertEqual(select_top_tokens(nll, pad, 1.0).tolist(), (~pad).tolist())
        self.assertEqual(select_top_tokens(nll, pad, 0.01).tolist(), [False, True, False, False, False, False])

    def test_global_queue_threshold(self):
        queue = SelectionQueue(size=8)
        pad = torch.zeros(4, dtype=torch.bool)
        queue.push(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        # the queue is now 1..8 (the batch's 5..8 included): its 0.75 quantile (ratio 0.25) is 6.25,
        # so the top quarter of the queue, 7 and 8, is selected
        selected = queue.select(torch.tensor([5.0, 6.0, 7.0, 8.0]), pad, 0.25)
        self.assertEqual(selected.tolist(), [False, False, True, True])
        self.assertEqual(len(queue.values), 8)
        queue.select(torch.tensor([0.0, 0.0, 0.0, 0.0]), pad, 0.25)
        self.assertEqual(queue.values[:4].tolist(), [5.0, 6.0, 7.0, 8.0])  # first in, first out


class TestCriterionTopKAndSelection(KDCriterionTestCase):
    def test_live_topk_equals_the_formula_on_the_teachers_tempered_distribution(self):
        T, k = 2.0, 3
        _, _, log = self.run_criterion(self.build(kd_weight=1.0, kd_temperature=T, kd_topk=k))
        s, t, _, _ = self.student_and_teacher_logits()
        pad = self.sample["target"].eq(self.dictionary.pad()).view(-1)
        ids, q = topk_log_probs(F.log_softmax(t.double() / T, -1).view(-1, t.size(-1)), k)
        p = F.log_softmax(s.double() / T, -1).view(-1, s.size(-1)).gather(-1, ids)
        expected = (q.exp() * (q - p)).sum(-1).masked_fill(pad, 0).sum()
        torch.testing.assert_close(log["kd_loss"].double(), expected, rtol=1e-5, atol=1e-5)

    def test_batch_selection_applies_kd_to_the_chosen_tokens_only(self):
        T, ratio = 2.0, 0.4
        loss, _, log = self.run_criterion(
            self.build(kd_weight=1.0, kd_temperature=T, kd_selection="batch", kd_selection_ratio=ratio)
        )
        s, t, _, _ = self.student_and_teacher_logits()
        target = self.sample["target"].view(-1)
        pad = target.eq(self.dictionary.pad())
        nll = -F.log_softmax(s.double(), -1).view(-1, s.size(-1)).gather(-1, target[:, None]).squeeze(-1)
        n = int((~pad).sum())
        chosen = nll.masked_fill(pad, -math.inf).argsort(descending=True)[: math.ceil(ratio * n)]
        q = F.softmax(t.double() / T, -1).view(-1, t.size(-1))
        p = F.log_softmax(s.double() / T, -1).view(-1, s.size(-1))
        kl = (q * (q.log() - p)).sum(-1)
        torch.testing.assert_close(log["kd_loss"].double(), kl[chosen].sum(), rtol=1e-5, atol=1e-5)
        self.assertEqual(log["kd_tokens"], math.ceil(ratio * n))

        everything = self.run_criterion(
            self.build(kd_weight=1.0, kd_temperature=T, kd_selection="batch", kd_selection_ratio=1.0)
        )
        plain = self.run_criterion(self.build(kd_weight=1.0, kd_temperature=T))
        torch.testing.assert_close(everything[0], plain[0])

    def test_selection_is_training_only(self):
        criterion = self.build(kd_weight=1.0, kd_selection="batch", kd_selection_ratio=0.2)
        with torch.no_grad():
            _, _, log = self.run_criterion(criterion, training=False)
        _, _, full = self.run_criterion(self.build(kd_weight=1.0), training=False)
        torch.testing.assert_close(log["kd_loss"], full["kd_loss"])
        self.assertNotIn("kd_tokens", log)

    def test_cached_topk_input(self):
        T, k = 2.0, 4
        criterion = self.build(kd_weight=1.0, kd_temperature=T)
        _, t, _, _ = self.student_and_teacher_logits()
        ids, cached = topk_log_probs(F.log_softmax(t, -1), k)  # what the cache stores (at T=1)
        sample = copy.copy(self.sample)
        sample["teacher"] = TeacherTargets(topk_ids=ids, topk_scores=cached.half())
        self.student.train()
        _, _, log = criterion(self.student, sample)
        live = self.run_criterion(self.build(kd_weight=1.0, kd_temperature=T, kd_topk=k))[2]
        torch.testing.assert_close(log["kd_loss"], live["kd_loss"], rtol=2e-3, atol=2e-3)  # float16 storage

    def test_bad_settings(self):
        cases = [
            (dict(kd_weight=1.0, kd_topk=-1), "--kd-topk must be >= 0"),
            (dict(kd_selection="batch"), "--kd-weight is 0"),
            (dict(kd_weight=1.0, kd_selection="batch", kd_selection_ratio=0.0), "--kd-selection-ratio must be in \\(0, 1\\]"),
            (dict(kd_weight=1.0, kd_selection="global", kd_selection_queue_size=0), "--kd-selection-queue-size must be >= 1"),
        ]
        for kwargs, message in cases:
            with self.subTest(**kwargs), self.assertRaisesRegex(ValueError, message):
                self.build(**kwargs)


if __name__ == "__main__":
    unittest.main()
