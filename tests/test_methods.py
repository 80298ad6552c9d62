"""The one table of methods: the guide's settings, every method's fairseq-train flags as the demo builds
them, and the recipes checked against it."""

import glob
import os
import re
import subprocess
import sys
import unittest

from fairseq_kd import methods as M
from fairseq_kd.demo.presets import GUIDE_METHODS, PRESETS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATHS = M.MethodPaths(data="D", teacher="T.pt", pseudo="P", sampled="S", topk_cache="C", low_references="L", low_pseudo="LP")
KD = "--criterion label_smoothed_cross_entropy_with_kd --label-smoothing 0 --nll-weight {nll} --kd-weight 1 --kd-temperature 1"
NLL = "--criterion label_smoothed_cross_entropy --label-smoothing {ls}"

# every method's flags, written out by hand from the guide's settings (see fairseq_kd/methods.py for where
# each comes from): T = 1, KD weight 1, label smoothing 0 for every student that learns from the teacher
EXPECTED = {
    "baseline": "D --task translation_kd " + NLL.format(ls="0.1"),
    "word_kd": "D --task translation_kd --teacher-path T.pt " + KD.format(nll=0),
    "word_kd_nll": "D --task translation_kd --teacher-path T.pt " + KD.format(nll=1),
    "word_kd_topk": "D --task translation_kd --teacher-topk-cache C " + KD.format(nll=1),
    "seq_kd": "D --task translation_kd --train-mixture P " + NLL.format(ls=0),
    "seq_kd_sampled": "D --task translation_kd --train-mixture S " + NLL.format(ls=0),
    "interpolation": "D --task translation_kd --train-mixture D,P --train-mixture-probs 0.66,0.34 " + NLL.format(ls=0),
    "hybrid": "D --task translation_kd --train-mixture D,P --train-mixture-probs 0.66,0.34 --teacher-path T.pt "
    + KD.format(nll=1),
    "distilbert": "D --task translation_kd --teacher-path T.pt --init-from-teacher "
    + KD.format(nll=1)
    + " --cosine-weight 1 --cosine-encoder",
    "init_seq_kd": "D --task translation_kd --train-mixture P --teacher-path T.pt --init-from-teacher " + NLL.format(ls=0),
    "low_data": "D --task translation_kd --train-mixture L,LP --train-mixture-probs 0.333333,0.666667 --teacher-path T.pt "
    + KD.format(nll=1),
    "low_data_baseline": "D --task translation_kd --train-mixture L " + NLL.format(ls="0.1"),
    "init_nll": "D --task translation_kd --teacher-path T.pt --init-from-teacher " + NLL.format(ls=0),
    "init_kd": "D --task translation_kd --teacher-path T.pt --init-from-teacher " + KD.format(nll=1),
    # beyond the guide: init_kd with another divergence, or with on-policy updates
    "init_kd_rkl": "D --task translation_kd --teacher-path T.pt --init-from-teacher "
    + KD.format(nll=1)
    + " --kd-divergence reverse_kl",
    "init_kd_jsd": "D --task translation_kd --teacher-path T.pt --init-from-teacher "
    + KD.format(nll=1)
    + " --kd-divergence jsd --kd-beta 0.5",
    "init_kd_tvd": "D --task translation_kd --teacher-path T.pt --init-from-teacher "
    + KD.format(nll=1)
    + " --kd-divergence tvd",
    "init_kd_skl": "D --task translation_kd --teacher-path T.pt --init-from-teacher "
    + KD.format(nll=1)
    + " --kd-divergence skew_kl --kd-beta 0.1",
    "init_kd_on_policy": "D --task translation_kd --teacher-path T.pt --init-from-teacher --on-policy-fraction 0.5 "
    + KD.format(nll=1),
}


class TestMethodTable(unittest.TestCase):
    def test_every_methods_flags(self):
        self.assertEqual(set(M.METHODS), set(EXPECTED))
        for name, expected in EXPECTED.items():
            with self.subTest(name):
                self.assertEqual(" ".join(M.get(name).flags(PATHS)), expected)

    def test_the_guides_settings_for_every_student_that_learns_from_the_teacher(self):
        for method in M.METHODS.values():
            with self.subTest(method.name):
                learns = method.teacher is not None or method.init_from_teacher or method.data != M.REFERENCES
                baselines = method.name in ("baseline", "low_data_baseline")
                self.assertEqual(method.label_smoothing, 0.1 if baselines else 0.0)
                self.assertTrue(learns or baselines)
                if method.kd_weight:
                    self.assertEqual((method.kd_weight, method.kd_temperature), (1.0, 1.0))
                if method.mixture:
                    self.assertAlmostEqual(sum(method.mixture), 1.0, places=5)
                # every setting is traced: to the guide, or said to be not in it
                self.assertTrue(method.guide or method.not_in_guide)
                if method.name != "baseline":
                    self.assertRegex(method.guide, r"line \d+")
        self.assertEqual(M.GUIDE_MIXTURE, (0.66, 0.34))
        self.assertEqual(M.TEACHER_LABEL_SMOOTHING, 0.0)
        for preset in PRESETS.values():
            self.assertEqual(preset["teacher_label_smoothing"], 0.0)

    def test_both_readings_of_the_guides_word_level_alpha_nll(self):
        self.assertEqual((M.get("word_kd").nll_weight, M.get("word_kd_nll").nll_weight), (0.0, 1.0))

    def test_the_full_preset_runs_every_method_of_the_guide(self):
        # and the cosine loss's ablation, which the guide's claim about that loss is measured against
        self.assertEqual(PRESETS["full"]["methods"], GUIDE_METHODS + ["init_kd"])
        self.assertEqual(GUIDE_METHODS[0], "baseline")
        for name in ("word_kd", "word_kd_nll", "word_kd_topk", "seq_kd", "seq_kd_sampled", "interpolation", "hybrid",
                     "distilbert", "init_seq_kd", "low_data", "low_data_baseline"):  # fmt: skip
            self.assertIn(name, GUIDE_METHODS)
        self.assertGreaterEqual(PRESETS["full"]["seeds"], 3)

    def test_inconsistent_methods_are_refused(self):
        for kwargs, message in [
            (dict(kd_weight=1.0), "needs a teacher"),
            (dict(teacher=M.LIVE), "needs a teacher, and only they do"),
            (dict(data=M.MIXTURE), "mixture probabilities"),
            (dict(data="elsewhere"), "unknown data"),
            (dict(kd_weight=1.0, teacher=M.TOPK_CACHE), "kd_topk"),
        ]:
            with self.subTest(message), self.assertRaisesRegex(ValueError, message):
                M.Method("x", "x", **kwargs)
        with self.assertRaisesRegex(ValueError, "unknown method 'hinton': choose among baseline, word_kd"):
            M.get("hinton")
        with self.assertRaisesRegex(ValueError, "needs the teacher's checkpoint"):
            M.get("word_kd").flags(M.MethodPaths(data="D"))

    def test_the_table_prints_and_is_the_docs(self):
        result = subprocess.run([sys.executable, "-m", "fairseq_kd.methods"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.assertEqual(result.returncode, 0)
        with open(os.path.join(ROOT, "docs", "methods.md")) as f:
            self.assertIn(result.stdout, f.read())
        for name in M.METHODS:
            self.assertIn(f"| {name} |", result.stdout)
            self.assertIn(f"- **{name}**", result.stdout)


def recipe_settings(text):
    """{flag: value} of the KD settings a recipe's fairseq-train command sets."""
    flags = {}
    for flag in ("--nll-weight", "--kd-weight", "--kd-temperature", "--label-smoothing", "--train-mixture-probs", "--criterion",
                 "--cosine-weight", "--kd-divergence", "--kd-beta", "--on-policy-fraction"):  # fmt: skip
        found = re.findall(re.escape(flag) + r"\s+(\S+)", text)
        if found:
            flags[flag] = found[-1]
    for flag in ("--cosine-encoder", "--init-from-teacher"):
        if re.search(re.escape(flag) + r"\b", text):
            flags[flag] = True
    return flags


def flag_values(flags):
    """{flag: value, or True for a flag without one} of a flag list."""
    out = {}
    for i, flag in enumerate(flags):
        if flag.startswith("--"):
            value = flags[i + 1] if i + 1 < len(flags) and not flags[i + 1].startswith("--") else True
            out[flag] = value
    return out


def normalised(value):
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return value


class TestRecipes(unittest.TestCase):
    def test_each_recipe_sets_its_methods_settings(self):
        recipes = sorted(glob.glob(os.path.join(ROOT, "recipes", "*.sh")))
        checked = 0
        for path in recipes:
            with open(path) as f:
                text = f.read()
            match = re.search(r"^# method: (\w+)$", text, re.M)
            if os.path.basename(path) == "common.sh":
                continue
            self.assertIsNotNone(match, f"{path} names no method of fairseq_kd.methods ('# method: NAME')")
            method = M.get(match.group(1))
            expected = flag_values(method.criterion_flags())
            if method.mixture:
                expected["--train-mixture-probs"] = ",".join(f"{p:g}" for p in method.mixture)
            if method.on_policy_fraction:
                expected["--on-policy-fraction"] = method.on_policy_fraction
            settings = recipe_settings(text)
            with self.subTest(os.path.basename(path)):
                for flag, value in expected.items():
                    self.assertIn(flag, settings, f"{path} does not set {flag}")
                    self.assertEqual(normalised(settings[flag]), normalised(value), f"{path}: {flag}")
            checked += 1
        self.assertGreaterEqual(checked, 5)


if __name__ == "__main__":
    unittest.main()
