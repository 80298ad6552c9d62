"""fairseq_kd.evaluate's pieces: the significance fields against sacreBLEU's own command line, the verdict
rule, the table, and every bad input refused before any translation. (A whole evaluation of real models,
fairseq and CTranslate2, with timing rounds, runs in tests/test_demo_pipeline.py on the smoke run.)"""

import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import torch

from fairseq_kd.cli import kd_pseudolabel
from fairseq_kd.evaluate import (
    EvaluationError,
    Record,
    Settings,
    evaluate,
    paired_bootstrap,
    parse_systems,
    results_table,
    verdict,
)
from fairseq_kd.generate_log import read_translations
from fairseq_kd.io import UserError
from tests.utils import KD_FLAGS, TeacherTestCase, quiet, train_translation_model

BIN = os.path.dirname(sys.executable)


def noisy(references, keep, rng):
    words = sorted({w for r in references for w in r.split()})
    return [" ".join(w if rng.random() < keep else rng.choice(words) for w in r.split()) for r in references]


class TestSignificance(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        rng = random.Random(0)
        words = "the a cat dog sat on mat and ran far away home".split()
        cls.references = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(200)]
        cls.baseline = noisy(cls.references, 0.6, rng)
        cls.better = noisy(cls.references, 0.7, rng)
        cls.same = noisy(cls.references, 0.6, rng)

    def test_the_paired_bootstrap_is_sacrebleus(self):
        """p-values and intervals equal what sacreBLEU's own command line prints for the same files."""
        tests, signatures = paired_bootstrap(("baseline", self.baseline), {"better": self.better}, self.references)
        with tempfile.TemporaryDirectory() as d:
            for name, lines in (("ref", self.references), ("baseline", self.baseline), ("better", self.better)):
                with open(os.path.join(d, name), "w") as f:
                    f.write("\n".join(lines) + "\n")
            result = subprocess.run(
                [os.path.join(BIN, "sacrebleu"), "ref", "-i", "baseline", "better", "--paired-bs", "-m", "bleu", "chrf",
                 "-f", "text"], cwd=d, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True,
            )  # fmt: skip
        intervals = re.findall(r"\(([\d.]+) ± ([\d.]+)\)", result.stdout)  # baseline BLEU, chrF; better BLEU, chrF
        p_values = [float(p) for p in re.findall(r"\(p = ([\d.]+)\)", result.stdout)]
        self.assertEqual(len(intervals), 4)
        for i, metric in enumerate(("bleu", "chrf")):
            self.assertAlmostEqual(tests["baseline"][metric]["mean"], float(intervals[i][0]), places=1)
            self.assertAlmostEqual(tests["baseline"][metric]["ci"], float(intervals[i][1]), places=1)
            self.assertAlmostEqual(tests["better"][metric]["mean"], float(intervals[2 + i][0]), places=1)
            self.assertAlmostEqual(tests["better"][metric]["ci"], float(intervals[2 + i][1]), places=1)
            self.assertAlmostEqual(tests["better"][metric]["p_value"], p_values[i], places=4)
            self.assertEqual(tests["better"][metric]["verdict"], "gain")
        self.assertIn("bs:1000", signatures["BLEU"])

    def test_a_system_like_the_baseline_is_no_gain(self):
        tests, _ = paired_bootstrap(
            ("baseline", self.baseline), {"same": self.same, "baseline": self.baseline}, self.references
        )
        self.assertEqual(list(tests), ["baseline", "same"])
        self.assertGreater(tests["same"]["bleu"]["p_value"], 0.05)
        self.assertEqual(tests["same"]["bleu"]["verdict"], "no significant difference")
        worse, _ = paired_bootstrap(("better", self.better), {"baseline": self.baseline}, self.references)
        self.assertEqual(worse["baseline"]["bleu"]["verdict"], "loss")
        # the same translations under another name (a model in two runtimes that agree): sacreBLEU's p is
        # 1 / 1001 for a zero difference, which is no gain and no loss
        identical, _ = paired_bootstrap(("baseline", self.baseline), {"copy": list(self.baseline)}, self.references)
        self.assertLess(identical["copy"]["bleu"]["p_value"], 0.05)
        self.assertEqual(identical["copy"]["bleu"]["verdict"], "no significant difference")

    def test_verdict_needs_p_below_005(self):
        self.assertEqual(verdict(2.0, 0.049), "gain")
        self.assertEqual(verdict(-2.0, 0.01), "loss")
        self.assertEqual(verdict(5.0, 0.05), "no significant difference")
        self.assertEqual(verdict(-5.0, 0.3), "no significant difference")
        self.assertEqual(verdict(0.0, 0.001), "no significant difference")


class TestPieces(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="fairseq_kd_evaluate_")
        self.addCleanup(shutil.rmtree, self.tmp)

    def test_generate_output_in_corpus_order(self):
        text = (
            "S-2\tdrei\nH-2\t-0.5\t▁three\nD-2\t-0.5\tthree\nD-0\t-0.1\tone two\nD-1\t-0.2\t\n"
            "2026-11-25 | INFO | fairseq_cli.generate | Translated 3 sentences (9 tokens) in 0.5s (6.00 sentences/s, 18.00 tokens/s)\n"
        )
        hypotheses, speed = read_translations(text, 3)
        self.assertEqual(hypotheses, ["one two", "", "three"])
        self.assertEqual(speed, {"sentences_per_s": 6.0, "tokens_per_s": 18.0, "seconds": 0.5})
        with self.assertRaisesRegex(RuntimeError, "no translation of 1 sentences"):
            read_translations(text, 4)
        with self.assertRaisesRegex(RuntimeError, "Translated"):
            read_translations("D-0\t0\tx\n", 1)

    def test_bad_systems_are_refused_before_any_work(self):
        ct2 = os.path.join(self.tmp, "not_ct2")
        os.makedirs(ct2)
        text = os.path.join(self.tmp, "notes.txt")
        with open(text, "w") as f:
            f.write("not a checkpoint\n")
        truncated = os.path.join(self.tmp, "truncated.pt")
        torch.save({"model": {}}, truncated)
        with open(truncated, "r+b") as f:
            f.truncate(40)
        for specs, message in [
            (["a=x.pt", "a=y.pt"], "two systems are named 'a'"),
            (["student.pt"], "is not NAME=PATH"),
            (["a=" + os.path.join(self.tmp, "missing.pt")], "does not exist"),
            (["a=" + ct2], "is a directory but not a CTranslate2 model"),
            (["a=" + text], "could not be read as a fairseq checkpoint"),
            (["a=" + truncated], "could not be read as a fairseq checkpoint"),
            (["a b=x.pt"], "use letters, digits"),
            ([], "no system to evaluate"),
        ]:
            with self.subTest(message), self.assertRaisesRegex(UserError, message):
                parse_systems(specs)

    def test_bad_settings(self):
        for settings, message in [(Settings(beam=0), "--beam"), (Settings(max_len_b=0), "--max-len-b"),
                                  (Settings(bootstrap_samples=10), "--bootstrap-samples")]:  # fmt: skip
            with self.subTest(message), self.assertRaisesRegex(EvaluationError, message):
                evaluate({"a": "x.pt"}, self.tmp, "refs", settings=settings)
        with self.assertRaisesRegex(EvaluationError, "--baseline 'b' is not one of the systems"):
            evaluate({"a": os.path.join(self.tmp, "not_there.pt")}, self.tmp, "refs", baseline="b")
        with self.assertRaisesRegex(EvaluationError, "--timing-rounds must be 0 or more"):
            evaluate({"a": "x.pt"}, self.tmp, "refs", timing_rounds=-1)

    def test_table_marks_gains_only_with_significance(self):
        def record(name, bleu, significance):
            return Record(name, name + ".pt", "fairseq", bleu, 50.0, 100.0, 1000.0, 1234567, 4.5, significance=significance)

        base = record("baseline", 30.0, {"bleu": {"mean": 30.0, "ci": 1.0}})
        gain = record("kd", 32.5, {"bleu": {"mean": 32.5, "ci": 1.1, "p_value": 0.001, "verdict": "gain"}})
        same = record(
            "other", 30.4, {"bleu": {"mean": 30.4, "ci": 1.0, "p_value": 0.3, "verdict": "no significant difference"}}
        )
        table = results_table([base, gain, same], "baseline").splitlines()
        self.assertEqual(len(table), 5)
        self.assertIn("| kd | 32.50 ± 1.10 | 50.00 | +2.50 (gain) | 0.0010 | 100.0 | 1000 | 1,234,567 | 4.5 |", table)
        self.assertIn("+0.40 (no significant difference) | 0.3000", table[4])


if __name__ == "__main__":
    unittest.main()


class TestPostProcessing(unittest.TestCase):
    def test_detected_from_the_dictionary(self):
        from fairseq_kd.evaluate import detect_post_process

        self.assertEqual(detect_post_process(["\u2581the", "\u2581cat", "s", "\u2581a"]), "sentencepiece")
        self.assertEqual(detect_post_process(["the", "ca@@", "t", "dog", "s"] * 4), "subword_nmt")
        self.assertEqual(detect_post_process(["the", "cat", "dog", "a"]), "none")
        self.assertEqual(detect_post_process([]), "none")

    def test_undetokenized_translations_stop_the_evaluation(self):
        from fairseq_kd.evaluate import check_detokenized

        with self.assertRaisesRegex(EvaluationError, "2 of 3 translations still hold subword marks.*--post-process"):
            check_detokenized("student", ["\u2581the \u2581cat", "a b", "ca@@ t"])
        check_detokenized("student", ["the cat", "a b", "one \u2581 two"])  # one in three: scored


class TestWordLevelData(TeacherTestCase):
    def test_word_level_data_is_scored_as_words(self):
        # the tiny teacher's data are words (letter cipher), not sentencepiece: "auto" scores them as they are,
        # where sentencepiece's post-processing would glue each translation into one word
        refs = os.path.join(self.data, "test.out")
        scores = {}
        for post in ("auto", "none", "sentencepiece"):
            (record,) = evaluate({"teacher": self.teacher}, self.data, refs, settings=Settings(beam=2, post_process=post))
            scores[post] = record.bleu
        self.assertEqual(scores["auto"], scores["none"])
        self.assertGreater(scores["auto"], 5, scores)
        self.assertLess(scores["sentencepiece"], scores["auto"] / 2, scores)


class TestPathsWithColons(TeacherTestCase):
    def test_a_teacher_and_data_bin_whose_paths_hold_colons_are_used_as_they_are(self):
        """fairseq reads ':' in a data directory or a --path as a list of them; such paths are given to it
        through links: evaluation, pseudo-labels and training with --teacher-path score and train as the same
        files under plain paths do."""
        odd = os.path.join(self.dir, "run:1")
        shutil.copytree(self.data, os.path.join(odd, "data:bin"))
        teacher = os.path.join(odd, "teacher:best.pt")
        shutil.copy(self.teacher, teacher)
        refs = os.path.join(self.data, "test.out")
        settings = Settings(beam=2)
        (plain,) = evaluate({"teacher": self.teacher}, self.data, refs, settings=settings)
        (colons,) = evaluate({"teacher": teacher}, os.path.join(odd, "data:bin"), refs, settings=settings)
        self.assertEqual(colons.bleu, plain.bleu)
        self.assertGreater(plain.bleu, 5)
        # pseudo-labels by the fairseq engine, and one update of word-level KD with such a --teacher-path (the
        # task's own flag: a path that names a file is one teacher, not an ensemble)
        out = os.path.join(self.dir, "labels")
        args = kd_pseudolabel.get_parser().parse_args(
            ["--teacher", teacher, "--data", os.path.join(odd, "data:bin"), "--output", out, "--cpu", "--subset", "valid"]
        )
        with quiet():
            kd_pseudolabel.main(args)
        with open(os.path.join(out, "summary.json")) as f:
            self.assertGreater(json.load(f)["kept"], 0)
        with quiet():
            train_translation_model(self.data, task="translation_kd", save_dir=os.path.join(self.dir, "s"),
                                    extra_flags=["--teacher-path", teacher, "--max-update", "1"] + KD_FLAGS)  # fmt: skip
        self.assertTrue(os.path.isfile(os.path.join(self.dir, "s", "checkpoint_last.pt")))
