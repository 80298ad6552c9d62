"""Hugging Face MarianMT models imported as fairseq teachers: on tiny random models built here with
transformers (no hub, no network), the imported model's log-probabilities equal the MarianMT model's and
greedy translations are identical token for token."""

import json
import os
import tempfile
import unittest

import torch

import fairseq_kd  # noqa: F401

try:
    import transformers  # noqa: F401

    HAVE_TRANSFORMERS = True
except ImportError:  # the optional extra: pip install .[hf]
    HAVE_TRANSFORMERS = False

VOCAB = 40  # Marian's ids: </s> 0, <unk> 1, 38 pieces, <pad> 39


def tiny_marian(directory, activation="gelu", seed=0):
    """A random MarianMTModel of 2+2 layers, 16 wide, saved with a vocab.json into DIRECTORY and loaded back
    from it, as a user's would be. Every weight is random, the layer norms included (their biases are 0 at
    initialisation); the sinusoidal positions are not weights (transformers computes them when it loads)."""
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig(
        vocab_size=VOCAB, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
        activation_function=activation, pad_token_id=VOCAB - 1, eos_token_id=0, decoder_start_token_id=VOCAB - 1,
        forced_eos_token_id=0, scale_embedding=True, dropout=0.0,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = MarianMTModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_positions" in name:
                continue
            p.copy_(
                torch.randn_like(p) * (0.5 if "layer_norm" not in name else 0.3)
                + (1.0 if name.endswith("layer_norm.weight") else 0.0)
            )
    model.save_pretrained(directory)
    vocab = {"</s>": 0, "<unk>": 1, "<pad>": VOCAB - 1}
    vocab.update({f"\u2581w{i}": i for i in range(2, VOCAB - 1)})
    with open(os.path.join(directory, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    return MarianMTModel.from_pretrained(directory).eval()


@unittest.skipUnless(HAVE_TRANSFORMERS, "transformers is not installed (pip install .[hf])")
class TestMarianImport(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.hf_dir = os.path.join(self.tmp.name, "hf")
        self.out = os.path.join(self.tmp.name, "fairseq")

    def tearDown(self):
        self.tmp.cleanup()

    def load(self, path):
        from fairseq import checkpoint_utils

        models, _, task = checkpoint_utils.load_model_ensemble_and_task([path])
        return models[0].eval(), task

    def test_log_probabilities_and_greedy_translations_are_marians(self):
        from fairseq_kd.hf import import_marian

        for activation in ("swish", "gelu", "relu"):
            with self.subTest(activation=activation):
                hf = tiny_marian(self.hf_dir, activation)
                model, task = self.load(import_marian(self.hf_dir, self.out))
                d = task.target_dictionary
                # fairseq index of each Marian id: by symbol
                with open(os.path.join(self.hf_dir, "vocab.json")) as f:
                    to_fairseq = {i: d.index(s) for s, i in json.load(f).items()}
                self.assertEqual(len(d), VOCAB + 1)  # fairseq's <s> more
                generator = torch.Generator().manual_seed(1)
                for length, target_length in ((5, 4), (9, 7), (1, 3)):
                    src = torch.randint(2, VOCAB - 1, (1, length), generator=generator)
                    tgt = torch.randint(2, VOCAB - 1, (1, target_length), generator=generator)
                    src = torch.cat([src, torch.tensor([[0]])], 1)  # Marian ends the source with </s>
                    with torch.no_grad():
                        decoder_input = torch.cat([torch.tensor([[VOCAB - 1]]), tgt], 1)
                        hf_lprobs = hf(input_ids=src, decoder_input_ids=decoder_input).logits.log_softmax(-1)[0]
                        fs_src = src.clone().apply_(lambda i: to_fairseq[i])
                        fs_prev = torch.cat([torch.tensor([[d.eos()]]), tgt.clone().apply_(lambda i: to_fairseq[i])], 1)
                        logits, _ = model(fs_src, torch.tensor([fs_src.size(1)]), fs_prev)
                        fs_lprobs = logits.log_softmax(-1)[0]
                    order = torch.tensor([to_fairseq[i] for i in range(VOCAB)])
                    diff = (fs_lprobs[:, order] - hf_lprobs).abs().max().item()
                    self.assertLessEqual(diff, 1e-4, f"max |log p difference| {diff}")
                    self.assertLess(fs_lprobs[:, d.bos()].max().item(), -1000)  # fairseq's extra <s>: never chosen

                # greedy translations: fairseq's SequenceGenerator against transformers' generate()
                from argparse import Namespace

                generator_fs = task.build_generator([model], Namespace(beam=1, max_len_a=0, max_len_b=12))
                for seed in range(4):
                    g = torch.Generator().manual_seed(seed)
                    src = torch.cat([torch.randint(2, VOCAB - 1, (1, 6), generator=g), torch.tensor([[0]])], 1)
                    with torch.no_grad():
                        # 12 free tokens, then transformers forces </s> (forced_eos_token_id) as fairseq ends at its bound
                        hf_out = hf.generate(input_ids=src, num_beams=1, do_sample=False, max_new_tokens=13)
                    hf_tokens = [to_fairseq[i] for i in hf_out[0, 1:].tolist() if i != VOCAB - 1]
                    fs_src = src.clone().apply_(lambda i: to_fairseq[i])
                    sample = {"net_input": {"src_tokens": fs_src, "src_lengths": torch.tensor([fs_src.size(1)])}}
                    fs_tokens = generator_fs.generate([model], sample)[0][0]["tokens"].tolist()
                    self.assertEqual(fs_tokens, hf_tokens, f"seed {seed}")

    def test_what_cannot_be_represented_is_refused(self):
        from fairseq_kd.hf import HFImportError, import_marian

        hf = tiny_marian(self.hf_dir)
        hf.final_logits_bias.fill_(0.5)
        hf.save_pretrained(self.hf_dir)
        with self.assertRaisesRegex(HFImportError, "final_logits_bias is not zero"):
            import_marian(self.hf_dir, self.out)
        tiny_marian(self.hf_dir, activation="tanh")
        with self.assertRaisesRegex(HFImportError, "activation_function 'tanh': fairseq's transformer has relu"):
            import_marian(self.hf_dir, self.out)
        self.assertFalse(os.path.exists(os.path.join(self.out, "model.pt")))
        with self.assertRaisesRegex(HFImportError, "has no config.json"):
            import_marian(self.tmp.name, self.out)


def tiny_fsmt(directory, tie=False, seed=0):
    """A random FSMTForConditionalGeneration (fairseq's WMT19 architecture in transformers) of 2+2 layers, 16
    wide, with separate source and target vocabularies in fairseq's order, saved into DIRECTORY."""
    from transformers import FSMTConfig, FSMTForConditionalGeneration

    sizes = {"src": 30, "tgt": 26}
    config = FSMTConfig(
        langs=["de", "en"], src_vocab_size=sizes["src"], tgt_vocab_size=sizes["tgt"], d_model=16, encoder_layers=2,
        decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
        decoder_ffn_dim=32, max_position_embeddings=64, dropout=0.0, tie_word_embeddings=tie,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = FSMTForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_positions" not in name:
                p.copy_(torch.randn_like(p) * (0.5 if "layer_norm" not in name else 0.3)
                        + (1.0 if name.endswith("layer_norm.weight") else 0.0))  # fmt: skip
    model.save_pretrained(directory)
    for side, size in sizes.items():
        symbols = ["<s>", "<pad>", "</s>", "<unk>"] + [f"{side}{i}@@" if i % 3 else f"{side}{i}" for i in range(4, size)]
        with open(os.path.join(directory, f"vocab-{side}.json"), "w") as f:
            json.dump({s: i for i, s in enumerate(symbols)}, f)
    return FSMTForConditionalGeneration.from_pretrained(directory).eval()


@unittest.skipUnless(HAVE_TRANSFORMERS, "transformers is not installed (pip install .[hf])")
class TestFSMTImport(unittest.TestCase):
    def test_log_probabilities_and_greedy_translations_are_fsmts(self):
        from argparse import Namespace

        from fairseq import checkpoint_utils

        from fairseq_kd.hf import import_hf

        for tie in (False,):  # fairseq's WMT19 models: separate source, target and output embeddings
            with self.subTest(tie_word_embeddings=tie), tempfile.TemporaryDirectory() as tmp:
                hf = tiny_fsmt(os.path.join(tmp, "hf"), tie)
                path = import_hf(os.path.join(tmp, "hf"), os.path.join(tmp, "fairseq"))
                self.assertTrue(os.path.isfile(os.path.join(tmp, "fairseq", "dict.de.txt")))  # FSMT's own languages
                models, _, task = checkpoint_utils.load_model_ensemble_and_task([path])
                fs = models[0].eval()
                g = torch.Generator().manual_seed(1)
                for length, target_length in ((5, 4), (9, 7), (1, 3)):
                    src = torch.cat([torch.randint(4, 30, (1, length), generator=g), torch.tensor([[2]])], 1)
                    prev = torch.cat([torch.tensor([[2]]), torch.randint(4, 26, (1, target_length), generator=g)], 1)
                    with torch.no_grad():
                        # use_cache=False: with the cache on, FSMT's forward makes no causal mask for a whole target
                        hf_lprobs = hf(input_ids=src, decoder_input_ids=prev, use_cache=False).logits.log_softmax(-1)
                        fs_lprobs = fs(src, torch.tensor([src.size(1)]), prev)[0].log_softmax(-1)
                    diff = (hf_lprobs - fs_lprobs).abs().max().item()
                    self.assertLessEqual(diff, 1e-4, f"max |log p difference| {diff}")
                search = task.build_generator([fs], Namespace(beam=1, max_len_a=0, max_len_b=12))
                for seed in range(4):
                    g = torch.Generator().manual_seed(seed)
                    src = torch.cat([torch.randint(4, 30, (1, 6), generator=g), torch.tensor([[2]])], 1)
                    sample = {"net_input": {"src_tokens": src, "src_lengths": torch.tensor([src.size(1)])}}
                    fs_tokens = search.generate([fs], sample)[0][0]["tokens"].tolist()
                    with torch.no_grad():
                        hf_out = hf.generate(input_ids=src, num_beams=1, do_sample=False, max_new_tokens=13,
                                             min_new_tokens=1, bad_words_ids=[[1]])  # fmt: skip
                    self.assertEqual(hf_out[0, 1:].tolist(), fs_tokens, f"seed {seed}")

    def test_a_model_type_that_is_not_converted_is_refused(self):
        from fairseq_kd.hf import HFImportError, import_hf

        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, "config.json"), "w") as f:
                json.dump({"model_type": "m2m_100"}, f)
            with self.assertRaisesRegex(HFImportError, "model_type 'm2m_100': fairseq-kd-import-hf imports MarianMT"):
                import_hf(tmp, os.path.join(tmp, "out"))


@unittest.skipUnless(HAVE_TRANSFORMERS, "transformers is not installed (pip install .[hf])")
class TestImportedTeacher(unittest.TestCase):
    def test_the_console_script_then_a_kd_student_then_stock_generation(self):
        import random

        from tests.utils import (
            KD_FLAGS,
            preprocess_translation_data,
            quiet,
            run_console_script,
            train_translation_model,
        )

        with tempfile.TemporaryDirectory() as tmp:
            hf_dir, teacher_dir, data = (os.path.join(tmp, name) for name in ("hf", "teacher", "data"))
            tiny_marian(hf_dir)
            result = run_console_script("fairseq-kd-import-hf", [hf_dir, teacher_dir, "-s", "in", "-t", "out"])
            self.assertEqual(result.returncode, 0, result.stderr[-2000:])
            again = run_console_script("fairseq-kd-import-hf", [hf_dir, teacher_dir, "-s", "in", "-t", "out"])
            self.assertIn("exists: give --overwrite", again.stderr)
            # a corpus in the imported vocabulary, binarized with its dictionaries
            rng = random.Random(0)
            os.makedirs(data)
            for split, n in (("train", 60), ("valid", 10), ("test", 10)):
                for lang in ("in", "out"):
                    with open(os.path.join(data, f"{split}.{lang}"), "w") as f:
                        f.writelines(
                            " ".join(f"\u2581w{rng.randrange(2, VOCAB - 1)}" for _ in range(5)) + "\n" for _ in range(n)
                        )
            dicts = [
                "--srcdict",
                os.path.join(teacher_dir, "dict.in.txt"),
                "--tgtdict",
                os.path.join(teacher_dir, "dict.out.txt"),
            ]
            with quiet():
                preprocess_translation_data(data, dicts, destdir=os.path.join(data, "bin"))
                student = train_translation_model(
                    os.path.join(data, "bin"), task="translation_kd", save_dir=os.path.join(tmp, "student"),
                    extra_flags=["--teacher-path", os.path.join(teacher_dir, "model.pt"), "--max-update", "3"] + KD_FLAGS,
                )  # fmt: skip
            import torch as _torch

            state = _torch.load(os.path.join(student, "checkpoint_last.pt"), weights_only=False)
            self.assertGreater(state["optimizer_history"][-1]["num_updates"], 0)
            self.assertIn("kd_loss", [name for _, name, _, _ in state["extra_state"]["metrics"]["train"]])
            # the imported teacher runs in stock fairseq-generate, without the plugin
            generated = run_console_script(
                "fairseq-generate", [os.path.join(data, "bin"), "--path", os.path.join(teacher_dir, "model.pt"),
                                     "--beam", "2", "--max-len-b", "10", "--cpu"],
            )  # fmt: skip
            self.assertEqual(generated.returncode, 0, generated.stderr[-2000:])
            lines = generated.stdout.splitlines()
            hypotheses = sum(line.startswith("H-") for line in lines)
            self.assertGreater(hypotheses, 0)
            self.assertEqual(hypotheses, sum(line.startswith("S-") for line in lines))

            # OPUS-MT's swish: fairseq 0.12 runs it with the plugin only
            from tests.utils import PLUGIN_DIR

            swish_dir = os.path.join(tmp, "swish")
            tiny_marian(os.path.join(tmp, "hf_swish"), activation="swish")
            result = run_console_script(
                "fairseq-kd-import-hf", [os.path.join(tmp, "hf_swish"), swish_dir, "-s", "in", "-t", "out"]
            )
            self.assertEqual(result.returncode, 0, result.stderr[-2000:])
            flags = [os.path.join(data, "bin"), "--path", os.path.join(swish_dir, "model.pt"), "--beam", "2", "--cpu"]
            with_plugin = run_console_script("fairseq-generate", flags + ["--user-dir", PLUGIN_DIR])
            self.assertEqual(with_plugin.returncode, 0, with_plugin.stderr[-2000:])
            self.assertNotEqual(run_console_script("fairseq-generate", flags).returncode, 0)


if __name__ == "__main__":
    unittest.main()


@unittest.skipUnless(HAVE_TRANSFORMERS, "transformers is not installed (pip install .[hf])")
class TestMarianExport(unittest.TestCase):
    """A fairseq student (post-norm, one joint sentencepiece dictionary, shared embeddings) exported with
    ``fairseq-kd-export --huggingface``: transformers' MarianMT gives the fairseq model's log-probabilities and
    greedy translations, its tokenizer encodes as the data was made, and CTranslate2 converts it."""

    prenorm = False  # the student's layer layout; M2M100 holds a pre-norm one (TestM2M100Export)

    def hf_model(self, out):
        from transformers import AutoModelForSeq2SeqLM, MarianMTModel

        model = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
        self.assertIsInstance(model, MarianMTModel)
        return model

    @classmethod
    def setUpClass(cls):
        import random

        import sentencepiece as spm

        from tests.utils import preprocess_translation_data, quiet, train_translation_model

        cls.tmp = tempfile.TemporaryDirectory()
        raw, cls.data = os.path.join(cls.tmp.name, "raw"), os.path.join(cls.tmp.name, "bin")
        os.makedirs(raw)
        rng = random.Random(0)
        words = ["haus", "maus", "baum", "tag", "nacht", "licht", "wald", "feld"]
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 6))) for _ in range(300)]
        spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=os.path.join(cls.tmp.name, "spm"),
                                       vocab_size=20, bos_id=-1, eos_id=-1, unk_id=0, pad_id=-1, minloglevel=2)  # fmt: skip
        cls.spm_model = os.path.join(cls.tmp.name, "spm.model")
        processor = spm.SentencePieceProcessor(model_file=cls.spm_model)
        for split, part in (("train", lines[:260]), ("valid", lines[260:280]), ("test", lines[280:])):
            for lang in ("in", "out"):
                text = part if lang == "in" else [" ".join(reversed(line.split())) for line in part]
                with open(os.path.join(raw, f"{split}.{lang}"), "w") as f:
                    f.writelines(" ".join(processor.encode(t, out_type=str)) + "\n" for t in text)
        arch = ["--arch", "transformer", "--share-all-embeddings", "--encoder-layers", "2", "--decoder-layers", "1",
                "--encoder-embed-dim", "16", "--decoder-embed-dim", "16", "--encoder-ffn-embed-dim", "32",
                "--decoder-ffn-embed-dim", "32", "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
                "--max-source-positions", "64", "--max-target-positions", "64"]  # fmt: skip
        if cls.prenorm:
            arch += ["--encoder-normalize-before", "--decoder-normalize-before"]
        with quiet():
            preprocess_translation_data(raw, ["--joined-dictionary"], destdir=cls.data)
            train_translation_model(cls.data, arch_flags=arch, save_dir=os.path.join(cls.tmp.name, "student"),
                                    extra_flags=["--max-epoch", "3", "--lr", "0.01"])  # fmt: skip
        cls.student = os.path.join(cls.tmp.name, "student", "checkpoint_last.pt")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def export(self, name="hf", *flags):
        from tests.utils import run_console_script

        out = os.path.join(self.tmp.name, name)
        result = run_console_script("fairseq-kd-export", [self.student, out + ".pt", "--overwrite", "--data", self.data,
                                                          "--huggingface", out, *flags])  # fmt: skip
        return out, result

    def test_log_probabilities_greedy_translations_tokenizer_and_ctranslate2(self):
        from argparse import Namespace

        from fairseq import checkpoint_utils
        from transformers import AutoTokenizer

        out, result = self.export("hf", "--spm-model", self.spm_model)
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        self.assertIn("(M2M100 with its tokenizer)" if self.prenorm else "(MarianMT with its tokenizer)", result.stdout)
        hf = self.hf_model(out)
        models, _, task = checkpoint_utils.load_model_ensemble_and_task([out + ".pt"])
        fs = models[0].eval()
        d = task.target_dictionary
        with open(os.path.join(out, "vocab.json")) as f:
            vocab = json.load(f)
        if self.prenorm:
            self.assertEqual(vocab, {symbol: i for i, symbol in enumerate(d.symbols)})  # M2M100's ids are fairseq's
        else:
            self.assertEqual(vocab["<pad>"], len(d) - 1)  # OPUS-MT's layout: <pad> last
        to_hf = torch.tensor([vocab[s] for s in d.symbols])  # Marian id of each fairseq index
        to_fs = torch.argsort(to_hf)
        generator = torch.Generator().manual_seed(0)
        for length, target_length in ((5, 4), (11, 9), (1, 2)):
            src = torch.cat([torch.randint(4, len(d), (1, length), generator=generator), torch.tensor([[d.eos()]])], 1)
            prev = torch.cat([torch.tensor([[d.eos()]]), torch.randint(4, len(d), (1, target_length), generator=generator)], 1)
            with torch.no_grad():
                hf_lprobs = hf(input_ids=to_hf[src], decoder_input_ids=to_hf[prev]).logits.log_softmax(-1)
                fs_lprobs = fs(src, torch.tensor([src.size(1)]), prev)[0].log_softmax(-1)
            diff = (hf_lprobs[..., to_hf] - fs_lprobs).abs().max().item()
            self.assertLessEqual(diff, 1e-4, f"max |log p difference| {diff}")
        # greedy: fairseq's SequenceGenerator against generate() with the exported generation defaults
        search = task.build_generator([fs], Namespace(beam=1, max_len_a=0, max_len_b=12))
        tokenizer = AutoTokenizer.from_pretrained(out)
        with open(os.path.join(os.path.dirname(self.data), "raw", "test.in")) as f:
            sources = [line.split() for line in f.read().splitlines()[:8]]
        import sentencepiece as spm

        processor = spm.SentencePieceProcessor(model_file=self.spm_model)
        greedy = []
        for pieces in sources:
            text = processor.decode(pieces)
            ids = tokenizer(text, return_tensors="pt").input_ids
            fs_src = torch.tensor([[d.index(p) for p in pieces] + [d.eos()]])
            self.assertEqual(ids.tolist(), to_hf[fs_src].tolist(), text)  # the tokenizer encodes as the data was made
            sample = {"net_input": {"src_tokens": fs_src, "src_lengths": torch.tensor([fs_src.size(1)])}}
            fs_tokens = search.generate([fs], sample)[0][0]["tokens"].tolist()
            with torch.no_grad():
                hf_out = hf.generate(input_ids=ids, num_beams=1, do_sample=False, max_new_tokens=13)
            self.assertEqual(to_fs[hf_out[0, 1:]].tolist(), fs_tokens, text)
            greedy.append([d[i] for i in fs_tokens[:-1]])
            # the same text (transformers' decoding strips the spaces of trailing "▁" pieces)
            self.assertEqual(tokenizer.decode(hf_out[0], skip_special_tokens=True).split(),
                             processor.decode([d[i] for i in fs_tokens[:-1]]).split())  # fmt: skip
        # CTranslate2's converter for transformers takes it. For MarianMT it starts decoding from a zero vector,
        # where fairseq starts from </s>'s embedding: its translations are the model's, not exactly the student's;
        # M2M100's starts from </s>, as fairseq: the student's greedy translations
        import ctranslate2
        from ctranslate2.converters import TransformersConverter

        ct2_dir = os.path.join(self.tmp.name, "ct2")
        TransformersConverter(out).convert(ct2_dir, force=True)
        translator = ctranslate2.Translator(ct2_dir, device="cpu")
        results = translator.translate_batch([pieces + ["</s>"] for pieces in sources], beam_size=1, max_decoding_length=12,
                                             min_decoding_length=1)  # fmt: skip
        self.assertEqual(len(results), len(sources))
        self.assertTrue(all(set(r.hypotheses[0]) <= set(d.symbols) for r in results))
        if self.prenorm:
            self.assertEqual([r.hypotheses[0] for r in results], greedy)

    def test_fairseq_kd_evaluate_translates_the_directory_as_fairseq_does(self):
        """The exported directory as a system of fairseq-kd-evaluate: with the same batches and length bound,
        transformers' translations are the fairseq student's (greedy: every one; beam 4: most)."""
        import sentencepiece as spm

        from fairseq_kd.evaluate import Settings, evaluate
        from fairseq_kd.io import read_lines

        out, result = self.export("hf-evaluated")
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        processor = spm.SentencePieceProcessor(model_file=self.spm_model)
        references = os.path.join(self.tmp.name, "test.out.detok")
        with open(references, "w") as f:
            f.writelines(
                processor.decode(line.split()) + "\n"
                for line in read_lines(os.path.join(os.path.dirname(self.data), "raw", "test.out"))
            )
        same = {}
        for beam in (1, 4):
            work = os.path.join(self.tmp.name, f"evaluated-{beam}")
            records = evaluate({"fairseq": out + ".pt", "hf": out}, self.data, references, out_dir=work, baseline="fairseq",
                               settings=Settings(beam=beam, post_process="sentencepiece"), quiet=True)  # fmt: skip
            self.assertEqual([r.kind for r in records], ["fairseq", "huggingface"])
            fairseq, hf = (read_lines(os.path.join(work, "translations", f"{n}.txt")) for n in ("fairseq", "hf"))
            self.assertEqual(len(hf), len(read_lines(references)))
            same[beam] = sum(a == b for a, b in zip(fairseq, hf)) / len(hf)
            if beam == 1:
                self.assertEqual(hf, fairseq)
                self.assertEqual(records[1].bleu, records[0].bleu)
        # a directory whose vocabulary is not the data's is refused before anything is translated
        import shutil

        from fairseq_kd.evaluate import EvaluationError

        other = os.path.join(self.tmp.name, "hf-other-vocabulary")
        shutil.copytree(out, other, dirs_exist_ok=True)
        with open(os.path.join(other, "vocab.json")) as f:
            vocab = json.load(f)
        vocab["another"] = vocab.pop(max(vocab, key=vocab.get))
        with open(os.path.join(other, "vocab.json"), "w") as f:
            json.dump(vocab, f)
        with self.assertRaisesRegex(EvaluationError, "vocab.json .* does not hold .*dict.in.txt"):
            evaluate({"hf": other}, self.data, references, settings=Settings(beam=1, post_process="sentencepiece"), quiet=True)
        # beam search: transformers' and fairseq's differ where hypotheses run into the length bound (this tiny
        # student's often do: "acht acht" against "acht acht aus aus ... ahhhh"); most are the same
        self.assertGreaterEqual(same[4], 0.5, same)

    def test_a_student_pre_norm_on_one_side_only_is_refused_before_anything_is_written(self):
        state = torch.load(self.student, map_location="cpu", weights_only=False)
        model_cfg = state["cfg"]["model"]
        if isinstance(model_cfg, dict):
            model_cfg["decoder_normalize_before"] = not self.prenorm
        else:
            model_cfg.decoder_normalize_before = not self.prenorm
        mixed = os.path.join(self.tmp.name, "mixed.pt")
        torch.save(state, mixed)
        from tests.utils import run_console_script

        out = os.path.join(self.tmp.name, "refused")
        result = run_console_script("fairseq-kd-export", [mixed, out + ".pt", "--data", self.data, "--huggingface", out])
        self.assertEqual(result.returncode, 2, result.stderr[-2000:])
        pre, post = ("encoder", "decoder") if self.prenorm else ("decoder", "encoder")
        self.assertIn(f"trained with --{pre}-normalize-before but not --{post}-normalize-before: MarianMT is post-norm "
                      "and M2M100 pre-norm throughout", result.stderr.strip().splitlines()[-1])  # fmt: skip
        self.assertFalse(os.path.exists(out + ".pt"))
        self.assertFalse(os.path.exists(out))


class TestM2M100Export(TestMarianExport):
    """The same for a pre-norm student (the big preset's layout): transformers' M2M100, fairseq's pre-norm
    transformer with its vocabulary layout and sinusoids, decoding from ``</s>`` with no language token."""

    prenorm = True

    def hf_model(self, out):
        from transformers import AutoModelForSeq2SeqLM, M2M100ForConditionalGeneration

        model = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
        self.assertIsInstance(model, M2M100ForConditionalGeneration)
        return model

    def test_what_m2m100_cannot_hold_is_refused(self):
        from argparse import Namespace

        from fairseq_kd.hf import HFExportError, hf_architecture

        base = dict(encoder_normalize_before=True, decoder_normalize_before=True, encoder_embed_dim=16, decoder_embed_dim=16)
        self.assertEqual(hf_architecture(Namespace(**base)), "m2m_100")
        self.assertEqual(hf_architecture(Namespace(**dict(base, encoder_normalize_before=False, decoder_normalize_before=False))),
                         "marian")  # fmt: skip
        for change, message in (({"decoder_learned_pos": True}, "--decoder-learned-pos: M2M100"),
                                ({"no_decoder_final_norm": True}, "--no-decoder-final-norm"),
                                ({"layernorm_embedding": True}, "--layernorm-embedding"),
                                ({"decoder_embed_dim": 32}, "widths differ")):  # fmt: skip
            with self.assertRaisesRegex(HFExportError, message):
                hf_architecture(Namespace(**dict(base, **change)))
        from fairseq_kd.hf import check_exportable

        state = torch.load(self.student, map_location="cpu", weights_only=False)
        self.assertEqual(check_exportable(state, self.data, "in", "out")[0], "m2m_100")
        state["model"]["decoder.embed_tokens.weight"] = state["model"]["decoder.embed_tokens.weight"] + 1
        with self.assertRaisesRegex(HFExportError, "embeddings are not one matrix"):
            check_exportable(state, self.data, "in", "out")


@unittest.skipUnless(HAVE_TRANSFORMERS, "transformers is not installed (pip install .[hf])")
class TestMarianRoundTrip(unittest.TestCase):
    def test_the_pipeline_distils_an_imported_marian_teacher_into_a_student_exported_back(self):
        """MarianMT -> fairseq-kd-import-hf -> python -m fairseq_kd.pipeline (baseline and init_kd, the default
        student: the teacher's encoder and one decoder layer) -> fairseq-kd-export --huggingface -> MarianMT,
        whose greedy translations are the fairseq student's."""
        import random
        import subprocess
        import sys
        from argparse import Namespace

        from fairseq import checkpoint_utils
        from transformers import MarianMTModel

        from tests.utils import preprocess_translation_data, quiet, run_console_script

        with tempfile.TemporaryDirectory() as tmp:
            hf_dir, teacher_dir, raw = (os.path.join(tmp, name) for name in ("hf", "teacher", "raw"))
            tiny_marian(hf_dir)
            result = run_console_script("fairseq-kd-import-hf", [hf_dir, teacher_dir, "-s", "in", "-t", "out"])
            self.assertEqual(result.returncode, 0, result.stderr[-2000:])
            rng = random.Random(0)
            os.makedirs(raw)
            for split, n in (("train", 80), ("valid", 12), ("test", 12)):
                for lang in ("in", "out"):
                    pieces = [" ".join(f"\u2581w{rng.randrange(2, VOCAB - 1)}" for _ in range(5)) for _ in range(n)]
                    with open(os.path.join(raw, f"{split}.{lang}.tok"), "w") as f:
                        f.writelines(p + "\n" for p in pieces)
                    with open(os.path.join(raw, f"{split}.{lang}"), "w") as f:  # the references: detokenized
                        f.writelines(p.replace(" ", "").replace("\u2581", " ").strip() + "\n" for p in pieces)
            tok = os.path.join(tmp, "tok")
            os.makedirs(tok)
            for name in os.listdir(raw):
                if name.endswith(".tok"):
                    os.replace(os.path.join(raw, name), os.path.join(tok, name[: -len(".tok")]))
            dicts = [
                "--srcdict",
                os.path.join(teacher_dir, "dict.in.txt"),
                "--tgtdict",
                os.path.join(teacher_dir, "dict.out.txt"),
            ]
            with quiet():
                preprocess_translation_data(tok, dicts, destdir=os.path.join(tmp, "bin"))
            run_dir = os.path.join(tmp, "run")
            pipeline = subprocess.run(
                [sys.executable, "-m", "fairseq_kd.pipeline", "--teacher", os.path.join(teacher_dir, "model.pt"),
                 "--data-bin", os.path.join(tmp, "bin"), "--references", raw, "-s", "in", "-t", "out",
                 "--methods", "baseline,init_kd", "--max-update", "6", "--warmup-updates", "1",
                 "--post-process", "sentencepiece", "--out", run_dir],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            self.assertEqual(pipeline.returncode, 0, pipeline.stdout[-3000:])
            self.assertIn("the default student: the teacher's encoder, one decoder layer", pipeline.stdout)
            student = os.path.join(run_dir, "models", "init_kd.pt")
            out = os.path.join(tmp, "student-hf")
            result = run_console_script("fairseq-kd-export", [student, os.path.join(tmp, "again.pt"), "--data",
                                                              os.path.join(tmp, "bin"), "--huggingface", out])  # fmt: skip
            self.assertEqual(result.returncode, 0, result.stderr[-2000:])
            hf = MarianMTModel.from_pretrained(out).eval()
            models, _, task = checkpoint_utils.load_model_ensemble_and_task([student])
            fs, d = models[0].eval(), task.target_dictionary
            self.assertFalse(hf.config.share_encoder_decoder_embeddings)  # the imported teacher's three matrices
            with open(os.path.join(out, "vocab.json")) as f:
                vocab = json.load(f)
            to_hf = torch.tensor([vocab[s] for s in d.symbols])
            to_fs = torch.argsort(to_hf)
            search = task.build_generator([fs], Namespace(beam=1, max_len_a=0, max_len_b=12))
            for seed in range(4):
                g = torch.Generator().manual_seed(seed)
                src = torch.cat([torch.randint(4, len(d), (1, 6), generator=g), torch.tensor([[d.eos()]])], 1)
                sample = {"net_input": {"src_tokens": src, "src_lengths": torch.tensor([src.size(1)])}}
                fs_tokens = search.generate([fs], sample)[0][0]["tokens"].tolist()
                with torch.no_grad():
                    hf_out = hf.generate(input_ids=to_hf[src], num_beams=1, do_sample=False, max_new_tokens=13)
                self.assertEqual(to_fs[hf_out[0, 1:]].tolist(), fs_tokens, f"seed {seed}")
