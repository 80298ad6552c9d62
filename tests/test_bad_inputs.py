"""The bad-input sweep: every console script and option class (paths, numbers, lists, data), each case a
one-line error that says what is wrong, before any work and without writing its output.

The table CASES is the catalogue: ``python -m tests.test_bad_inputs`` prints it as Markdown, and
docs/errors.md holds that print between its markers (a test compares them).
"""

import contextlib
import io
import os
import re
import shutil
import tempfile
import unittest
from dataclasses import dataclass
from typing import Callable, List
from unittest import mock

import torch

from fairseq_kd.checkpoints import export_ctranslate2, export_student
from fairseq_kd.cli import kd_cache_topk, kd_evaluate, kd_export, kd_pseudolabel, run
from fairseq_kd.demo import stages as demo_stages
from fairseq_kd.io import UserError, check_output_path
from fairseq_kd.pipeline import __main__ as pipeline_main

from .utils import TeacherTestCase, tiny_teacher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- bad-input sweep: begin -->", "<!-- bad-input sweep: end -->"


@dataclass
class Case:
    command: str  # the console script
    what: str  # the class and the mistake
    argv: Callable[["Files"], List[str]]
    message: str  # a regular expression the one-line error must match


def set_setting(cfg, **values):
    """Sets VALUES in a checkpoint's config section (a dict, an omegaconf node or a Namespace)."""
    for key, value in values.items():
        if isinstance(cfg, dict):
            cfg[key] = value
        else:
            setattr(cfg, key, value)


class Files:
    """The files the cases point at: the tiny teacher and its data, and broken variants of them."""

    def __init__(self, root):
        self.root = root
        self.data, self.teacher = tiny_teacher()
        self.out = os.path.join(root, "out")  # every case's output: it must not exist afterwards
        self.text = self.write("notes.txt", "not a checkpoint\n")
        self.empty = self.write("empty.in", "")
        self.latin1 = self.write("latin1.in", b"a b\n\xe9t\xe9 c\n")
        self.crlf = self.write("crlf.in", "a b\r\nc d\r\n")
        self.nul = self.write("nul.in", "a b\n\x00c\n")
        with open(self.teacher, "rb") as f:
            self.truncated = self.write("truncated.pt", f.read()[:5000])
        state = torch.load(self.teacher, map_location="cpu", weights_only=False)
        state["model"] = {k: (v[:-3] if "embed_tokens" in k else v) for k, v in state["model"].items()}
        self.other_dicts = os.path.join(root, "other_dicts.pt")
        torch.save(state, self.other_dicts)
        self.a_dir = os.path.join(root, "a_dir")
        os.makedirs(self.a_dir)
        self.refs_short = self.write("short.out", "x\n")
        self.short_refs = os.path.join(root, "short_refs")  # valid and test references of one line each
        os.makedirs(self.short_refs)
        for split in ("valid", "test"):
            self.write(f"short_refs/{split}.out", "x\n")
        state = torch.load(self.teacher, map_location="cpu", weights_only=False)
        model_cfg = state["cfg"]["model"]
        if isinstance(model_cfg, dict):
            model_cfg["arch"] = "lstm"
        else:
            model_cfg.arch = "lstm"
        self.lstm = os.path.join(root, "lstm.pt")  # a checkpoint whose config names an LSTM
        torch.save(state, self.lstm)
        state = torch.load(self.teacher, map_location="cpu", weights_only=False)
        set_setting(state["cfg"]["task"], source_lang="out", target_lang="in")
        self.reversed = os.path.join(root, "reversed.pt")  # a teacher of the other direction (same dictionaries)
        torch.save(state, self.reversed)
        state = torch.load(self.teacher, map_location="cpu", weights_only=False)
        set_setting(state["cfg"]["model"], arch="transformer_lm")
        set_setting(state["cfg"]["task"], _name="language_modeling")
        self.lm = os.path.join(root, "lm.pt")  # a checkpoint of a language model
        torch.save(state, self.lm)
        # the data-bin copied with a dictionary of the same size whose first two words are swapped
        self.other_symbols = os.path.join(root, "other_symbols")
        shutil.copytree(self.data, self.other_symbols)
        with open(os.path.join(self.other_symbols, "dict.out.txt")) as f:
            entries = f.read().splitlines()
        entries[0], entries[1] = entries[1], entries[0]
        self.write("other_symbols/dict.out.txt", "\n".join(entries) + "\n")
        self.english = self.write("english.in", "This is raw English text.\nIt was never encoded.\n")
        # a CTranslate2 model whose model.bin is cut short
        self.ct2_truncated = os.path.join(root, "ct2_truncated")
        export_student(self.teacher, os.path.join(root, "exported.pt"), overwrite=True)
        export_ctranslate2(os.path.join(root, "exported.pt"), self.data, self.ct2_truncated, "int8", "in", "out")
        with open(os.path.join(self.ct2_truncated, "model.bin"), "r+b") as f:
            f.truncate(os.path.getsize(os.path.join(self.ct2_truncated, "model.bin")) // 2)
        # a packed teacher (as benchmarks/big_teacher.py --pack writes one) of another shape than the default preset's
        self.packed = os.path.join(root, "packed")
        os.makedirs(self.packed)
        shutil.copyfile(self.teacher, os.path.join(self.packed, "teacher.pt"))
        self.write("packed/spm.model", "not read before the shape is checked\n")
        for lang in ("de", "en"):
            shutil.copyfile(os.path.join(self.data, "dict.in.txt"), os.path.join(self.packed, f"dict.{lang}.txt"))
        self.unequal = os.path.join(root, "unequal")
        os.makedirs(self.unequal)
        for split in ("train", "valid", "test"):
            self.write(f"unequal/{split}.de", "a\nb\n")
            self.write(f"unequal/{split}.en", "a\n" if split == "valid" else "a\nb\n")

    def write(self, name, content):
        path = os.path.join(self.root, name)
        with open(path, "wb" if isinstance(content, bytes) else "w") as f:
            f.write(content)
        return path

    def pseudo(self, *flags):
        return ["--teacher", self.teacher, "--data", self.data, "--output", self.out, "--cpu"] + list(flags)

    def cache(self, *flags):
        return ["--teacher", self.teacher, "--data", self.data, "--output", self.out, "--cpu"] + list(flags)

    def pipeline(self, *flags, teacher=None):
        base = ["--teacher", teacher or self.teacher, "--data-bin", self.data, "--references", self.data,
                "-s", "in", "-t", "out", "--out", self.out]  # fmt: skip
        return base + list(flags)

    def evaluate(self, *flags, systems=None):
        return (
            [self.data, "--references", os.path.join(self.data, "test.out"), "--out", self.out]
            + list(systems or [f"teacher={self.teacher}"])
            + list(flags)
        )


P, C, E, V, L, D = "fairseq-kd-pseudolabel", "fairseq-kd-cache-topk", "fairseq-kd-export", "fairseq-kd-evaluate", \
    "python -m fairseq_kd.pipeline", "python -m fairseq_kd.demo"  # fmt: skip
NOT_A_CHECKPOINT = "could not be read as a fairseq checkpoint"

CASES = [
    # ---- an output that is an input, or holds one ----
    Case(
        E,
        "output: --ctranslate2 is the directory of the student's checkpoint",
        lambda f: [f.teacher, os.path.join(f.out, "x.pt"), "--overwrite", "--ctranslate2", os.path.dirname(f.teacher),
                   "--data", f.data],  # fmt: skip
        "--ctranslate2 .* holds the input STUDENT_CHECKPOINT .*: writing there would destroy it",
    ),
    Case(
        E,
        "output: --ctranslate2 is the data-bin",
        lambda f: [f.teacher, os.path.join(f.out, "x.pt"), "--overwrite", "--ctranslate2", f.data, "--data", f.data],
        "--ctranslate2 .* is the input --data",
    ),
    Case(
        P,
        "output: --output holds --data",
        lambda f: ["--teacher", f.teacher, "--data", f.data, "--output", os.path.dirname(f.data), "--subset", "train"],
        "--output .* holds the input --data",
    ),
    Case(
        C,
        "output: --output holds --teacher",
        lambda f: ["--teacher", f.teacher, "--data", f.data, "--output", os.path.dirname(f.teacher), "--cpu"],
        "--output .* holds the input --teacher",
    ),
    Case(
        E,
        "file kind: an LSTM model with --ctranslate2 (nothing written)",
        lambda f: [f.lstm, os.path.join(f.out, "x.pt"), "--ctranslate2", os.path.join(f.out, "ct2"), "--data", f.data],
        "is a lstm model .*CTranslate2 converts the translation models",
    ),
    Case(E, "file kind: a text file as the student", lambda f: [f.text, os.path.join(f.out, "x.pt")], NOT_A_CHECKPOINT),
    Case(
        L,
        "data: references shorter than the split",
        lambda f: f.pipeline("--references", f.short_refs),
        "has 1 lines but the valid split of .* has \\d+ sentences",
    ),
    Case(V, "output: --out is the data-bin", lambda f: f.evaluate("--out", f.data), "--out .* is the input DATA_BIN"),
    Case(
        V,
        "file kind: DATA_BIN is not a data-bin",
        lambda f: [f.a_dir, "--references", os.path.join(f.data, "test.out"), "--out", f.out, f"teacher={f.teacher}"],
        "DATA_BIN .* is not a fairseq data-bin",
    ),
    # ---- fairseq-kd-pseudolabel ----
    Case(
        P,
        "path: teacher missing",
        lambda f: f.pseudo("--subset", "train", "--teacher", "none.pt"),
        "--teacher 'none.pt' does not exist",
    ),
    Case(
        P,
        "path: teacher is a directory",
        lambda f: f.pseudo("--subset", "train", "--teacher", f.a_dir),
        "does not exist \\(or is not a file\\)",
    ),
    Case(
        P, "file kind: teacher is a text file", lambda f: f.pseudo("--subset", "train", "--teacher", f.text), NOT_A_CHECKPOINT
    ),
    Case(
        P,
        "file kind: teacher is a truncated zip",
        lambda f: f.pseudo("--subset", "train", "--teacher", f.truncated),
        NOT_A_CHECKPOINT,
    ),
    Case(
        P,
        "file kind: teacher of other dictionaries",
        lambda f: f.pseudo("--subset", "train", "--teacher", f.other_dicts),
        "trained with other dictionaries",
    ),
    Case(
        P,
        "list: ensemble member missing",
        lambda f: f.pseudo("--subset", "train", "--teacher", f"{f.teacher}:none.pt"),
        "--teacher 'none.pt' does not exist",
    ),
    Case(
        P,
        "list: ensemble member empty",
        lambda f: f.pseudo("--subset", "train", "--teacher", f"{f.teacher}:"),
        "--teacher '' does not exist",
    ),
    Case(
        P, "path: data missing", lambda f: f.pseudo("--subset", "train", "--data", "none"), "--data 'none' is not a directory"
    ),
    Case(P, "path: data is a file", lambda f: f.pseudo("--subset", "train", "--data", f.text), "is not a directory"),
    Case(P, "path: split missing", lambda f: f.pseudo("--subset", "valid2"), "has no binarized valid2 split"),
    Case(
        P,
        "path: language without a dictionary",
        lambda f: f.pseudo("--subset", "train", "-s", "xx", "-t", "out"),
        "has no dict.xx.txt",
    ),
    Case(P, "path: output is a file", lambda f: f.pseudo("--subset", "train", "--output", f.text), "--output .* is a file"),
    Case(
        P,
        "path: output under a file",
        lambda f: f.pseudo("--subset", "train", "--output", os.path.join(f.text, "x")),
        "--output .* cannot be made: .* is a file",
    ),
    Case(P, "path: input missing", lambda f: f.pseudo("--input", "none.in"), "--input 'none.in' does not exist"),
    Case(P, "data: input empty", lambda f: f.pseudo("--input", f.empty), "is empty"),
    Case(P, "data: input not UTF-8", lambda f: f.pseudo("--input", f.latin1), "latin1.in, line 2: not UTF-8"),
    Case(P, "data: input with NUL bytes", lambda f: f.pseudo("--input", f.nul), "nul.in, line 2: holds a NUL byte"),
    Case(
        P,
        "path: spm model missing",
        lambda f: f.pseudo("--input", f.crlf, "--spm-model", "none.model"),
        "--spm-model 'none.model' does not exist",
    ),
    Case(
        P,
        "file kind: spm model is text",
        lambda f: f.pseudo("--input", f.crlf, "--spm-model", f.text),
        "cannot load --spm-model",
    ),
    Case(P, "number: beam 0", lambda f: f.pseudo("--subset", "train", "--beam", "0"), "--beam must be >= 1, got 0"),
    Case(P, "number: beam negative", lambda f: f.pseudo("--subset", "train", "--beam", "-2"), "--beam must be >= 1, got -2"),
    Case(
        P,
        "number: beam a string",
        lambda f: f.pseudo("--subset", "train", "--beam", "four"),
        "argument --beam: invalid int value: 'four'",
    ),
    Case(P, "number: nbest 0", lambda f: f.pseudo("--subset", "train", "--nbest", "0"), "--nbest must be >= 1"),
    Case(P, "number: max tokens 0", lambda f: f.pseudo("--subset", "train", "--max-tokens", "0"), "--max-tokens must be >= 1"),
    Case(
        P,
        "model: a teacher of the other direction",
        lambda f: f.pseudo("--subset", "train", "--teacher", f.reversed),
        "translates out->in, the data in->out",
    ),
    Case(
        P,
        "data: raw --input without its tokenizer",
        lambda f: f.pseudo("--input", f.english),
        "--input: \\d+% of its tokens are not in .*dict.in.txt: encode it as the data was made",
    ),
    Case(P, "number: shards 0", lambda f: f.pseudo("--subset", "train", "--num-shards", "0"), "--num-shards must be >= 1"),
    Case(
        P,
        "number: shard id out of range",
        lambda f: f.pseudo("--subset", "train", "--num-shards", "2", "--shard-id", "2"),
        "--shard-id 2 is not in 0..1",
    ),
    Case(P, "number: length bound NaN", lambda f: f.pseudo("--subset", "train", "--max-len-a", "nan"), "--max-len-a nan"),
    Case(P, "number: length bound infinite", lambda f: f.pseudo("--subset", "train", "--max-len-a", "inf"), "--max-len-a inf"),
    Case(
        P,
        "number: length ratio below 1",
        lambda f: f.pseudo("--subset", "train", "--max-length-ratio", "0.5"),
        "--max-length-ratio must be >= 1",
    ),
    Case(
        P,
        "number: min score NaN",
        lambda f: f.pseudo("--subset", "train", "--min-score", "nan"),
        "--min-score must be a number",
    ),
    Case(
        P,
        "number: sampling top-k 0",
        lambda f: f.pseudo("--subset", "train", "--sampling-topk", "0"),
        "--sampling-topk must be >= 1",
    ),
    Case(
        P,
        "number: sampling top-k beyond the vocabulary",
        lambda f: f.pseudo("--subset", "train", "--sampling-topk", "100000"),
        "--sampling-topk 100000 is larger than the target vocabulary",
    ),
    Case(
        P,
        "setting: chrF selection of one hypothesis",
        lambda f: f.pseudo("--subset", "train", "--select", "chrf"),
        "give --nbest 2 or more",
    ),
    Case(
        P,
        "setting: chrF selection without references",
        lambda f: f.pseudo("--input", f.crlf, "--nbest", "2", "--select", "chrf"),
        "--select chrf needs references",
    ),
    Case(
        P,
        "setting: CTranslate2 weight type",
        lambda f: f.pseudo("--subset", "train", "--engine", "ctranslate2", "--quantization", "int3"),
        "--quantization 'int3' is not one of",
    ),
    Case(
        P,
        "setting: CTranslate2 ensemble",
        lambda f: f.pseudo("--subset", "train", "--engine", "ctranslate2", "--teacher", f"{f.teacher}:{f.teacher}"),
        "CTranslate2 decodes one model",
    ),
    Case(
        P,
        "setting: unknown engine",
        lambda f: f.pseudo("--subset", "train", "--engine", "marian"),
        "argument --engine: invalid choice: 'marian'",
    ),
    # ---- fairseq-kd-cache-topk ----
    Case(C, "path: teacher missing", lambda f: f.cache("--teacher", "none.pt"), "teacher checkpoint 'none.pt' does not exist"),
    Case(C, "file kind: teacher is a text file", lambda f: f.cache("--teacher", f.text), NOT_A_CHECKPOINT),
    Case(C, "path: data missing", lambda f: f.cache("--data", "none"), "--data 'none' is not a directory"),
    Case(C, "file kind: data is not a data-bin", lambda f: f.cache("--data", f.a_dir), "--data .* is not a fairseq data-bin"),
    Case(C, "number: k 0", lambda f: f.cache("--k", "0"), "--k, --shard-size and --max-tokens must be >= 1"),
    Case(
        C,
        "number: k beyond the vocabulary",
        lambda f: f.cache("--k", "100000"),
        "--k must be in 1..\\d+ \\(the target vocabulary\\), got 100000",
    ),
    Case(C, "number: shard size negative", lambda f: f.cache("--shard-size", "-1"), "must be >= 1"),
    Case(C, "path: split missing", lambda f: f.cache("--subset", "valid2"), "has no binarized valid2 split"),
    Case(C, "path: output is a file", lambda f: f.cache("--output", f.text), "--output .* is a file"),
    # ---- fairseq-kd-export ----
    Case(E, "path: student missing", lambda f: ["none.pt", f.out], "student checkpoint 'none.pt' does not exist"),
    Case(E, "file kind: student is a text file", lambda f: [f.text, f.out], NOT_A_CHECKPOINT),
    Case(E, "file kind: student truncated", lambda f: [f.truncated, f.out], NOT_A_CHECKPOINT),
    Case(
        E,
        "path: output is the input",
        lambda f: [f.teacher, f.teacher, "--overwrite"],
        "OUTPUT_CHECKPOINT .* is the input STUDENT_CHECKPOINT",
    ),
    Case(E, "path: output exists", lambda f: [f.teacher, f.text], "already exists; remove it or pass --overwrite"),
    Case(E, "path: output under a file", lambda f: [f.teacher, os.path.join(f.text, "x.pt")], "cannot be made: .* is a file"),
    Case(
        E,
        "setting: CTranslate2 without dictionaries",
        lambda f: [f.teacher, f.out, "--ctranslate2", f.out + ".ct2"],
        "--ctranslate2 needs --data DATA_BIN",
    ),
    Case(
        E,
        "path: data missing",
        lambda f: [f.teacher, f.out, "--ctranslate2", f.out + ".ct2", "--data", "none"],
        "--data 'none' is not a directory",
    ),
    Case(
        E,
        "file kind: data is not a data-bin",
        lambda f: [f.teacher, f.out, "--ctranslate2", f.out + ".ct2", "--data", f.a_dir],
        "is not a fairseq data-bin",
    ),
    Case(
        E,
        "setting: CTranslate2 weight type",
        lambda f: [f.teacher, f.out, "--ctranslate2", f.out + ".ct2", "--data", f.data, "--quantization", "int3"],
        "--quantization 'int3' is not one of",
    ),
    # ---- fairseq-kd-evaluate ----
    Case(V, "list: system without a name", lambda f: f.evaluate(systems=[f.teacher]), "is not NAME=PATH"),
    Case(
        V,
        "list: two systems of one name",
        lambda f: f.evaluate(systems=[f"a={f.teacher}", f"a={f.teacher}"]),
        "two systems are named 'a'",
    ),
    Case(V, "path: system missing", lambda f: f.evaluate(systems=["a=none.pt"]), "does not exist"),
    Case(V, "file kind: system is a text file", lambda f: f.evaluate(systems=[f"a={f.text}"]), NOT_A_CHECKPOINT),
    Case(
        V,
        "file kind: directory that is not CTranslate2",
        lambda f: f.evaluate(systems=[f"a={f.a_dir}"]),
        "not a CTranslate2 model",
    ),
    Case(
        V,
        "data: references of another length",
        lambda f: [f.data, "--references", f.refs_short, f"a={f.teacher}"],
        "has 1 lines but the test split",
    ),
    Case(
        V,
        "file kind: model of other dictionaries",
        lambda f: f.evaluate(systems=[f"a={f.other_dicts}"]),
        "trained with other dictionaries",
    ),
    Case(V, "number: beam 0", lambda f: f.evaluate("--beam", "0"), "--beam and --batch-size must be at least 1"),
    Case(
        V, "number: timing rounds negative", lambda f: f.evaluate("--timing-rounds", "-1"), "--timing-rounds must be 0 or more"
    ),
    Case(
        V,
        "setting: baseline not among the systems",
        lambda f: f.evaluate("--baseline", "x"),
        "--baseline 'x' is not one of the systems",
    ),
    # ---- the pipeline ----
    Case(L, "list: no methods", lambda f: f.pipeline("--methods", ","), "--methods is empty"),
    Case(L, "list: unknown method", lambda f: f.pipeline("--methods", "baseline,magic"), "unknown method 'magic'"),
    Case(L, "list: a method twice", lambda f: f.pipeline("--methods", "baseline,baseline"), "names a method twice"),
    Case(L, "list: no baseline", lambda f: f.pipeline("--methods", "seq_kd"), "--methods must include baseline"),
    Case(L, "number: seeds 0", lambda f: f.pipeline("--seeds", "0"), "--seeds must be at least 1"),
    Case(
        L,
        "shape: student depth does not fit the teacher's for init_kd",
        lambda f: f.pipeline("--methods", "baseline,init_kd", "--student", "3,1,16,32,2"),
        "does not fit the teacher for init_kd: cannot take 1 of every n encoder layers",
    ),  # fmt: skip
    Case(
        L,
        "shape: student wider than the teacher for init_kd",
        lambda f: f.pipeline("--methods", "baseline,init_kd", "--student", "2,1,64,32,2"),
        "does not fit the teacher for init_kd: cannot initialise the student from the teacher: its encoder width",
    ),  # fmt: skip
    Case(L, "number: learning rate NaN", lambda f: f.pipeline("--lr", "nan"), "--lr nan: give a learning rate in"),
    Case(L, "number: dropout 1", lambda f: f.pipeline("--dropout", "1"), r"--dropout 1.0: give a probability in \[0, 1\)"),
    Case(L, "number: warm-up negative", lambda f: f.pipeline("--warmup-updates", "-5"), "--warmup-updates -5: give 0"),
    Case(L, "number: max tokens below a sentence", lambda f: f.pipeline("--max-tokens", "3"), "--max-tokens 3: a batch"),
    Case(
        L,
        "shape: heads do not divide the width",
        lambda f: f.pipeline("--student", "2,1,128,512,3"),
        "3 attention heads do not divide the width 128",
    ),  # fmt: skip
    Case(
        V,
        "model: a teacher of the other direction",
        lambda f: f.evaluate(systems=[f"t={f.reversed}"]),
        "translates out->in, the data in->out",
    ),
    Case(
        V,
        "model: a language model",
        lambda f: f.evaluate(systems=[f"lm={f.lm}"]),
        "is a transformer_lm model .*not an encoder-decoder translation model",
    ),
    Case(
        V,
        "data: a dictionary of the same size with other symbols",
        lambda f: [f.other_symbols, "--references", os.path.join(f.data, "test.out"), "--out", f.out, f"t={f.teacher}"],
        "was trained with .*dict.out.txt, which is not .*other_symbols/dict.out.txt \\(index 4 is",
    ),
    Case(
        V,
        "model: a truncated CTranslate2 model",
        lambda f: f.evaluate(systems=[f"ct2={f.ct2_truncated}"]),
        "CTranslate2 cannot load .*ct2_truncated .*: convert the model again",
    ),
    Case(
        V,
        "data: raw --source without its tokenizer",
        lambda f: f.evaluate("--source", f.english, "--references", f.english),
        "--source: \\d+% of its tokens are not in .*dict.in.txt: encode it as the data was made",
    ),
    Case(V, "number: beam absurd", lambda f: f.evaluate("--beam", "100000"), "--beam 100000: at most 128"),
    Case(V, "number: length bound infinite", lambda f: f.evaluate("--max-len-a", "inf"), "--max-len-a must be in"),
    Case(V, "number: threads negative", lambda f: f.evaluate("--threads", "-1"), "--threads -1: give 0"),
    Case(L, "number: budget 0", lambda f: f.pipeline("--max-update", "0"), "at least 1 update"),
    Case(
        L,
        "list: student shape of four numbers",
        lambda f: f.pipeline("--student", "2,1,128,512"),
        "--student '2,1,128,512': give five integers",
    ),
    Case(L, "path: teacher missing", lambda f: f.pipeline(teacher="none.pt"), "--teacher 'none.pt' does not exist"),
    Case(L, "path: references missing", lambda f: f.pipeline()[:5] + [f.a_dir] + f.pipeline()[6:], "has no valid.out"),
    Case(
        L,
        "setting: raw transfer text without a tokenizer",
        lambda f: f.pipeline("--transfer", f.crlf),
        "--transfer is raw text",
    ),
    # ---- the demo ----
    Case(D, "setting: unknown preset", lambda f: ["--preset", "huge", "--out", f.out], "unknown preset 'huge'"),
    Case(D, "setting: another target language without data", lambda f: ["-t", "de", "--out", f.out], "needs --data DIR"),
    Case(D, "path: data directory missing", lambda f: ["--data", "none", "--out", f.out], "--data none: no such directory"),
    Case(
        D,
        "data: splits of unequal length",
        lambda f: ["--data", f.unequal, "--out", f.out],
        "valid.de has 2 lines but valid.en 1",
    ),
    Case(
        D,
        "data: source language equal to the target",
        lambda f: ["--data", f.unequal, "-s", "en", "--out", f.out],
        "source and target language are both 'en'",
    ),
    Case(
        D,
        "path: --teacher-from without the teacher's files",
        lambda f: ["--teacher-from", f.a_dir, "--out", f.out],
        "--teacher-from .*: teacher.pt, spm.model, dict.de.txt, dict.en.txt missing",
    ),
    Case(
        D,
        "model: --teacher-from a teacher of another preset's shape",
        lambda f: ["--teacher-from", f.packed, "--out", f.out],
        r"--teacher-from .*: its teacher is \d+\+\d+ layers x \d+, the default preset's 4\+2 x 128: give the preset",
    ),
]


def entry_point(command):
    """The command's main(argv), as its console script calls it."""
    if command == P:
        return lambda argv: kd_pseudolabel.main(kd_pseudolabel.get_parser().parse_args(argv))
    if command == C:
        return lambda argv: kd_cache_topk.main(kd_cache_topk.get_parser().parse_args(argv))
    if command == E:
        return kd_export.main
    if command == V:
        return kd_evaluate.main
    if command == L:
        return pipeline_main.main
    return demo_stages.main


def run_case(case, files):
    """(exit status, stderr) of the case, run in-process the way its console script runs it."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = run(entry_point(case.command), case.command, case.argv(files))
        except SystemExit as e:  # argparse's own usage errors
            status = e.code
    return status, stderr.getvalue()


def catalogue():
    lines = ["| command | bad input | error (one line, before any work) |", "|---|---|---|"]
    for case in CASES:
        shown = case.message.replace("\\", "").replace("|", "\\|").replace(".*", "...").replace("d+", "N")
        lines.append(f"| `{case.command}` | {case.what} | `{shown}` |")
    return "\n".join(lines)


class TestOutputPaths(unittest.TestCase):
    def test_a_read_only_output_directory_is_refused_before_any_work(self):
        """Refused for a user who cannot write there (root can write anywhere, so the check is made to see a
        read-only directory through os.access)."""
        with tempfile.TemporaryDirectory() as tmp:
            target = os.path.join(tmp, "new", "out")
            check_output_path("--out", target)  # writable: accepted
            with mock.patch("fairseq_kd.io.os.access", lambda path, mode: path != tmp):
                with self.assertRaisesRegex(UserError, f"--out {target} cannot be written: {tmp} is read-only for this user"):
                    check_output_path("--out", target)
            self.assertFalse(os.path.exists(os.path.join(tmp, "new")))


class TestBadInputs(TeacherTestCase):
    def test_every_case_is_a_one_line_error_before_any_work(self):
        self.assertGreaterEqual(len(CASES), 60)
        files = Files(self.dir)
        for case in CASES:
            with self.subTest(f"{case.command}: {case.what}"):
                shutil.rmtree(files.out, ignore_errors=True)
                status, stderr = run_case(case, files)
                lines = [line for line in stderr.strip().splitlines() if line.strip()]
                self.assertEqual(status, 2, stderr[-2000:])
                self.assertNotIn("Traceback", stderr)
                self.assertTrue(lines, "no error message")
                self.assertRegex(lines[-1], f"{re.escape(case.command)}: error: .*{case.message}")
                if files.out in " ".join(case.argv(files)):
                    self.assertFalse(os.path.exists(files.out), "the refused run wrote its output")

    def test_the_docs_catalogue_is_the_table(self):
        with open(os.path.join(ROOT, "docs", "errors.md")) as f:
            text = f.read()
        self.assertIn(BEGIN, text)
        self.assertEqual(text.split(BEGIN)[1].split(END)[0].strip(), catalogue(), "rerun: python -m tests.test_bad_inputs")


if __name__ == "__main__":
    print(catalogue())
