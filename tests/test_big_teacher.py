"""benchmarks/big_teacher.py's reading of a teacher's validations and its summary, on a written log."""

import json
import os
import random
import sys
import tempfile
import unittest
from unittest import mock

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import big_students  # noqa: E402
import big_teacher  # noqa: E402

from fairseq_kd.demo.presets import PRESETS  # noqa: E402
from fairseq_kd.evaluate import Record, Settings, evaluate  # noqa: E402
from fairseq_kd.pipeline import Training  # noqa: E402
from tests.utils import TINY_ARCH, TeacherTestCase, run_console_script  # noqa: E402

LOG = """2026-12-06 22:23:42 | INFO | valid | epoch 001 | valid on 'valid' subset | loss 7.481 | nll_loss 7.481 | ppl 178.64 | wps 2911.8 | wpb 1938.8 | bsz 164 | num_updates 164
2026-12-06 22:23:42 | INFO | train_inner | epoch 002:     25 / 164 loss=6.2, nll_loss=6.2, num_updates=189
2026-12-06 22:30:00 | INFO | valid | epoch 002 | valid on 'valid' subset | loss 5.1 | nll_loss 5.1 | ppl 34.3 | wps 2900 | wpb 1938.8 | bsz 164 | num_updates 200 | best_nll_loss 5.1
2026-12-06 22:40:00 | INFO | valid | epoch 002 | valid on 'valid' subset | loss 5.3 | nll_loss 5.3 | ppl 39.4 | wps 2900 | wpb 1938.8 | bsz 164 | num_updates 328 | best_nll_loss 5.1
"""


class TestBigTeacher(unittest.TestCase):
    def test_valid_curve_and_its_summary(self):
        with tempfile.TemporaryDirectory() as tmp:
            log = os.path.join(tmp, "teacher.log")
            with open(log, "w") as f:
                f.write(LOG)
            curve = big_teacher.valid_curve(log)
            self.assertEqual(curve, [(164, 7.481), (200, 5.1), (328, 5.3)])
            result = big_teacher.write_curve(curve, tmp, patience=1)
            self.assertEqual(result, {"best_update": 200, "best_valid_nll": 5.1, "validations": 3,
                                      "validations_after_best": 1, "stopped_early": True})  # fmt: skip
            self.assertFalse(big_teacher.write_curve(curve, tmp, patience=2)["stopped_early"])
            with open(os.path.join(tmp, "teacher_valid.tsv")) as f:
                self.assertEqual(f.read().splitlines()[1:], ["164\t7.481", "200\t5.1", "328\t5.3"])
            self.assertTrue(os.path.getsize(os.path.join(tmp, "teacher_valid.png")) > 0)

    def test_summary_has_the_issues_fields(self):
        significance = {"bleu": {"p_value": 0.001, "verdict": "gain", "mean": 40.0, "ci": 1.0}, "baseline": "small_teacher"}
        teacher = Record("teacher", "t.pt", "fairseq", 40.0, 60.0, 100.0, 2000.0, 12_000_000, 48.0, significance=significance)
        small = Record("small_teacher", "s.pt", "fairseq", 38.0, 58.0, 200.0, 4000.0, 1_800_000, 7.0)
        int8 = Record("teacher.ct2_int8", "d", "ctranslate2", 39.9, 60.0, 500.0, 9000.0, None, 12.0)
        result = big_teacher.summary(PRESETS["big"]["teacher"], teacher, small, int8, {"best_update": 10})
        expected = {"encoder_layers": 6, "decoder_layers": 6, "embed_dim": 256, "params": 12_000_000, "test_bleu": 40.0,
                    "small_teacher_test_bleu": 38.0, "p_vs_small_teacher": 0.001,
                    "sentences_per_s": {"fairseq": 100.0, "ctranslate2_int8": 500.0}}  # fmt: skip
        for key, value in expected.items():
            self.assertEqual(result["teacher"][key], value, key)
        self.assertEqual(result["students"], [])
        json.dumps(result)


class TestStudentSummary(unittest.TestCase):
    def test_entries_speedups_int8_drop_and_targets(self):
        def record(name, bleu, speed, params=None, p=None):
            significance = {"bleu": {"p_value": p, "verdict": "loss"}} if p is not None else {}
            return Record(name, name, "x", bleu, 50.0, speed, 10 * speed, params, 1.0, significance=significance)

        records = {r.name: r for r in [
            record("teacher", 40.0, 10.0, 12_000_000), record("teacher.ct2_float32", 40.0, 12.0),
            record("teacher.ct2_int8", 39.9, 20.0), record("6x1.init_kd", 39.0, 30.0, 7_000_000, 0.01),
            record("6x1.init_kd.ct2_float32", 39.0, 40.0, p=0.01), record("6x1.init_kd.ct2_int8", 38.9, 80.0, p=0.01),
            record("6x1.init_kd.ct2_int8_vmap", 38.95, 110.0, p=0.01),
        ]}  # fmt: skip
        self.assertEqual(big_students.runtime_of("6x1-w128.init_kd.ct2_int8_vmap"), ("6x1-w128.init_kd", "ct2_int8_vmap"))
        entries = {e["name"]: e for e in big_students.student_entries(records, {"6x1": PRESETS["big"]["student"]},
                                                                          {"6x1.init_kd": 7_000_000}, {"6x1": 1600})}  # fmt: skip
        vmap = entries["6x1.init_kd.ct2_int8_vmap"]
        self.assertEqual((vmap["x_teacher_fairseq"], vmap["x_teacher_same_runtime"]), (11.0, 5.5))  # vs the teacher's int8
        self.assertEqual(vmap["pct_teacher_bleu"], 97.4)
        self.assertEqual(vmap["int8_drop"], -0.05)  # int8 with the map minus float32
        self.assertIsNone(entries["6x1.init_kd"]["int8_drop"])
        self.assertEqual(entries["6x1.init_kd.ct2_float32"]["x_teacher_same_runtime"], 3.33)
        self.assertTrue(big_students.meets_targets(vmap))
        self.assertFalse(big_students.meets_targets(entries["6x1.init_kd.ct2_int8"]))  # 8x the teacher in fairseq
        table = big_students.students_table(list(entries.values()), records["teacher"])
        self.assertIn("| 6x1.init_kd | ct2_int8_vmap | 7,000,000 | 1,600 | 38.95 | 97.4 |", table)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "students.png")
            teachers = {n: r for n, r in records.items() if n.startswith("teacher")}
            big_students.students_plot(list(entries.values()), teachers, path)
            with open(path, "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

    def test_claim_c_compares_init_kd_with_word_kd_nll_at_every_budget(self):
        """One row per budget and split, from the pipeline's translations; init_kd against word_kd_nll by the
        paired bootstrap: a perfect init_kd beats a word_kd_nll that drops words, and a second budget adds rows."""
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        rng = random.Random(0)
        words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]
        references = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(200)]
        pipeline = mock.Mock()
        pipeline.config = mock.Mock(references=tmp.name, tgt="en", student=PRESETS["big"]["student"],
                                    training=big_students.STUDENT_TRAINING)  # fmt: skip
        pipeline.path = lambda *parts: os.path.join(tmp.name, "run", *parts)
        os.makedirs(pipeline.path("logs"))
        for name, bleu in (("init_kd", 40.0), ("word_kd_nll", 30.0)):  # validations at an epoch's end and at 200, 400
            with open(pipeline.path("logs", f"{name}.log"), "w") as f:
                for update in (164, 200, 400):
                    f.write(f"epoch 001 | valid on 'valid' subset | loss 3.1 | nll_loss 2.5 | ppl 5.6 | bleu "
                            f"{bleu + update / 100} | wps 1 | wpb 1 | bsz 1 | num_updates {update}\n")  # fmt: skip
        for split in ("valid", "test"):
            with open(os.path.join(tmp.name, f"{split}.en"), "w") as f:
                f.write("\n".join(references) + "\n")
            directory = pipeline.path("eval", split, "translations")
            os.makedirs(directory)
            for name, kept in (("init_kd", 8), ("word_kd_nll", 5), ("baseline", 3)):
                with open(os.path.join(directory, f"{name}.txt"), "w") as f:
                    f.write("\n".join(" ".join(r.split()[:kept]) for r in references) + "\n")
        results = os.path.join(tmp.name, "results")
        os.makedirs(results)
        big_students.claim_c(pipeline, 1600, results)
        big_students.claim_c(pipeline, 6400, results)
        with open(os.path.join(results, "claim_c.json")) as f:
            found = json.load(f)
        self.assertEqual(sorted(found["budgets"]), ["1600", "6400"])
        test = found["budgets"]["1600"]["test"]
        self.assertEqual(test["init_kd_bleu"], 100.0)
        self.assertGreater(test["word_kd_nll_bleu"], test["baseline_bleu"])
        self.assertEqual(test["init_kd_minus_word_kd_nll"], round(100.0 - test["word_kd_nll_bleu"], 2))
        self.assertLess(test["p_value"], 0.05)
        self.assertEqual(test["verdict"], "gain")
        with open(os.path.join(results, "claim_c.md")) as f:
            table = f.read()
        self.assertEqual(table.count("| 1,600 |"), 2)
        self.assertEqual(table.count("| 6,400 |"), 2)
        self.assertEqual(found["valid_curve"]["164"], {"init_kd": 41.64, "word_kd_nll": 31.64})
        self.assertIn("| 400 |  | 34.00 | 44.00 | +10.00 |", table)  # the save interval's validations, no baseline log
        self.assertNotIn("| 164 |", table)

    def test_seeds_table_from_the_seed_one_results_and_the_kept_translations(self):
        """Seed 1 from the seed-1 results, seeds 2.. from their kept translations (scored here, the best against the
        baseline of the same seed); a seed with one student still to train is left out and named; mean and sd."""
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        rng = random.Random(3)
        words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]
        references = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(200)]
        for split in ("valid", "test"):
            with open(os.path.join(tmp.name, f"{split}.en"), "w") as f:
                f.write("\n".join(references) + "\n")
        kept_dir = os.path.join(tmp.name, "seeds_6x1")
        for name, kept in (("baseline.seed2", 5), ("init_kd.seed2", 8), ("baseline.seed3", 4)):
            for split in ("valid", "test"):
                path = big_students.divergences.kept(kept_dir, name, split)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write("\n".join(" ".join(r.split()[:kept]) for r in references) + "\n")
        first = {"systems": [
            {"name": "baseline", "bleu": 40.0, "valid_bleu": 41.0, "significance": {}, "valid_significance": {}},
            {"name": "init_kd", "bleu": 44.0, "valid_bleu": 45.0, "significance": {"bleu": {"p_value": 0.001}},
             "valid_significance": {"bleu": {"p_value": 0.002}}},
        ]}  # fmt: skip
        config = mock.Mock(references=tmp.name, tgt="en")
        args = mock.Mock(seeds=3, max_update=6400)
        names = ["baseline.seed2", "init_kd.seed2", "baseline.seed3", "init_kd.seed3"]
        big_students.write_seeds(kept_dir, config, first, ["baseline", "init_kd"], names, args)
        with open(kept_dir + ".json") as f:
            found = json.load(f)
        self.assertFalse(found["complete"])
        self.assertEqual(found["missing"], ["init_kd.seed3"])
        test = found["bleu_by_seed"]["test"]
        self.assertEqual(sorted(test), ["1", "2"])  # seed 3 waits for init_kd.seed3
        self.assertEqual((test["1"]["baseline"], test["1"]["init_kd"], test["1"]["p"]), (40.0, 44.0, 0.001))
        self.assertEqual(found["bleu_by_seed"]["valid"]["1"]["p"], 0.002)
        self.assertEqual(test["2"]["init_kd"], 100.0)
        self.assertLess(test["2"]["baseline"], 100.0)
        self.assertLess(test["2"]["p"], 0.05)
        summary = found["summary"]["test"]["init_kd"]
        self.assertEqual(summary["seeds"], 2)
        self.assertEqual(summary["mean"], 72.0)
        self.assertAlmostEqual(summary["std"], 39.6, places=1)  # sd of 44 and 100
        with open(kept_dir + ".md") as f:
            text = f.read()
        self.assertIn("Still to train: init_kd.seed3", text)
        self.assertIn("| mean ± sd (2 seeds) |", text)

    def test_curves_of_every_shape_in_the_work_directory(self):
        """A run of one shape rewrites the curves of all: the other shapes' students stay in the file."""
        with tempfile.TemporaryDirectory() as tmp:
            out, results = os.path.join(tmp, "out"), os.path.join(tmp, "results")
            os.makedirs(results)
            for shape, student in (("6x1", "init_kd"), ("6x1-w128", "baseline"), ("6x1-w128", "export")):
                os.makedirs(os.path.join(out, shape, "logs"), exist_ok=True)
                with open(os.path.join(out, shape, "logs", f"{student}.log"), "w") as f:
                    f.write("epoch 001 | valid on 'valid' subset | loss 3.1 | nll_loss 2.5 | ppl 5.6 | bleu 12.5 | "
                            "wps 1 | wpb 1 | bsz 1 | num_updates 200\n")  # fmt: skip
            big_students.write_curves(out, results)
            with open(os.path.join(results, "students_curve.tsv")) as f:
                rows = [line.split("\t") for line in f.read().splitlines()]
            self.assertEqual(
                rows[1:], [["6x1", "init_kd", "200", "2.5", "12.5"], ["6x1-w128", "baseline", "200", "2.5", "12.5"]]
            )
            with open(os.path.join(results, "students_curve.png"), "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

    def test_curves_of_shapes_trained_elsewhere_stay_in_the_file(self):
        """A shape whose logs this work directory lacks (trained on another machine) keeps its rows; a student
        whose log is here replaces its old rows."""
        with tempfile.TemporaryDirectory() as tmp:
            out, results = os.path.join(tmp, "out"), os.path.join(tmp, "results")
            os.makedirs(os.path.join(out, "6x1-w64", "logs"))
            os.makedirs(results)
            with open(os.path.join(results, "students_curve.tsv"), "w") as f:
                f.write("shape\tstudent\tupdate\tvalid_nll\tvalid_bleu\n6x1-w128\tinit_kd\t400\t3.25\t20.1\n"
                        "6x1-w128\tinit_kd\t800\t2.75\t30.7\n6x1-w64\tbaseline\t400\t9.0\t1.0\n")  # fmt: skip
            with open(os.path.join(out, "6x1-w64", "logs", "baseline.log"), "w") as f:
                f.write("epoch 001 | valid on 'valid' subset | loss 3.1 | nll_loss 2.5 | ppl 5.6 | bleu 12.5 | "
                        "wps 1 | wpb 1 | bsz 1 | num_updates 200\n")  # fmt: skip
            big_students.write_curves(out, results)
            with open(os.path.join(results, "students_curve.tsv")) as f:
                rows = [line.split("\t") for line in f.read().splitlines()]
            self.assertEqual(rows[1:], [["6x1-w128", "init_kd", "400", "3.25", "20.1"],
                                        ["6x1-w128", "init_kd", "800", "2.75", "30.7"],
                                        ["6x1-w64", "baseline", "200", "2.5", "12.5"]])  # fmt: skip


class TestStudentCurve(TeacherTestCase):
    def test_valid_bleu_logged_while_training_is_the_evaluations_bleu(self):
        """A student trained with the pipeline's Training(eval_bleu=...) logs valid BLEU at every validation, and
        big_students reads the curve. fairseq's --eval-bleu is a training-time estimate, computed batch by
        batch on the binarized references (fairseq issue #3245): its last point is near fairseq-kd-evaluate's
        BLEU of the last checkpoint (same beam and length bound; 54.3 against 52.7 here), not equal to it."""
        save = os.path.join(self.dir, "student")
        training = Training(max_update=200, warmup_updates=10, lr=0.01, max_tokens=500, save_interval_updates=100,
                            eval_bleu="none")  # fmt: skip
        flags = [
            self.data,
            "--task",
            "translation_kd",
            *TINY_ARCH,
            "--criterion",
            "label_smoothed_cross_entropy",
            "--save-dir",
            save,
        ]
        result = run_console_script("fairseq-train", flags + [str(f) for f in training.flags()])
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        log = os.path.join(self.dir, "train.log")
        with open(log, "w") as f:
            f.write(result.stdout + result.stderr)
        curve = big_students.valid_curve(log)
        self.assertEqual([u for u, _, _ in curve][-1], 200)
        self.assertTrue(all(0 <= b <= 100 and n > 0 for _, n, b in curve), curve)
        valid_refs = os.path.join(self.data, "valid.out")  # the raw references beside the data-bin's files
        record = evaluate({"student": os.path.join(save, "checkpoint_last.pt")}, self.data, valid_refs, split="valid",
                          settings=Settings(post_process="none"), quiet=True)[0]  # fmt: skip
        self.assertAlmostEqual(curve[-1][2], record.bleu, delta=3.0)


if __name__ == "__main__":
    unittest.main()
