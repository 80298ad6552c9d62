"""The distillation pipeline and the demo in front of it: their pieces on hand-made inputs; one whole run of
the `smoke` preset on cipher data in a language pair that is not de/en (corpus, tokenizer, teacher,
pseudo-labels, students with two seeds, CTranslate2, evaluation with the paired bootstrap and timing,
report); a rerun that redoes nothing; fairseq-kd-evaluate on its exported models; and the pipeline on a
teacher it did not train, with a monolingual transfer set."""

import dataclasses
import hashlib
import json
import os
import queue
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import zipfile
from unittest import mock

import sacrebleu
import torch

from fairseq_kd.checkpoints import load_checkpoint
from fairseq_kd.demo.stages import Demo, DemoError, check_data_dir
from fairseq_kd.evaluate import seed_summary
from fairseq_kd.io import UserError
from fairseq_kd.pipeline import Config, Pipeline, PipelineError, Shape, Training, check_config, load_config
from fairseq_kd.pipeline.config import config_from_record, config_record, default_student
from fairseq_kd.pipeline.data import low_data_selector
from fairseq_kd.pipeline.distil import students_table
from fairseq_kd.runs import checkpoint_updates, repair_last_checkpoint
from tests.utils import TINY_ARCH, create_dummy_data, quiet, tiny_teacher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC, TGT = "in", "out"  # the cipher data's pair: not de/en
TIMING = re.compile(r"per_s|seconds|speed_runs|timing|wall")


def write_data(data_dir, train=1500):
    """{train,valid,test}.{in,out} of the cipher data of the other tests."""
    os.makedirs(data_dir, exist_ok=True)
    create_dummy_data(data_dir, num_examples=train, maxlen=8, alphabet="abcdefghijkl")


def run(args, cwd=ROOT):
    return subprocess.run([sys.executable] + args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_and_kill(cmd, kill_after_line=None, delay=0.0, on_line=None):
    """Runs CMD (from the repository root) in its own process group; with KILL_AFTER_LINE, kills the group
    (SIGKILL) DELAY seconds after a line of output starts with it; ON_LINE(line, process), if given, is called
    for every line as it comes. Returns (killed, exit status, [(seconds since start, line)])."""
    start = time.time()
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                               start_new_session=True)  # fmt: skip
    output = queue.Queue()

    def read():
        for line in process.stdout:
            output.put(line.rstrip("\n"))
        output.put(None)

    threading.Thread(target=read, daemon=True).start()
    lines, deadline = [], None
    while True:
        try:
            line = output.get(timeout=0.05)
        except queue.Empty:
            line = ""
        if line is None:
            process.wait()
            return False, process.returncode, lines
        if line:
            lines.append((round(time.time() - start, 1), line))
            if on_line:
                on_line(line, process)
            if kill_after_line and deadline is None and line.startswith(kill_after_line):
                deadline = time.time() + delay
        if deadline is not None and time.time() >= deadline and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return True, process.returncode, lines


def comparable(out):
    """What a finished run must reproduce: results.json without speeds and timings, and its translations."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not TIMING.search(k)}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    with open(os.path.join(out, "results.json")) as f:
        found = {"results.json": strip(json.load(f))}
    for split in ("valid", "test"):
        directory = os.path.join(out, "eval", split, "translations")
        for name in sorted(os.listdir(directory)):
            if name.endswith(".txt"):
                with open(os.path.join(directory, name), encoding="utf-8") as f:
                    found[f"{split}/{name}"] = f.read()
    return found


class TestPieces(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="fairseq_kd_demo_")
        self.addCleanup(shutil.rmtree, self.tmp)

    def test_a_truncated_last_checkpoint_is_replaced_by_the_newest_complete_interval_one(self):
        def archive(path, text):
            with zipfile.ZipFile(path, "w") as z:
                z.writestr("data", text)

        d = self.tmp
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
        last = os.path.join(self.tmp, "checkpoint_last.pt")
        with open(last, "wb") as f:
            f.write(b"PK\x03\x04 truncated")
        with quiet():
            self.assertIsNone(repair_last_checkpoint(self.tmp))
        self.assertFalse(os.path.exists(last))  # fairseq-train starts afresh
        self.assertTrue(os.path.isfile(last + ".incomplete"))

    def test_bad_data_dirs(self):
        data = os.path.join(self.tmp, "data")
        with self.assertRaisesRegex(DemoError, "no such directory"):
            check_data_dir(data, SRC, TGT)
        write_data(data, train=30)
        check_data_dir(data, SRC, TGT)
        with self.assertRaisesRegex(DemoError, r"train.de is missing \(needed: \{train,valid,test\}.\{de,en\}\)"):
            check_data_dir(data)  # the default pair
        with open(os.path.join(data, "valid.out"), "a") as f:
            f.write("one line too many\n")
        with self.assertRaisesRegex(DemoError, "valid.in has 10 lines but valid.out 11"):
            check_data_dir(data, SRC, TGT)
        write_data(data, train=30)
        with open(os.path.join(data, "test.in"), "ab") as f:
            f.write(b"caf\xe9\n")
        with self.assertRaisesRegex(UserError, r"test.in, line 11: not UTF-8"):
            check_data_dir(data, SRC, TGT)
        with self.assertRaisesRegex(DemoError, "both 'in'"):
            check_data_dir(data, SRC, SRC)

    def test_unknown_preset_and_methods(self):
        with self.assertRaisesRegex(DemoError, "unknown preset 'fast': choose one of default, full, big, smoke"):
            Demo(self.tmp, "fast")
        for methods, message in [(["baseline", "hinton"], "unknown method 'hinton'"),
                                 (["seq_kd"], "must include baseline"),
                                 (["baseline", "seq_kd", "baseline"], "names a method twice")]:  # fmt: skip
            demo = Demo(os.path.join(self.tmp, "run"), "smoke", methods=methods)
            with self.subTest(message), self.assertRaisesRegex(UserError, message):
                demo.pipeline.check_run_dir()
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "run", "pipeline.json")))
        with self.assertRaisesRegex(DemoError, "translates into English"):
            Demo(self.tmp, "smoke", tgt="fr")

    def test_a_run_dir_of_another_preset_is_refused_untouched(self):
        out = os.path.join(self.tmp, "run")
        Demo(out, "smoke").check_run_dir()
        with open(os.path.join(out, "demo.json"), "rb") as f:
            before = f.read()
        with self.assertRaisesRegex(
            DemoError, r'holds a demo run made with other settings \(.*preset: "smoke" then, "default" now'
        ):
            Demo(out, "default").check_run_dir()
        with self.assertRaisesRegex(DemoError, "made with other settings \\(languages: "):
            Demo(out, "smoke", src="fr").check_run_dir()
        with open(os.path.join(out, "demo.json"), "rb") as f:
            self.assertEqual(f.read(), before)
        Demo(out, "smoke").check_run_dir()  # the same preset: accepted
        # --data: other text at the same path is another corpus
        data = os.path.join(self.tmp, "data")
        write_data(data)
        Demo(os.path.join(self.tmp, "own"), "smoke", data=data, src=SRC, tgt=TGT).check_run_dir()
        with open(os.path.join(data, f"train.{TGT}"), "a") as f:
            f.write("one more line\n")
        with self.assertRaisesRegex(DemoError, f"made with other settings \\(data_digests.train.{TGT}: "):
            Demo(os.path.join(self.tmp, "own"), "smoke", data=data, src=SRC, tgt=TGT).check_run_dir()

    def test_a_run_dir_with_other_settings_is_refused_untouched_but_methods_may_be_added(self):
        out = os.path.join(self.tmp, "run")
        Demo(out, "smoke").pipeline.check_run_dir()
        with open(os.path.join(out, "pipeline.json"), "rb") as f:
            before = f.read()
        changed = Demo(out, "smoke")
        changed.config.training.lr = 0.01
        with self.assertRaisesRegex(
            PipelineError, r"made with other settings \(training.lr: 0.005 then, 0.01 now\): .*give another output directory"
        ):
            changed.pipeline.check_run_dir()
        with open(os.path.join(out, "pipeline.json"), "rb") as f:
            self.assertEqual(f.read(), before)
        # more students, other timing rounds, seeds and CTranslate2 threads are what a rerun may change
        Demo(out, "smoke", methods=["baseline", "seq_kd", "word_kd"], timing_rounds=3).pipeline.check_run_dir()
        threads = Demo(out, "smoke")
        threads.config.evaluation.threads = 2
        threads.pipeline.check_run_dir()

    def test_the_default_student_is_derived_from_the_teacher_and_fits_it(self):
        """Without --student, the pipeline's student is the teacher's encoder and one decoder layer: every
        initialised method takes it from any teacher (here a 3+3 one, whose 3 encoder layers no 2-layer
        student divides), and the report says where the shape came from."""
        data, teacher = tiny_teacher(TINY_ARCH[:2] + ["--encoder-layers", "3", "--decoder-layers", "3"] + TINY_ARCH[6:])
        shape = default_student(load_checkpoint(teacher)["cfg"]["model"])
        self.assertEqual(shape, Shape(3, 1, 16, 32, 2))
        config = Config(teacher, data, data, "in", "out", shape, Training(10, 1), methods=["baseline", "init_kd"],
                        student_from_teacher=True)  # fmt: skip
        pipe = Pipeline(os.path.join(self.tmp, "run"), config)
        pipe.check_students_fit()
        self.assertIn("3+1 layers, 16 wide (FFN 32, 2 heads; the default student: the teacher's encoder, one decoder "
                      "layer)", pipe.budget_line())  # fmt: skip
        with self.assertRaisesRegex(PipelineError, "3 encoder layers are not divisible by the student's 2"):
            Pipeline(
                os.path.join(self.tmp, "run"), dataclasses.replace(config, student=Shape(2, 1, 16, 32, 2))
            ).check_students_fit()

    def test_seeded_methods_choose_which_methods_train_with_every_seed(self):
        config = Config("t.pt", "d", "r", "in", "out", Shape(1, 1, 16, 32, 2), Training(10, 1),
                        methods=["baseline", "init_kd", "word_kd"], seeds=2)  # fmt: skip
        pipe = Pipeline(os.path.join(self.tmp, "run"), dataclasses.replace(config, seeded=["init_kd", "word_kd"]))
        self.assertEqual(pipe.seeded_methods(), ["init_kd", "word_kd"])
        self.assertEqual(pipe.seeded_methods(required=False), ["init_kd", "word_kd"])
        with self.assertRaisesRegex(PipelineError, "--seeded-methods seq_kd: not in --methods"):
            check_config(dataclasses.replace(config, seeded=["seq_kd"]))

    def test_a_raised_budget_continues_the_students_as_one_longer_run(self):
        """A rerun with a larger --max-update continues each student from its last checkpoint and ends where a
        run given that budget from the start ends (the inverse_sqrt schedule does not depend on the budget); a
        smaller one is refused in one line, the run directory untouched."""
        data, teacher = tiny_teacher()

        def pipeline(out, max_update):
            config = Config(teacher, data, data, "in", "out", Shape(1, 1, 16, 32, 2),
                            Training(max_update, 4, max_tokens=512, save_interval_updates=4),
                            methods=["baseline", "word_kd"])  # fmt: skip
            return Pipeline(os.path.join(self.tmp, out), config)

        def parameters(pipe):
            return load_checkpoint(pipe.path("models", "word_kd.pt"))["model"]

        with quiet():
            short = pipeline("continued", 6)
            short.check_run_dir()
            short.student_stage("word_kd", 1)
            self.assertEqual(checkpoint_updates(short.path("students", "word_kd", "checkpoint_last.pt")), 6)
            first = parameters(short)
            longer = pipeline("continued", 12)
            longer.check_run_dir()
            with mock.patch("fairseq_kd.runs.log") as logged:
                longer.student_stage("word_kd", 1)
            straight = pipeline("straight", 12)
            straight.check_run_dir()
            straight.student_stage("word_kd", 1)
        self.assertEqual(checkpoint_updates(longer.path("students", "word_kd", "checkpoint_last.pt")), 12)
        self.assertIn('student word_kd: done earlier with other inputs ({"budget": 6} then, {"budget": 12} now): '
                      "continued from its last checkpoint", [c.args[0] for c in logged.call_args_list])  # fmt: skip
        continued, expected = parameters(longer), parameters(straight)
        self.assertFalse(all(torch.equal(first[k], continued[k]) for k in first))
        for key in expected:
            torch.testing.assert_close(continued[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
        with open(longer.path("pipeline.json"), "rb") as f:
            before = f.read()
        with self.assertRaisesRegex(PipelineError, "holds students trained for 12 updates, more than --max-update 6: "
                                    "give another output directory, or 12 or more"):  # fmt: skip
            pipeline("continued", 6).check_run_dir()
        with open(longer.path("pipeline.json"), "rb") as f:
            self.assertEqual(f.read(), before)

    def test_a_changed_input_file_is_refused(self):
        """A run directory records what its inputs hold: a rerun after one changed at the same path is refused
        untouched; a run recorded before inputs were takes them at its next run."""
        out = os.path.join(self.tmp, "run")
        teacher = os.path.join(self.tmp, "teacher.pt")
        with open(teacher, "wb") as f:
            f.write(b"one teacher")
        demo = Demo(out, "smoke")
        demo.config.teacher = teacher
        demo.pipeline.check_run_dir()
        with open(os.path.join(out, "pipeline.json")) as f:
            record = json.load(f)
        self.assertEqual(record["inputs"]["teacher"], hashlib.sha256(b"one teacher").hexdigest())
        demo.pipeline.check_run_dir()  # the same contents: accepted
        with open(teacher, "wb") as f:
            f.write(b"another teacher")
        with open(os.path.join(out, "pipeline.json"), "rb") as f:
            before = f.read()
        with self.assertRaisesRegex(PipelineError, r"made with other settings \(inputs.teacher: \"[0-9a-f]+.*now\): "):
            demo.pipeline.check_run_dir()
        with open(os.path.join(out, "pipeline.json"), "rb") as f:
            self.assertEqual(f.read(), before)
        # the demo checks its settings before it has made the teacher: without the inputs, and writing nothing
        early = Demo(out, "smoke")
        early.config.teacher = teacher
        early.pipeline.check_run_dir(inputs=False)
        with open(os.path.join(out, "pipeline.json"), "rb") as f:
            self.assertEqual(f.read(), before)
        # a record without inputs (made before they were recorded) takes them
        del record["inputs"]
        with open(os.path.join(out, "pipeline.json"), "w") as f:
            json.dump(record, f)
        demo.pipeline.check_run_dir()
        with open(os.path.join(out, "pipeline.json")) as f:
            self.assertEqual(json.load(f)["inputs"]["teacher"], hashlib.sha256(b"another teacher").hexdigest())

    def test_a_run_s_settings_read_back_from_its_record(self):
        out = os.path.join(self.tmp, "run")
        demo = Demo(out, "smoke")
        demo.pipeline.check_run_dir()
        self.assertEqual(load_config(out), demo.config)
        # a run made before a setting existed reads back with that setting at the value it was made with
        record = config_record(demo.config)
        del record["pseudolabel_engine"]
        self.assertEqual(config_from_record(record).pseudolabel_engine, "fairseq")
        with self.assertRaisesRegex(PipelineError, "holds no pipeline.json"):
            load_config(self.tmp)

    def test_a_command_that_ran_out_of_space_or_refused_its_input_is_one_line(self):
        from fairseq_kd.pipeline import Pipeline

        pipe = Pipeline(os.path.join(self.tmp, "run"), None)
        code = "import sys; print('step 1'); raise OSError(28, 'No space left on device', 'checkpoint_last.pt')"
        fake = os.path.join(self.tmp, "bin")
        os.makedirs(fake)
        with open(os.path.join(fake, "full-disk"), "w") as f:
            f.write(f"#!{sys.executable}\n{code}\n")
        os.chmod(os.path.join(fake, "full-disk"), 0o755)
        with mock.patch("fairseq_kd.runs.BIN", fake):
            with self.assertRaisesRegex(
                PipelineError,
                r"^full-disk could not write \(No space left on device; see the end of .*full_disk.log\): free some space",
            ):
                pipe.command("full-disk", [], "full_disk")
            with open(os.path.join(fake, "full-disk"), "w") as f:
                f.write(f"#!{sys.executable}\nraise KeyError('a bug')\n")
            with self.assertRaisesRegex(RuntimeError, "(?s)full-disk failed .*KeyError: 'a bug'"):
                pipe.command("full-disk", [], "full_disk")
            # a console script's own refusal of a bad input (exit 2, "NAME: error: ...") is that one line
            with open(os.path.join(fake, "full-disk"), "w") as f:
                f.write(f"#!{sys.executable}\nimport sys; print('loading'); sys.exit('full-disk: error: --k must be >= 1')\n")
            with self.assertRaisesRegex(RuntimeError, "(?s)full-disk failed .*--k must be"):
                pipe.command("full-disk", [], "full_disk")  # exit status 1: not a refusal
            with open(os.path.join(fake, "full-disk"), "w") as f:
                f.write(
                    f"#!{sys.executable}\nimport sys; print('full-disk: error: --k must be >= 1', file=sys.stderr); sys.exit(2)\n"
                )
            with self.assertRaisesRegex(
                PipelineError,
                r"^full-disk refused its input: --k must be >= 1 \(the command and its output: .*full_disk.log\)$",
            ):
                pipe.command("full-disk", [], "full_disk")

    def test_seed_summary_and_table(self):
        def record(name, bleu, chrf, p=None):
            significance = {"bleu": {"mean": bleu, "ci": 1.0}}
            if p is not None:
                significance["bleu"].update(p_value=p, verdict="gain" if p < 0.05 else "no significant difference")
            return {"name": name, "method": "m", "bleu": bleu, "chrf": chrf, "valid_bleu": bleu, "sentences_per_s": 10.0,
                    "params": 1000, "size_mb": 1.0, "significance": significance,
                    "valid_significance": significance}  # fmt: skip

        records = [record("teacher", 40.0, 60.0, 0.001), record("baseline", 30.0, 50.0), record("baseline.seed2", 31.0, 51.0, 0.2),
                   record("kd", 33.0, 53.0, 0.001), record("kd.seed2", 34.0, 55.0, 0.001)]  # fmt: skip
        seeds = seed_summary(records)
        self.assertEqual(seeds, {"baseline": {"seeds": 2, "bleu_mean": 30.5, "bleu_std": 0.71, "chrf_mean": 50.5, "chrf_std": 0.71},
                                 "kd": {"seeds": 2, "bleu_mean": 33.5, "bleu_std": 0.71, "chrf_mean": 54.0, "chrf_std": 1.41}})  # fmt: skip
        table = students_table(records, seeds)
        self.assertIn("| kd | m | 33.00 ± 1.00 | +3.00 (gain) | 0.0010 |", table)
        self.assertIn("| baseline.seed2 | m | 31.00 ± 1.00 | +1.00 (no significant difference) | 0.2000 |", table)
        self.assertIn("| kd | 2 | 33.50 ± 0.71 | 54.00 ± 1.41 |", table)

    def test_the_low_data_share_is_about_5_percent_and_deterministic(self):
        keep = low_data_selector()
        lines = [f"sentence {i}" for i in range(20000)]
        kept = [line for line in lines if keep(line)]
        self.assertAlmostEqual(len(kept) / len(lines), 0.05, delta=0.005)
        self.assertEqual(kept, [line for line in lines if low_data_selector()(line)])


class TestSmokeRun(unittest.TestCase):
    """`python -m fairseq_kd.demo --preset smoke --data DIR -s in -t out`: every stage, every output file."""

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
        return run(["-m", "fairseq_kd.demo", "--preset", "smoke", "--data", cls.data, "-s", SRC, "-t", TGT, "--out", cls.out])

    def results(self):
        self.assertEqual(self.first.returncode, 0, self.first.stdout[-3000:])
        with open(os.path.join(self.out, "results.json")) as f:
            return json.load(f)

    def test_a_full_disk_in_the_report_leaves_the_results_as_they_were_and_says_so(self):
        # the rerun's report rewrites the results; every file written past a size limit fails as on a full
        # disk (RLIMIT_FSIZE: write() fails with EFBIG), set below the size of the smallest results.json
        self.results()
        reference = comparable(self.out)
        written = [os.path.join(self.out, "results.json")] + [
            os.path.join(self.out, "eval", s, "results.json") for s in ("valid", "test")
        ]
        limit = min(os.path.getsize(p) for p in written) - 1

        def small_disk():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        cmd = [sys.executable, "-m", "fairseq_kd.demo", "--preset", "smoke", "--data", self.data, "-s", SRC, "-t", TGT,
               "--out", self.out]  # fmt: skip
        result = subprocess.run(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=small_disk
        )
        self.assertEqual(result.returncode, 2, result.stdout[-3000:])
        last = result.stdout.strip().splitlines()[-1]
        self.assertRegex(last, r"^python -m fairseq_kd.demo: error: could not write (\S+): File too large; free some space")
        self.assertIn(re.search(r"could not write (\S+):", last)[1], written)
        self.assertNotIn("Traceback", result.stdout)
        self.assertEqual(comparable(self.out), reference)
        leftovers = [f for _, _, files in os.walk(self.out) for f in files if ".tmp" in f]
        self.assertEqual(leftovers, [])
        # with room again, the same command finishes with the same results
        result = self.demo()
        self.assertEqual(result.returncode, 0, result.stdout[-3000:])
        self.assertEqual(comparable(self.out), reference)

    def test_results_and_significance(self):
        results = self.results()
        systems = {r["name"]: r for r in results["systems"]}
        best = json.load(open(os.path.join(self.out, "models", "ctranslate2_int8.json")))["student"]
        self.assertIn(best, ("seq_kd", "init_seq_kd"))  # the best of the students other than the baseline
        expected = ["teacher", "baseline", "seq_kd", "init_seq_kd", "baseline.seed2", f"{best}.seed2", "ctranslate2_int8"]
        self.assertEqual(sorted(systems), sorted(expected))
        for name, record in systems.items():
            self.assertGreater(record["sentences_per_s"], 0)
            self.assertIn("nrefs:1|case:mixed|eff:no|tok:13a", record["bleu_signature"])
            for split in ("significance", "valid_significance"):
                sig = record[split]
                self.assertEqual(sig["baseline"], "baseline")
                for metric in ("bleu", "chrf"):
                    self.assertIn("ci", sig[metric])
                    if name != "baseline":
                        self.assertTrue(0 < sig[metric]["p_value"] <= 1)
                        self.assertEqual(sig[metric]["verdict"] == "gain", sig[metric]["p_value"] < 0.05 and
                                         record["bleu" if metric == "bleu" else "chrf"] > systems["baseline"][metric])  # fmt: skip
        # every student has the student's shape; the teacher is bigger
        self.assertEqual(len({systems[n]["params"] for n in expected[1:]}), 1)
        self.assertGreater(systems["teacher"]["params"], systems["baseline"]["params"])
        # scores are sacreBLEU's on the detokenized translations against the raw references
        with open(os.path.join(self.data, f"test.{TGT}")) as f:
            references = f.read().splitlines()
        with open(os.path.join(self.out, "eval", "test", "translations", "teacher.txt")) as f:
            translations = f.read().splitlines()
        self.assertAlmostEqual(systems["teacher"]["bleu"], sacrebleu.corpus_bleu(translations, [references]).score, places=1)
        self.assertGreater(systems["teacher"]["chrf"], 30)  # the teacher learnt the cipher
        # the seeds' spread
        self.assertEqual(results["seeds"]["baseline"]["seeds"], 2)
        self.assertIn(best, results["seeds"])
        # no timing rounds in the smoke preset: each system's speed is that of its translation of test
        for record in systems.values():
            self.assertEqual(len(record["speed_runs"]), 1)
            self.assertEqual(record["sentences_per_s"], record["speed_runs"][0]["sentences_per_s"])

    def test_the_table_shows_only_systems_above_the_chrf_floor(self):
        results = self.results()
        floor = results["chrf_floor"]
        self.assertEqual(floor, 30.0)
        with open(os.path.join(self.out, "results.md")) as f:
            text = f.read()
        rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| system")]
        shown = {row.split(" | ")[0][2:] for row in rows if " | " in row and not row.startswith("| method")}
        for record in results["systems"]:
            if record["chrf"] >= floor:
                self.assertIn(record["name"], shown)
                self.assertNotIn(record["name"], results["below_chrf_floor"])
            else:
                self.assertNotIn(f"| {record['name']} | ", text)
                self.assertIn(record["name"], results["below_chrf_floor"])
        if results["below_chrf_floor"]:
            self.assertIn("Not shown, test chrF below 30.0", text)
        # the budget of the comparison, in one line: the smoke preset's student shape and updates
        self.assertIn("Every student: 1+1 layers, 32 wide (FFN 64, 2 heads), 10 updates of up to 2,048 tokens", text)
        with open(os.path.join(self.out, "bleu_vs_speed.png"), "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

    def test_init_seq_kd_starts_from_the_teacher_and_learns_its_translations(self):
        self.results()
        with open(os.path.join(self.out, "logs", "init_seq_kd.log")) as f:
            log = f.read()
        self.assertIn("student initialised from the teacher", log)
        self.assertIn(f"--train-mixture {os.path.join(self.out, 'pseudolabels', 'data-bin')}", log)
        self.assertNotIn("--criterion label_smoothed_cross_entropy_with_kd", log)
        self.assertIn("--label-smoothing 0 ", log)
        with open(os.path.join(self.out, "logs", "teacher.log")) as f:
            self.assertIn("--label-smoothing 0.0 ", f.read())

    def test_students_run_with_stock_fairseq(self):
        """The exported students load in a process that never imports fairseq_kd."""
        self.results()
        code = (
            "import sys, torch; from fairseq import checkpoint_utils;"
            "models, cfg = checkpoint_utils.load_model_ensemble([sys.argv[1]], arg_overrides={'data': sys.argv[2]});"
            "assert 'fairseq_kd' not in sys.modules; print(cfg.model.arch)"
        )
        for name in ("baseline", "seq_kd", "init_seq_kd"):
            result = run(["-c", code, os.path.join(self.out, "models", f"{name}.pt"), os.path.join(self.out, "data-bin")])
            self.assertEqual(result.returncode, 0, result.stdout[-2000:])
            self.assertEqual(result.stdout.split()[-1], "transformer")

    def test_a_teacher_trained_before_is_copied_with_its_tokenizer_not_trained(self):
        """--teacher-from DIR (a packed teacher with its spm.model and dictionaries): the teacher is copied, not
        trained; the data is encoded with the teacher's tokenizer into its dictionary (the same data-bin as the
        run that trained it); with --teacher-only the run holds the record the benchmarks read."""
        self.results()
        pack, out = os.path.join(self.tmp, "pack"), os.path.join(self.tmp, "from_pack")
        os.makedirs(pack)
        packed = {"teacher.pt": os.path.join("teacher", "checkpoint_best.pt"), "spm.model": "spm.model"}
        packed.update({f"dict.{lang}.txt": os.path.join("data-bin", f"dict.{lang}.txt") for lang in (SRC, TGT)})
        for name, made in packed.items():
            shutil.copyfile(os.path.join(self.out, made), os.path.join(pack, name))
        result = run(["-m", "fairseq_kd.demo", "--preset", "smoke", "--data", self.data, "-s", SRC, "-t", TGT, "--out", out,
                      "--teacher-from", pack, "--teacher-only"])  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stdout[-3000:])
        self.assertIn("copied from", result.stdout)
        self.assertFalse(os.path.exists(os.path.join(out, "logs", "teacher.log")))  # not trained
        self.assertTrue(os.path.exists(os.path.join(self.out, "logs", "teacher.log")))
        made = dict(packed, **{f"train.{SRC}-{TGT}.{SRC}.bin": os.path.join("data-bin", f"train.{SRC}-{TGT}.{SRC}.bin")})
        for name, path in made.items():
            with open(os.path.join(out, path), "rb") as a, open(os.path.join(self.out, path), "rb") as b:
                self.assertEqual(a.read(), b.read(), path)
        self.assertTrue(os.path.samefile(load_config(out).teacher, os.path.join(out, "teacher", "checkpoint_best.pt")))
        self.assertFalse(os.path.exists(os.path.join(out, "students")))

    def test_rerun_redoes_nothing(self):
        with open(os.path.join(self.out, "results.json")) as f:
            before = f.read()
        result = self.demo()
        self.assertEqual(result.returncode, 0, result.stdout[-3000:])
        self.assertNotIn(" ...\n", result.stdout)  # no stage started
        with open(os.path.join(self.out, "results.json")) as f:
            self.assertEqual(f.read(), before)

    def test_a_deleted_result_is_remade_or_named(self):
        """A finished stage whose result is gone: a student's exported model is made again (from its last
        checkpoint, not trained again); the sentencepiece model, which the data-bin and the teacher were made
        from, is named in one line and nothing is done."""
        self.results()
        model = os.path.join(self.out, "models", "baseline.pt")
        os.remove(model)
        result = self.demo()
        self.assertEqual(result.returncode, 0, result.stdout[-3000:])
        self.assertIn(f"student baseline: done earlier, but {model} is missing: done again", result.stdout)
        self.assertIn("checkpoint_last.pt has 10 updates already: not trained again", result.stdout)
        self.assertTrue(os.path.isfile(model))
        spm_model = os.path.join(self.out, "spm.model")
        os.replace(spm_model, spm_model + ".aside")
        try:
            result = self.demo()
        finally:
            os.replace(spm_model + ".aside", spm_model)
        self.assertEqual(result.returncode, 2, result.stdout[-3000:])
        self.assertRegex(
            result.stdout.strip().splitlines()[-1],
            rf"error: {re.escape(spm_model)} is missing, but the sentencepiece stage was done: restore it",
        )

    def test_killed_in_the_report_or_a_student_the_rerun_finishes(self):
        # kill -9 at a random moment (a new one each run) of the final evaluation and report, then of a student's
        # training, and rerun the same command each time
        self.results()
        reference = comparable(self.out)
        rng = random.Random()
        cmd = [sys.executable, "-m", "fairseq_kd.demo", "--preset", "smoke", "--data", self.data, "-s", SRC, "-t", TGT,
               "--out", self.out]  # fmt: skip
        # the evaluation and report: the rerun's scores, p-values and translations are the uninterrupted run's
        delay = rng.uniform(0, 8)
        with self.subTest("report", delay=round(delay, 2)):
            killed, _, lines = run_and_kill(cmd, kill_after_line="student init_seq_kd.seed2: done earlier", delay=delay)
            _, status, lines = run_and_kill(cmd)
            self.assertEqual(status, 0, "\n".join(line for _, line in lines[-20:]))
            found = comparable(self.out)
            self.assertEqual(sorted(found), sorted(reference))
            for key in reference:
                self.assertEqual(found[key], reference[key], key)
        # a student: trained again, killed, rerun. It resumes from its last checkpoint (batches cut anew each
        # epoch, translation_kd's --rebuild-batches) and ends as the uninterrupted run did: same scores,
        # p-values and translations
        os.remove(os.path.join(self.out, "stages", "student_baseline.done"))
        shutil.rmtree(os.path.join(self.out, "students", "baseline"))
        os.remove(os.path.join(self.out, "models", "baseline.pt"))
        delay = rng.uniform(0, 12)
        with self.subTest("student", delay=round(delay, 2)):
            killed, _, lines = run_and_kill(cmd, kill_after_line="student baseline ...", delay=delay)
            self.assertTrue(any(line.startswith("student baseline ...") for _, line in lines), lines[-5:])
            _, status, lines = run_and_kill(cmd)
            self.assertEqual(status, 0, "\n".join(line for _, line in lines[-20:]))
            found = comparable(self.out)
            self.assertEqual(sorted(found), sorted(reference))
            checkpoint = os.path.join(self.out, "students", "baseline", "checkpoint_last.pt")
            self.assertEqual(checkpoint_updates(checkpoint), 10)  # the smoke preset's student budget
            for key in reference:
                self.assertEqual(found[key], reference[key], key)

    def test_evaluate_command_on_the_exported_models(self):
        self.results()
        out = os.path.join(self.tmp, "evaluated")
        models = os.path.join(self.out, "models")
        result = subprocess.run(
            [os.path.join(os.path.dirname(sys.executable), "fairseq-kd-evaluate"), os.path.join(self.out, "data-bin"),
             "--split", "test", "--references", os.path.join(self.data, f"test.{TGT}"),
             f"baseline={models}/baseline.pt", f"int8={models}/ctranslate2_int8",
             f"teacher={self.out}/teacher/checkpoint_best.pt",
             "--baseline", "baseline", "--timing-rounds", "2", "--beam", "2", "--max-len-a", "0", "--max-len-b", "20",
             "--out", out],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stdout[-3000:])
        self.assertIn("| int8 |", result.stdout)
        with open(os.path.join(out, "results.json")) as f:
            evaluated = json.load(f)
        systems = {r["name"]: r for r in evaluated["systems"]}
        self.assertEqual(list(systems), ["baseline", "int8", "teacher"])
        self.assertEqual(evaluated["settings"]["beam"], 2)
        self.assertEqual(systems["int8"]["kind"], "ctranslate2")
        for name, record in systems.items():
            self.assertEqual(len(record["speed_runs"]), 2)
            if name != "baseline":
                self.assertIn("p_value", record["significance"]["bleu"])
        # the same models and settings as the demo's evaluation: the same translations and scores
        with open(os.path.join(self.out, "results.json")) as f:
            demo = {r["name"]: r for r in json.load(f)["systems"]}
        for name in ("baseline", "teacher"):
            self.assertEqual(systems[name]["bleu"], demo[name]["bleu"])
        self.assertEqual(systems["int8"]["bleu"], demo["ctranslate2_int8"]["bleu"])
        for bad, message in [
            ([f"a={models}/baseline.pt", f"a={models}/seq_kd.pt"], "two systems are named 'a'"),
            ([f"a={self.out}/logs"], "not a CTranslate2 model"),
        ]:
            result = subprocess.run(
                [os.path.join(os.path.dirname(sys.executable), "fairseq-kd-evaluate"), os.path.join(self.out, "data-bin"),
                 "--references", os.path.join(self.data, f"test.{TGT}")] + bad,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            self.assertEqual(result.returncode, 2)
            self.assertEqual(len(result.stdout.strip().splitlines()), 1, result.stdout)
            self.assertIn(message, result.stdout)
        # raw source text, encoded with the run's sentencepiece model: the same translations as the binarized split
        result = subprocess.run(
            [os.path.join(os.path.dirname(sys.executable), "fairseq-kd-evaluate"), os.path.join(self.out, "data-bin"),
             "--references", os.path.join(self.data, f"test.{TGT}"), "--source", os.path.join(self.data, f"test.{SRC}"),
             "--spm-model", os.path.join(self.out, "spm.model"), f"baseline={models}/baseline.pt", "--beam", "2",
             "--max-len-a", "0", "--max-len-b", "20", "--out", os.path.join(self.tmp, "raw_source")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stdout[-3000:])
        with open(os.path.join(self.tmp, "raw_source", "results.json")) as f:
            self.assertEqual(json.load(f)["systems"][0]["bleu"], systems["baseline"]["bleu"])
        # a data-bin with other dictionaries than the model's
        other = os.path.join(self.tmp, "other-bin")
        shutil.copytree(os.path.join(self.out, "data-bin"), other)
        for lang in (SRC, TGT):
            with open(os.path.join(other, f"dict.{lang}.txt"), "a") as f:
                f.write("zzz 1\n")
        result = subprocess.run(
            [os.path.join(os.path.dirname(sys.executable), "fairseq-kd-evaluate"), other,
             "--references", os.path.join(self.data, f"test.{TGT}"), f"a={models}/baseline.pt"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.assertEqual(result.returncode, 2, result.stdout[-2000:])
        # the dictionaries it was trained with are still where its checkpoint says: compared symbol by symbol
        self.assertRegex(
            result.stdout,
            r"was trained with .*data-bin/dict.in.txt, which is not .*other-bin/dict.in.txt "
            r"\(the data has 25 symbols and the model 24; the data's extra symbols start with 'zzz' at index 24\)",
        )
        short = os.path.join(self.tmp, "short.ref")
        with open(short, "w") as f:
            f.write("one line\n")
        result = subprocess.run(
            [os.path.join(os.path.dirname(sys.executable), "fairseq-kd-evaluate"), os.path.join(self.out, "data-bin"),
             "--references", short, f"a={models}/baseline.pt"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.assertEqual(result.returncode, 2)
        self.assertIn("has 1 lines but the test split", result.stdout)

    def test_the_pipeline_distils_a_teacher_it_did_not_train_from_a_monolingual_transfer_set(self):
        self.results()
        mono = os.path.join(self.tmp, f"mono.{SRC}")
        with open(os.path.join(self.data, f"train.{SRC}")) as f, open(mono, "w") as g:
            g.writelines(f.readlines()[:300])
        out = os.path.join(self.tmp, "distil")
        # a teacher trained elsewhere: the data directory its checkpoint records does not exist here, so every
        # command that checks its dictionaries must be told the run's data-bin; and a layout of its own (an
        # activation that changes no tensor), which every student takes
        teacher = os.path.join(self.tmp, "moved_teacher.pt")
        state = torch.load(os.path.join(self.out, "teacher", "checkpoint_best.pt"), map_location="cpu", weights_only=False)
        state["cfg"]["task"]["data"] = os.path.join(self.tmp, "on-another-machine", "data-bin")
        state["cfg"]["model"].activation_fn = "gelu"
        torch.save(state, teacher)
        args = ["-m", "fairseq_kd.pipeline", "--teacher", teacher,
                "--data-bin", os.path.join(self.out, "data-bin"), "--references", self.data, "-s", SRC, "-t", TGT,
                "--spm-model", os.path.join(self.out, "spm.model"), "--transfer", mono,
                "--methods", "baseline,seq_kd_sampled,word_kd_topk,low_data",
                "--student", "1,1,32,64,2", "--max-update", "8", "--warmup-updates", "4", "--max-tokens", "2048",
                "--out", out]  # fmt: skip
        result = run(args)
        self.assertEqual(result.returncode, 0, result.stdout[-3000:])
        with open(os.path.join(out, "pseudolabels", "summary.json")) as f:
            summary = json.load(f)
        self.assertEqual(summary["transfer_sentences"], 300)
        with open(os.path.join(out, "results.json")) as f:
            systems = {r["name"]: r for r in json.load(f)["systems"]}
        self.assertEqual(
            set(systems), {"teacher", "baseline", "seq_kd_sampled", "word_kd_topk", "low_data", "ctranslate2_int8"}
        )
        self.assertIn("p_value", systems["low_data"]["significance"]["bleu"])
        # each method's data: sampled pseudo-labels, the teacher's top-8 cache, the low-data split
        with open(os.path.join(out, "pseudolabels-sampled", "pseudolabel.json")) as f:
            self.assertEqual(json.load(f)["sampling_topk"], 10)
        with open(os.path.join(out, "logs", "word_kd_topk.log")) as f:
            self.assertIn(f"--teacher-topk-cache {os.path.join(out, 'topk-cache')}", f.read())
        # the moved teacher's dictionaries are the data-bin's; the smoke run's teacher, whose recorded data
        # directory is there, had its own dictionaries compared instead
        teacher_data = f"--teacher-data {os.path.join(self.out, 'data-bin')}"
        for log in ("topk_cache", "low_data"):
            with open(os.path.join(out, "logs", f"{log}.log")) as f:
                self.assertIn(teacher_data, f.read(), log)
        with open(os.path.join(self.out, "logs", "init_seq_kd.log")) as f:
            self.assertNotIn("--teacher-data", f.read())
        for student in ("baseline", "seq_kd_sampled", "word_kd_topk", "low_data"):
            with open(os.path.join(out, "logs", f"{student}.log")) as f:
                self.assertIn("--share-all-embeddings --activation-fn gelu", f.read(), student)
        with open(os.path.join(out, "low-data.json")) as f:
            split = json.load(f)
        # the whole transfer set (it has no references): every sentence the pseudo-labeller kept
        self.assertEqual(split["pseudolabels"], summary["kept"])
        self.assertGreater(summary["kept"], 250)
        self.assertAlmostEqual(split["references"] / split["training_pairs"], 0.05, delta=0.03)
        # a bad input is one line, before any work
        result = run(args[:-1] + [os.path.join(self.tmp, "other")] + ["--methods", "baseline,hinton"])
        self.assertEqual(result.returncode, 2)
        self.assertIn("unknown method 'hinton'", result.stdout)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "other")))


if __name__ == "__main__":
    unittest.main()
