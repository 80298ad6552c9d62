"""Two runs into one output directory: the second is refused while the first runs, a killed run leaves no
lock behind, and the shards of one pseudo-labelling may run side by side."""

import contextlib
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest
from unittest import mock

from fairseq_kd.cli import run
from fairseq_kd.io import write_json
from fairseq_kd.runs import changed_settings

from .utils import TeacherTestCase, run_console_script

HOLDER = """
import sys, time
from fairseq_kd.io import run_lock
lock = run_lock(sys.argv[1], "test", shared=sys.argv[2] == "shared", name=sys.argv[3])
lock.__enter__()
print("held", flush=True)
time.sleep(600)
"""

# a command whose data-loading worker (forked, as torch's DataLoader forks) sleeps on after the command is killed
HOLDER_WITH_WORKER = """
import os, sys, time
from fairseq_kd.io import run_lock
lock = run_lock(sys.argv[1], "test", shared=False, name=".lock")
lock.__enter__()
worker = os.fork()
if worker == 0:
    time.sleep(600)
    os._exit(0)
print("held", worker, flush=True)
time.sleep(600)
"""


def raising(error):
    """A console script's main that fails with ERROR."""

    def main(argv):
        raise error

    return main


class TestFullDisk(unittest.TestCase):
    """A write that fails for want of space keeps the file as it was, leaves no partial file, and is one line."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="fairseq_kd_disk_")
        self.path = os.path.join(self.tmp, "results.json")
        write_json(self.path, {"bleu": 1.0})

    def test_a_full_disk_keeps_the_earlier_file(self):
        no_space = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        with mock.patch("json.dump", side_effect=no_space), self.assertRaises(OSError) as caught:
            write_json(self.path, {"bleu": 2.0})
        self.assertEqual(caught.exception.filename, self.path)  # named, though write() names no file
        with open(self.path) as f:
            self.assertEqual(json.load(f), {"bleu": 1.0})
        self.assertEqual(os.listdir(self.tmp), ["results.json"])
        # a console script reports it in one line, exit status 2; another OSError is a bug with its traceback
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            self.assertEqual(run(raising(caught.exception), "prog"), 2)
        self.assertEqual(
            stderr.getvalue(),
            f"prog: error: could not write {self.path}: No space left on device; free some space and rerun the same "
            "command (what was finished before is kept)\n",
        )
        with self.assertRaises(PermissionError):
            run(raising(PermissionError(errno.EACCES, "Permission denied", self.path)), "prog")

    def test_a_real_write_past_a_file_size_limit(self):
        code = (
            "import resource, signal, sys; from fairseq_kd.cli import run; from fairseq_kd.io import write_json;"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100));"
            "sys.exit(run(lambda argv: write_json(sys.argv[1], {'text': 'x' * 1000}), 'prog'))"
        )
        result = subprocess.run(
            [sys.executable, "-c", code, self.path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.assertEqual(result.returncode, 2, result.stdout)
        self.assertEqual(
            result.stdout,
            f"prog: error: could not write {self.path}: File too large; free some space and rerun the same command "
            "(what was finished before is kept)\n",
        )
        with open(self.path) as f:
            self.assertEqual(json.load(f), {"bleu": 1.0})
        self.assertEqual(os.listdir(self.tmp), ["results.json"])

    def tearDown(self):
        shutil.rmtree(self.tmp)


class TestChangedSettings(unittest.TestCase):
    """What every resumable stage (pipeline, demo, pseudo-labels, top-k cache) compares before it continues."""

    def test_changes_defaults_ignored_and_limited_keys(self):
        then = {"beam": 4, "lr": 0.002, "seeds": 1}
        self.assertEqual(changed_settings(then, dict(then)), [])
        self.assertEqual(changed_settings(then, {"beam": 2, "lr": 0.002, "seeds": 3}), [("beam", 4, 2), ("seeds", 1, 3)])
        self.assertEqual(changed_settings(then, {"beam": 2, "lr": 0.002, "seeds": 3}, ignore={"seeds"}), [("beam", 4, 2)])
        # a setting added since: a record without it was made with its default
        self.assertEqual(changed_settings(then, dict(then, engine="fairseq"), defaults={"engine": "fairseq"}), [])
        self.assertEqual(
            changed_settings(then, dict(then, engine="ctranslate2"), defaults={"engine": "fairseq"}),
            [("engine", "fairseq", "ctranslate2")],
        )
        # a key that only one of them has is a change, unless the comparison is limited to others
        self.assertEqual(changed_settings(then, {"beam": 4, "lr": 0.002}), [("seeds", 1, None)])
        self.assertEqual(changed_settings(then, {"beam": 4, "lr": 0.002}, keys=["beam", "lr"]), [])


class TestConcurrentRuns(TeacherTestCase):
    def hold(self, out, shared=False, name=".lock"):
        """A process that holds OUT's lock (as a running command would) until it is killed."""
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, out, "shared" if shared else "exclusive", name],
            stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )  # fmt: skip
        self.addCleanup(lambda: process.poll() is None and process.kill())
        self.assertEqual(process.stdout.readline().strip(), "held")
        return process

    def pseudolabel(self, out, *flags):
        return run_console_script(
            "fairseq-kd-pseudolabel",
            ["--teacher", self.teacher, "--data", self.data, "--subset", "train", "--output", out, "--cpu"] + list(flags),
        )

    def assert_refused(self, result, prog):
        self.assertEqual(result.returncode, 2, result.stderr[-2000:])
        last = result.stderr.strip().splitlines()[-1]
        self.assertRegex(last, f"^{prog}: error: .* is in use by a running .*: wait for it to finish, or choose another")
        self.assertNotIn("Traceback", result.stderr)

    def test_a_second_pseudolabelling_is_refused_and_a_killed_one_leaves_no_lock(self):
        out = os.path.join(self.dir, "labels")
        holder = self.hold(out)
        self.assert_refused(self.pseudolabel(out), "fairseq-kd-pseudolabel")
        self.assertEqual(sorted(os.listdir(out)), [".lock"])  # the refused run wrote nothing
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        result = self.pseudolabel(out)
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        self.assertTrue(os.path.isfile(os.path.join(out, "summary.json")))

    def test_a_killed_runs_forked_worker_does_not_keep_its_lock(self):
        out = os.path.join(self.dir, "worker")
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER_WITH_WORKER, out], stdout=subprocess.PIPE, text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )  # fmt: skip
        self.addCleanup(lambda: process.poll() is None and process.kill())
        held, worker = process.stdout.readline().split()
        self.addCleanup(lambda: os.kill(int(worker), signal.SIGKILL))
        self.assertEqual(held, "held")
        self.assert_refused(self.pseudolabel(out), "fairseq-kd-pseudolabel")
        process.send_signal(signal.SIGKILL)
        process.wait()
        os.kill(int(worker), 0)  # the worker still runs
        result = self.pseudolabel(out)
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])

    def test_shards_run_side_by_side_but_not_twice_and_not_beside_the_merge(self):
        out = os.path.join(self.dir, "sharded")
        shard_runner = self.hold(out, shared=True)  # a process translating some shard
        result = self.pseudolabel(out, "--num-shards", "2", "--shard-id", "1")
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        self.assert_refused(self.pseudolabel(out, "--num-shards", "2"), "fairseq-kd-pseudolabel")  # the merge waits
        same_shard = self.hold(out, shared=True, name=".shard-000-of-002.lock")  # shard 0 being translated
        self.assert_refused(self.pseudolabel(out, "--num-shards", "2", "--shard-id", "0"), "fairseq-kd-pseudolabel")
        for process in (shard_runner, same_shard):
            process.kill()
            process.wait()
        result = self.pseudolabel(out, "--num-shards", "2")
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])

    def test_a_second_cache_build_and_pipeline_are_refused(self):
        cache = os.path.join(self.dir, "cache")
        self.hold(cache)
        result = run_console_script(
            "fairseq-kd-cache-topk", ["--teacher", self.teacher, "--data", self.data, "--output", cache, "--cpu", "--k", "4"]
        )
        self.assert_refused(result, "fairseq-kd-cache-topk")
        self.assertEqual(sorted(os.listdir(cache)), [".lock"])
        out = os.path.join(self.dir, "pipeline")
        self.hold(out)
        result = subprocess.run(
            [sys.executable, "-m", "fairseq_kd.pipeline", "--teacher", self.teacher, "--data-bin", self.data,
             "--references", self.data, "-s", "in", "-t", "out", "--methods", "baseline", "--out", out],
            capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )  # fmt: skip
        self.assert_refused(result, "python -m fairseq_kd.pipeline")
        self.assertEqual(sorted(os.listdir(out)), [".lock"])
