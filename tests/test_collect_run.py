"""benchmarks/collect_run.py: a run's small files, its paths made relative, its validations extracted."""

import importlib.util
import json
import os
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("collect_run", os.path.join(HERE, "..", "benchmarks", "collect_run.py"))
collect_run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(collect_run)

VALID = (
    "2026-01-01 | INFO | valid | epoch 00{e} | valid on 'valid' subset | loss {l} | nll_loss {n} | ppl 7.1 | num_updates {u}\n"
)


class TestCollectRun(unittest.TestCase):
    def test_a_run_s_files_with_relative_paths_and_validations(self):
        self.addCleanup(os.chdir, os.getcwd())
        with tempfile.TemporaryDirectory() as tmp:
            os.chdir(tmp)
            run = "runs/r"
            for folder in ("stages", "logs", "pseudolabels"):
                os.makedirs(os.path.join(run, folder))
            with open(os.path.join(run, "pipeline.json"), "w") as f:
                json.dump({"teacher": os.path.abspath(run) + "/teacher/checkpoint_best.pt"}, f)
            with open(os.path.join(run, "pseudolabels", "summary.json"), "w") as f:
                json.dump({"kept": 3}, f)
            with open(os.path.join(run, "stages", "teacher.done"), "w") as f:
                json.dump({"seconds": 41.5, "key": None}, f)
            with open(os.path.join(run, "logs", "teacher.log"), "w") as f:
                f.write(f"\n$ /venv/bin/fairseq-train {os.path.abspath(run)}/data-bin --user-dir /x/fairseq_kd --cpu\n")
                f.write(VALID.format(e=1, l=5.0, n=5.0, u=100) + VALID.format(e=2, l=4.0, n=4.0, u=200))
            with open(os.path.join(run, "logs", "hybrid.log"), "w") as f:
                f.write(VALID.format(e=1, l=9.5, n=6.25, u=80) + VALID.format(e=2, l=8.5, n=5.5, u=160))
            with open(os.path.join(run, "logs", "export.log"), "w") as f:
                f.write("$ fairseq-kd-export a b\n")
            written = collect_run.collect(run, "out")

            self.assertEqual(
                sorted(written),
                sorted(["pipeline.json", "pseudolabels_summary.json", "stage_seconds.txt", "teacher_command.txt",
                        "teacher_valid.txt", "students_valid.tsv"]),
            )  # fmt: skip
            with open("out/pipeline.json") as f:
                self.assertEqual(json.load(f)["teacher"], "runs/r/teacher/checkpoint_best.pt")
            with open("out/teacher_command.txt") as f:
                self.assertEqual(f.read(), "$ fairseq-train runs/r/data-bin --user-dir fairseq_kd --cpu\n")
            with open("out/stage_seconds.txt") as f:
                self.assertEqual(f.read().splitlines()[1:], ["teacher\t41.5"])
            with open("out/teacher_valid.txt") as f:
                self.assertEqual(len(f.read().splitlines()), 2)
            with open("out/students_valid.tsv") as f:
                # the student's last validation, its NLL (not its whole loss); logs without one are left out
                self.assertEqual(f.read().splitlines()[1:], ["hybrid\t160\t5.5"])


if __name__ == "__main__":
    unittest.main()
