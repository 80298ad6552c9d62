"""Pseudo-label extraction, shard merging, filters and the integrity check, on synthetic generate logs."""

import os
import tempfile
import unittest

from fairseq_kd.pseudolabel import (
    Filters,
    Hypothesis,
    PseudoLabelError,
    check_pseudolabels,
    merge_shards,
    read_nbest,
    select,
    write_pseudolabels,
)
from fairseq_kd.tasks.mixture import parse_mixture

# fairseq-generate's output: sorted by length, not by id; id 3 skipped; --nbest 2 (best first)
GENERATE_LOG = """\
S-2\tx y
H-2\t-0.20\tX Y
D-2\t-0.20\tX Y
P-2\t-0.1 -0.3
H-2\t-0.90\tY X
D-2\t-0.90\tY X
S-0\tu v w
T-0\tU V W
H-0\t-0.10\tU V W
H-0\t-0.50\tU V
S-1\tp q r s
H-1\t-0.30\tP Q R S
H-1\t-0.40\tP Q R
Generate test with beam=2: BLEU4 = 50.00
"""


def read_hypotheses(lines):
    """{sentence id: its best-scored hypothesis}."""
    return {i: hypotheses[0] for i, hypotheses in read_nbest(lines).items()}


SOURCES = ["u v w", "p q r s", "x y", "a b c d e"]


class TestReadAndMerge(unittest.TestCase):
    def test_best_hypothesis_per_id(self):
        hypotheses = read_hypotheses(GENERATE_LOG.splitlines(keepends=True))
        self.assertEqual(sorted(hypotheses), [0, 1, 2])
        self.assertEqual(hypotheses[0], Hypothesis(-0.10, "U V W"))
        self.assertEqual(hypotheses[2], Hypothesis(-0.20, "X Y"))  # the first of the two, not "Y X"

    def test_nbest_lists_and_detokenized_lines(self):
        nbest = read_nbest(GENERATE_LOG.splitlines())
        self.assertEqual([h.text for h in nbest[2]], ["X Y", "Y X"])  # best first, as printed
        self.assertEqual([h.score for h in nbest[1]], [-0.30, -0.40])
        self.assertEqual(
            read_nbest(GENERATE_LOG.splitlines(), kind="D"), {2: [Hypothesis(-0.20, "X Y"), Hypothesis(-0.90, "Y X")]}
        )

    def test_empty_hypothesis_is_read(self):
        self.assertEqual(read_hypotheses(["H-5\t-1.5\t\n"]), {5: Hypothesis(-1.5, "")})

    def test_merge_restores_order_and_checks_ids(self):
        shard0 = read_hypotheses(["H-2\t-0.2\tX Y\n", "H-0\t-0.1\tU V W\n"])
        shard1 = read_hypotheses(["H-1\t-0.3\tP Q R S\n"])
        merged = merge_shards([shard0, shard1], 4, skipped=[3])
        self.assertEqual(sorted(merged), [0, 1, 2])
        with self.assertRaisesRegex(PseudoLabelError, "1 sentences have no translation \\(ids \\[3\\]"):
            merge_shards([shard0, shard1], 4)
        with self.assertRaisesRegex(
            PseudoLabelError, "sentence 2 was translated by two shards \\(shard 1 and an earlier one\\)"
        ):
            merge_shards([shard0, shard0], 3)
        with self.assertRaisesRegex(PseudoLabelError, "has sentence id 2, but the transfer set has 2"):
            merge_shards([shard0], 2)


class TestSelectAndCheck(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.prefix = os.path.join(self.tmp.name, "train")

    def tearDown(self):
        self.tmp.cleanup()

    def test_filters_count_what_they_drop(self):
        sources = ["a b c", "a b c", "", "a", "a b c d", "a b", "a b"]
        hypotheses = {
            0: Hypothesis(-0.1, "A B C"),
            1: Hypothesis(-0.1, ""),  # empty
            2: Hypothesis(-0.1, "A"),  # empty source
            3: Hypothesis(-0.1, "A B C D E"),  # ratio 5
            4: Hypothesis(-0.1, " ".join(["Z"] * 14)),  # reached a * 4 + b = 14
            5: Hypothesis(-9.0, "A B"),  # low score
            # 6: skipped by generate
        }
        labels = select(sources, hypotheses, Filters(max_length_ratio=3, max_len_a=1, max_len_b=10, min_score=-5), skipped=[6])
        self.assertEqual(labels.ids, [0])
        self.assertEqual(
            labels.dropped,
            {
                "too long for the teacher": [6],
                "empty translation": [1],
                "empty source": [2],
                "length ratio beyond 3": [3],
                "runaway translation (reached the length limit)": [4],
                "score below -5": [5],
            },
        )

    def write(self, hypotheses, sources=SOURCES):
        labels = select(sources, hypotheses, Filters())
        write_pseudolabels(labels, self.prefix, "src", "tgt")
        return labels

    def test_written_files_pass_the_check_and_keep_order(self):
        self.write(read_hypotheses(GENERATE_LOG.splitlines()))
        self.assertEqual(check_pseudolabels(self.prefix, "src", "tgt", SOURCES, Filters()), 3)
        with open(self.prefix + ".tgt") as f:
            self.assertEqual(f.read(), "U V W\nP Q R S\nX Y\n")
        with open(self.prefix + ".ids") as f:
            self.assertEqual(f.read(), "0\n1\n2\n")

    def corrupt(self, suffix, edit):
        with open(f"{self.prefix}.{suffix}") as f:
            lines = f.readlines()
        with open(f"{self.prefix}.{suffix}", "w") as f:
            f.writelines(edit(lines))

    def test_truncated_file_is_caught(self):
        self.write(read_hypotheses(GENERATE_LOG.splitlines()))
        self.corrupt("tgt", lambda lines: lines[:-1])
        with self.assertRaisesRegex(PseudoLabelError, "different line counts.*truncated or misaligned"):
            check_pseudolabels(self.prefix, "src", "tgt", SOURCES, Filters())

    def test_misaligned_file_is_caught(self):
        self.write(read_hypotheses(GENERATE_LOG.splitlines()))
        self.corrupt("src", lambda lines: [lines[1], lines[0]] + lines[2:])
        with self.assertRaisesRegex(PseudoLabelError, "line 1 .*differs from transfer-set line 0: the files are misaligned"):
            check_pseudolabels(self.prefix, "src", "tgt", SOURCES, Filters())

    def test_shuffled_ids_are_caught(self):
        self.write(read_hypotheses(GENERATE_LOG.splitlines()))
        self.corrupt("ids", lambda lines: [lines[1], lines[0]] + lines[2:])
        with self.assertRaisesRegex(PseudoLabelError, "line 1 .*misaligned"):
            check_pseudolabels(self.prefix, "src", "tgt", SOURCES, Filters())

    def test_empty_target_is_caught(self):
        self.write(read_hypotheses(GENERATE_LOG.splitlines()))
        self.corrupt("tgt", lambda lines: lines[:1] + ["\n"] + lines[2:])
        with self.assertRaisesRegex(PseudoLabelError, "line 2 .*empty or out-of-ratio"):
            check_pseudolabels(self.prefix, "src", "tgt", SOURCES, Filters())


class TestMixtureSettings(unittest.TestCase):
    def test_valid(self):
        self.assertIsNone(parse_mixture(None, None))
        self.assertEqual(parse_mixture("a,b", "0.66,0.34"), (["a", "b"], [0.66, 0.34]))
        self.assertEqual(parse_mixture("a,b", None), (["a", "b"], None))

    def test_errors(self):
        cases = [
            ((None, "1.0"), "--train-mixture-probs is set without --train-mixture"),
            (("a,b", "0.5"), "has 1 probabilities for 2 --train-mixture data-bins"),
            (("a,b", "0.5,0.6"), "sum to 1.1, not 1"),
            (("a,b", "1,0"), "every probability must be in \\(0, 1\\]"),
            (("a,b", "0.5,x"), "not a comma-separated list of numbers"),
            (("a,a", "0.5,0.5"), "lists a data-bin twice"),
        ]
        for (paths, probs), message in cases:
            with self.subTest(paths=paths, probs=probs), self.assertRaisesRegex(ValueError, message):
                parse_mixture(paths, probs)


if __name__ == "__main__":
    unittest.main()
