"""benchmarks/guide_claims.py: each claim's verdict follows the paired bootstrap of its comparisons."""

import importlib.util
import os
import random
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("guide_claims", os.path.join(HERE, "..", "benchmarks", "guide_claims.py"))
claims = importlib.util.module_from_spec(spec)
spec.loader.exec_module(claims)

WORDS = "the a file folder open close save print window message error name value user".split()


def sentences(n, seed):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(n)]


def damaged(lines, share, seed):
    """LINES with SHARE of their words replaced by a word no reference has."""
    rng = random.Random(seed)
    return [" ".join(w if rng.random() > share else "zzz" for w in line.split()) for line in lines]


class TestGuideClaims(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.refs = sentences(150, 1)
        cls.systems = {
            "good": damaged(cls.refs, 0.1, 2),
            "good_again": damaged(cls.refs, 0.1, 2),  # the same output as good
            "bad": damaged(cls.refs, 0.6, 3),
        }

    def answer(self, *comparisons, systems=None):
        claim = claims.Claim("x", "a claim", "nowhere", tuple(comparisons))
        found = self.systems if systems is None else systems
        return claims.answer([claim], lambda split: found, lambda split: self.refs)["x"]

    def test_a_clear_gain_holds_an_expected_gain_and_refutes_no_gain(self):
        a = self.answer(claims.Comparison("good", "bad", claims.GAIN, ""))
        row = a["comparisons"][0]["test"]
        self.assertEqual(row["bleu"]["verdict"], "gain")
        self.assertLess(row["bleu"]["p_value"], 0.05)
        self.assertGreater(row["bleu"]["difference"], 10)
        self.assertEqual(a["answer"], {"valid": "held", "test": "held"})
        a = self.answer(claims.Comparison("good", "bad", claims.NO_GAIN, ""))
        self.assertEqual(a["answer"]["test"], "did not hold")
        a = self.answer(claims.Comparison("bad", "good", claims.NO_GAIN, ""))
        self.assertEqual(a["comparisons"][0]["test"]["bleu"]["verdict"], "loss")
        self.assertEqual(a["answer"]["test"], "held")

    def test_identical_outputs_are_similar_and_no_gain(self):
        for expects, answer in ((claims.SIMILAR, "held"), (claims.NO_GAIN, "held"), (claims.GAIN, "did not hold")):
            a = self.answer(claims.Comparison("good_again", "good", expects, ""))
            row = a["comparisons"][0]["test"]
            self.assertEqual(row["bleu"]["difference"], 0)
            self.assertEqual(row["bleu"]["verdict"], "no significant difference")
            self.assertEqual(a["answer"]["test"], answer, expects)
        a = self.answer(claims.Comparison("good", "bad", claims.SIMILAR, ""))
        self.assertEqual(a["answer"]["test"], "did not hold")

    def test_mixed_comparisons_partly_hold_and_context_rows_decide_nothing(self):
        a = self.answer(
            claims.Comparison("good", "bad", claims.GAIN, ""),
            claims.Comparison("good_again", "good", claims.GAIN, ""),
            claims.Comparison("bad", "good", None, "context"),
        )
        self.assertEqual(a["answer"]["test"], "partly held")
        self.assertIsNone(a["comparisons"][2]["test"]["holds"])
        self.assertEqual(a["comparisons"][2]["test"]["bleu"]["verdict"], "loss")

    def test_a_comparison_of_a_student_the_run_lacks_is_not_measured(self):
        a = self.answer(
            claims.Comparison("good", "bad", claims.GAIN, ""), claims.Comparison("missing", "good", claims.GAIN, "")
        )
        self.assertIsNone(a["comparisons"][1]["test"])
        self.assertEqual(a["answer"]["test"], "not measured")
        text = claims.markdown({"x": a}, {}, "cmd")
        self.assertIn("not measured", text)

    def test_every_claim_compares_methods_of_the_full_preset_run(self):
        from fairseq_kd.demo.presets import PRESETS

        measured = set(PRESETS["full"]["methods"])
        self.assertEqual([c.key for c in claims.CLAIMS], list("abcde"))
        for claim in claims.CLAIMS + claims.PROJECT_CLAIMS:
            for c in claim.comparisons:
                self.assertIn(c.system, measured)
                self.assertIn(c.reference, measured)


if __name__ == "__main__":
    unittest.main()
