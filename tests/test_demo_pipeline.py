"""The demo pipeline: its pieces on hand-made inputs, and one whole run of the `smoke` preset on cipher data
(teacher, pseudo-labels, seven students, evaluation, CTranslate2, report), then a rerun that redoes nothing."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
import zipfile

import sacrebleu
import torch

from fairseq_kd.demo.pipeline import (
    METHODS,
    ON_ALL_STUDENTS,
    STUDENTS,
    DemoError,
    Pipeline,
    check_data_dir,
    count_parameters,
    label_offsets,
    read_generate_log,
    repair_last_checkpoint,
    results_table,
)
from tests.utils import create_dummy_data, quiet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_data(data_dir, train=1500):
    """{train,valid,test}.{de,en} from the cipher data of the other tests."""
    os.makedirs(data_dir, exist_ok=True)
    create_dummy_data(data_dir, num_examples=train, maxlen=8, alphabet="abcdefghijkl")
    for split in ("train", "valid", "test"):
        os.replace(os.path.join(data_dir, f"{split}.in"), os.path.join(data_dir, f"{split}.de"))
        os.replace(os.path.join(data_dir, f"{split}.out"), os.path.join(data_dir, f"{split}.en"))


GENERATE_LOG = """
$ fairseq-generate (an earlier run)
D-0\t0.0\tstale
Translated 1 sentences (2 tokens) in 1.0s (1.00 sentences/s, 2.00 tokens/s)

$ fairseq-generate data-bin --path m.pt
S-2\tdrei
H-2\t-0.5\t▁three
D-2\t-0.5\tthree
D-0\t-0.1\tone two
D-1\t-0.2\t
2026-11-25 | INFO | fairseq_cli.generate | Translated 3 sentences (9 tokens) in 0.5s (6.00 sentences/s, 18.00 tokens/s)
"""


class TestPieces(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="fairseq_kd_demo_")
        self.addCleanup(shutil.rmtree, self.tmp)

    def test_generate_log_gives_the_last_run_in_corpus_order(self):
        path = os.path.join(self.tmp, "generate.log")
        with open(path, "w") as f:
            f.write(GENERATE_LOG)
        hypotheses, speed = read_generate_log(path)
        self.assertEqual(hypotheses, ["one two", "", "three"])
        self.assertEqual(speed, {"sentences_per_s": 6.0, "tokens_per_s": 18.0})

    def test_generate_log_without_timing_is_an_error(self):
        path = os.path.join(self.tmp, "generate.log")
        with open(path, "w") as f:
            f.write("\n$ fairseq-generate\nD-0\t0\tx\n")
        with self.assertRaisesRegex(DemoError, "Translated"):
            read_generate_log(path)

    def test_shared_embeddings_count_once(self):
        embedding = torch.zeros(10, 4)
        state = {"model": {"encoder.embed": embedding, "decoder.embed": embedding, "decoder.out": embedding,
                           "layer.weight": torch.zeros(4, 4), "steps": torch.zeros(3, dtype=torch.long)}}  # fmt: skip
        path = os.path.join(self.tmp, "m.pt")
        torch.save(state, path)
        self.assertEqual(count_parameters(path), 10 * 4 + 4 * 4)

    def test_table_has_a_row_per_system(self):
        record = {"name": "baseline", "method": METHODS["baseline"], "bleu": 1.5, "chrf": 20.0, "valid_bleu": 1.0,
                  "sentences_per_s": 10.0, "tokens_per_s": 100.0, "params": 1234567, "size_mb": 4.7}  # fmt: skip
        table = results_table([record, dict(record, name="word_kd")]).splitlines()
        self.assertEqual(len(table), 4)
        self.assertIn("| baseline | NLL on the references | 1.5 | 20.0 | 1.0 | 10.0 | 100.0 | 1,234,567 | 4.7 |", table)

    def test_labels_of_close_points_do_not_overlap(self):
        names = ["teacher", "seq_kd", "baseline", "interpolation", "distilbert", "hybrid", "word_kd", "ctranslate2_int8"]
        # in points, as the full preset's table puts them: six students within 10 x 40 points
        points = [(60, 300), (300, 130), (297, 124), (295, 95), (310, 85), (290, 82), (288, 76), (480, 170)]
        bounds = (0, 0, 500, 320)
        offsets = label_offsets(names, points, bounds, fontsize=8)
        width, height = 0.62 * 8, 1.3 * 8
        boxes = []
        for name, (x, y), (dx, dy, align) in zip(names, points, offsets):
            left = x + dx if align == "left" else x + dx - width * len(name)
            boxes.append((left, y + dy, left + width * len(name), y + dy + height))
        for i, a in enumerate(boxes):
            self.assertTrue(bounds[0] <= a[0] and a[2] <= bounds[2] and bounds[1] <= a[1] and a[3] <= bounds[3], names[i])
            for j, b in enumerate(boxes[:i]):
                self.assertFalse(a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3], (names[i], names[j]))
            for x, y in points:
                self.assertFalse(a[0] < x < a[2] and a[1] < y < a[3], (names[i], (x, y)))
        # the label of the point at the right edge goes to its left
        self.assertEqual(offsets[-1][2], "right")
        self.assertEqual(offsets[0], (4, 4, "left"))

    def test_speeds_are_the_medians_of_the_timing_runs(self):
        out = os.path.join(self.tmp, "run")
        pipeline = Pipeline(out, "full")
        os.makedirs(os.path.join(out, "eval"))
        for name, speed in (("teacher", 50.0), ("baseline", 150.0)):
            with open(os.path.join(out, "eval", f"{name}.json"), "w") as f:
                json.dump({"name": name, "sentences_per_s": speed, "tokens_per_s": 10 * speed}, f)
        # before the timing stage: the evaluation's single run
        self.assertEqual([r["sentences_per_s"] for r in pipeline.records()], [50.0, 150.0])
        runs = {
            "teacher": [{"sentences_per_s": 40.0, "tokens_per_s": 400.0}, {"sentences_per_s": 90.0, "tokens_per_s": 900.0},
                        {"sentences_per_s": 60.0, "tokens_per_s": 600.0}],
            "baseline": [{"sentences_per_s": 200.0, "tokens_per_s": 2000.0}, {"sentences_per_s": 100.0, "tokens_per_s": 1000.0},
                         {"sentences_per_s": 180.0, "tokens_per_s": 1800.0}],
        }  # fmt: skip
        os.makedirs(os.path.join(out, "timing"))
        with open(os.path.join(out, "timing", "runs.json"), "w") as f:
            json.dump(runs, f)
        teacher, baseline = pipeline.records()
        self.assertEqual((teacher["sentences_per_s"], teacher["tokens_per_s"]), (60.0, 600.0))
        self.assertEqual((baseline["sentences_per_s"], baseline["tokens_per_s"]), (180.0, 1800.0))
        self.assertEqual(teacher["speed_runs"], runs["teacher"])
        self.assertIn("median of 3", pipeline.speed_note([teacher, baseline]))
        self.assertIn("one translation", pipeline.speed_note([{"name": "teacher"}]))
        # a system evaluated after the timing (a student added to the demo since): no medians for any,
        # until the timing stage is done again
        with open(os.path.join(out, "eval", "seq_kd.json"), "w") as f:
            json.dump({"name": "seq_kd", "sentences_per_s": 170.0, "tokens_per_s": 1700.0}, f)
        records = pipeline.records()
        self.assertEqual([r["sentences_per_s"] for r in records], [50.0, 150.0, 170.0])
        self.assertFalse(any("speed_runs" in r for r in records))

    def test_only_runs_with_timing_rounds_have_the_stage(self):
        def stages(*args):
            return [name for name, _ in Pipeline(self.tmp, *args).stages]

        self.assertNotIn("timing", stages("default"))
        self.assertEqual(stages("full")[-1], "timing")
        self.assertEqual(stages("default", None, 2)[-1], "timing")
        self.assertNotIn("timing", stages("full", None, 0))
        with self.assertRaisesRegex(DemoError, "--timing-rounds must be 0 or more, not -1"):
            Pipeline(self.tmp, "default", None, -1)

    def test_timing_rounds_may_change_in_a_run_dir(self):
        """How speeds are measured is not how models are made: a finished run can be timed again."""
        out = os.path.join(self.tmp, "run")
        Pipeline(out, "smoke").check_run_dir()
        Pipeline(out, "smoke", None, 3).check_run_dir()

    def test_a_truncated_last_checkpoint_is_replaced_by_the_newest_complete_interval_one(self):
        def archive(path, text):
            with zipfile.ZipFile(path, "w") as z:
                z.writestr("data", text)

        with tempfile.TemporaryDirectory() as d:
            last = os.path.join(d, "checkpoint_last.pt")
            archive(last, "last")
            self.assertIsNone(repair_last_checkpoint(d))  # a complete one is left alone
            self.assertEqual(zipfile.ZipFile(last).read("data"), b"last")

            archive(os.path.join(d, "checkpoint_3_400.pt"), "400")
            archive(os.path.join(d, "checkpoint_9_1200.pt"), "1200")
            with open(os.path.join(d, "checkpoint_10_1400.pt"), "wb") as f:  # being written when stopped
                f.write(b"PK\x03\x04 truncated")
            with open(last, "r+b") as f:
                f.truncate(10)
            with quiet():
                source = repair_last_checkpoint(d)
            self.assertEqual(source, os.path.join(d, "checkpoint_9_1200.pt"))
            self.assertEqual(zipfile.ZipFile(last).read("data"), b"1200")
            with open(last + ".incomplete", "rb") as f:
                self.assertEqual(len(f.read()), 10)  # kept, not deleted

    def test_a_truncated_last_checkpoint_without_interval_ones_is_moved_aside(self):
        with tempfile.TemporaryDirectory() as d:
            last = os.path.join(d, "checkpoint_last.pt")
            with open(last, "wb") as f:
                f.write(b"PK\x03\x04 truncated")
            with quiet():
                self.assertIsNone(repair_last_checkpoint(d))
            self.assertFalse(os.path.exists(last))  # fairseq-train starts afresh
            self.assertTrue(os.path.isfile(last + ".incomplete"))

    def test_bad_data_dirs(self):
        data = os.path.join(self.tmp, "data")
        with self.assertRaisesRegex(DemoError, "no such directory"):
            check_data_dir(data)
        write_data(data, train=30)
        check_data_dir(data)
        with open(os.path.join(data, "valid.en"), "a") as f:
            f.write("one line too many\n")
        with self.assertRaisesRegex(DemoError, "valid.de has 10 lines but valid.en 11"):
            check_data_dir(data)
        write_data(data, train=30)
        with open(os.path.join(data, "test.de"), "ab") as f:
            f.write(b"caf\xe9\n")
        with self.assertRaisesRegex(DemoError, "test.de line 11 is not UTF-8"):
            check_data_dir(data)
        os.remove(os.path.join(data, "train.en"))
        with self.assertRaisesRegex(DemoError, "train.en is missing"):
            check_data_dir(data)

    def test_unknown_preset(self):
        with self.assertRaisesRegex(DemoError, "unknown preset 'fast': choose one of default, full, smoke"):
            Pipeline(self.tmp, "fast")

    def test_a_run_dir_of_another_preset_is_refused_untouched(self):
        out = os.path.join(self.tmp, "run")
        Pipeline(out, "smoke").check_run_dir()
        with open(os.path.join(out, "demo.json"), "rb") as f:
            before = f.read()
        with self.assertRaisesRegex(DemoError, "holds a demo run of preset 'smoke' on gettext catalogs, not of "
                                    "preset 'default'.*give another output directory"):  # fmt: skip
            Pipeline(out, "default").check_run_dir()
        with open(os.path.join(out, "demo.json"), "rb") as f:
            self.assertEqual(f.read(), before)
        Pipeline(out, "smoke").check_run_dir()  # the same preset: accepted

    def test_a_run_dir_of_a_changed_preset_is_refused_untouched(self):
        out = os.path.join(self.tmp, "run")
        Pipeline(out, "smoke").check_run_dir()
        with open(os.path.join(out, "demo.json"), "rb") as f:
            before = f.read()
        for change, message in [
            (dict(lr=0.01), r"when the preset had other lr \(0.005, now 0.01\): its finished stages would not match"),
            (dict(student_max_update=9), r"other student_max_update \(10, now 9\).*\(student_max_update may only be raised\)"),
            # a raised student budget with anything else changed is no raise
            (dict(student_max_update=11, beam=3), r"other beam \(2, now 3\), student_max_update \(10, now 11\)"),
        ]:
            changed = Pipeline(out, "smoke")
            changed.preset = dict(changed.preset, **change)
            with self.assertRaisesRegex(DemoError, message + ".*OUT="):
                changed.check_run_dir()
            with open(os.path.join(out, "demo.json"), "rb") as f:
                self.assertEqual(f.read(), before)
        self.assertFalse(os.path.exists(os.path.join(out, "earlier")))

    def test_choosing_and_timing_among_other_students_are_done_again(self):
        """A ctranslate2 or timing stage finished before the demo had its present students (its marker lists
        others, or none as before they were listed) runs again, what it measured kept; one finished with
        them does not."""
        out = os.path.join(self.tmp, "run")
        pipeline = Pipeline(out, "smoke")
        ran = []
        pipeline.stages = [(stage, lambda stage=stage: ran.append(stage)) for stage in ("teacher", *ON_ALL_STUDENTS)]
        pipeline.report = lambda: None
        os.makedirs(os.path.join(out, "stages"))
        markers = {
            "teacher": {"seconds": 1.0},
            "ctranslate2": {"seconds": 1.0},
            "timing": {"seconds": 1.0, "students": list(STUDENTS[:-1])},
        }
        for stage, marker in markers.items():
            with open(pipeline.done_marker(stage), "w") as f:
                json.dump(marker, f)
        os.makedirs(os.path.join(out, "timing"))
        with open(os.path.join(out, "timing", "runs.json"), "w") as f:
            f.write("the timing of six students")
        with quiet():
            pipeline.run()
        self.assertEqual(ran, list(ON_ALL_STUDENTS))
        [kept] = os.listdir(os.path.join(out, "earlier"))
        self.assertTrue(kept.startswith("students_before_"))
        with open(os.path.join(out, "earlier", kept, "timing", "runs.json")) as f:
            self.assertEqual(f.read(), "the timing of six students")
        for stage in ON_ALL_STUDENTS:
            with open(pipeline.done_marker(stage)) as f:
                self.assertEqual(json.load(f)["students"], list(STUDENTS))
        ran.clear()
        with quiet():
            pipeline.run()
        self.assertEqual(ran, [])
        self.assertEqual(os.listdir(os.path.join(out, "earlier")), [kept])

    def test_a_raised_student_budget_keeps_what_was_measured_and_reopens_the_students_stages(self):
        out = os.path.join(self.tmp, "run")
        Pipeline(out, "smoke").check_run_dir()
        os.makedirs(os.path.join(out, "stages"))
        finished = ["teacher", "pseudolabels", "student baseline", "evaluate teacher", "evaluate baseline",
                    "ctranslate2", "timing", "ablation init_nll"]  # fmt: skip
        for stage in finished:
            with open(Pipeline(out, "smoke").done_marker(stage), "w") as f:
                f.write("{}")
        os.makedirs(os.path.join(out, "eval"))
        with open(os.path.join(out, "eval", "baseline.json"), "w") as f:
            f.write('{"bleu": 1.0}')
        with open(os.path.join(out, "results.md"), "w") as f:
            f.write("the table of 10 updates")
        raised = Pipeline(out, "smoke")
        raised.preset = dict(raised.preset, student_max_update=30)
        with quiet():
            raised.check_run_dir()
        done = sorted(os.listdir(os.path.join(out, "stages")))
        self.assertEqual(done, ["evaluate_teacher.done", "pseudolabels.done", "teacher.done"])
        kept = os.path.join(out, "earlier", "student_max_update_10")
        with open(os.path.join(kept, "results.md")) as f:
            self.assertEqual(f.read(), "the table of 10 updates")
        with open(os.path.join(kept, "eval", "baseline.json")) as f:
            self.assertEqual(f.read(), '{"bleu": 1.0}')
        with open(os.path.join(out, "demo.json")) as f:
            self.assertEqual(json.load(f)["settings"]["student_max_update"], 30)
        # the run now belongs to the raised budget: the preset's own budget is a lowering, refused
        with self.assertRaisesRegex(DemoError, r"student_max_update \(30, now 10\)"):
            Pipeline(out, "smoke").check_run_dir()


class TestSmokeRun(unittest.TestCase):
    """`python -m fairseq_kd.demo --preset smoke --data DIR`: every stage, every output file."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="fairseq_kd_demo_run_")
        cls.data, cls.out = os.path.join(cls.tmp, "data"), os.path.join(cls.tmp, "run")
        write_data(cls.data)
        cls.first = cls.demo()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)

    @classmethod
    def demo(cls):
        start = time.time()
        result = subprocess.run(
            [sys.executable, "-m", "fairseq_kd.demo", "--preset", "smoke", "--data", cls.data, "--out", cls.out],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        return result, time.time() - start

    def test_results(self):
        result, _ = self.first
        self.assertEqual(result.returncode, 0, result.stdout[-3000:])
        with open(os.path.join(self.out, "results.json")) as f:
            results = json.load(f)
        systems = {r["name"]: r for r in results["systems"]}
        self.assertEqual(list(systems), ["teacher", *STUDENTS, "ctranslate2_int8"])
        keys = {"name", "method", "bleu", "chrf", "valid_bleu", "sentences_per_s", "tokens_per_s", "params", "size_mb"}
        for record in systems.values():
            self.assertLessEqual(keys, set(record))
            self.assertGreater(record["sentences_per_s"], 0)
            self.assertGreater(record["params"], 0)
        # every student has the student's shape; the teacher is bigger
        self.assertEqual(len({systems[name]["params"] for name in STUDENTS}), 1)
        self.assertGreater(systems["teacher"]["params"], systems["baseline"]["params"])
        # scores are sacreBLEU's on the detokenized translations against the raw references
        with open(os.path.join(self.data, "test.en")) as f:
            references = f.read().splitlines()
        with open(os.path.join(self.out, "translations", "teacher.test.en")) as f:
            translations = f.read().splitlines()
        self.assertEqual(len(translations), len(references))
        self.assertAlmostEqual(systems["teacher"]["bleu"], sacrebleu.corpus_bleu(translations, [references]).score, places=1)
        # the teacher learnt the cipher: its translations are far above chance
        self.assertGreater(systems["teacher"]["chrf"], 30)
        # the CTranslate2 model is the student with the best valid BLEU
        best = max(STUDENTS, key=lambda name: systems[name]["valid_bleu"])
        self.assertEqual(systems["ctranslate2_int8"]["method"], f"{best} in CTranslate2 int8")
        with open(os.path.join(self.out, "results.md")) as f:
            rows = [line for line in f.read().splitlines() if line.startswith("| ")]
        self.assertEqual(len(rows), 1 + len(systems))  # the header and one row per system
        self.assertTrue(rows[0].startswith("| system | method | BLEU | chrF |"))
        with open(os.path.join(self.out, "bleu_vs_speed.png"), "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        self.assertIn("| teacher |", result.stdout)  # the table is shown at the end
        # the timing stage: every system translated test once more (smoke: 1 round), in a fresh process
        # for the fairseq models; the table's speeds are those runs'
        with open(os.path.join(self.out, "timing", "runs.json")) as f:
            runs = json.load(f)
        self.assertEqual(list(runs), list(systems))
        for name, record in systems.items():
            self.assertEqual(len(runs[name]), 1)
            self.assertEqual(record["speed_runs"], runs[name])
            self.assertEqual(record["sentences_per_s"], runs[name][0]["sentences_per_s"])
            if name != "ctranslate2_int8":
                with open(os.path.join(self.out, "logs", f"timing_{name}.log")) as f:
                    self.assertEqual(f.read().count("\n$ "), 1)
        self.assertIn("speeds: median of 1 translations of the test split", results["speeds"])

    def test_init_seq_kd_starts_from_the_teacher_and_learns_its_translations(self):
        with open(os.path.join(self.out, "logs", "init_seq_kd.log")) as f:
            log = f.read()
        self.assertIn("student initialised from the teacher", log)
        self.assertIn(f"--train-mixture {os.path.join(self.out, 'pseudolabels', 'data-bin')}", log)
        self.assertNotIn("--criterion label_smoothed_cross_entropy_with_kd", log)
        with open(os.path.join(self.out, "eval", "init_seq_kd.json")) as f:
            self.assertEqual(json.load(f)["method"], "DistilBERT-style init + sequence-level KD")

    def test_students_run_with_stock_fairseq(self):
        """The exported students load in a process that never imports fairseq_kd."""
        code = (
            "import sys, torch; from fairseq import checkpoint_utils;"
            "models, cfg = checkpoint_utils.load_model_ensemble([sys.argv[1]], arg_overrides={'data': sys.argv[2]});"
            "assert 'fairseq_kd' not in sys.modules; print(cfg.model.arch)"
        )
        for name in STUDENTS:
            result = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    code,
                    os.path.join(self.out, "models", f"{name}.pt"),
                    os.path.join(self.out, "data-bin"),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            self.assertEqual(result.returncode, 0, result.stdout[-2000:])
            self.assertEqual(result.stdout.split()[-1], "transformer")

    def test_rerun_redoes_nothing(self):
        with open(os.path.join(self.out, "results.json")) as f:
            before = f.read()
        result, seconds = self.demo()
        self.assertEqual(result.returncode, 0, result.stdout[-3000:])
        self.assertEqual(result.stdout.count("done earlier"), len(Pipeline(self.out, "smoke", self.data).stages))
        with open(os.path.join(self.out, "results.json")) as f:
            self.assertEqual(f.read(), before)

    def test_a_raised_student_budget_continues_the_students(self):
        """The preset's student budget raised over a finished run (in a copy of it): a student from scratch and
        the one initialised from the teacher continue from their checkpoints of the old budget, and the
        earlier results are kept. (That the reopened stages are redone is the stage bookkeeping tested above.)"""
        out = os.path.join(self.tmp, "raised")
        shutil.copytree(self.out, out)
        with open(os.path.join(out, "results.json")) as f:
            earlier = f.read()
        pipeline = Pipeline(out, "smoke", self.data)
        budget = pipeline.preset["student_max_update"]
        # at its budget a student is not trained again: fairseq-train would make one more update
        with open(os.path.join(out, "logs", "baseline.log")) as f:
            commands = f.read().count("\n$ ")
        with quiet():
            pipeline.student("baseline")
        with open(os.path.join(out, "logs", "baseline.log")) as f:
            self.assertEqual(f.read().count("\n$ "), commands)
        state = torch.load(os.path.join(out, "students", "baseline", "checkpoint_last.pt"), weights_only=False)
        self.assertEqual(state["optimizer_history"][-1]["num_updates"], budget)
        pipeline.preset = dict(pipeline.preset, student_max_update=budget + 4)
        with quiet():
            pipeline.check_run_dir()
            for name in ("baseline", "distilbert"):
                pipeline.student(name)
        for name in ("baseline", "distilbert"):
            with open(os.path.join(out, "logs", f"{name}.log")) as f:
                last_command = f.read().rsplit("\n$ ", 1)[1]
            loaded = rf"Loaded checkpoint \S+/students/{name}/checkpoint_last.pt \(epoch \d+ @ {budget} updates\)"
            self.assertRegex(last_command, loaded)
            state = torch.load(os.path.join(out, "students", name, "checkpoint_last.pt"), weights_only=False)
            self.assertEqual(state["optimizer_history"][-1]["num_updates"], budget + 4)
        with open(os.path.join(out, "earlier", f"student_max_update_{budget}", "results.json")) as f:
            self.assertEqual(f.read(), earlier)

    def test_init_ablation(self):
        """benchmarks/init_ablation.py in a finished run (a copy of it): init_nll starts from the teacher's
        layers, trains on the references, is evaluated as the demo's students are, and is not trained again
        by a rerun."""
        out, tables = os.path.join(self.tmp, "ablation"), os.path.join(self.tmp, "ablation_tables")
        shutil.copytree(self.out, out)
        command = [sys.executable, os.path.join("benchmarks", "init_ablation.py"), "--out", out, "--preset", "smoke"]
        command += ["--data", self.data, "--only", "init_nll", "--results", tables]
        result = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.assertEqual(result.returncode, 0, result.stdout[-3000:])
        with open(os.path.join(out, "logs", "init_nll.log")) as f:
            log = f.read()
        self.assertIn("student initialised from the teacher", log)
        self.assertNotIn("--train-mixture", log)
        self.assertIn("--criterion label_smoothed_cross_entropy ", log)
        with open(os.path.join(out, "eval", "init_nll.json")) as f:
            record = json.load(f)
        self.assertEqual(record["method"], "DistilBERT-style init + NLL")
        with open(os.path.join(out, "translations", "init_nll.test.en")) as f:
            translations = f.read().splitlines()
        with open(os.path.join(self.data, "test.en")) as f:
            references = f.read().splitlines()
        self.assertAlmostEqual(record["bleu"], sacrebleu.corpus_bleu(translations, [references]).score, places=1)
        with open(os.path.join(tables, "init_ablation_smoke_10_updates.md")) as f:
            table = f.read()
        for name in ("teacher", "baseline", "init_nll", "distilbert", "seq_kd", "init_seq_kd"):
            self.assertIn(f"| {name} |", table)
        result = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.assertEqual(result.returncode, 0, result.stdout[-3000:])
        self.assertIn("init_nll: done earlier", result.stdout)
        # a run of another corpus is refused with what the run directory holds
        command[command.index("--data") + 1] = os.path.join(self.tmp, "elsewhere")
        result = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"error: {out} holds a demo run of preset 'smoke' on {self.data}", result.stdout)


if __name__ == "__main__":
    unittest.main()
