"""The fairseq-hydra-train configs of configs/, and fairseq's own logging of a KD run (TensorBoard)."""

import glob
import os
import struct

import torch

from fairseq_kd.hydra_configs import CONFIG_METHODS, config
from fairseq_kd.methods import METHODS

from .utils import KD_FLAGS, PLUGIN_DIR, TeacherTestCase, quiet, run_console_script, train_translation_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
TINY = ["model.encoder_layers=1", "model.decoder_layers=1", "model.encoder_embed_dim=16", "model.decoder_embed_dim=16",
        "model.encoder_ffn_embed_dim=32", "model.decoder_ffn_embed_dim=32", "model.encoder_attention_heads=2",
        "model.decoder_attention_heads=2"]  # fmt: skip


def tensorboard_scalars(log_dir):
    """{tag: [values]} of the TensorBoard event files under LOG_DIR, read record by record (TFRecord framing:
    length, its CRC, the serialized Event, its CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    scalars = {}
    for path in glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"), recursive=True):
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append(value.simple_value)
    return scalars


class TestConfigs(TeacherTestCase):
    def test_the_configs_are_the_method_table(self):
        self.assertEqual(sorted(os.listdir(CONFIGS)), sorted(f"{name}.yaml" for name in CONFIG_METHODS))
        for name in CONFIG_METHODS:
            with self.subTest(name), open(os.path.join(CONFIGS, f"{name}.yaml")) as f:
                self.assertEqual(f.read(), config(METHODS[name]), "rerun: python -m fairseq_kd.hydra_configs configs")

    def test_fairseq_hydra_train_runs_a_config_with_its_kd_settings(self):
        save_dir = os.path.join(self.dir, "student")
        result = run_console_script(
            "fairseq-hydra-train",
            ["--config-dir", CONFIGS, "--config-name", "word_kd_nll", f"common.user_dir={PLUGIN_DIR}",
             f"task.data={self.data}", f"task.teacher_path={self.teacher}", f"checkpoint.save_dir={save_dir}",
             "optimization.max_update=4", "common.log_interval=1", "common.cpu=true",
             f"common.tensorboard_logdir={os.path.join(self.dir, 'tb')}", f"hydra.run.dir={self.dir}"] + TINY,
        )  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        state = torch.load(os.path.join(save_dir, "checkpoint_last.pt"), map_location="cpu", weights_only=False)
        criterion = state["cfg"]["criterion"]
        method = METHODS["word_kd_nll"]
        self.assertEqual(criterion["_name"], "label_smoothed_cross_entropy_with_kd")
        for key in ("kd_temperature", "kd_weight", "nll_weight", "label_smoothing"):
            self.assertEqual(criterion[key], getattr(method, key), key)
        self.assertEqual(state["cfg"]["task"]["_name"], "translation_kd")
        self.assertIn("kd_loss", result.stdout + result.stderr)
        scalars = tensorboard_scalars(os.path.join(self.dir, "tb"))
        for tag in ("kd_loss", "nll_loss"):
            self.assertTrue(any(t.endswith(tag) for t in scalars), f"no {tag} in {sorted(scalars)}")

    def test_fairseq_train_writes_kd_loss_to_tensorboard(self):
        log_dir = os.path.join(self.dir, "tb")
        with quiet():
            train_translation_model(
                self.data, task="translation_kd", save_dir=os.path.join(self.dir, "s"),
                extra_flags=["--teacher-path", self.teacher, "--max-update", "3", "--log-interval", "1",
                             "--tensorboard-logdir", log_dir] + KD_FLAGS,
            )  # fmt: skip
        scalars = tensorboard_scalars(log_dir)
        kd = [v for t, values in scalars.items() if t.endswith("kd_loss") for v in values]
        nll = [v for t, values in scalars.items() if t.endswith("nll_loss") for v in values]
        self.assertTrue(kd and nll, sorted(scalars))
        self.assertTrue(all(v > 0 for v in kd))
