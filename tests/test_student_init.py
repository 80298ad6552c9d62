"""DistilBERT-style initialisation: which teacher tensor goes where, and the errors for what cannot be copied."""

import re
import tempfile
import unittest

import torch

import fairseq_kd  # noqa: F401
from fairseq_kd.models.student_init import (
    StudentInitError,
    init_student_from_teacher,
    layout_flags,
    parse_layer_map,
    select_layers,
    teacher_key_map,
)
from tests.utils import build_task_and_model, set_seed, write_dictionaries


def arch(encoder_layers, decoder_layers, name="transformer_student", **overrides):
    flags = {
        "encoder-layers": encoder_layers,
        "decoder-layers": decoder_layers,
        "encoder-embed-dim": 16,
        "decoder-embed-dim": 16,
        "encoder-ffn-embed-dim": 32,
        "decoder-ffn-embed-dim": 32,
        "encoder-attention-heads": 2,
        "decoder-attention-heads": 2,
    }
    flags.update(overrides)
    # a value of True is a switch: --flag with no value
    return ["--arch", name] + [x for k, v in flags.items() for x in ([f"--{k}"] if v is True else [f"--{k}", str(v)])]


class TestLayerSelection(unittest.TestCase):
    def test_one_of_every_n_takes_the_last_layer_of_each_block(self):
        self.assertEqual(select_layers(24, 3), [7, 15, 23])  # the guide's 24x6 -> 3x3 encoder: 1 of every 8
        self.assertEqual(select_layers(6, 3), [1, 3, 5])  # and decoder: 1 of every 2
        self.assertEqual(select_layers(12, 6), [1, 3, 5, 7, 9, 11])
        self.assertEqual(select_layers(4, 4), [0, 1, 2, 3])
        self.assertEqual(select_layers(5, 1), [4])

    def test_indivisible_or_deeper_student_is_an_error(self):
        with self.assertRaisesRegex(StudentInitError, r"teacher's 6 encoder layers are not divisible by the student's 4.*"):
            select_layers(6, 4, "encoder")
        with self.assertRaisesRegex(StudentInitError, r"--init-decoder-layers"):
            select_layers(2, 3, "decoder")
        # the suggested explicit map is itself valid
        message = str(self._error(lambda: select_layers(6, 4, "encoder")))
        suggested = re.search(r"--init-encoder-layers ([\d,]+)", message)[1]
        self.assertEqual(parse_layer_map(suggested, 6, 4), [int(i) for i in suggested.split(",")])

    def _error(self, fn):
        with self.assertRaises(StudentInitError) as ctx:
            fn()
        return ctx.exception

    def test_explicit_maps(self):
        self.assertEqual(parse_layer_map("0,2,4,7,9,11", 12, 6), [0, 2, 4, 7, 9, 11])  # DistilBERT's own choice
        self.assertEqual(parse_layer_map("3,3", 4, 2), [3, 3])
        self.assertEqual(parse_layer_map(" 1, 0", 4, 2), [1, 0])
        with self.assertRaisesRegex(StudentInitError, "names 2 teacher layers, but the student's decoder has 3 layers"):
            parse_layer_map("0,1", 6, 3, "decoder")
        with self.assertRaisesRegex(StudentInitError, "layer 6 does not exist; the teacher's encoder has layers 0 to 5"):
            parse_layer_map("0,6", 6, 2)
        with self.assertRaisesRegex(StudentInitError, "layer -1 does not exist"):
            parse_layer_map("-1,2", 6, 2)
        with self.assertRaisesRegex(StudentInitError, "not a comma-separated list"):
            parse_layer_map("0;2", 6, 2)

    def test_key_map(self):
        mapping = teacher_key_map(
            [
                "encoder.layers.0.fc1.weight",
                "encoder.layers.1.fc1.weight",
                "decoder.layers.0.fc2.bias",
                "decoder.embed_tokens.weight",
            ],
            {"encoder": [1, 3], "decoder": [2]},
        )
        self.assertEqual(
            mapping,
            {
                "encoder.layers.0.fc1.weight": "encoder.layers.1.fc1.weight",
                "encoder.layers.1.fc1.weight": "encoder.layers.3.fc1.weight",
                "decoder.layers.0.fc2.bias": "decoder.layers.2.fc2.bias",
                "decoder.embed_tokens.weight": "decoder.embed_tokens.weight",
            },
        )


class TestInitStudentFromTeacher(unittest.TestCase):
    def setUp(self):
        set_seed(0)
        self.tmp = tempfile.TemporaryDirectory()
        write_dictionaries(self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()

    def build(self, *args, **kwargs):
        return build_task_and_model(self.tmp.name, arch_flags=arch(*args, **kwargs))[2]

    def assert_copied(self, student, teacher, encoder_layers, decoder_layers):
        student_state, teacher_state = student.state_dict(), teacher.state_dict()
        for key, value in student_state.items():
            m = re.match(r"(encoder|decoder)\.layers\.(\d+)\.(.*)", key)
            if m:
                layers = encoder_layers if m[1] == "encoder" else decoder_layers
                source = f"{m[1]}.layers.{layers[int(m[2])]}.{m[3]}"
            else:
                source = key
            self.assertTrue(torch.equal(value, teacher_state[source]), f"{key} != teacher {source}")

    def test_every_tensor_comes_from_the_chosen_teacher_tensor(self):
        teacher, student = self.build(4, 2, name="transformer"), self.build(2, 1)
        before = {k: v.clone() for k, v in student.state_dict().items()}
        mapping = init_student_from_teacher(student, teacher, [1, 3], [1])

        self.assert_copied(student, teacher, [1, 3], [1])
        # every tensor of the student, buffers included, was written; the weights really changed
        self.assertEqual(set(mapping), set(student.state_dict()))
        for key in ("encoder.embed_tokens.weight", "decoder.output_projection.weight", "encoder.layers.0.fc1.weight"):
            self.assertFalse(torch.equal(before[key], student.state_dict()[key]), key)
        # parameters stay parameters of the student (copied in place, still trainable)
        self.assertTrue(all(p.requires_grad for p in student.parameters()))
        self.assertLessEqual({name for name, _ in student.named_parameters()}, set(mapping))

    def test_default_and_explicit_maps_through_the_model(self):
        teacher = self.build(4, 2, name="transformer")
        student = self.build(2, 1, **{"init-from-teacher": True})
        self.assertEqual(student.teacher_layers(teacher), {"encoder": [1, 3], "decoder": [1]})
        student.init_from_teacher(teacher)
        self.assert_copied(student, teacher, [1, 3], [1])

        student = self.build(3, 2, **{"init-from-teacher": True, "init-encoder-layers": "0,0,2", "init-decoder-layers": "1,0"})
        student.init_from_teacher(teacher)
        self.assert_copied(student, teacher, [0, 0, 2], [1, 0])

        deeper = self.build(3, 1, **{"init-from-teacher": True})
        with self.assertRaisesRegex(StudentInitError, "not divisible"):
            deeper.init_from_teacher(teacher)

    def test_output_projection_and_layer_norms_with_untied_embeddings(self):
        flags = {"encoder-normalize-before": True, "decoder-normalize-before": True, "layernorm-embedding": True}
        teacher = self.build(2, 2, name="transformer", **flags)
        student = self.build(1, 1, **flags)
        self.assertIn("decoder.layer_norm.weight", student.state_dict())
        self.assertIn("encoder.layernorm_embedding.weight", student.state_dict())
        init_student_from_teacher(student, teacher, [1], [1])
        self.assert_copied(student, teacher, [1], [1])

    def test_shared_embeddings_stay_shared(self):
        flags = {"share-all-embeddings": True}
        teacher, student = self.build(2, 2, name="transformer", **flags), self.build(1, 1, **flags)
        init_student_from_teacher(student, teacher, [1], [0])
        self.assert_copied(student, teacher, [1], [0])
        self.assertIs(student.encoder.embed_tokens.weight, student.decoder.embed_tokens.weight)

    def test_settings_that_differ_are_named(self):
        teacher = self.build(2, 2, name="transformer")
        cases = [
            ({"encoder-embed-dim": 24}, r"encoder width \(--encoder-embed-dim\) is 24 for the student but 16"),
            ({"decoder-ffn-embed-dim": 64}, r"decoder FFN size \(--decoder-ffn-embed-dim\) is 64 for the student but 32"),
            ({"encoder-attention-heads": 4}, r"encoder attention heads \(--encoder-attention-heads\) is 4 .* but 2"),
            ({"decoder-normalize-before": True}, r"decoder layer-norm placement"),
            ({"share-decoder-input-output-embed": True}, r"shared decoder input/output embeddings"),
            ({"activation-fn": "gelu"}, r"activation function"),
        ]
        for overrides, message in cases:
            with self.subTest(overrides=overrides):
                student = self.build(1, 1, **overrides)
                before = {k: v.clone() for k, v in student.state_dict().items()}
                with self.assertRaisesRegex(StudentInitError, message):
                    init_student_from_teacher(student, teacher, [1], [1])
                # nothing was copied
                self.assertTrue(all(torch.equal(before[k], v) for k, v in student.state_dict().items()))

    def test_learned_positions_of_another_length_are_named(self):
        flags = {"encoder-learned-pos": True, "decoder-learned-pos": True}
        teacher = self.build(2, 2, name="transformer", **flags)
        student = self.build(1, 1, **flags, **{"max-source-positions": 64})
        with self.assertRaisesRegex(StudentInitError, "--max-source-positions 64 positions, the teacher's 1024"):
            init_student_from_teacher(student, teacher, [1], [1])

    def test_a_student_given_the_teacher_s_layout_flags_takes_its_tensors(self):
        # what the pipeline gives every student of a teacher it did not train: the teacher's layout
        unusual = {"encoder-normalize-before": True, "decoder-normalize-before": True, "activation-fn": "gelu",
                   "layernorm-embedding": True, "no-scale-embedding": True, "encoder-learned-pos": True,
                   "decoder-learned-pos": True, "max-source-positions": 64, "max-target-positions": 48,
                   "share-decoder-input-output-embed": True}  # fmt: skip
        for name, layout in [("the demo's", {"share-all-embeddings": True}), ("unusual", unusual)]:
            with self.subTest(name):
                teacher = self.build(2, 2, name="transformer", **layout)
                flags = layout_flags(teacher.cfg)
                student = build_task_and_model(self.tmp.name, arch_flags=arch(1, 1) + flags)[2]
                init_student_from_teacher(student, teacher, [1], [1])
                self.assert_copied(student, teacher, [1], [1])
                with self.assertRaises(StudentInitError):  # without them, not
                    init_student_from_teacher(self.build(1, 1), teacher, [1], [1])
        self.assertEqual(layout_flags(self.build(2, 2, **{"share-all-embeddings": True}).cfg), ["--share-all-embeddings"])
        self.assertEqual(layout_flags(self.build(2, 2).cfg), [])

    def test_map_without_init_flag_is_an_error(self):
        with self.assertRaisesRegex(StudentInitError, "--init-encoder-layers is set without --init-from-teacher"):
            self.build(1, 1, **{"init-encoder-layers": "1"})


if __name__ == "__main__":
    unittest.main()
