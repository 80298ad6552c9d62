"""The lexical shortlist for CTranslate2's use_vmap: learned from the data (against a direct count), written
into the exported model by fairseq-kd-export, obeyed by the translator, and evaluated with and without it."""

import itertools
import os
import random
import unittest
from collections import Counter

import fairseq_kd  # noqa: F401
from fairseq_kd.ct2 import vocabulary_map
from tests.utils import _CIPHER, TeacherTestCase, run_console_script


def reference_map(pairs, nspecial, frequent, per_source):
    """The same lists counted directly: sentence-level document frequencies and Dice coefficients."""
    src_df, tgt_df, both = Counter(), Counter(), Counter()
    for src, tgt in pairs:
        s, t = {i for i in src if i >= nspecial}, {i for i in tgt if i >= nspecial}
        src_df.update(s)
        tgt_df.update(t)
        both.update(itertools.product(s, t))
    always = sorted(tgt_df, key=lambda i: (-tgt_df[i], i))[:frequent]
    candidates = {}
    for s in src_df:
        scored = [(2 * both[s, t] / (src_df[s] + tgt_df[t]), t) for t in tgt_df if both[s, t]]
        candidates[s] = [t for _, t in sorted(scored, key=lambda x: (-x[0], x[1]))[:per_source]]
    return always, candidates


class TestVocabularyMap(unittest.TestCase):
    def test_against_a_direct_count(self):
        rng = random.Random(0)
        pairs = [([rng.randrange(30) for _ in range(rng.randint(0, 9))], [rng.randrange(30) for _ in range(rng.randint(1, 9))])
                 for _ in range(300)]  # fmt: skip
        for frequent, per_source, chunk in [(5, 3, 7), (0, 50, 1000), (100, 1, 1)]:
            with self.subTest(frequent=frequent, per_source=per_source, chunk=chunk):
                ours = vocabulary_map(iter(pairs), 30, 4, frequent, per_source, chunk=chunk)
                self.assertEqual(ours, reference_map(pairs, 4, frequent, per_source))


class TestVocabularyMapInCTranslate2(TeacherTestCase):
    def export(self, name, *flags):
        exported, ct2_dir = os.path.join(self.dir, name + ".pt"), os.path.join(self.dir, name)
        result = run_console_script(
            "fairseq-kd-export", [self.teacher, exported, "--ctranslate2", ct2_dir, "--data", self.data,
                                  "--quantization", "float32", *flags],
        )  # fmt: skip
        return result, ct2_dir

    def test_map_from_the_training_data_is_obeyed_and_evaluated(self):
        import ctranslate2

        result, ct2_dir = self.export("shortlist", "--vocab-map-split", "train", "--vocab-map-frequent", "0",
                                      "--vocab-map-per-source", "1")  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        self.assertIn("vocabulary map from 500 train pairs: 8 source tokens, 1.0 candidates each", result.stdout)
        with open(os.path.join(ct2_dir, "vmap.txt"), encoding="utf-8") as f:
            lines = f.read().splitlines()
        # the cipher, learned from co-occurrence alone: each source letter's one candidate is its translation
        self.assertEqual(lines[0], "\t")
        self.assertEqual(dict(line.split("\t") for line in lines[1:]), {c: _CIPHER[c] for c in "abcdefgh"})
        self.assertFalse(os.path.exists(ct2_dir + ".vmap.txt"))  # only the model's own copy is left

        with open(os.path.join(self.data, "valid.in")) as f:
            sources = [line.split() for line in f]
        translator = ctranslate2.Translator(ct2_dir, device="cpu")
        for source in sources:
            # nothing outside the source tokens' candidates (CTranslate2 adds its special tokens; the candidates
            # are those of the whole batch, so one sentence at a time here)
            (output,) = translator.translate_batch([source], beam_size=2, use_vmap=True, max_decoding_length=30)
            self.assertLessEqual(set(output.hypotheses[0]), {_CIPHER[c] for c in source}, source)

        # evaluated with and without the map, under two names: the map of every token changes nothing
        result, full_dir = self.export("full", "--vocab-map-split", "train")
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        out = os.path.join(self.dir, "eval")
        result = run_console_script(
            "fairseq-kd-evaluate", [self.data, "--split", "valid", "--references", os.path.join(self.data, "valid.out"),
                                    "--post-process", "none", f"plain={full_dir}", f"vmap={full_dir}",
                                    "--use-vmap", "vmap", "--baseline", "plain", "--out", out],
        )  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        with (
            open(os.path.join(out, "translations", "plain.txt")) as a,
            open(os.path.join(out, "translations", "vmap.txt")) as b,
        ):
            self.assertEqual(a.read(), b.read())
        import json

        with open(os.path.join(out, "results.json")) as f:
            kinds = {r["name"]: r["kind"] for r in json.load(f)["systems"]}
        self.assertEqual(kinds, {"plain": "ctranslate2", "vmap": "ctranslate2+vmap"})

    def test_a_translator_leaves_torch_threads_as_they_were(self):
        import ctranslate2
        import torch

        from fairseq_kd import ct2

        result, ct2_dir = self.export("threads")
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        before = torch.get_num_threads()
        self.addCleanup(torch.set_num_threads, before)
        torch.set_num_threads(2)
        ctranslate2.Translator(ct2_dir, device="cpu", intra_threads=1)
        self.assertEqual(torch.get_num_threads(), 1)  # what CTranslate2 itself does to the process
        torch.set_num_threads(2)
        ct2.translator(ct2_dir, threads=1)
        self.assertEqual(torch.get_num_threads(), 2)

    def test_bad_vocabulary_map_settings(self):
        no_ct2 = run_console_script(
            "fairseq-kd-export", [self.teacher, os.path.join(self.dir, "a.pt"), "--vocab-map-split", "train"]
        )
        self.assertIn("--vocab-map-split is for a CTranslate2 model: add --ctranslate2 DIR", no_ct2.stderr)
        result, ct2_dir = self.export("nosplit", "--vocab-map-split", "dev")
        self.assertIn(f"--vocab-map-split dev: {self.data} has no binarized split of that name", result.stderr)
        self.assertFalse(os.path.exists(ct2_dir) or os.path.exists(ct2_dir + ".pt"))  # refused before any work

        result, plain_dir = self.export("plain")
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        for system, message in [
            (f"s={plain_dir}", "is not a CTranslate2 model with a vocabulary map (vmap.txt)"),
            (f"s={self.teacher}", "is not a CTranslate2 model with a vocabulary map"),
        ]:
            with self.subTest(system=system):
                result = run_console_script(
                    "fairseq-kd-evaluate", [self.data, "--split", "valid", "--references",
                                            os.path.join(self.data, "valid.out"), system, "--use-vmap", "s"],
                )  # fmt: skip
                self.assertNotEqual(result.returncode, 0)
                self.assertIn("--use-vmap s: ", result.stderr)
                self.assertIn(message, result.stderr)


if __name__ == "__main__":
    unittest.main()
