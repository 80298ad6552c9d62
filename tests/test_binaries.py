"""End to end, in-process like fairseq's own tests/test_binaries.py: a tiny teacher, KD students
trained with --user-dir, and the students run by stock fairseq without the teacher."""

import os
import shutil
import unittest

import torch
from fairseq import tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

import fairseq_kd  # noqa: F401
from tests.utils import (
    KD_FLAGS,
    PLUGIN_DIR,
    TINY_ARCH,
    TeacherTestCase,
    create_dummy_data,
    generate_main,
    hypotheses,
    preprocess_translation_data,
    quiet,
    run_console_script,
    train_translation_model,
)


class TestKDBinaries(TeacherTestCase):
    def copy_teacher(self, name="teacher.pt"):
        path = os.path.join(self.dir, name)
        shutil.copy(self.teacher, path)
        return path

    def train_student(self, save_dir, teacher_path, extra_flags=(), data=None, arch_flags=None):
        with quiet():
            train_translation_model(
                data or self.data,
                arch_flags=arch_flags,
                task="translation_kd",
                save_dir=save_dir,
                extra_flags=["--teacher-path", teacher_path, "--no-epoch-checkpoints"] + KD_FLAGS + list(extra_flags),
            )
        return os.path.join(save_dir, "checkpoint_last.pt")

    def test_student_runs_with_stock_fairseq_without_teacher(self):
        teacher = self.copy_teacher()
        student_dir = os.path.join(self.dir, "student")
        student = self.train_student(
            student_dir, teacher, ["--max-epoch", "2", "--cosine-weight", "0.1", "--cosine-encoder", "--eval-bleu"]
        )

        state = torch.load(student, map_location="cpu", weights_only=True)
        self.assertFalse([k for k in state["model"] if "teacher" in k])
        self.assertFalse(state["criterion"])  # the criterion holds no module, hence no teacher
        num_student_tensors = len([k for k in state["model"] if not k.endswith(".version")])
        optimizer_state = state["last_optimizer_state"]["state"]
        self.assertLessEqual(len(optimizer_state), num_student_tensors)
        self.assertEqual(state["cfg"]["task"]["_name"], "translation_kd")

        os.remove(teacher)
        # reloading for generation never needs the teacher
        with quiet():
            with_plugin = generate_main(self.data, ["--user-dir", PLUGIN_DIR], path=student)
        self.assertIn("BLEU4", with_plugin)

        # stock fairseq, no plugin, no environment variable: the raw checkpoint fails, the export runs
        raw = run_console_script("fairseq-generate", [self.data, "--path", student, "--cpu"])
        self.assertNotEqual(raw.returncode, 0)
        exported = os.path.join(self.dir, "student_exported.pt")
        result = run_console_script("fairseq-kd-export", [student, exported])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("fairseq-generate", result.stdout)
        stock = run_console_script(
            "fairseq-generate",
            [
                self.data,
                "--path",
                exported,
                "--beam",
                "3",
                "--batch-size",
                "64",
                "--max-len-b",
                "12",
                "--gen-subset",
                "valid",
                "--cpu",
            ],
        )
        self.assertEqual(stock.returncode, 0, stock.stderr[-2000:])
        # the exported model translates exactly like the student it came from
        self.assertTrue(hypotheses(with_plugin))
        self.assertEqual(hypotheses(stock.stdout), hypotheses(with_plugin))

        interactive = run_console_script(
            "fairseq-interactive", [self.data, "--path", exported, "--beam", "2", "--cpu"], input="a b c d\n"
        )
        self.assertEqual(interactive.returncode, 0, interactive.stderr[-2000:])
        self.assertRegex(interactive.stdout, r"(?m)^H-0\t")

        # export never overwrites silently
        again = run_console_script("fairseq-kd-export", [student, exported])
        self.assertNotEqual(again.returncode, 0)
        self.assertIn("already exists", again.stderr)

        # and to CTranslate2: greedy search there gives fairseq's greedy translations
        import ctranslate2

        ct2_dir = os.path.join(self.dir, "student_ct2")
        result = run_console_script(
            "fairseq-kd-export", [student, exported, "--overwrite", "--ctranslate2", ct2_dir, "--data", self.data,
                                  "--quantization", "float32"],
        )  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        greedy = run_console_script(
            "fairseq-generate", [self.data, "--path", exported, "--beam", "1", "--batch-size", "64", "--max-len-b", "30",
                                 "--required-batch-size-multiple", "1", "--gen-subset", "valid", "--cpu"],
        )  # fmt: skip
        self.assertEqual(greedy.returncode, 0, greedy.stderr[-2000:])
        lines = greedy.stdout.splitlines()
        sources = {int(l.split("\t")[0][2:]): l.split("\t")[1].split() for l in lines if l.startswith("S-")}
        outputs = {int(l.split("\t")[0][2:]): l.split("\t")[2].split() for l in lines if l.startswith("H-")}
        ids = sorted(sources)
        translator = ctranslate2.Translator(ct2_dir, device="cpu")
        results = translator.translate_batch([sources[i] for i in ids], beam_size=1, max_decoding_length=30)
        self.assertEqual([r.hypotheses[0] for r in results], [outputs[i] for i in ids])
        missing_data = run_console_script("fairseq-kd-export", [student, exported, "--overwrite", "--ctranslate2", ct2_dir])
        self.assertIn("--ctranslate2 needs --data", missing_data.stderr)

    def test_resume_reloads_teacher_and_continues(self):
        teacher = self.copy_teacher()
        student_dir = os.path.join(self.dir, "student")
        first = torch.load(self.train_student(student_dir, teacher, ["--max-epoch", "1"]), weights_only=True)
        second = torch.load(self.train_student(student_dir, teacher, ["--max-epoch", "2"]), weights_only=True)
        updates = [s["optimizer_history"][-1]["num_updates"] for s in (first, second)]
        self.assertEqual(updates[1], 2 * updates[0])
        self.assertEqual([s["extra_state"]["train_iterator"]["epoch"] for s in (first, second)], [2, 3])
        # the resumed epoch trained with the teacher: the epoch's metrics hold its KD term
        train_metrics = [name for _, name, _, _ in second["extra_state"]["metrics"]["train"]]
        self.assertIn("kd_loss", train_metrics)

    def test_eval_bleu_generator_wraps_the_student(self):
        from fairseq import options

        args = options.parse_args_and_arch(
            options.get_training_parser(),
            ["--task", "translation_kd", self.data, "--teacher-path", self.teacher, "--eval-bleu"] + TINY_ARCH + KD_FLAGS,
        )
        cfg = convert_namespace_to_omegaconf(args)
        with quiet():
            task = tasks.setup_task(cfg.task)
            student = task.build_model(cfg.model)
        self.assertEqual(len(task.teachers), 1)
        self.assertEqual(task.sequence_generator.model.models_size, 1)
        self.assertIs(task.sequence_generator.model.single_model, student)
        self.assertIsNot(task.sequence_generator.model.single_model, task.teachers[0])
        self.assertFalse(any(p.requires_grad for p in task.teachers[0].parameters()))
        self.assertFalse(task.teachers[0].training)

    def test_teacher_ensemble_distribution_is_the_mean_of_its_members(self):
        # two different teachers: the tiny one and a copy with other output weights
        a = self.copy_teacher("a.pt")
        state = torch.load(self.teacher, map_location="cpu", weights_only=False)
        generator = torch.Generator().manual_seed(0)
        for key, value in state["model"].items():
            if key.startswith("decoder.layers.1.") and value.is_floating_point():
                state["model"][key] = value + 0.5 * torch.randn(value.shape, generator=generator)
        b = os.path.join(self.dir, "b.pt")
        torch.save(state, b)
        from fairseq import checkpoint_utils, options

        args = options.parse_args_and_arch(
            options.get_training_parser(),
            ["--task", "translation_kd", self.data, "--teacher-path", f"{a}:{b}", "--dropout", "0"] + TINY_ARCH + KD_FLAGS,
        )
        cfg = convert_namespace_to_omegaconf(args)
        with quiet():
            task = tasks.setup_task(cfg.task)
            student = task.build_model(cfg.model)
            criterion = task.build_criterion(cfg.criterion)
            task.load_dataset("valid")
        self.assertEqual(len(task.teachers), 2)
        dataset = task.dataset("valid")
        sample = dataset.collater([dataset[i] for i in range(8)])
        student.train()
        task.add_teacher_targets(sample, student, criterion)
        _, _, log = criterion(student, dict(sample))

        # the reference: each member loaded by stock fairseq, its tempered softmax averaged here
        T = float(cfg.criterion.kd_temperature)
        members, _ = checkpoint_utils.load_model_ensemble([a, b], task=tasks.setup_task(cfg.task))
        with torch.no_grad():
            q = sum(torch.softmax(m.eval()(**sample["net_input"])[0].double() / T, -1) for m in members) / 2
            p = torch.log_softmax(student(**sample["net_input"])[0].double() / T, -1)
        kl = (q * (q.log() - p)).sum(-1).masked_fill(sample["target"].eq(task.tgt_dict.pad()), 0).sum()
        self.assertGreater(float(kl), 0)
        torch.testing.assert_close(log["kd_loss"].double(), kl, rtol=1e-5, atol=1e-5)
        # and it differs from either member's alone
        for m in members:
            with torch.no_grad():
                q1 = torch.softmax(m(**sample["net_input"])[0].double() / T, -1)
            one = (q1 * (q1.log() - p)).sum(-1).masked_fill(sample["target"].eq(task.tgt_dict.pad()), 0).sum()
            self.assertGreater(abs(float(one - kl)), 1e-3)

    def assert_fails_before_training(self, save_dir, error, message, **kwargs):
        with self.assertRaisesRegex(error, message):
            self.train_student(save_dir, **kwargs)
        self.assertFalse(os.path.exists(os.path.join(save_dir, "checkpoint_last.pt")))

    def test_dictionary_mismatch_is_a_clear_error(self):
        other = os.path.join(self.dir, "other")
        os.makedirs(other)
        with quiet():
            create_dummy_data(other, num_examples=50, alphabet="abcdefghxyz", seed=3)
            preprocess_translation_data(other, ["--joined-dictionary"])
        self.assert_fails_before_training(
            os.path.join(self.dir, "s"),
            ValueError,
            r"share one source dictionary.*index \d+ is '\w' for the student but '\w' for the teacher",
            teacher_path=self.teacher,
            data=other,
            extra_flags=["--max-epoch", "1"],
        )

    def test_teacher_for_the_other_direction_is_an_error(self):
        reverse = os.path.join(self.dir, "reverse")
        with quiet():
            preprocess_translation_data(
                self.data,
                [
                    "--joined-dictionary",
                    "--source-lang",
                    "out",
                    "--target-lang",
                    "in",
                    "--srcdict",
                    self.data + "/dict.out.txt",
                ],
                destdir=reverse,
            )
        self.assert_fails_before_training(
            os.path.join(self.dir, "s"),
            ValueError,
            "translates in->out, the student out->in",
            teacher_path=self.teacher,
            data=reverse,
        )

    def test_bad_teacher_files_are_clear_errors(self):
        save_dir = os.path.join(self.dir, "s")
        missing = os.path.join(self.dir, "missing.pt")
        self.assert_fails_before_training(save_dir, ValueError, "does not exist", teacher_path=missing)
        truncated = os.path.join(self.dir, "truncated.pt")
        with open(self.teacher, "rb") as f, open(truncated, "wb") as g:
            g.write(f.read()[:1000])
        self.assert_fails_before_training(
            save_dir, ValueError, "could not be read as a fairseq checkpoint", teacher_path=truncated
        )

    def test_teacher_dictionaries_not_found_is_an_error(self):
        empty = os.path.join(self.dir, "empty")
        os.makedirs(empty)
        self.assert_fails_before_training(
            os.path.join(self.dir, "s"),
            ValueError,
            "cannot check the teacher's source dictionary: .* does not exist. Pass --teacher-data DIR",
            teacher_path=self.teacher,
            extra_flags=["--teacher-data", empty],
        )

    def test_adaptive_softmax_student_is_an_error(self):
        self.assert_fails_before_training(
            os.path.join(self.dir, "s"),
            ValueError,
            "the student uses an adaptive softmax.*needs a full softmax output layer",
            teacher_path=self.teacher,
            extra_flags=["--adaptive-softmax-cutoff", "8"],
        )

    def test_bf16_without_a_tpu_is_a_clear_error(self):
        # fairseq 0.12's --bf16 implies --tpu; without torch_xla the trainer would fail on 'xla_device'
        # after building everything
        for flag in ("--bf16", "--memory-efficient-bf16"):
            with self.subTest(flag=flag):
                self.assert_fails_before_training(
                    os.path.join(self.dir, flag),
                    ValueError,
                    "--bf16 in fairseq 0.12 means training on a TPU.*use --fp16 or --amp",
                    teacher_path=self.teacher,
                    extra_flags=[flag],
                )

    def test_teacher_with_a_plain_criterion_is_an_error(self):
        with self.assertRaisesRegex(ValueError, "does not use a teacher"):
            with quiet():
                train_translation_model(
                    self.data,
                    task="translation_kd",
                    save_dir=os.path.join(self.dir, "s"),
                    extra_flags=["--user-dir", PLUGIN_DIR, "--teacher-path", self.teacher],
                )


if __name__ == "__main__":
    unittest.main()
