"""benchmarks/divergences.py's comparisons and recommendation, on written translations."""

import os
import random
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import divergences  # noqa: E402


class TestDivergenceComparisons(unittest.TestCase):
    def test_each_student_against_its_seeds_references_and_the_recommendation(self):
        rng = random.Random(0)
        words = [f"w{i}" for i in range(50)]
        references = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(200)]

        def noisy(share):  # the references with SHARE of their words replaced
            return [" ".join(w if rng.random() > share else rng.choice(words) for w in line.split()) for line in references]

        methods = ["baseline", "word_kd", "init_kd", "init_kd_jsd", "init_kd_tvd"]
        names = divergences.student_names(methods, 2)
        self.assertEqual(
            names[5:], ["baseline.seed2", "word_kd.seed2", "init_kd.seed2", "init_kd_jsd.seed2", "init_kd_tvd.seed2"]
        )
        quality = {"baseline": 0.6, "word_kd": 0.4, "init_kd": 0.3, "init_kd_jsd": 0.1, "init_kd_tvd": 0.3}
        translations = {split: {n: noisy(quality[n.partition(".seed")[0]]) for n in names} for split in ("valid", "test")}
        results = divergences.comparisons(translations, {"valid": references, "test": references}, names, 2)
        jsd = results["valid"]["init_kd_jsd.seed2"]["vs"]["init_kd"]
        self.assertGreater(jsd["difference"], 5)
        self.assertLess(jsd["p_value"], 0.05)
        # compared with the reference of its own seed
        expected = results["valid"]["init_kd_jsd.seed2"]["bleu"] - results["valid"]["init_kd.seed2"]["bleu"]
        self.assertAlmostEqual(jsd["difference"], expected, places=2)
        self.assertNotIn("init_kd", results["valid"]["init_kd"]["vs"])  # the reference itself
        self.assertEqual(divergences.recommendation(results, methods, 2), ["init_kd_jsd"])
        text = divergences.table(results, methods, 2, "test")
        self.assertIn("| init_kd_jsd |", text)


if __name__ == "__main__":
    unittest.main()
