"""benchmarks/big_teacher.py's reading of a teacher's validations and its summary, on a written log."""

import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import big_teacher  # noqa: E402

from fairseq_kd.demo.presets import PRESETS  # noqa: E402
from fairseq_kd.evaluate import Record  # noqa: E402

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


if __name__ == "__main__":
    unittest.main()
