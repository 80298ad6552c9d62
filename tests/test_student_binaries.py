"""End to end: DistilBERT-style students initialised from a deeper tiny teacher, the hidden-state
loss across equal and unequal widths, resuming, and the exported student in stock fairseq."""

import os
import unittest

import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

import fairseq_kd  # noqa: F401
from tests.utils import (
    PLUGIN_DIR,
    TeacherTestCase,
    generate_main,
    hypotheses,
    quiet,
    run_console_script,
    train_meters,
    train_translation_model,
)


def tiny_arch(encoder_layers, decoder_layers, arch="transformer_student", decoder_embed_dim=16):
    return [
        "--arch", arch,
        "--encoder-layers", str(encoder_layers), "--decoder-layers", str(decoder_layers),
        "--encoder-embed-dim", "16", "--decoder-embed-dim", str(decoder_embed_dim),
        "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
        "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
        "--dropout", "0",
    ]  # fmt: skip


HIDDEN_FLAGS = [
    "--user-dir", PLUGIN_DIR,
    "--criterion", "label_smoothed_cross_entropy_with_kd",
    "--nll-weight", "0.5", "--kd-weight", "1", "--kd-temperature", "2",
    "--cosine-weight", "1", "--cosine-encoder",
    "--no-epoch-checkpoints",
]  # fmt: skip


def layer_tensors(state, prefix):
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


class TestDistilBERTStudent(TeacherTestCase):
    # a 4x2 teacher: deeper than the students, with their widths
    teacher_arch = tiny_arch(4, 2, arch="transformer")

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.teacher_state = torch.load(cls.teacher, map_location="cpu", weights_only=True)["model"]

    def train(self, name, arch_flags, extra_flags=(), teacher=True):
        save_dir = os.path.join(self.dir, name)
        with quiet():
            train_translation_model(
                self.data,
                arch_flags=arch_flags,
                task="translation_kd",
                save_dir=save_dir,
                extra_flags=(["--teacher-path", self.teacher] if teacher else []) + HIDDEN_FLAGS + list(extra_flags),
            )
        return os.path.join(save_dir, "checkpoint_last.pt")

    def test_initialised_student_starts_close_to_the_teacher(self):
        # the whole teacher copied: the first step's KD and cosine losses are 0
        copy = self.train(
            "copy",
            tiny_arch(4, 2),
            ["--init-from-teacher", "--init-encoder-layers", "0,1,2,3", "--init-decoder-layers", "0,1", "--max-update", "1"],
        )
        first_step = train_meters(copy)
        self.assertLess(first_step["cos_loss"], 1e-4)
        self.assertLess(first_step["kd_loss"], 1e-4)

        # 1 of every 2 layers: not the teacher's function any more, but far closer than a random student
        init = train_meters(self.train("init", tiny_arch(2, 1), ["--init-from-teacher", "--max-update", "1"]))
        scratch = train_meters(self.train("scratch", tiny_arch(2, 1), ["--max-update", "1"]))
        self.assertLess(init["cos_loss"], 0.5 * scratch["cos_loss"])
        self.assertLess(init["kd_loss"], 0.5 * scratch["kd_loss"])

    def test_teacher_as_starting_point_only(self):
        # --init-from-teacher with a criterion that does not use the teacher: initialised, then trained by
        # plain NLL without it (with lr 0 the checkpoint holds exactly the initialised student)
        save_dir = os.path.join(self.dir, "init_nll")
        flags = ["--user-dir", PLUGIN_DIR, "--teacher-path", self.teacher, "--init-from-teacher"]
        with quiet():
            train_translation_model(
                self.data,
                arch_flags=tiny_arch(2, 1),
                task="translation_kd",
                save_dir=save_dir,
                extra_flags=flags + ["--criterion", "label_smoothed_cross_entropy", "--lr", "0", "--max-update", "1"],
            )
        checkpoint = os.path.join(save_dir, "checkpoint_last.pt")
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
        for student, teacher in [("encoder.layers.0.", "encoder.layers.1."), ("encoder.layers.1.", "encoder.layers.3."),
                                 ("decoder.layers.0.", "decoder.layers.1.")]:  # fmt: skip
            student_layer, teacher_layer = layer_tensors(state, student), layer_tensors(self.teacher_state, teacher)
            self.assertEqual(set(student_layer), set(teacher_layer))
            for key, value in teacher_layer.items():
                self.assertTrue(torch.equal(student_layer[key], value), student + key)
        meters = train_meters(checkpoint)
        self.assertIn("nll_loss", meters)
        self.assertNotIn("kd_loss", meters)

    def test_resume_does_not_reinitialise_and_export_is_a_stock_transformer(self):
        flags = ["--init-from-teacher", "--init-decoder-layers", "0"]
        first = self.train("student", tiny_arch(2, 1), flags + ["--max-epoch", "1"])
        first_state = torch.load(first, map_location="cpu", weights_only=True)
        # initialised from teacher layers 1, 3 (encoder) and 0 (decoder), then trained away from them
        trained_layer = layer_tensors(first_state["model"], "encoder.layers.0.")
        teacher_layer = layer_tensors(self.teacher_state, "encoder.layers.1.")
        self.assertFalse(all(torch.equal(trained_layer[k], teacher_layer[k]) for k in teacher_layer))

        # resume with a zero learning rate: the student must still be exactly the checkpoint's,
        # which a re-initialisation from the teacher would have overwritten
        resumed = self.train("student", tiny_arch(2, 1), flags + ["--max-epoch", "2", "--lr", "0"])
        resumed_state = torch.load(resumed, map_location="cpu", weights_only=True)
        self.assertGreater(
            resumed_state["optimizer_history"][-1]["num_updates"], first_state["optimizer_history"][-1]["num_updates"]
        )
        self.assertEqual(set(resumed_state["model"]), set(first_state["model"]))
        for key, value in first_state["model"].items():
            self.assertTrue(torch.equal(resumed_state["model"][key], value), key)

        # the export is an ordinary transformer that stock fairseq runs, translating as the student does
        exported = os.path.join(self.dir, "exported.pt")
        result = run_console_script("fairseq-kd-export", [resumed, exported])
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        exported_cfg = torch.load(exported, map_location="cpu", weights_only=True)["cfg"]["model"]
        self.assertEqual(exported_cfg["arch"], "transformer")
        self.assertFalse([k for k in exported_cfg if k.startswith("init_")])
        with quiet():
            with_plugin = generate_main(self.data, ["--user-dir", PLUGIN_DIR], path=resumed)
        gen_flags = ["--beam", "3", "--batch-size", "64", "--max-len-b", "12", "--gen-subset", "valid", "--cpu"]
        stock = run_console_script("fairseq-generate", [self.data, "--path", exported] + gen_flags)
        self.assertEqual(stock.returncode, 0, stock.stderr[-2000:])
        self.assertTrue(hypotheses(with_plugin))
        self.assertEqual(hypotheses(stock.stdout), hypotheses(with_plugin))
        # an exported model exports again, to fairseq and CTranslate2 (fairseq's loader hands its plain config
        # back as an OmegaConf one)
        again, ct2_dir = os.path.join(self.dir, "again.pt"), os.path.join(self.dir, "again.ct2")
        result = run_console_script("fairseq-kd-export", [exported, again, "--ctranslate2", ct2_dir, "--data", self.data])
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        self.assertTrue(os.path.isfile(os.path.join(ct2_dir, "model.bin")))
        exported_state = torch.load(exported, map_location="cpu", weights_only=True)
        again_state = torch.load(again, map_location="cpu", weights_only=True)
        self.assertEqual(again_state["cfg"]["model"], exported_state["cfg"]["model"])
        for key, value in exported_state["model"].items():
            self.assertTrue(torch.equal(again_state["model"][key], value), key)

    def test_unequal_widths_learn_a_projection(self):
        arch = tiny_arch(2, 1, decoder_embed_dim=24)  # a randomly initialised student, its decoder wider than the teacher's
        checkpoint = self.train("wide", arch, ["--max-epoch", "1"])
        first_epoch = train_meters(checkpoint)
        first_projection = torch.load(checkpoint, map_location="cpu", weights_only=True)["criterion"]
        self.assertEqual(tuple(first_projection["hidden_projections.decoder.weight"].shape), (16, 24))
        self.assertNotIn("hidden_projections.encoder.weight", first_projection)  # equal encoder widths

        self.train("wide", arch, ["--max-epoch", "4"])  # resumed, with the projection restored
        self.assertLess(train_meters(checkpoint)["cos_loss"], 0.8 * first_epoch["cos_loss"])
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        self.assertFalse(
            torch.equal(
                first_projection["hidden_projections.decoder.weight"], state["criterion"]["hidden_projections.decoder.weight"]
            )
        )

        exported = os.path.join(self.dir, "exported.pt")
        result = run_console_script("fairseq-kd-export", [checkpoint, exported])
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        exported_state = torch.load(exported, map_location="cpu", weights_only=True)
        self.assertNotIn("criterion", exported_state)
        self.assertFalse([k for k in exported_state["model"] if "hidden_projections" in k])

    def test_guide_example_24x6_to_3x3(self):
        # the NeMo guide's shapes at a tiny width: 1 of every 8 encoder layers, 1 of every 2 decoder layers
        with quiet():
            train_translation_model(
                self.data,
                arch_flags=tiny_arch(24, 6, arch="transformer"),
                extra_flags=["--max-update", "1", "--no-epoch-checkpoints"],
                save_dir=os.path.join(self.dir, "teacher_24x6"),
            )
        teacher_path = os.path.join(self.dir, "teacher_24x6", "checkpoint_last.pt")
        args = options.parse_args_and_arch(
            options.get_training_parser(),
            ["--task", "translation_kd", self.data, "--teacher-path", teacher_path, "--init-from-teacher"]
            + tiny_arch(3, 3)
            + HIDDEN_FLAGS,
        )
        cfg = convert_namespace_to_omegaconf(args)
        with quiet():
            task = tasks.setup_task(cfg.task)
            student = task.build_model(cfg.model)
            criterion = task.build_criterion(cfg.criterion)
        layers = {"encoder": [7, 15, 23], "decoder": [1, 3, 5]}
        self.assertEqual(criterion.layer_pairs, layers)  # the hidden-state loss pairs layers as initialised
        teacher_state = torch.load(teacher_path, map_location="cpu", weights_only=True)["model"]
        for stack, chosen in layers.items():
            for i, j in enumerate(chosen):
                ours = layer_tensors(student.state_dict(), f"{stack}.layers.{i}.")
                theirs = layer_tensors(teacher_state, f"{stack}.layers.{j}.")
                self.assertEqual(set(ours), set(theirs))
                self.assertTrue(all(torch.equal(ours[k], theirs[k]) for k in ours), f"{stack} layer {i}")

    def assert_fails_before_training(self, name, error, message, arch_flags, extra_flags=(), teacher=True):
        with self.assertRaisesRegex(error, message):
            self.train(name, arch_flags, list(extra_flags) + ["--max-epoch", "1"], teacher=teacher)
        self.assertFalse(os.path.exists(os.path.join(self.dir, name, "checkpoint_last.pt")))

    def test_bad_maps_and_shapes_fail_before_training(self):
        init = ["--init-from-teacher"]
        cases = [
            ("indivisible", tiny_arch(3, 1), init, "teacher's 4 encoder layers are not divisible by the student's 3"),
            ("deeper", tiny_arch(2, 3), init, "teacher's 2 decoder layers are not divisible by the student's 3"),
            (
                "length",
                tiny_arch(2, 1),
                init + ["--init-encoder-layers", "0,1,2"],
                "names 3 teacher layers, but the student's encoder has 2",
            ),
            (
                "range",
                tiny_arch(2, 1),
                init + ["--init-decoder-layers", "2"],
                "layer 2 does not exist; the teacher's decoder has layers 0 to 1",
            ),
            (
                "width",
                tiny_arch(2, 1, decoder_embed_dim=24),
                init,
                r"decoder width \(--decoder-embed-dim\) is 24, more than the teacher.s 16",
            ),
            (
                "no_flag",
                tiny_arch(2, 1),
                ["--init-decoder-layers", "1"],
                "--init-decoder-layers is set without --init-from-teacher",
            ),
        ]
        for name, arch, flags, message in cases:
            with self.subTest(name):
                self.assert_fails_before_training(name, ValueError, message, arch, flags)
        with self.subTest("lstm_teacher"):
            lstm = [
                "--arch", "lstm", "--encoder-layers", "1", "--decoder-layers", "1",
                "--encoder-embed-dim", "16", "--decoder-embed-dim", "16", "--decoder-out-embed-dim", "16",
                "--encoder-hidden-size", "16", "--decoder-hidden-size", "16",
            ]  # fmt: skip
            with quiet():
                train_translation_model(
                    self.data,
                    arch_flags=lstm,
                    extra_flags=["--max-update", "1", "--no-epoch-checkpoints"],
                    save_dir=os.path.join(self.dir, "lstm"),
                )
            lstm_teacher = ["--teacher-path", os.path.join(self.dir, "lstm", "checkpoint_last.pt")]
            self.assert_fails_before_training(
                "lstm_init",
                ValueError,
                "copies transformer layers, but the teacher is a LSTMModel",
                tiny_arch(2, 1),
                init + lstm_teacher,
                teacher=False,
            )
            self.assert_fails_before_training(
                "lstm_cosine",
                ValueError,
                "the teacher has no encoder/decoder layer stacks",
                tiny_arch(2, 1),
                lstm_teacher,
                teacher=False,
            )
        with self.subTest("no_teacher"):
            self.assert_fails_before_training(
                "no_teacher", ValueError, "--init-from-teacher needs a teacher", tiny_arch(2, 1), init, teacher=False
            )


if __name__ == "__main__":
    unittest.main()


class TestRetieEmbeddings(unittest.TestCase):
    def test_equal_copies_of_tied_weights_become_one_tensor(self):
        from fairseq_kd.checkpoints import retie_embeddings

        emb = torch.randn(7, 4)
        state = {
            "encoder.embed_tokens.weight": emb,
            "decoder.embed_tokens.weight": emb.clone(),  # as saved from a GPU: equal, not shared
            "decoder.output_projection.weight": emb.clone(),
            "decoder.layers.0.fc1.weight": emb.clone(),  # equal but not a tied weight: left alone
        }
        other = torch.randn(7, 4)
        state_untied = {"encoder.embed_tokens.weight": emb, "decoder.embed_tokens.weight": other}
        retie_embeddings(state)
        retie_embeddings(state_untied)
        self.assertIs(state["decoder.embed_tokens.weight"], emb)
        self.assertIs(state["decoder.output_projection.weight"], emb)
        self.assertIsNot(state["decoder.layers.0.fc1.weight"], emb)
        self.assertIs(state_untied["decoder.embed_tokens.weight"], other)
