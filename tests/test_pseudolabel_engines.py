"""fairseq-kd-pseudolabel's engines (fairseq-generate and CTranslate2), n-best selection by chrF and teacher
ensembles, on the shared tiny teacher."""

import json
import os
import shutil

import ctranslate2
from sacrebleu.metrics import CHRF

from fairseq_kd.cli import kd_pseudolabel
from fairseq_kd.ct2 import WEIGHT_TYPES
from fairseq_kd.pseudolabel import read_nbest

from .utils import TeacherTestCase, quiet, run_console_script


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def lines(path):
    return read(path).splitlines()


class TestEngines(TeacherTestCase):
    def pseudolabel(self, output, *flags):
        args = kd_pseudolabel.get_parser().parse_args(
            ["--teacher", self.teacher, "--data", self.data, "--output", output, "--cpu", "--max-tokens", "300",
             "--subset", "train"] + list(flags)
        )  # fmt: skip
        with quiet():
            kd_pseudolabel.main(args)
        return output

    def test_ctranslate2_labels_equal_fairseq_generate_ones_and_resume(self):
        fairseq = self.pseudolabel(os.path.join(self.dir, "fairseq"))
        ct2 = self.pseudolabel(os.path.join(self.dir, "ct2"), "--engine", "ctranslate2", "--num-shards", "2")
        # the same files, the same transfer-set order, and at float32 the same search
        self.assertEqual(
            sorted(os.listdir(os.path.join(ct2, "data-bin"))), sorted(os.listdir(os.path.join(fairseq, "data-bin")))
        )
        self.assertEqual(lines(os.path.join(ct2, "train.ids")), lines(os.path.join(fairseq, "train.ids")))
        ours, theirs = lines(os.path.join(ct2, "train.out")), lines(os.path.join(fairseq, "train.out"))
        same = sum(a == b for a, b in zip(ours, theirs))
        self.assertGreaterEqual(same, 0.95 * len(theirs), f"{same} of {len(theirs)} translations agree")
        # the scores are length-normalised log2-probabilities as fairseq-generate prints them; the per-token
        # probabilities are equal, CTranslate2 normalises short hypotheses slightly otherwise (up to 0.07 here)
        for a, b, x, y in zip(
            ours, theirs, lines(os.path.join(ct2, "train.scores")), lines(os.path.join(fairseq, "train.scores"))
        ):
            if a == b:
                self.assertAlmostEqual(float(x), float(y), delta=0.1)
        summary = json.loads(read(os.path.join(ct2, "summary.json")))
        self.assertEqual(summary["engine"], "ctranslate2 (float32)")
        self.assertEqual(
            summary["decoding"]["sentences"],
            summary["transfer_sentences"] - summary["dropped"].get("too long for the teacher", 0),
        )
        self.assertGreater(summary["decoding"]["sentences_per_s"], 0)
        # two batches at once, one core each (inter_threads), or one batch at a time: the same labels
        serial = self.pseudolabel(os.path.join(self.dir, "ct2-serial"), "--engine", "ctranslate2", "--threads", "1")
        parallel = self.pseudolabel(os.path.join(self.dir, "ct2-parallel"), "--engine", "ctranslate2", "--threads", "2")
        for name in ("train.ids", "train.out", "train.scores"):
            self.assertEqual(read(os.path.join(parallel, name)), read(os.path.join(serial, name)), name)
        # converted once; a rerun redoes nothing; another engine or weight type in the same place is refused
        converted = os.stat(os.path.join(ct2, "ctranslate2-teacher", "model.bin")).st_mtime_ns
        shard = os.stat(os.path.join(ct2, "shards", "000-of-002", "DONE")).st_mtime_ns
        self.pseudolabel(ct2, "--engine", "ctranslate2", "--num-shards", "2")
        self.assertEqual(os.stat(os.path.join(ct2, "ctranslate2-teacher", "model.bin")).st_mtime_ns, converted)
        self.assertEqual(os.stat(os.path.join(ct2, "shards", "000-of-002", "DONE")).st_mtime_ns, shard)
        for flags, change in [
            (["--num-shards", "2"], 'engine: "ctranslate2" then, "fairseq" now'),
            (
                ["--engine", "ctranslate2", "--num-shards", "2", "--quantization", "int8"],
                'quantization: "float32" then, "int8" now',
            ),
        ]:
            with self.subTest(change), self.assertRaisesRegex(ValueError, "other settings.*" + change):
                self.pseudolabel(ct2, *flags)

    def test_ctranslate2_int8_and_sampling(self):
        sampled = [
            self.pseudolabel(
                os.path.join(self.dir, f"s{n}"), "--engine", "ctranslate2", "--sampling-topk", "5", "--seed", seed
            )
            for n, seed in enumerate(("1", "1", "2"))
        ]
        outputs = [read(os.path.join(out, "train.out")) for out in sampled]
        self.assertEqual(outputs[0], outputs[1])  # seeded
        self.assertNotEqual(outputs[0], outputs[2])
        int8 = self.pseudolabel(os.path.join(self.dir, "int8"), "--engine", "ctranslate2", "--quantization", "int8")
        self.assertEqual(json.loads(read(os.path.join(int8, "summary.json")))["engine"], "ctranslate2 (int8)")
        import ctranslate2

        for out, weights in ((int8, "int8"), (sampled[0], "float32")):
            translator = ctranslate2.Translator(os.path.join(out, "ctranslate2-teacher"), device="cpu")
            self.assertTrue(translator.compute_type.startswith(weights), translator.compute_type)

    def test_nbest_chosen_by_chrf_against_the_reference(self):
        out = self.pseudolabel(os.path.join(self.dir, "chrf"), "--nbest", "4", "--select", "chrf")
        best = self.pseudolabel(os.path.join(self.dir, "best"), "--nbest", "4")
        summary = json.loads(read(os.path.join(out, "summary.json")))
        selection = summary["selection"]
        self.assertEqual(selection["nbest"], 4)
        ranks = [int(r) for r in lines(os.path.join(out, "train.nbest_rank"))]
        self.assertEqual(len(ranks), summary["kept"])
        translated = summary["transfer_sentences"] - summary["dropped"].get("too long for the teacher", 0)
        self.assertEqual(sum(selection["rank_counts"].values()), translated)
        self.assertGreater(sum(r > 0 for r in ranks), 0)  # the choice is not always the best-scored one
        self.assertGreaterEqual(selection["mean_chrf_of_chosen"], selection["mean_chrf_of_best_scored"])
        # each kept line is, independently recomputed, the n-best hypothesis of highest chrF
        nbest = {}
        for shard in os.listdir(os.path.join(out, "shards")):
            with open(os.path.join(out, "shards", shard, "generate-train.txt"), encoding="utf-8") as f:
                nbest.update(read_nbest(f))
        references = lines(os.path.join(self.data, "train.out"))
        chrf = CHRF()
        for i, target, rank in zip(lines(os.path.join(out, "train.ids")), lines(os.path.join(out, "train.out")), ranks):
            i = int(i)
            scores = [chrf.sentence_score(h.text, [references[i]]).score for h in nbest[i]]
            self.assertEqual(target, nbest[i][rank].text)
            self.assertEqual(scores[rank], max(scores))
        # without --select chrf the best-scored hypothesis is kept, as with --nbest 1
        self.assertEqual(
            read(os.path.join(best, "train.out")),
            read(os.path.join(self.pseudolabel(os.path.join(self.dir, "one")), "train.out")),
        )
        self.assertEqual(json.loads(read(os.path.join(best, "summary.json")))["selection"]["by"], "teacher score")

    def test_an_ensemble_of_a_teacher_with_itself_labels_as_the_teacher(self):
        twin = os.path.join(self.dir, "twin.pt")
        shutil.copy(self.teacher, twin)
        single = self.pseudolabel(os.path.join(self.dir, "single"))
        args = kd_pseudolabel.get_parser().parse_args(
            ["--teacher", f"{self.teacher}:{twin}", "--data", self.data, "--output", os.path.join(self.dir, "ensemble"),
             "--cpu", "--max-tokens", "300", "--subset", "train"]
        )  # fmt: skip
        with quiet():
            kd_pseudolabel.main(args)
        self.assertEqual(read(os.path.join(self.dir, "ensemble", "train.out")), read(os.path.join(single, "train.out")))
        manifest = json.loads(read(os.path.join(self.dir, "ensemble", "pseudolabel.json")))
        self.assertEqual(manifest["teacher"].split(os.pathsep), [os.path.abspath(self.teacher), os.path.abspath(twin)])

    def test_bad_settings_are_one_line_errors_before_any_work(self):
        twin = os.path.join(self.dir, "twin.pt")
        shutil.copy(self.teacher, twin)
        cases = [
            (["--nbest", "0"], "--nbest must be >= 1, got 0"),
            (["--select", "chrf"], "--select chrf chooses among n-best hypotheses: give --nbest 2 or more"),
            (["--nbest", "3", "--sampling-topk", "5"], "--nbest applies to beam search"),
            (["--engine", "ctranslate2", "--quantization", "int3"], "--quantization 'int3' is not one of float32, int8"),
            (
                ["--engine", "ctranslate2", "--fp16"],
                "--fp16 is fairseq's: with --engine ctranslate2 give --quantization float16",
            ),
            (["--teacher", f"{self.teacher}:{twin}", "--engine", "ctranslate2"], "CTranslate2 decodes one model"),
            (["--teacher", f"{self.teacher}:missing.pt"], "--teacher 'missing.pt' does not exist"),
            (["--max-len-a", "inf"], "--max-len-a inf / --max-len-b 10: give a >= 0 and b >= 1, finite"),
        ]
        # a weight type CTranslate2 cannot compute here (float16 on a CPU) is refused, not silently converted
        device = "cpu" if ctranslate2.get_cuda_device_count() == 0 else "cuda"
        supported = ctranslate2.get_supported_compute_types(device)
        unsupported = [q for q in WEIGHT_TYPES if q not in supported]
        if unsupported:
            cases.append(
                (["--engine", "ctranslate2", "--quantization", unsupported[0]],
                 f"--quantization {unsupported[0]} does not run on this {device} in CTranslate2")
            )  # fmt: skip
        for flags, message in cases:
            output = os.path.join(self.dir, "out")
            with self.subTest(message):
                result = run_console_script(
                    "fairseq-kd-pseudolabel",
                    ["--teacher", self.teacher, "--data", self.data, "--output", output, "--subset", "train"] + flags,
                )
                self.assertEqual(result.returncode, 2, result.stderr[-1500:])
                last = result.stderr.strip().splitlines()[-1]
                self.assertTrue(last.startswith(f"fairseq-kd-pseudolabel: error: {message}"), last)
                self.assertNotIn("Traceback", result.stderr)
                self.assertFalse(os.path.exists(output))
