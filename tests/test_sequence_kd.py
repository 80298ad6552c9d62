"""Sequence-level KD end to end: teacher -> pseudo-labels (from a binarized split and from raw text,
sharded and resumed) -> a student trained on a mixture of corpora with word-level KD; and the
mixture's sampling rates."""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

import fairseq_kd  # noqa: F401
from fairseq_kd.cli import kd_pseudolabel
from fairseq_kd.pseudolabel.run import tokenize
from tests.utils import (
    KD_FLAGS,
    PLUGIN_DIR,
    TINY_ARCH,
    TeacherTestCase,
    quiet,
    run_console_script,
    train_translation_model,
)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


class TestSequenceLevelKD(TeacherTestCase):
    def pseudolabel(self, output, *flags):
        args = kd_pseudolabel.get_parser().parse_args(
            ["--teacher", self.teacher, "--data", self.data, "--output", output, "--cpu", "--max-tokens", "300"] + list(flags)
        )
        with quiet():
            kd_pseudolabel.main(args)
        return output

    def test_sharded_pseudolabels_resume_and_equal_an_unsharded_run(self):
        whole = self.pseudolabel(os.path.join(self.dir, "whole"), "--subset", "train")
        sharded = os.path.join(self.dir, "sharded")

        # shard 1 alone, by the installed command, as on a second machine
        flags = ["--teacher", self.teacher, "--data", self.data, "--output", sharded, "--cpu", "--max-tokens", "300"]
        result = run_console_script(
            "fairseq-kd-pseudolabel", flags + ["--subset", "train", "--num-shards", "2", "--shard-id", "1"]
        )
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        self.assertIn("shard 1 done; 1 shards to go", result.stdout)
        done = os.path.join(sharded, "shards", "001-of-002", "DONE")
        finished_at = os.stat(done).st_mtime_ns
        # shard 0 died half-way: its partial log must be thrown away, not merged
        os.makedirs(os.path.join(sharded, "shards", "000-of-002.tmp"))
        with open(os.path.join(sharded, "shards", "000-of-002.tmp", "generate-train.txt"), "w") as f:
            f.write("H-0\t-0.1\tgarbage\n")

        self.pseudolabel(sharded, "--subset", "train", "--num-shards", "2")
        self.assertEqual(os.stat(done).st_mtime_ns, finished_at)  # the finished shard was not redone
        for suffix in ("in", "out", "ids"):
            self.assertEqual(
                read(os.path.join(sharded, f"train.{suffix}")), read(os.path.join(whole, f"train.{suffix}")), suffix
            )
        self.assertNotIn("garbage", read(os.path.join(sharded, "train.out")))

        # aligned with the transfer set, in its order, and binarized with the teacher's dictionaries
        ids = [int(i) for i in read(os.path.join(whole, "train.ids")).split()]
        self.assertEqual(ids, sorted(ids))
        with open(os.path.join(self.data, "train.in")) as f:
            sources = f.read().splitlines()
        self.assertEqual(read(os.path.join(whole, "train.in")).splitlines(), [sources[i] for i in ids])
        self.assertGreater(len(ids), 0.9 * len(sources))  # a good teacher: few dropped
        for lang in ("in", "out"):
            self.assertEqual(
                read(os.path.join(whole, "data-bin", f"dict.{lang}.txt")), read(os.path.join(self.data, f"dict.{lang}.txt"))
            )
        # another setting in the same output directory is refused, and nothing there is touched
        before = read(os.path.join(whole, "train.out"))
        with self.assertRaisesRegex(ValueError, "made with other settings \\(beam: 4 then, 2 now\\)"):
            self.pseudolabel(whole, "--subset", "train", "--beam", "2")
        self.assertEqual(read(os.path.join(whole, "train.out")), before)

    def test_raw_monolingual_text_to_a_mixture_student_with_kd(self):
        # monolingual source text: the test split's German side, so to speak, without its references
        mono = os.path.join(self.dir, "mono.in")
        shutil.copy(os.path.join(self.data, "test.in"), mono)
        labels = self.pseudolabel(os.path.join(self.dir, "mono"), "--input", mono)
        with open(mono) as f:
            n = len(f.read().splitlines())
        # other text at the same path is not paired with the old translations: the rerun is refused untouched
        translations = read(os.path.join(labels, "train.out"))
        shutil.copy(mono, mono + ".kept")
        with open(mono, "a") as f:
            f.write("a b c\n")
        with self.assertRaisesRegex(ValueError, 'made with other settings \\(source_sha256: "[0-9a-f]+\\.\\.\\. then'):
            self.pseudolabel(os.path.join(self.dir, "mono"), "--input", mono)
        self.assertEqual(read(os.path.join(labels, "train.out")), translations)
        shutil.move(mono + ".kept", mono)
        self.assertEqual(
            len(read(os.path.join(labels, "train.ids")).split()) + len(read(os.path.join(labels, "dropped.tsv")).splitlines()),
            n,
        )

        student = os.path.join(self.dir, "student")
        mixture = ["--train-mixture", f"{self.data},{labels}/data-bin", "--train-mixture-probs", "0.34,0.66"]
        with quiet():
            train_translation_model(
                self.data,
                task="translation_kd",
                save_dir=student,
                extra_flags=["--teacher-path", self.teacher, "--max-epoch", "2"] + KD_FLAGS + mixture,
            )
        state = torch.load(os.path.join(student, "checkpoint_last.pt"), weights_only=True)
        self.assertIn("kd_loss", [name for _, name, _, _ in state["extra_state"]["metrics"]["train"]])
        self.assertEqual(state["cfg"]["task"]["train_mixture_probs"], "0.34,0.66")
        self.assertGreater(state["optimizer_history"][-1]["num_updates"], 0)

    def test_recipes_run_as_given(self):
        recipes = os.path.join(os.path.dirname(PLUGIN_DIR), "recipes")
        env = {
            "PYTHON": sys.executable, "DATA": self.data, "RAW": self.data, "TEACHER": self.teacher,
            "OUT": os.path.join(self.dir, "recipes"), "MAX_UPDATE": "3", "STUDENT_ARCH": " ".join(TINY_ARCH),
        }  # fmt: skip
        # recipe: (the pseudo-labels it trains on, or None; whether the teacher runs in training)
        expected = {"seq_kd": ("teacher_train", False), "seq_interpolation": ("teacher_train", False),
                    "hybrid": ("teacher_train", True), "low_data": ("teacher_mono", True), "word_kd": (None, True),
                    "init_kd": (None, True), "distilbert": (None, True), "init_kd_jsd": (None, True),
                    "init_kd_on_policy": (None, True)}  # fmt: skip
        for recipe, (pseudo, teacher) in expected.items():
            with self.subTest(recipe):
                result = subprocess.run(
                    ["bash", os.path.join(recipes, f"{recipe}.sh")], env={**os.environ, **env}, capture_output=True, text=True
                )
                self.assertEqual(result.returncode, 0, result.stderr[-3000:])
                state = torch.load(os.path.join(env["OUT"], recipe, "checkpoint_last.pt"), weights_only=True)
                self.assertEqual(state["optimizer_history"][-1]["num_updates"], 3)
                mixture = state["cfg"]["task"].get("train_mixture")
                self.assertEqual(pseudo is None, mixture is None)
                if pseudo:
                    self.assertIn(pseudo, mixture)
                self.assertEqual(bool(state["cfg"]["task"].get("teacher_path")), teacher)
        model = state["cfg"]["model"]
        self.assertEqual(model["arch"] if isinstance(model, dict) else model.arch, "transformer_student")  # distilbert's
        with open(os.path.join(env["OUT"], "low_data_raw", "train.in")) as f:
            self.assertEqual(len(f.read().splitlines()), 25)  # 5% of 500

    def test_sentencepiece_input_is_encoded_like_the_data(self):
        import sentencepiece as spm

        raw = os.path.join(self.data, "train.in")
        prefix = os.path.join(self.dir, "spm")
        with quiet():
            spm.SentencePieceTrainer.train(input=raw, model_prefix=prefix, vocab_size=20, model_type="bpe", minloglevel=2)
        processor = spm.SentencePieceProcessor(model_file=prefix + ".model")
        args = kd_pseudolabel.get_parser().parse_args(
            ["--teacher", self.teacher, "--data", self.data, "--output", "o", "--input", raw, "--spm-model", prefix + ".model"]
        )
        lines = ["a b c d", "h e l l o", ""]
        self.assertEqual(tokenize(lines, args), [" ".join(processor.encode(x, out_type=str)) for x in lines[:2]] + [""])

    def test_bad_transfer_sets_fail_before_writing(self):
        bad = os.path.join(self.dir, "bad.in")
        with open(bad, "wb") as f:
            f.write(b"a b c\n\xff\xfe d\n")
        for content, message in [(b"a b c\n\xff\xfe d\n", "bad.in, line 2: not UTF-8"), (b"", "is empty")]:
            with open(bad, "wb") as f:
                f.write(content)
            output = os.path.join(self.dir, "out")
            with self.subTest(message), self.assertRaisesRegex(ValueError, message):
                self.pseudolabel(output, "--input", bad)
            self.assertFalse(os.path.exists(output))
        model = os.path.join(self.dir, "broken.model")
        with open(model, "w") as f:
            f.write("not a model\n")
        with self.assertRaisesRegex(ValueError, "cannot load --spm-model"):
            self.pseudolabel(
                os.path.join(self.dir, "spm_out"), "--input", os.path.join(self.data, "test.in"), "--spm-model", model
            )
        self.assertFalse(os.path.exists(os.path.join(self.dir, "spm_out")))
        with self.assertRaisesRegex(ValueError, "--shard-id 2 is not in 0..1"):
            self.pseudolabel(os.path.join(self.dir, "o"), "--subset", "train", "--num-shards", "2", "--shard-id", "2")


def write_corpus(path, alphabet, n, seed):
    import random

    rng = random.Random(seed)
    with open(path + ".in", "w") as src, open(path + ".out", "w") as tgt:
        for _ in range(n):
            words = " ".join(rng.choice(alphabet) for _ in range(rng.randint(2, 6)))
            src.write(words + "\n")
            tgt.write(words.upper() + "\n")


class TestMixtureSampling(unittest.TestCase):
    """Two corpora told apart by their alphabets: A (300 pairs) and B (100 pairs), mixed 1:3."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="fairseq_kd_mix_")
        raw = os.path.join(cls.tmp.name, "raw")
        os.makedirs(raw)
        write_corpus(os.path.join(raw, "a"), "abcdefgh", 300, 0)
        write_corpus(os.path.join(raw, "b"), "ijklmnop", 100, 1)
        write_corpus(os.path.join(raw, "valid"), "abcdefghijklmnop", 20, 2)
        with open(os.path.join(raw, "all.in"), "w") as f:
            f.write(read(os.path.join(raw, "a.in")) + read(os.path.join(raw, "b.in")))
        with open(os.path.join(raw, "all.out"), "w") as f:
            f.write(read(os.path.join(raw, "a.out")) + read(os.path.join(raw, "b.out")))
        cls.main = os.path.join(cls.tmp.name, "main")
        flags = lambda train: [
            "--source-lang",
            "in",
            "--target-lang",
            "out",
            "--trainpref",
            os.path.join(raw, train),
            "--workers",
            "1",
        ]  # noqa: E731
        with quiet():
            from fairseq_cli import preprocess

            parser = options.get_preprocessing_parser()
            preprocess.main(
                parser.parse_args(flags("all") + ["--validpref", os.path.join(raw, "valid"), "--destdir", cls.main])
            )
            dicts = ["--srcdict", os.path.join(cls.main, "dict.in.txt"), "--tgtdict", os.path.join(cls.main, "dict.out.txt")]
            for name in ("a", "b"):
                preprocess.main(parser.parse_args(flags(name) + dicts + ["--destdir", os.path.join(cls.tmp.name, name)]))
            # a corpus binarized with its own dictionary
            preprocess.main(parser.parse_args(flags("b") + ["--destdir", os.path.join(cls.tmp.name, "other_dict")]))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def task(self, *flags):
        args = options.parse_args_and_arch(
            options.get_training_parser(), ["--task", "translation_kd", self.main, "--arch", "transformer"] + list(flags)
        )
        return tasks.setup_task(convert_namespace_to_omegaconf(args).task)

    def test_mixture_samples_at_the_requested_rates(self):
        a, b = (os.path.join(self.tmp.name, x) for x in ("a", "b"))
        task = self.task("--train-mixture", f"{a},{b}", "--train-mixture-probs", "0.25,0.75", "--seed", "3")
        with quiet():
            task.load_dataset("train")
        dictionary = task.source_dictionary
        b_symbols = {dictionary.index(c) for c in "ijklmnop"}
        counts = {"a": 0, "b": 0}
        epochs = 5
        for epoch in range(1, epochs + 1):
            itr = task.get_batch_iterator(task.dataset("train"), max_tokens=200, seed=3, epoch=epoch).next_epoch_itr(
                shuffle=True
            )
            for batch in itr:
                for row, length in zip(batch["net_input"]["src_tokens"], batch["net_input"]["src_lengths"]):
                    token = row[-length].item()  # the sentence's first token (sources are left-padded)
                    counts["b" if token in b_symbols else "a"] += 1
        total = counts["a"] + counts["b"]
        self.assertEqual(total, epochs * len(task.dataset("train")))
        # B is the smaller corpus but is drawn 3 times as often as A
        self.assertAlmostEqual(counts["b"] / total, 0.75, delta=0.02)

    def test_mixture_member_with_other_dictionary_is_an_error(self):
        a, other = (os.path.join(self.tmp.name, x) for x in ("a", "other_dict"))
        task = self.task("--train-mixture", f"{a},{other}", "--train-mixture-probs", "0.5,0.5")
        with self.assertRaisesRegex(ValueError, "other_dict' was binarized with another in dictionary"):
            task.load_dataset("train")

    def test_probabilities_are_checked_when_the_task_is_set_up(self):
        a, b = (os.path.join(self.tmp.name, x) for x in ("a", "b"))
        with self.assertRaisesRegex(ValueError, "sum to 0.9, not 1"):
            self.task("--train-mixture", f"{a},{b}", "--train-mixture-probs", "0.3,0.6")


if __name__ == "__main__":
    unittest.main()
