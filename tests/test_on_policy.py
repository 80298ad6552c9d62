"""On-policy distillation (--on-policy-fraction): the student's own translations as targets, the teacher on
their prefixes, no NLL term; which updates are on-policy; whole fairseq-train runs that resume exactly and
that two processes run as one."""

import argparse
import copy
import os
import subprocess

import numpy as np
import torch

import fairseq_kd  # noqa: F401
from fairseq_kd.criterions.label_smoothed_cross_entropy_with_kd import LabelSmoothedCrossEntropyWithKDCriterion
from fairseq_kd.tasks.on_policy import ON_POLICY_MAX_LEN
from tests.test_kd_criterion import criterion_args
from tests.test_scale import checkpoint_position, command, free_port, kill_when
from tests.utils import (
    KD_FLAGS,
    TINY_ARCH,
    TeacherTestCase,
    build_task_and_model,
    make_sample,
    train_meters,
    write_dictionaries,
)


def greedy_reference(model, sample, eos, max_len):
    """Greedy translations by the plain definition: the whole decoder run on each prefix, argmax of the last
    position (no incremental state, no search; never <pad> or <unk>, at least one token before </s>, as
    fairseq's defaults), independently of fairseq's SequenceGenerator."""
    encoder_out = model.encoder(sample["net_input"]["src_tokens"], sample["net_input"]["src_lengths"])
    out = []
    for i in range(sample["net_input"]["src_tokens"].size(0)):
        enc = model.encoder.reorder_encoder_out(encoder_out, torch.tensor([i]))
        tokens = [eos]
        while tokens[-1] != eos or len(tokens) == 1:
            if len(tokens) - 1 == max_len[i]:
                tokens.append(eos)  # MAX_LEN tokens made: fairseq ends the hypothesis
                break
            logits, _ = model.decoder(torch.tensor([tokens]), encoder_out=enc)
            lprobs = logits[0, -1].log_softmax(-1)
            lprobs[model.decoder.dictionary.pad()] = -float("inf")
            lprobs[model.decoder.dictionary.unk()] = -float("inf")
            if len(tokens) == 1:
                lprobs[eos] = -float("inf")  # fairseq's min_len 1: at least one token before </s>
            tokens.append(int(lprobs.argmax()))
        out.append(tokens[1:])
    return out


class TestOnPolicyBatches(TeacherTestCase):
    def build(self, **task_flags):
        write_dictionaries(self.dir)
        flags = ["--teacher-path", self.teacher]
        for key, value in task_flags.items():
            flags += [f"--{key.replace('_', '-')}", str(value)]
        _, task, student = build_task_and_model(self.dir, extra_flags=flags)
        _, _, teacher = build_task_and_model(self.dir)
        task.teachers = [teacher.eval()]
        return task, student

    def test_greedy_targets_are_the_students_translations(self):
        task, student = self.build(on_policy_fraction=1.0, on_policy_decoding="greedy")
        sample = make_sample(task.tgt_dict, [(5, 4), (3, 6), (7, 2), (2, 5)])
        student.train()
        on_policy = task.student_translations(copy.copy(sample), student)
        self.assertTrue(student.training)  # back in training mode after the generation
        self.assertTrue(on_policy["on_policy"])
        eos, pad = task.tgt_dict.eos(), task.tgt_dict.pad()
        student.eval()
        # fairseq bounds every sentence of a batch by its longest source
        longest = int(sample["net_input"]["src_lengths"].max())
        max_len = [int(ON_POLICY_MAX_LEN[0] * longest + ON_POLICY_MAX_LEN[1])] * len(sample["target"])
        with torch.no_grad():
            expected = greedy_reference(student, sample, eos, max_len)
        target, prev = on_policy["target"], on_policy["net_input"]["prev_output_tokens"]
        for i, tokens in enumerate(expected):
            n = len(tokens)
            self.assertEqual(target[i, :n].tolist(), tokens)
            self.assertTrue((target[i, n:] == pad).all())
            self.assertEqual(prev[i, :n].tolist(), [eos] + tokens[:-1])  # the target shifted right, as fairseq's
        self.assertEqual(on_policy["ntokens"], sum(len(t) for t in expected))
        # the source side and the original sample are untouched
        self.assertTrue(torch.equal(on_policy["net_input"]["src_tokens"], sample["net_input"]["src_tokens"]))
        self.assertNotIn("on_policy", sample)

    def test_on_policy_loss_is_the_divergence_alone(self):
        task, student = self.build(on_policy_fraction=1.0, on_policy_decoding="greedy")
        criterion = LabelSmoothedCrossEntropyWithKDCriterion.build_criterion(
            criterion_args(nll_weight=0.7, kd_weight=1.5, kd_temperature=2.0, kd_divergence="jsd", kd_beta=0.5), task
        )
        sample = make_sample(task.tgt_dict, [(5, 4), (3, 6)])
        student.train()
        student_sample = task.student_translations(copy.copy(sample), student)
        task.add_teacher_targets(student_sample, student, criterion)
        loss, size, log = criterion(student, student_sample)
        self.assertEqual(size, student_sample["ntokens"])
        torch.testing.assert_close(loss, 1.5 * 4.0 * log["kd_loss"])
        self.assertEqual(log["on_policy_sentences"], 2)

    def test_which_updates_are_on_policy(self):
        task, _ = self.build(on_policy_fraction=0.3)
        drawn = [task.on_policy(u) for u in range(2000)]
        self.assertAlmostEqual(np.mean(drawn), 0.3, delta=0.04)
        again, _ = self.build(on_policy_fraction=0.3)
        self.assertEqual(drawn, [again.on_policy(u) for u in range(2000)])  # a function of (seed, update)
        self.assertFalse(any(self.build()[0].on_policy(u) for u in range(100)))
        self.assertTrue(all(self.build(on_policy_fraction=1.0)[0].on_policy(u) for u in range(100)))

    def test_bad_settings(self):
        for flags, message in (
            (dict(on_policy_fraction=1.5), "--on-policy-fraction must be in"),
            (dict(on_policy_fraction=0.5, on_policy_temperature=0), "--on-policy-temperature must be > 0"),
        ):
            with self.subTest(**flags), self.assertRaisesRegex(ValueError, message):
                self.build(**flags)
        task, _ = self.build(on_policy_fraction=0.5)
        with self.assertRaisesRegex(ValueError, "--kd-weight > 0"):
            task.build_criterion(argparse.Namespace(_name="label_smoothed_cross_entropy_with_kd", **vars(criterion_args())))


class TestOnPolicyTraining(TeacherTestCase):
    def train_cmd(self, save_dir, *extra):
        return command(
            "fairseq-train", self.data, "--task", "translation_kd", "--teacher-path", self.teacher,
            "--save-dir", save_dir, "--optimizer", "adam", "--lr", "0.005", "--max-tokens", "200",
            "--max-update", "14", "--save-interval-updates", "4", "--keep-interval-updates", "1",
            "--num-workers", "0", "--seed", "1", "--cpu", "--no-progress-bar", *TINY_ARCH, *KD_FLAGS,
            "--on-policy-fraction", "0.5", "--kd-divergence", "reverse_kl", *extra,
        )  # fmt: skip

    def test_killed_and_resumed_equals_the_uninterrupted_run(self):
        reference = os.path.join(self.dir, "reference")
        result = subprocess.run(self.train_cmd(reference), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.assertEqual(result.returncode, 0, result.stdout[-3000:])
        meters = train_meters(os.path.join(reference, "checkpoint_last.pt"))
        self.assertGreater(meters["on_policy"], 0.1)  # some updates were on-policy, not all
        self.assertLess(meters["on_policy"], 0.9)

        save_dir = os.path.join(self.dir, "killed")
        process = subprocess.Popen(self.train_cmd(save_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        last = os.path.join(save_dir, "checkpoint_last.pt")
        self.assertTrue(kill_when(process, lambda: (checkpoint_position(last) or (0, 0)) >= (1, 4)), "finished too soon")
        result = subprocess.run(self.train_cmd(save_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.assertEqual(result.returncode, 0, result.stdout[-3000:])
        self.assertIn("Loaded checkpoint", result.stdout)
        final = torch.load(last, weights_only=True)["model"]
        uninterrupted = torch.load(os.path.join(reference, "checkpoint_last.pt"), weights_only=True)["model"]
        for key, value in uninterrupted.items():
            self.assertTrue(torch.equal(final[key], value), f"{key} differs")

    def test_two_processes_match_one_on_the_same_total_batch(self):
        common = self.train_cmd("unused", "--dropout", "0", "--no-save-optimizer-state", "--on-policy-decoding", "greedy")[1:]
        for flag in ("--save-dir", "--max-update"):
            del common[common.index(flag) : common.index(flag) + 2]
        common += ["--max-update", "2"]
        single = os.path.join(self.dir, "single")
        result = subprocess.run(
            command("fairseq-train", *common, "--save-dir", single, "--update-freq", "2"),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stdout[-3000:])
        double, port = os.path.join(self.dir, "double"), free_port()
        processes = [
            subprocess.Popen(
                command(
                    "fairseq-train", *common, "--save-dir", double, "--distributed-world-size", 2,
                    "--distributed-rank", rank, "--distributed-backend", "gloo", "--distributed-no-spawn",
                    "--ddp-backend", "legacy_ddp", "--distributed-init-method", f"tcp://127.0.0.1:{port}",
                ),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            for rank in (0, 1)
        ]  # fmt: skip
        outputs = [p.communicate(timeout=300)[0] for p in processes]
        self.assertEqual([p.returncode for p in processes], [0, 0], "\n\n".join(o[-3000:] for o in outputs))
        one, two = (train_meters(os.path.join(d, "checkpoint_last.pt")) for d in (single, double))
        for key in ("loss", "nll_loss", "kd_loss", "on_policy"):
            self.assertAlmostEqual(one.get(key, 0.0), two.get(key, 0.0), places=4, msg=key)
