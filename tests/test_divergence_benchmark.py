"""benchmarks/divergences.py's comparisons and recommendation, on written translations."""

import argparse
import json
import os
import random
import sys
import tempfile
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
        self.assertEqual(divergences.recommendation(results, methods), ["init_kd_jsd"])
        text = divergences.table(results, methods, 2, "test")
        self.assertIn("| init_kd_jsd |", text)

    def test_a_second_seed_only_where_one_does_not_settle_it(self):
        """After seed 1: more seeds for init_kd, word_kd and the methods within 1 BLEU of init_kd on valid or
        better; a method far below it keeps one seed, and is compared and tabled with it."""
        rng = random.Random(1)
        words = [f"w{i}" for i in range(50)]
        references = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(300)]

        def noisy(share):
            return [" ".join(w if rng.random() > share else rng.choice(words) for w in line.split()) for line in references]

        methods = ["baseline", "word_kd", "init_kd", "init_kd_rkl", "init_kd_tvd", "init_kd_jsd"]
        quality = {"baseline": 0.6, "word_kd": 0.4, "init_kd": 0.3, "init_kd_rkl": 0.7, "init_kd_tvd": 0.3, "init_kd_jsd": 0.1}
        refs = {"valid": references, "test": references}
        first = {s: {n: noisy(quality[n]) for n in methods} for s in refs}
        results = divergences.comparisons(first, refs, methods, 1)
        self.assertLess(results["valid"]["init_kd_rkl"]["vs"]["init_kd"]["difference"], -divergences.CLOSE)
        seeded = divergences.needs_seeds(results)
        self.assertEqual(seeded, ["word_kd", "init_kd", "init_kd_tvd", "init_kd_jsd"])
        names = divergences.student_names(methods, 2, seeded)
        self.assertEqual(names[len(methods) :], [f"{m}.seed2" for m in seeded])
        translations = {s: {n: noisy(quality[n.partition(".seed")[0]]) for n in names} for s in refs}
        results = divergences.comparisons(translations, refs, names, 2)
        self.assertEqual(divergences.seeds_of(results, "init_kd_rkl"), ["init_kd_rkl"])
        self.assertIn("init_kd", results["valid"]["init_kd_tvd.seed2"]["vs"])
        self.assertEqual(divergences.recommendation(results, methods), ["init_kd_jsd"])
        self.assertRegex(divergences.table(results, methods, 2, "valid"), r"\| init_kd_rkl \| [\d.]+ \|  \| -")

    def test_kept_translations_are_published_as_they_land_and_other_settings_refused(self):
        """A student whose translations are kept counts as done: the results are written from what is there, marked
        incomplete with what is missing, and a rerun with other settings is refused before any work."""
        rng = random.Random(2)
        words = [f"w{i}" for i in range(40)]
        references = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(150)]
        with tempfile.TemporaryDirectory() as tmp:
            raw, results_dir = os.path.join(tmp, "raw"), os.path.join(tmp, "results")
            os.makedirs(raw)
            for split in divergences.SPLITS:
                with open(os.path.join(raw, f"{split}.en"), "w") as f:
                    f.write("".join(line + "\n" for line in references))
            for name, share in (("baseline", 0.6), ("init_kd", 0.2)):
                for split in divergences.SPLITS:
                    path = divergences.kept(results_dir, name, split)
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    noisy = [" ".join(w if rng.random() > share else rng.choice(words) for w in line.split())
                             for line in references]  # fmt: skip
                    with open(path, "w") as f:
                        f.write("".join(line + "\n" for line in noisy))
            config = argparse.Namespace(references=raw, tgt="en")
            args = argparse.Namespace(results=results_dir, max_update=800)
            names = divergences.student_names(["baseline", "word_kd", "init_kd"], 1)
            results, better = divergences.publish(args, config, names, 1, None, complete=False)
            self.assertEqual(sorted(results["valid"]), ["baseline", "init_kd"])
            self.assertEqual(better, [])
            with open(os.path.join(results_dir, "results.json")) as f:
                written = json.load(f)
            self.assertFalse(written["complete"])
            self.assertEqual(written["missing"], ["word_kd"])
            with open(os.path.join(results_dir, "results.md")) as f:
                self.assertIn("Incomplete: word_kd", f.read())

            settings = {"training": {"max_update": 800}, "teacher": "abc"}
            divergences.check_settings(results_dir, settings)
            divergences.check_settings(results_dir, settings)  # the same: accepted
            with self.assertRaises(SystemExit) as refused:
                divergences.check_settings(results_dir, dict(settings, training={"max_update": 1600}))
            self.assertIn("other settings (training)", str(refused.exception))


if __name__ == "__main__":
    unittest.main()
