"""Test helpers with the names and signatures of fairseq's own ``tests/utils.py``
(which is not shipped in the fairseq wheel), adapted to knowledge distillation."""

import atexit
import contextlib
import logging
import os
import random
import re
import subprocess
import sys
import tempfile
import unittest
from io import StringIO

import torch
from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.distributed import utils as distributed_utils
from fairseq_cli import generate, preprocess, train

PLUGIN_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "fairseq_kd"))

# A tiny architecture for every test model: small enough to train in seconds on two cores.
TINY_ARCH = [
    "--arch", "transformer",
    "--encoder-layers", "2", "--decoder-layers", "2",
    "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
    "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
]  # fmt: skip

# The word-level KD criterion of the end-to-end tests.
KD_FLAGS = [
    "--user-dir", PLUGIN_DIR,
    "--criterion", "label_smoothed_cross_entropy_with_kd",
    "--kd-weight", "1.0", "--nll-weight", "0.5", "--kd-temperature", "2",
    "--label-smoothing", "0.1", "--no-epoch-checkpoints",
]  # fmt: skip

# A mapping the tiny models can learn quickly: each source letter becomes another letter.
_CIPHER = {c: chr((ord(c) - ord("a") + 3) % 26 + ord("a")) for c in "abcdefghijklmnopqrstuvwxyz"}


def create_dummy_data(data_dir, num_examples=200, maxlen=8, alphabet="abcdefgh", seed=0):
    """Writes {train,valid,test}.{in,out}: random letter "words" and their letter-shifted translations."""
    rng = random.Random(seed)

    def _create(split, n):
        with open(os.path.join(data_dir, f"{split}.in"), "w") as src, open(os.path.join(data_dir, f"{split}.out"), "w") as tgt:
            for _ in range(n):
                words = [rng.choice(alphabet) for _ in range(rng.randint(2, maxlen))]
                src.write(" ".join(words) + "\n")
                tgt.write(" ".join(_CIPHER[w] for w in words) + "\n")

    _create("train", num_examples)
    _create("valid", max(num_examples // 10, 10))
    _create("test", max(num_examples // 10, 10))


def preprocess_translation_data(data_dir, extra_flags=None, destdir=None):
    parser = options.get_preprocessing_parser()
    args = parser.parse_args(
        [
            "--source-lang", "in", "--target-lang", "out",
            "--trainpref", os.path.join(data_dir, "train"),
            "--validpref", os.path.join(data_dir, "valid"),
            "--testpref", os.path.join(data_dir, "test"),
            "--thresholdtgt", "0", "--thresholdsrc", "0",
            "--destdir", destdir or data_dir,
            "--workers", "1",
        ]
        + (extra_flags or [])
    )  # fmt: skip
    preprocess.main(args)


def train_translation_model(data_dir, arch_flags=None, extra_flags=None, task="translation", save_dir=None):
    """Trains in-process with fairseq_cli.train and returns the save directory."""
    save_dir = save_dir or data_dir
    parser = options.get_training_parser()
    train_args = options.parse_args_and_arch(
        parser,
        [
            "--task", task, data_dir,
            "--save-dir", save_dir,
            "--optimizer", "adam", "--lr", "0.005",
            "--max-tokens", "500",
            "--max-epoch", "1",
            "--no-progress-bar",
            "--num-workers", "0",
            "--seed", "1",
            "--cpu",
        ]
        + (arch_flags if arch_flags is not None else TINY_ARCH)
        + (extra_flags or []),
    )  # fmt: skip
    cfg = convert_namespace_to_omegaconf(train_args)
    distributed_utils.call_main(cfg, train.main)
    return save_dir


def generate_main(data_dir, extra_flags=None, path=None):
    """Runs fairseq_cli.generate in-process and returns what it printed."""
    generate_parser = options.get_generation_parser()
    generate_args = options.parse_args_and_arch(
        generate_parser,
        [
            data_dir,
            "--path", path or os.path.join(data_dir, "checkpoint_last.pt"),
            "--beam", "3",
            "--batch-size", "64",
            "--max-len-b", "12",
            "--gen-subset", "valid",
            "--cpu",
        ]
        + (extra_flags or []),
    )  # fmt: skip
    out = StringIO()
    with contextlib.redirect_stdout(out):
        generate.main(generate_args)
    return out.getvalue()


def hypotheses(generate_output):
    """{sentence id: hypothesis} from fairseq-generate's H- lines."""
    return {int(m[1]): m[2] for m in re.finditer(r"^H-(\d+)\t\S+\t(.*)$", generate_output, re.M)}


def run_console_script(name, args, input=None):
    """Runs an installed console script (``fairseq-generate``, ``fairseq-kd-export``, ...) in a fresh
    process, without torch's weights-only overrides in its environment and away from this
    checkout, so stock fairseq runs as a user would run it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCH_FORCE_")}
    env.pop("PYTHONPATH", None)
    script = os.path.join(os.path.dirname(sys.executable), name)
    return subprocess.run([script] + list(args), capture_output=True, text=True, env=env, cwd="/", input=input)


@contextlib.contextmanager
def quiet():
    """fairseq's test idiom: no logging, no stdout."""
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


def set_seed(seed=0):
    random.seed(seed)
    torch.manual_seed(seed)


def write_dictionaries(data_dir, symbols="abcdefghij", langs=("in", "out")):
    """Writes dict.{lang}.txt files (one shared vocabulary) and returns the Dictionary."""
    from fairseq.data import Dictionary

    d = Dictionary()
    for i, s in enumerate(symbols):
        d.add_symbol(s, n=100 - i)
    for lang in langs:
        d.save(os.path.join(data_dir, f"dict.{lang}.txt"))
    return d


def build_task_and_model(data_dir, arch_flags=None, extra_flags=None, task="translation_kd"):
    """Sets up a task on *data_dir* (which needs only dictionaries) and builds a model with
    fairseq.models.build_model, i.e. without the task's teacher loading. Returns (cfg, task, model)."""
    from fairseq import models, tasks

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser,
        ["--task", task, data_dir, "--source-lang", "in", "--target-lang", "out", "--dropout", "0"]
        + (arch_flags if arch_flags is not None else TINY_ARCH)
        + (extra_flags or []),
    )
    cfg = convert_namespace_to_omegaconf(args)
    task_obj = tasks.setup_task(cfg.task)
    return cfg, task_obj, models.build_model(cfg.model, task_obj)


def make_sample(dictionary, lengths, seed=0, left_pad_source=True):
    """A collated translation batch with one sentence per entry of *lengths* (source, target)."""
    from fairseq.data import LanguagePairDataset

    g = torch.Generator().manual_seed(seed)
    nspecial = dictionary.nspecial

    def sentence(n):
        return torch.cat([torch.randint(nspecial, len(dictionary), (n,), generator=g), torch.tensor([dictionary.eos()])])

    src = [sentence(s) for s, _ in lengths]
    tgt = [sentence(t) for _, t in lengths]
    dataset = LanguagePairDataset(
        src, [len(x) for x in src], dictionary, tgt, [len(x) for x in tgt], dictionary, left_pad_source=left_pad_source
    )
    return dataset.collater([dataset[i] for i in range(len(lengths))])


def train_meters(checkpoint):
    """{name: average} of the training meters saved in a checkpoint (the last epoch's, or the epoch so far)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return {
        name: float(m["sum"]) / float(m["count"])
        for _, name, _, m in state["extra_state"]["metrics"]["train"]
        if m.get("count")
    }


_TEACHERS = {}


def tiny_teacher(arch_flags=None):
    """(data dir, teacher checkpoint): 500 cipher pairs and a teacher trained on them for 10 epochs
    (about 50 BLEU-points better than chance in seconds). Made once per test process and shared by
    the test classes, which must only read it."""
    key = tuple(arch_flags or TINY_ARCH)
    if key not in _TEACHERS:
        tmp = tempfile.TemporaryDirectory(prefix="fairseq_kd_teacher_")
        atexit.register(tmp.cleanup)
        data = os.path.join(tmp.name, "data")
        os.makedirs(data)
        with quiet():
            create_dummy_data(data, num_examples=500)
            preprocess_translation_data(data, ["--joined-dictionary"])
            train_translation_model(
                data,
                arch_flags=list(key),
                extra_flags=["--max-epoch", "10", "--lr", "0.01", "--no-epoch-checkpoints"],
                save_dir=os.path.join(tmp.name, "teacher"),
            )
        _TEACHERS[key] = (data, os.path.join(tmp.name, "teacher", "checkpoint_last.pt"))
    return _TEACHERS[key]


class TeacherTestCase(unittest.TestCase):
    """End-to-end tests around the shared tiny teacher: ``self.data``, ``self.teacher``, and a fresh
    directory ``self.dir`` per test."""

    teacher_arch = None

    @classmethod
    def setUpClass(cls):
        cls.data, cls.teacher = tiny_teacher(cls.teacher_arch)
        cls.tmp = tempfile.TemporaryDirectory(prefix=f"fairseq_kd_{cls.__name__}_")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def setUp(self):
        self.dir = tempfile.mkdtemp(dir=self.tmp.name)
