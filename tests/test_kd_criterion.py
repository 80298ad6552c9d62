import argparse
import copy
import dataclasses
import math
import tempfile
import unittest
from unittest import mock

import torch
import torch.nn.functional as F
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.logging import metrics

import fairseq_kd  # noqa: F401
from fairseq_kd.criterions.kd_losses import divergence
from fairseq_kd.criterions.label_smoothed_cross_entropy_with_kd import (
    LabelSmoothedCrossEntropyWithKDCriterion,
    LabelSmoothedCrossEntropyWithKDCriterionConfig,
)
from tests.test_divergences import CASES, reference
from tests.test_kd_losses import reference_kl
from tests.utils import TINY_ARCH, build_task_and_model, make_sample, write_dictionaries

LENGTHS = [(5, 4), (3, 6), (7, 2), (2, 5)]  # unequal lengths, so the batch has padding on both sides


def criterion_args(**kwargs):
    """The criterion's settings: its config's defaults (fairseq's interpolations resolved as a run without
    --sentence-avg), with NLL alone unless KWARGS say otherwise."""
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(LabelSmoothedCrossEntropyWithKDCriterionConfig)
        if f.name != "_name" and not str(f.default).startswith("${")
    }
    defaults.update(sentence_avg=False, label_smoothing=0.1, nll_weight=1.0, kd_weight=0.0)
    defaults.update(kwargs)
    return argparse.Namespace(**defaults)


class KDCriterionTestCase(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.tmp = tempfile.TemporaryDirectory()
        self.dictionary = write_dictionaries(self.tmp.name)
        _, self.task, self.student = build_task_and_model(self.tmp.name, extra_flags=["--teacher-path", "teacher.pt"])
        # a different model of the same shape plays the teacher
        _, _, self.teacher = build_task_and_model(self.tmp.name)
        self.task.teachers = [self.teacher.eval()]
        self.sample = make_sample(self.dictionary, LENGTHS)

    def tearDown(self):
        self.tmp.cleanup()

    def build(self, **kwargs):
        return LabelSmoothedCrossEntropyWithKDCriterion.build_criterion(criterion_args(**kwargs), self.task)

    def run_criterion(self, criterion, sample=None, model=None, training=True, reduce=True):
        model = model or self.student
        sample = copy.copy(sample or self.sample)
        model.train(training)
        self.task.add_teacher_targets(sample, model, criterion)
        return criterion(model, sample, reduce=reduce)

    def student_and_teacher_logits(self, sample=None):
        sample = sample or self.sample
        with torch.no_grad():
            s, s_extra = self.student(**sample["net_input"])
            t, t_extra = self.teacher(**sample["net_input"])
        return s, t, s_extra, t_extra


class TestReducesToLabelSmoothedCrossEntropy(KDCriterionTestCase):
    def test_kd_weight_zero_equals_label_smoothed_cross_entropy(self):
        stock = LabelSmoothedCrossEntropyCriterion(self.task, sentence_avg=False, label_smoothing=0.1)
        self.student.train()
        expected_loss, expected_size, expected_log = stock(self.student, copy.copy(self.sample))
        for kwargs in (dict(kd_weight=0.0), dict(kd_weight=0.0, cosine_weight=0.0, kd_temperature=3.0)):
            loss, size, log = self.run_criterion(self.build(**kwargs))
            self.assertTrue(torch.equal(loss, expected_loss))
            self.assertEqual(size, expected_size)
            self.assertTrue(torch.equal(log["nll_loss"], expected_log["nll_loss"]))
            self.assertNotIn("kd_loss", log)

    def test_validation_loss_is_label_smoothed_nll_at_temperature_one(self):
        stock = LabelSmoothedCrossEntropyCriterion(self.task, sentence_avg=False, label_smoothing=0.1)
        self.student.eval()
        with torch.no_grad():
            expected_loss, _, _ = stock(self.student, copy.copy(self.sample))
        criterion = self.build(nll_weight=0.3, kd_weight=2.0, kd_temperature=4.0)
        with torch.no_grad():
            loss, _, log = self.run_criterion(criterion, training=False)
        self.assertTrue(torch.equal(loss, expected_loss))
        s, t, _, _ = self.student_and_teacher_logits()
        expected_kd = reference_kl(s, t, 1.0, self.sample["target"].eq(self.dictionary.pad())).sum()
        torch.testing.assert_close(log["kd_loss"].double(), expected_kd, rtol=1e-5, atol=1e-5)


class TestKDTerms(KDCriterionTestCase):
    def test_zero_kd_and_cosine_when_student_equals_teacher(self):
        self.task.teachers = [copy.deepcopy(self.student).eval()]
        for temperature in (1.0, 2.0):
            criterion = self.build(kd_weight=1.0, kd_temperature=temperature, cosine_weight=1.0, cosine_encoder=True)
            _, _, log = self.run_criterion(criterion)
            self.assertLess(abs(log["kd_loss"].item()), 1e-4)
            self.assertLess(abs(log["cos_loss"].item()), 1e-4)

    def test_loss_is_weighted_sum_with_temperature_squared(self):
        nll_w, kd_w, cos_w, T = 0.3, 0.7, 0.2, 2.0
        criterion = self.build(nll_weight=nll_w, kd_weight=kd_w, kd_temperature=T, cosine_weight=cos_w)
        loss, _, log = self.run_criterion(criterion)

        ls_loss, _, _ = self.run_criterion(self.build(nll_weight=1.0))
        s, t, s_extra, t_extra = self.student_and_teacher_logits()
        pad = self.sample["target"].eq(self.dictionary.pad())  # B x T
        kl = reference_kl(s, t, T, pad).sum()
        # decoder layers, student i <-> teacher i for equal depths; states are T x B x C
        cos = []
        for hs, ht in zip(s_extra["inner_states"][1:], t_extra["inner_states"][1:]):
            c = 1 - F.cosine_similarity(hs.transpose(0, 1).double(), ht.transpose(0, 1).double(), dim=-1)
            cos.append(c.masked_fill(pad, 0).sum())
        cos = sum(cos) / len(cos)

        torch.testing.assert_close(log["kd_loss"].double(), kl, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(log["cos_loss"].double(), cos, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            loss.double(), nll_w * ls_loss.double() + kd_w * T**2 * kl + cos_w * cos, rtol=1e-5, atol=1e-4
        )

    def test_every_divergence_is_weighted_with_temperature_squared(self):
        nll_w, kd_w, T = 0.4, 0.6, 1.5
        ls_loss, _, _ = self.run_criterion(self.build(nll_weight=1.0))
        s, t, _, _ = self.student_and_teacher_logits()
        pad = self.sample["target"].eq(self.dictionary.pad()).reshape(-1)
        for kind, beta in CASES:
            with self.subTest(kind=kind, beta=beta):
                criterion = self.build(nll_weight=nll_w, kd_weight=kd_w, kd_temperature=T, kd_divergence=kind, kd_beta=beta)
                loss, _, log = self.run_criterion(criterion)
                d = reference(s.reshape(-1, s.size(-1)), t.reshape(-1, t.size(-1)), kind, beta, T).masked_fill(pad, 0).sum()
                torch.testing.assert_close(log["kd_loss"].double(), d, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(loss.double(), nll_w * ls_loss.double() + kd_w * T**2 * d, rtol=1e-5, atol=1e-4)
                # validation logs the same divergence at T = 1
                with torch.no_grad():
                    _, _, val_log = self.run_criterion(criterion, training=False)
                d1 = reference(s.reshape(-1, s.size(-1)), t.reshape(-1, t.size(-1)), kind, beta, 1.0).masked_fill(pad, 0)
                torch.testing.assert_close(val_log["kd_loss"].double(), d1.sum(), rtol=1e-5, atol=1e-5)

    def test_divergence_of_an_ensemble_and_of_the_top_k(self):
        # an ensemble: D to the mean of the members' distributions; --kd-topk: D to the renormalised top k
        _, _, other = build_task_and_model(self.tmp.name)
        self.task.teachers = [self.teacher, other.eval()]
        s, t, _, _ = self.student_and_teacher_logits()
        with torch.no_grad():
            t2, _ = other(**self.sample["net_input"])
        pad = self.sample["target"].eq(self.dictionary.pad()).reshape(-1)
        flat = [x.reshape(-1, x.size(-1)).double() for x in (s, t, t2)]
        mean_q = ((F.softmax(flat[1] / 2, -1) + F.softmax(flat[2] / 2, -1)) / 2).log()
        for kind, beta in (("reverse_kl", None), ("jsd", 0.3), ("tvd", None)):
            with self.subTest(kind=kind):
                criterion = self.build(kd_weight=1.0, kd_temperature=2.0, kd_divergence=kind, kd_beta=beta)
                _, _, log = self.run_criterion(criterion)
                # the reference at T = 1 on tempered inputs: logits s / 2 and log of the mean distribution
                expected = reference(flat[0] / 2, mean_q, kind, beta, 1.0).masked_fill(pad, 0).sum()
                torch.testing.assert_close(log["kd_loss"].double(), expected, rtol=1e-5, atol=1e-5)
        self.task.teachers = [self.teacher]
        k = 3
        values, ids = F.log_softmax(flat[1], -1).topk(k, -1)
        dense = torch.full_like(flat[1], -math.inf).scatter(-1, ids, values - values.logsumexp(-1, keepdim=True))
        criterion = self.build(kd_weight=1.0, kd_topk=k, kd_divergence="skew_kl", kd_beta=0.2)
        _, _, log = self.run_criterion(criterion)
        expected = divergence(F.log_softmax(flat[0], -1), dense, "skew_kl", 0.2, pad)
        torch.testing.assert_close(log["kd_loss"].double(), expected, rtol=1e-5, atol=1e-5)

    def test_encoder_cosine_uses_source_padding(self):
        criterion = self.build(cosine_weight=1.0, cosine_encoder=True)
        decoder_only = self.build(cosine_weight=1.0)
        _, _, log = self.run_criterion(criterion)
        _, _, dec_log = self.run_criterion(decoder_only)

        enc_s = self.student.encoder(self.sample["net_input"]["src_tokens"], self.sample["net_input"]["src_lengths"], True)
        enc_t = self.teacher.encoder(self.sample["net_input"]["src_tokens"], self.sample["net_input"]["src_lengths"], True)
        pad = self.sample["net_input"]["src_tokens"].eq(self.dictionary.pad()).t()  # S x B
        cos = [
            (1 - F.cosine_similarity(a.double(), b.double(), dim=-1)).masked_fill(pad, 0).sum()
            # entry 0 is the embeddings' output, not a layer's
            for a, b in zip(enc_s["encoder_states"][1:], enc_t["encoder_states"][1:])
        ]
        expected = dec_log["cos_loss"].double() + sum(cos) / len(cos)
        torch.testing.assert_close(log["cos_loss"].double(), expected.detach(), rtol=1e-5, atol=1e-4)

    def test_teacher_ensemble_uses_mean_distribution(self):
        _, _, second = build_task_and_model(self.tmp.name)
        self.task.teachers = [self.teacher.eval(), second.eval()]
        T = 2.0
        _, _, log = self.run_criterion(self.build(kd_weight=1.0, kd_temperature=T))
        with torch.no_grad():
            s, t1, _, _ = self.student_and_teacher_logits()
            t2, _ = second(**self.sample["net_input"])
        p = F.log_softmax(s.double() / T, -1)
        q = (F.softmax(t1.double() / T, -1) + F.softmax(t2.double() / T, -1)) / 2
        kl = (q * (q.log() - p)).sum(-1).masked_fill(self.sample["target"].eq(self.dictionary.pad()), 0).sum()
        torch.testing.assert_close(log["kd_loss"].double(), kl, rtol=1e-5, atol=1e-5)

    def test_padding_changes_nothing(self):
        # the batched loss equals the sum of the per-sentence losses (each sentence alone has no padding)
        criterion = self.build(nll_weight=0.5, kd_weight=1.0, kd_temperature=2.0, cosine_weight=0.5, cosine_encoder=True)
        batched, _, log = self.run_criterion(criterion)
        singles = [self.run_criterion(criterion, self.single(i)) for i in range(len(LENGTHS))]
        for key in ("nll_loss", "kd_loss", "cos_loss"):
            torch.testing.assert_close(log[key], sum(s[2][key] for s in singles), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(batched, sum(s[0] for s in singles), rtol=1e-4, atol=1e-4)

    def single(self, i):
        """Sentence i of the batch, alone and unpadded."""
        pad = self.dictionary.pad()
        net_input = self.sample["net_input"]
        src = net_input["src_tokens"][i][net_input["src_tokens"][i].ne(pad)]
        tgt = self.sample["target"][i][self.sample["target"][i].ne(pad)]
        prev = net_input["prev_output_tokens"][i][: len(tgt)]
        return {
            "id": self.sample["id"][i : i + 1],
            "nsentences": 1,
            "ntokens": len(tgt),
            "net_input": {"src_tokens": src[None], "src_lengths": torch.tensor([len(src)]), "prev_output_tokens": prev[None]},
            "target": tgt[None],
        }

    def test_unreduced_sums_to_reduced(self):
        criterion = self.build(nll_weight=0.5, kd_weight=1.0, kd_temperature=2.0, cosine_weight=0.5)
        loss, _, _ = self.run_criterion(criterion)
        unreduced, _, _ = self.run_criterion(criterion, reduce=False)
        torch.testing.assert_close(unreduced.sum(), loss, rtol=1e-5, atol=1e-4)

    def test_gradients_reach_only_the_student(self):
        criterion = self.build(kd_weight=1.0, kd_temperature=2.0, cosine_weight=1.0, cosine_encoder=True)
        loss, _, _ = self.run_criterion(criterion)
        loss.backward()
        self.assertTrue(all(p.grad is not None for p in self.student.parameters() if p.requires_grad))
        self.assertTrue(all(p.grad is None for p in self.teacher.parameters()))

    def test_logging_outputs_are_summable_and_reported_in_bits(self):
        criterion = self.build(kd_weight=1.0, cosine_weight=1.0)
        self.assertTrue(criterion.logging_outputs_can_be_summed())
        logs = [self.run_criterion(criterion)[2], self.run_criterion(criterion, make_sample(self.dictionary, LENGTHS, 1))[2]]
        for log in logs:
            for value in log.values():
                self.assertTrue(isinstance(value, (int, float)) or value.numel() == 1)
        with metrics.aggregate() as agg:
            criterion.reduce_metrics(logs)
        ntokens = sum(log["ntokens"] for log in logs)
        kd = sum(log["kd_loss"] for log in logs).item()
        cos = sum(log["cos_loss"] for log in logs).item()
        self.assertAlmostEqual(agg.get_smoothed_values()["kd_loss"], round(kd / ntokens / math.log(2), 3), places=3)
        self.assertAlmostEqual(agg.get_smoothed_values()["cos_loss"], round(cos / ntokens, 3), places=3)


def with_flags(arch, **values):
    arch = list(arch)
    for flag, value in values.items():
        arch[arch.index(f"--{flag.replace('_', '-')}") + 1] = str(value)
    return arch


class TestHiddenStateMatching(KDCriterionTestCase):
    def reference(self, student_states, teacher_states, pairs, loss, projection=None):
        """Mean over paired decoder layers of the summed per-token loss; states are T x B x C."""
        pad = self.sample["target"].eq(self.dictionary.pad())  # B x T
        total = []
        for i, j in enumerate(pairs):
            hs, ht = student_states[i + 1].transpose(0, 1).double(), teacher_states[j + 1].transpose(0, 1).double()
            if projection is not None:
                hs = hs @ projection.double().t()
            per_token = 1 - F.cosine_similarity(hs, ht, dim=-1) if loss == "cosine" else (hs - ht).pow(2).mean(-1)
            total.append(per_token.masked_fill(pad, 0).sum())
        return sum(total) / len(total)

    def test_mse_variant(self):
        criterion = self.build(cosine_weight=0.5, hidden_loss="mse")
        loss, _, log = self.run_criterion(criterion)
        _, _, s_extra, t_extra = self.student_and_teacher_logits()
        expected = self.reference(s_extra["inner_states"], t_extra["inner_states"], [0, 1], "mse")
        self.assertNotIn("cos_loss", log)
        torch.testing.assert_close(log["mse_loss"].double(), expected, rtol=1e-5, atol=1e-5)
        ls_loss, _, _ = self.run_criterion(self.build())
        torch.testing.assert_close(loss.double(), ls_loss.double() + 0.5 * expected, rtol=1e-5, atol=1e-4)

    def test_layer_pairs_follow_the_given_map(self):
        criterion = self.build(cosine_weight=1.0)
        criterion.setup_hidden_matching({"encoder": 16, "decoder": 16}, {"encoder": 16, "decoder": 16}, {"decoder": [1, 0]})
        self.assertIsNone(criterion.hidden_projections)  # equal widths: no projection
        _, _, log = self.run_criterion(criterion)
        _, _, s_extra, t_extra = self.student_and_teacher_logits()
        expected = self.reference(s_extra["inner_states"], t_extra["inner_states"], [1, 0], "cosine")
        torch.testing.assert_close(log["cos_loss"].double(), expected, rtol=1e-5, atol=1e-5)
        even_spread = self.reference(s_extra["inner_states"], t_extra["inner_states"], [0, 1], "cosine")
        self.assertGreater(abs(expected - even_spread).item(), 1e-3)

    def test_unequal_widths_learn_a_projection_outside_the_student(self):
        _, _, self.student = build_task_and_model(self.tmp.name, arch_flags=with_flags(TINY_ARCH, decoder_embed_dim=24))
        for loss_name in ("cosine", "mse"):
            criterion = self.build(cosine_weight=1.0, hidden_loss=loss_name)
            criterion.setup_hidden_matching(
                {"encoder": 16, "decoder": 24}, {"encoder": 16, "decoder": 16}, {"decoder": [0, 1]}
            )
            projection = criterion.hidden_projections["decoder"]
            self.assertEqual(tuple(projection.weight.shape), (16, 24))  # student width -> teacher width
            self.assertNotIn("encoder", criterion.hidden_projections)

            loss, _, log = self.run_criterion(criterion)
            _, _, s_extra, t_extra = self.student_and_teacher_logits()
            expected = self.reference(s_extra["inner_states"], t_extra["inner_states"], [0, 1], loss_name, projection.weight)
            key = "cos_loss" if loss_name == "cosine" else "mse_loss"
            torch.testing.assert_close(log[key].double(), expected.detach(), rtol=1e-5, atol=1e-5)

            loss.backward()
            self.assertIsNotNone(projection.weight.grad)
            self.assertGreater(projection.weight.grad.abs().sum().item(), 0)
            # the projection is the criterion's (fairseq saves it under "criterion"), not the student's
            self.assertIn("hidden_projections.decoder.weight", criterion.state_dict())
            self.assertFalse([k for k in self.student.state_dict() if "projection" in k and "output" not in k])
            self.student.zero_grad()


class TestTeacherPlacement(KDCriterionTestCase):
    def test_teacher_follows_student_dtype_and_loss_is_float32(self):
        self.student.to(torch.bfloat16)
        criterion = self.build(kd_weight=1.0, kd_temperature=2.0, cosine_weight=1.0)
        loss, _, log = self.run_criterion(criterion)
        self.assertEqual(next(self.teacher.parameters()).dtype, torch.bfloat16)
        self.assertEqual(log["kd_loss"].dtype, torch.float32)
        self.assertTrue(torch.isfinite(loss))
        # the KL at bf16 logits stays close to the fp32 computation on the same (bf16-rounded) weights
        self.student.float()
        self.teacher.float()
        _, _, log32 = self.run_criterion(criterion)
        torch.testing.assert_close(log["kd_loss"], log32["kd_loss"], rtol=0.05, atol=0.05)


class TestBadSettings(KDCriterionTestCase):
    def test_errors(self):
        cases = [
            (dict(kd_weight=-0.1), "--kd-weight must be >= 0"),
            (dict(nll_weight=-1.0), "--nll-weight must be >= 0"),
            (dict(cosine_weight=-1.0), "--cosine-weight must be >= 0"),
            (dict(nll_weight=0.0, kd_weight=0.0, cosine_weight=0.0), "all 0"),
            (dict(kd_weight=1.0, kd_temperature=0.0), "--kd-temperature must be > 0"),
            (dict(kd_weight=1.0, kd_temperature=-2.0), "--kd-temperature must be > 0"),
            (dict(cosine_encoder=True), "--cosine-encoder has no effect"),
            (dict(kd_weight=1.0, kd_divergence="tvd", kd_beta=0.5), "--kd-beta 0.5 has no effect with --kd-divergence tvd"),
            (dict(kd_weight=1.0, kd_divergence="jsd", kd_beta=1.2), r"--kd-beta of jsd must be in \[0, 1\]"),
            (dict(kd_weight=1.0, kd_divergence="skew_kl", kd_beta=1.0), r"--kd-beta of skew_kl must be in \[0, 1\)"),
            (dict(kd_weight=1.0, kd_divergence="reverse_kl", kd_topk=8), "reverse_kl is infinite with --kd-topk"),
            (dict(kd_weight=1.0, kd_divergence="jsd", kd_beta=1.0, kd_topk=8), "jsd is infinite with --kd-topk"),
        ]
        for kwargs, message in cases:
            with self.subTest(**kwargs), self.assertRaisesRegex(ValueError, message):
                self.build(**kwargs)

    def test_divergence_infinite_on_a_topk_cache_is_refused(self):
        with mock.patch.object(type(self.task), "teacher_kind", new_callable=mock.PropertyMock, return_value="topk_cache"):
            for kind, beta in (("reverse_kl", None), ("jsd", 1.0)):
                with (
                    self.subTest(kind=kind),
                    self.assertRaisesRegex(ValueError, f"{kind} is infinite with a --teacher-topk-cache"),
                ):
                    self.build(kd_weight=1.0, kd_divergence=kind, kd_beta=beta)
            for kind, beta in (("forward_kl", None), ("jsd", 0.5), ("tvd", None), ("skew_kl", 0.1)):
                self.assertEqual(self.build(kd_weight=1.0, kd_divergence=kind, kd_beta=beta).kd_divergence, kind)

    def test_kd_weight_without_teacher(self):
        _, task, _ = build_task_and_model(self.tmp.name)
        with self.assertRaisesRegex(ValueError, "need a teacher.*--teacher-path"):
            LabelSmoothedCrossEntropyWithKDCriterion.build_criterion(criterion_args(kd_weight=0.5), task)
        # with no KD term the criterion needs no teacher
        LabelSmoothedCrossEntropyWithKDCriterion.build_criterion(criterion_args(), task)


if __name__ == "__main__":
    unittest.main()
