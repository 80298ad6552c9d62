"""Scale and faults, end to end: a cached top-k teacher replaces the live one; cache building,
pseudo-labelling and KD training survive kill -9 (a truncated checkpoint_last.pt too, with the demo's
repair); two-process (gloo) KD training matches one process."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import unittest

import numpy as np
import torch

import fairseq_kd  # noqa: F401
from fairseq_kd.cli import kd_cache_topk
from fairseq_kd.runs import repair_last_checkpoint
from tests.utils import (
    KD_FLAGS,
    TINY_ARCH,
    TeacherTestCase,
    build_task_and_model,
    preprocess_translation_data,
    quiet,
    train_meters,
    train_translation_model,
)

BIN = os.path.dirname(sys.executable)


def command(name, *args):
    return [os.path.join(BIN, name)] + [str(a) for a in args]


def kill_when(process, condition, timeout=120):
    """Kills *process* with SIGKILL as soon as *condition()* holds; returns whether it was still running.
    The process is stopped (SIGSTOP) and the condition checked again before the kill, so that what the
    condition saw (a complete file, say) is what the process leaves behind."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            running = process.poll() is None
            if not running:
                return False
            process.send_signal(signal.SIGSTOP)
            if condition():
                process.send_signal(signal.SIGKILL)
                process.wait()
                return True
            process.send_signal(signal.SIGCONT)
        if process.poll() is not None:
            return False
        time.sleep(0.005)
    process.kill()
    raise AssertionError("the condition never held")


def checkpoint_position(path):
    """(epoch, batches done in it) where a whole checkpoint at *path* resumes, or None."""
    try:
        state = torch.load(path, weights_only=True)["extra_state"]["train_iterator"]
        return state["epoch"], state["iterations_in_epoch"]
    except Exception:
        return None


def complete_checkpoint(path):
    """Whether *path* holds a whole checkpoint: fairseq copies checkpoint_last.pt from the checkpoint it has
    just saved, and a file caught during that copy exists but is truncated."""
    try:
        torch.load(path, weights_only=True)
        return True
    except Exception:
        return False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TestScale(TeacherTestCase):
    def build_cache(self, output, *flags, teacher=None, data=None):
        args = kd_cache_topk.get_parser().parse_args(
            ["--teacher", teacher or self.teacher, "--data", data or self.data, "--output", output, "--cpu", "--k", "4"]
            + list(flags)
        )
        with quiet():
            kd_cache_topk.main(args)
        return output

    def test_cached_teacher_replaces_the_live_one(self):
        teacher = os.path.join(self.dir, "teacher.pt")
        shutil.copy(self.teacher, teacher)
        cache = self.build_cache(os.path.join(self.dir, "cache"), teacher=teacher)
        os.remove(teacher)  # training with the cache needs no teacher at all

        student = os.path.join(self.dir, "student")
        flags = ["--teacher-topk-cache", cache, "--max-epoch", "2"] + KD_FLAGS
        with quiet():
            train_translation_model(self.data, task="translation_kd", save_dir=student, extra_flags=flags)
        meters = train_meters(os.path.join(student, "checkpoint_last.pt"))
        self.assertIn("kd_loss", meters)

        # the first step's KD loss against the cache equals the live teacher's top-4 KD (float16 storage aside)
        first = {}
        for name, teacher_flags in [
            ("cached", ["--teacher-topk-cache", cache]),
            ("live", ["--teacher-path", self.teacher, "--kd-topk", "4"]),
        ]:
            with quiet():
                train_translation_model(
                    self.data,
                    task="translation_kd",
                    save_dir=os.path.join(self.dir, name),
                    extra_flags=teacher_flags + KD_FLAGS + ["--max-update", "1", "--dropout", "0"],
                )
            first[name] = train_meters(os.path.join(self.dir, name, "checkpoint_last.pt"))["kd_loss"]
        self.assertAlmostEqual(first["cached"], first["live"], delta=2e-3 * max(1.0, first["live"]))

    def test_cache_rows_come_with_the_batches_from_the_data_loader(self):
        from fairseq_kd.topk_cache import TopKCacheDataset

        cache = self.build_cache(os.path.join(self.dir, "cache"))
        _, task, _ = build_task_and_model(self.data, extra_flags=["--teacher-topk-cache", cache] + KD_FLAGS)
        task.load_dataset("train")
        task.load_dataset("valid")
        self.assertIsInstance(task.dataset("train"), TopKCacheDataset)
        self.assertNotIsInstance(task.dataset("valid"), TopKCacheDataset)  # the cache covers training only
        ids, lprobs = (np.load(os.path.join(cache, f"{name}.npy")) for name in ("ids", "lprobs"))
        offsets = np.load(os.path.join(cache, "offsets.npy"))
        pad = task.target_dictionary.pad()
        # batches made in a worker process (the cache is reopened there), each row checked against the files
        batches = task.get_batch_iterator(task.dataset("train"), max_tokens=300, num_workers=1).next_epoch_itr(shuffle=True)
        seen = 0
        for batch in batches:
            got_ids, got_lprobs = batch["teacher_topk"]
            for row, s in enumerate(batch["id"].tolist()):
                n = int(batch["target"][row].ne(pad).sum())
                rows = slice(offsets[s], offsets[s + 1])
                self.assertTrue(torch.equal(got_ids[row, :n], torch.from_numpy(ids[rows].astype(np.int64))))
                self.assertTrue(torch.equal(got_lprobs[row, :n], torch.from_numpy(lprobs[rows].astype(np.float32))))
                self.assertFalse(got_ids[row, n:].any() or got_lprobs[row, n:].any())  # zeros at padding
                seen += 1
        self.assertEqual(seen, len(task.dataset("train")))
        # a batch of another data's sentence lengths is refused, naming the sentence
        stored = int(offsets[1] - offsets[0])
        with self.assertRaisesRegex(ValueError, f"sentence 0 has {stored + 1} target tokens but {stored} in the top-k cache"):
            task.topk_cache.lookup(torch.tensor([0]), torch.tensor([[5] * (stored + 1) + [pad]]), pad)

    def test_cache_for_other_data_is_refused(self):
        cache = self.build_cache(os.path.join(self.dir, "cache"))
        # the same sentences in another order, binarized with the same dictionaries
        other = os.path.join(self.dir, "reordered")
        os.makedirs(other)
        for side in ("in", "out"):
            with open(os.path.join(self.data, f"train.{side}")) as f:
                lines = f.read().splitlines()
            with open(os.path.join(other, f"train.{side}"), "w") as f:
                f.write("\n".join(reversed(lines)) + "\n")
            for split in ("valid", "test"):
                shutil.copy(os.path.join(self.data, f"{split}.{side}"), os.path.join(other, f"{split}.{side}"))
        with quiet():
            preprocess_translation_data(
                other,
                ["--srcdict", os.path.join(self.data, "dict.in.txt"), "--tgtdict", os.path.join(self.data, "dict.out.txt")],
            )
        with self.assertRaisesRegex(
            ValueError, "was made for other data: train.in-out.in.bin, .*train.in-out.out.bin.* differ"
        ):
            with quiet():
                train_translation_model(
                    other,
                    task="translation_kd",
                    save_dir=os.path.join(self.dir, "s"),
                    extra_flags=["--teacher-topk-cache", cache] + KD_FLAGS,
                )
        self.assertFalse(os.path.exists(os.path.join(self.dir, "s", "checkpoint_last.pt")))

        # an unfinished cache is refused too
        os.remove(os.path.join(cache, "meta.json"))
        with self.assertRaisesRegex(ValueError, "is not a top-k cache"):
            with quiet():
                train_translation_model(
                    self.data,
                    task="translation_kd",
                    save_dir=os.path.join(self.dir, "s2"),
                    extra_flags=["--teacher-topk-cache", cache] + KD_FLAGS,
                )

    def test_topk_cache_of_another_teacher_is_refused(self):
        """A cache records what its teacher file held: rebuilt into the same directory after the file at the same
        path changed, it is refused (not reported complete); the same teacher resumes (here: is complete)."""
        teacher = os.path.join(self.dir, "teacher.pt")
        shutil.copy(self.teacher, teacher)
        cache = self.build_cache(os.path.join(self.dir, "cache"), teacher=teacher)
        self.build_cache(cache, teacher=teacher)  # the same teacher: complete already
        state = torch.load(teacher, map_location="cpu", weights_only=False)
        key = next(k for k in state["model"] if k.endswith("output_projection.weight") or k.endswith("embed_tokens.weight"))
        state["model"][key] = state["model"][key] + 0.5
        torch.save(state, teacher)
        with self.assertRaisesRegex(ValueError, r"holds a top-k cache made with other settings \(teacher_sha256: "):
            self.build_cache(cache, teacher=teacher)

    def test_cache_settings_that_cannot_work_are_errors(self):
        cache = self.build_cache(os.path.join(self.dir, "cache"))
        cases = [
            (["--teacher-path", self.teacher] + KD_FLAGS, "--teacher-topk-cache replaces the live teacher"),
            (["--train-mixture", self.data] + KD_FLAGS, "cannot follow a --train-mixture"),
            (KD_FLAGS + ["--kd-weight", "0"], "--teacher-topk-cache is set but the criterion does not use it"),
            (KD_FLAGS + ["--cosine-weight", "1"], "a --teacher-topk-cache does not hold"),
        ]
        for flags, message in cases:
            with self.subTest(message), self.assertRaisesRegex(ValueError, message):
                with quiet():
                    train_translation_model(
                        self.data,
                        task="translation_kd",
                        save_dir=os.path.join(self.dir, "s"),
                        extra_flags=["--teacher-topk-cache", cache] + flags,
                    )
            self.assertFalse(os.path.exists(os.path.join(self.dir, "s", "checkpoint_last.pt")))

    def test_cache_build_killed_and_rerun_equals_an_uninterrupted_build(self):
        whole = self.build_cache(os.path.join(self.dir, "whole"), "--shard-size", "2", "--max-tokens", "50")
        resumed = os.path.join(self.dir, "resumed")
        cmd = command("fairseq-kd-cache-topk", "--teacher", self.teacher, "--data", self.data, "--output", resumed)
        cmd += ["--cpu", "--k", "4", "--shard-size", "2", "--max-tokens", "50"]
        process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shards = os.path.join(resumed, "shards")
        interrupted = kill_when(process, lambda: os.path.isdir(shards) and len(os.listdir(shards)) >= 20)
        self.assertTrue(interrupted, "the build finished before it could be killed")
        self.assertFalse(cache_is_complete(resumed))
        done_before = len(os.listdir(shards))
        result = subprocess.run(cmd, capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        self.assertGreater(len(os.listdir(shards)), done_before)
        for name in ("ids.npy", "lprobs.npy", "offsets.npy"):
            self.assertTrue(np.array_equal(np.load(os.path.join(whole, name)), np.load(os.path.join(resumed, name))), name)

    def test_pseudolabelling_killed_and_rerun_equals_an_uninterrupted_run(self):
        flags = [
            "--teacher",
            self.teacher,
            "--data",
            self.data,
            "--subset",
            "train",
            "--cpu",
            "--max-tokens",
            "100",
            "--num-shards",
            "4",
        ]
        whole = os.path.join(self.dir, "whole")
        self.assertEqual(
            subprocess.run(command("fairseq-kd-pseudolabel", *flags, "--output", whole), capture_output=True).returncode, 0
        )
        resumed = os.path.join(self.dir, "resumed")
        cmd = command("fairseq-kd-pseudolabel", *flags, "--output", resumed)
        process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        first_done = os.path.join(resumed, "shards", "000-of-004", "DONE")
        self.assertTrue(
            kill_when(process, lambda: os.path.isfile(first_done)), "pseudo-labelling finished before it could be killed"
        )
        self.assertFalse(os.path.exists(os.path.join(resumed, "train.out")))
        result = subprocess.run(cmd, capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        self.assertIn("shard 0 of 4: done earlier, not redone", result.stderr)
        for name in ("train.in", "train.out", "train.ids", "train.scores"):
            with open(os.path.join(whole, name)) as a, open(os.path.join(resumed, name)) as b:
                self.assertEqual(a.read(), b.read(), name)

    def test_kd_training_killed_mid_epoch_resumes_to_the_uninterrupted_run(self):
        def train_cmd(save_dir):
            return command(
                "fairseq-train", self.data, "--task", "translation_kd", "--teacher-path", self.teacher,
                "--save-dir", save_dir, "--optimizer", "adam", "--lr", "0.005", "--max-tokens", "200",
                "--max-epoch", "3", "--save-interval-updates", "4", "--keep-interval-updates", "1",
                "--num-workers", "0", "--seed", "1", "--cpu", "--no-progress-bar", *TINY_ARCH, *KD_FLAGS,
            )  # fmt: skip

        reference = os.path.join(self.dir, "reference")
        self.assertEqual(subprocess.run(train_cmd(reference), capture_output=True).returncode, 0)
        expected_updates = torch.load(os.path.join(reference, "checkpoint_last.pt"), weights_only=True)["optimizer_history"][
            -1
        ]["num_updates"]

        save_dir = os.path.join(self.dir, "killed")
        process = subprocess.Popen(train_cmd(save_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        last = os.path.join(save_dir, "checkpoint_last.pt")
        # killed in the second epoch: where a fairseq task resumed would cut its batches otherwise
        killed = kill_when(process, lambda: (checkpoint_position(last) or (0, 0)) >= (2, 1))
        self.assertTrue(killed, "training finished before it could be killed")
        killed_at = torch.load(last, weights_only=True)
        killed_updates = killed_at["optimizer_history"][-1]["num_updates"]
        self.assertLess(killed_updates, expected_updates)
        self.assertTrue(killed_at["extra_state"]["train_iterator"]["iterations_in_epoch"] > 0)  # mid-epoch

        # a kill while fairseq copies checkpoint_last.pt leaves it truncated; the demo pipeline resumes from
        # the newest interval checkpoint instead (fairseq-train itself would fail on the truncated file)
        with open(last, "r+b") as f:
            f.truncate(os.path.getsize(last) // 2)
        self.assertFalse(complete_checkpoint(last))
        source = repair_last_checkpoint(save_dir)
        self.assertRegex(os.path.basename(source), r"checkpoint_\d+_\d+\.pt")
        self.assertTrue(os.path.isfile(last + ".incomplete"))
        self.assertGreaterEqual(torch.load(last, weights_only=True)["optimizer_history"][-1]["num_updates"], killed_updates)

        result = subprocess.run(train_cmd(save_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.assertEqual(result.returncode, 0, result.stdout[-3000:])
        self.assertIn("Loaded checkpoint", result.stdout)
        self.assertIn("(frozen)", result.stdout)  # the teacher was loaded again
        final = torch.load(last, weights_only=True)
        self.assertEqual(final["optimizer_history"][-1]["num_updates"], expected_updates)
        # and it is the uninterrupted run, bit for bit: translation_kd cuts the batches anew every epoch
        # (--rebuild-batches), where fairseq's translation task, resumed in epoch 2 or later, batches otherwise
        uninterrupted = torch.load(os.path.join(reference, "checkpoint_last.pt"), weights_only=True)["model"]
        self.assertEqual(sorted(final["model"]), sorted(uninterrupted))
        for key, value in uninterrupted.items():
            self.assertTrue(torch.equal(final["model"][key], value), f"{key} differs (killed at update {killed_updates})")

    def test_a_failed_restart_leaves_earlier_checkpoints_untouched(self):
        save_dir = os.path.join(self.dir, "student")
        with quiet():
            train_translation_model(
                self.data,
                task="translation_kd",
                save_dir=save_dir,
                extra_flags=["--teacher-path", self.teacher, "--max-update", "2"] + KD_FLAGS,
            )
        last = os.path.join(save_dir, "checkpoint_last.pt")
        with open(last, "rb") as f:
            before = f.read()
        for flags, message in [
            (["--teacher-path", os.path.join(self.dir, "missing.pt")], "does not exist"),
            (["--teacher-path", self.teacher, "--kd-temperature", "0"], "--kd-temperature must be > 0"),
            (
                ["--teacher-path", self.teacher, "--train-mixture", self.data, "--train-mixture-probs", "0.5"],
                "sum to 0.5, not 1",
            ),
        ]:
            with self.subTest(message), self.assertRaisesRegex(ValueError, message):
                with quiet():
                    train_translation_model(
                        self.data,
                        task="translation_kd",
                        save_dir=save_dir,
                        extra_flags=KD_FLAGS + flags + ["--max-update", "4"],
                    )
            with open(last, "rb") as f:
                self.assertEqual(f.read(), before)

    def test_two_processes_match_one_on_the_same_total_batch(self):
        common = [
            self.data, "--task", "translation_kd", "--teacher-path", self.teacher, "--optimizer", "adam", "--lr", "0.005",
            "--max-tokens", "300", "--max-update", "1", "--dropout", "0", "--num-workers", "0", "--seed", "1", "--cpu",
            "--no-progress-bar", "--no-save-optimizer-state", *TINY_ARCH, *KD_FLAGS,
        ]  # fmt: skip
        single = os.path.join(self.dir, "single")
        # one process, two batches accumulated into the update: the total batch of two workers
        result = subprocess.run(
            command("fairseq-train", *common, "--save-dir", single, "--update-freq", "2"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.assertEqual(result.returncode, 0, result.stdout[-3000:])

        double = os.path.join(self.dir, "double")
        port = free_port()
        processes = [
            subprocess.Popen(
                command(
                    "fairseq-train",
                    *common,
                    "--save-dir",
                    double,
                    "--distributed-world-size",
                    2,
                    "--distributed-rank",
                    rank,
                    "--distributed-backend",
                    "gloo",
                    "--distributed-no-spawn",
                    "--ddp-backend",
                    "legacy_ddp",
                    "--distributed-init-method",
                    f"tcp://127.0.0.1:{port}",
                ),  # fmt: skip
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for rank in (0, 1)
        ]
        outputs = [p.communicate(timeout=300)[0] for p in processes]
        self.assertEqual([p.returncode for p in processes], [0, 0], "\n\n".join(o[-3000:] for o in outputs))
        self.assertIn("training on 2 devices", outputs[0])

        one, two = (train_meters(os.path.join(d, "checkpoint_last.pt")) for d in (single, double))
        for key in ("loss", "nll_loss", "kd_loss"):
            self.assertAlmostEqual(one[key], two[key], places=4, msg=key)
        # the wrapped, synchronised model is the student alone: the same parameter count as in one process
        counts = [
            line.split("num. shared model params: ")[1].split()[0]
            for line in (result.stdout + outputs[0]).splitlines()
            if "num. shared model params" in line
        ]
        self.assertEqual(len(counts), 2)
        self.assertEqual(counts[0], counts[1])


def cache_is_complete(cache_dir):
    import json

    with open(os.path.join(cache_dir, "meta.json")) as f:
        return json.load(f)["complete"]


if __name__ == "__main__":
    unittest.main()
