"""The main job on real data: a corpus, a tokenizer and a teacher made here, then the distillation
pipeline of :mod:`fairseq_kd.pipeline` (pseudo-labels, students, export, CTranslate2, evaluation).

    python -m fairseq_kd.demo [--preset default|full|big|smoke] [--locale de] [--data DIR -s SRC -t TGT]
        [--out runs/demo] [--timing-rounds N] [--methods a,b,...] [--teacher-only] [--teacher-from DIR]

Stages in front of the pipeline (each skipped when a rerun finds it finished):

1. corpus: the gettext catalogs of this machine for ``--locale`` (:mod:`fairseq_kd.demo.corpus`; German
   by default, into English), or ``--data DIR`` with ``{train,valid,test}.{SRC,TGT}``; copied to OUT/raw.
2. sentencepiece: one joint model trained on the training split; every split encoded with it.
3. binarize: ``fairseq-preprocess --joined-dictionary`` into OUT/data-bin.
4. teacher: ``fairseq-train`` (NLL without label smoothing, as the guide advises for distillation); the
   checkpoint with the best valid loss.

``--teacher-from DIR`` takes a teacher of the preset trained before (DIR/teacher.pt, with the spm.model and
dict.{SRC,TGT}.txt it was trained with, as ``benchmarks/big_teacher.py --pack`` writes them): its tokenizer and
dictionary are used instead of new ones and the teacher is copied, not trained. With ``--teacher-only`` the run
then holds the pipeline's record (pipeline.json) that the benchmarks start from.
"""

import argparse
import dataclasses
import json
import logging
import os
import shutil
from argparse import Namespace
from typing import List, Optional

import sentencepiece as spm

from ..checkpoints import load_checkpoint
from ..cli import run
from ..io import UserError, check_output_path, read_lines, run_lock, write_text
from ..pipeline import DEFAULT_LAYOUT, Config, Pipeline, PipelineError
from ..runs import RunDir, digest, log
from .corpus import build_corpus
from .presets import PRESETS

SPLITS = ("train", "valid", "test")


class DemoError(UserError):
    pass


class Demo(RunDir):
    """The demo's stages in OUT (corpus, sentencepiece, binarize, teacher), then the pipeline's."""

    error = DemoError

    def __init__(self, out: str, preset: str = "default", data: Optional[str] = None, src: str = "de", tgt: str = "en",
                 timing_rounds: Optional[int] = None, methods: Optional[List[str]] = None, teacher_only: bool = False,
                 teacher_from: Optional[str] = None):  # fmt: skip
        if preset not in PRESETS:
            raise DemoError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
        if data is None and tgt != "en":
            raise DemoError(f"the gettext corpus translates into English: -t {tgt} needs --data DIR")
        super().__init__(out)
        self.preset_name, self.preset = preset, PRESETS[preset]
        self.data, self.src, self.tgt = data, src, tgt
        self.teacher_only = teacher_only
        self.teacher_from = teacher_from
        p = self.preset
        self.config = Config(
            teacher=self.path("teacher", "checkpoint_best.pt"), data_bin=self.path("data-bin"),
            references=self.path("raw"), src=src, tgt=tgt, student=dataclasses.replace(p["student"]),
            training=dataclasses.replace(p["student_training"]),
            methods=list(methods or p["methods"]), seeds=p["seeds"], spm_model=self.path("spm.model"),
            timing_rounds=p["timing_rounds"] if timing_rounds is None else timing_rounds, chrf_floor=p["chrf_floor"],
            pseudolabel_beam=p["beam"], pseudolabel_engine=p.get("pseudolabel_engine", "fairseq"),
        )  # fmt: skip
        self.config.evaluation.beam, self.config.evaluation.batch_size = p["beam"], p["eval_batch_size"]
        self.config.evaluation.max_len_a, self.config.evaluation.max_len_b = p["max_len_a"], p["max_len_b"]
        self.config.evaluation.post_process = "sentencepiece"  # the demo's data is made with sentencepiece
        self.pipeline = Pipeline(out, self.config)

    def check_run_dir(self) -> None:
        """A run directory belongs to one preset and one corpus: a rerun with others is refused untouched."""
        record = {
            "preset": self.preset_name,
            "data": os.path.abspath(self.data) if self.data else "gettext catalogs",
            "languages": [self.src, self.tgt],
            "teacher": json.loads(json.dumps(dataclasses.asdict(self.preset["teacher"]))),
            "teacher_training": dataclasses.asdict(self.preset["teacher_training"]),
            "vocab_size": self.preset["vocab_size"],
            "teacher_label_smoothing": self.preset["teacher_label_smoothing"],
            "teacher_layout": list(self.preset["teacher_layout"]),
            "teacher_from": digest(os.path.join(self.teacher_from, "teacher.pt")) if self.teacher_from else None,
        }
        if self.data:  # what --data holds: other text at the same path is another corpus
            record["data_digests"] = {f"{split}.{lang}": digest(os.path.join(self.data, f"{split}.{lang}"))
                                      for split in SPLITS for lang in (self.src, self.tgt)}  # fmt: skip
        # a run recorded before the layout was: the default layout's; before the digests were: none
        self.check_recorded("demo.json", record, "a demo run", defaults={"teacher_layout": list(DEFAULT_LAYOUT), "teacher_from": None},
                            unrecorded_ok=("data_digests",),
                            remedy=f"give another output directory (OUT=...) or remove {self.out} to start over")  # fmt: skip

    def run(self) -> None:
        if self.data:
            check_data_dir(self.data, self.src, self.tgt)
        if self.teacher_from:
            check_teacher_from(self.teacher_from, self.src, self.tgt, self.preset_name, self.preset["teacher"])
        with run_lock(self.out, "demo"):
            self.run_stages()

    def run_stages(self) -> None:
        self.check_run_dir()
        self.pipeline.check_run_dir(inputs=False)  # the pipeline's settings, checked before the teacher is made
        raw = [self.path("raw", f"{split}.{lang}") for split in SPLITS for lang in (self.src, self.tgt)]
        binarized = [self.path("data-bin", f"dict.{lang}.txt") for lang in (self.src, self.tgt)]
        binarized += [
            self.path("data-bin", f"{s}.{self.src}-{self.tgt}.{lang}.bin") for s in SPLITS for lang in (self.src, self.tgt)
        ]
        # the corpus is made again as it was; the later stages' products are what the next ones were made of
        self.stage("corpus", self.corpus, outputs=raw)
        self.stage("sentencepiece", self.sentencepiece, outputs=[self.path("spm.model")], remake=False)
        self.stage("binarize", self.binarize, outputs=binarized, remake=False)
        self.stage("teacher", self.teacher, outputs=[self.config.teacher], remake=False)
        if self.teacher_only:
            self.pipeline.check_run_dir()  # the record the benchmarks read the run's settings from
            log(f"    the teacher is {self.config.teacher}; rerun without --teacher-only for the students")
            return
        self.pipeline.run()

    # ---- data ------------------------------------------------------------------------------------

    def corpus(self) -> None:
        raw = self.path("raw")
        if self.data:
            os.makedirs(raw, exist_ok=True)
            for split in SPLITS:
                for lang in (self.src, self.tgt):
                    shutil.copyfile(os.path.join(self.data, f"{split}.{lang}"), os.path.join(raw, f"{split}.{lang}"))
            log(
                "    "
                + ", ".join(f"{s}: {len(read_lines(os.path.join(raw, f'{s}.{self.src}')))}" for s in SPLITS)
                + " segments"
            )
        else:
            stats = build_corpus(raw, lang=self.src)
            log(
                f"    {stats['catalogs']} catalogs -> "
                + ", ".join(f"{s}: {stats[s + ' segments']}" for s in SPLITS)
                + " segments"
            )

    def sentencepiece(self) -> None:
        model = self.path("spm")
        if self.teacher_from:  # the teacher's own
            shutil.copyfile(os.path.join(self.teacher_from, "spm.model"), model + ".model")
        else:
            self.train_sentencepiece(model)
        processor = spm.SentencePieceProcessor(model_file=model + ".model")
        os.makedirs(self.path("tok"), exist_ok=True)
        for split in SPLITS:
            for lang in (self.src, self.tgt):
                lines = read_lines(self.path("raw", f"{split}.{lang}"))
                pieces = processor.encode(lines, out_type=str)
                write_text(self.path("tok", f"{split}.{lang}"), "".join(" ".join(p) + "\n" for p in pieces))

    def train_sentencepiece(self, model: str) -> None:
        spm.SentencePieceTrainer.train(
            input=",".join(self.path("raw", f"train.{lang}") for lang in (self.src, self.tgt)),
            model_prefix=model,
            vocab_size=self.preset["vocab_size"],
            character_coverage=1.0,
            model_type="unigram",
            input_sentence_size=1_000_000,
            shuffle_input_sentence=True,
            bos_id=-1,
            eos_id=-1,
            unk_id=0,
            pad_id=-1,
            seed_sentencepiece_size=200_000,
            hard_vocab_limit=False,  # a small corpus may have fewer pieces than vocab_size
            minloglevel=2,
        )

    def binarize(self) -> None:
        tok, bin_dir = self.path("tok"), self.path("data-bin")
        shutil.rmtree(bin_dir, ignore_errors=True)  # an interrupted earlier attempt of this stage
        self.command(
            "fairseq-preprocess",
            ["--source-lang", self.src, "--target-lang", self.tgt, "--joined-dictionary", "--workers", "2",
             "--destdir", bin_dir, "--trainpref", f"{tok}/train", "--validpref", f"{tok}/valid", "--testpref", f"{tok}/test"]
            + (["--srcdict", os.path.join(self.teacher_from, f"dict.{self.src}.txt")] if self.teacher_from else []),
            "binarize",
        )  # fmt: skip

    def teacher(self) -> None:
        if self.teacher_from:
            os.makedirs(self.path("teacher"), exist_ok=True)
            shutil.copyfile(os.path.join(self.teacher_from, "teacher.pt"), self.config.teacher + ".tmp")
            os.replace(self.config.teacher + ".tmp", self.config.teacher)
            log(f"    copied from {self.teacher_from}")
            return
        p = self.preset
        # the students take the layout from the teacher's checkpoint
        flags = [self.path("data-bin"), "--source-lang", self.src, "--target-lang", self.tgt] + p["teacher"].flags(
            layout=p["teacher_layout"]
        )
        flags += ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", p["teacher_label_smoothing"]]
        flags += p["teacher_training"].flags()
        self.train(flags, self.path("teacher"), "teacher", p["teacher_training"].max_update)


def check_data_dir(data: str, src: str = "de", tgt: str = "en") -> None:
    """``--data DIR`` must hold {train,valid,test}.{SRC,TGT}, UTF-8, with the same number of lines per split."""
    if not os.path.isdir(data):
        raise DemoError(f"--data {data}: no such directory (it must hold {{train,valid,test}}.{{{src},{tgt}}})")
    if src == tgt:
        raise DemoError(f"source and target language are both {src!r}: give -s SRC -t TGT")
    for split in SPLITS:
        counts = {}
        for lang in (src, tgt):
            path = os.path.join(data, f"{split}.{lang}")
            if not os.path.isfile(path):
                raise DemoError(f"--data {data}: {split}.{lang} is missing (needed: {{train,valid,test}}.{{{src},{tgt}}})")
            counts[lang] = len(read_lines(path, what="--data"))
        if counts[src] != counts[tgt]:
            raise DemoError(f"--data {data}: {split}.{src} has {counts[src]} lines but {split}.{tgt} {counts[tgt]}")
        if counts[src] == 0:
            raise DemoError(f"--data {data}: {split}.{src} is empty")


def check_teacher_from(directory: str, src: str, tgt: str, preset: str, shape) -> None:
    """``--teacher-from DIR`` must hold a teacher of the preset's shape with its tokenizer and dictionaries."""
    needed = ["teacher.pt", "spm.model", f"dict.{src}.txt", f"dict.{tgt}.txt"]
    missing = [name for name in needed if not os.path.isfile(os.path.join(directory, name))]
    if missing:
        raise DemoError(f"--teacher-from {directory}: {', '.join(missing)} missing (it must hold {', '.join(needed)}, "
                        f"as benchmarks/big_teacher.py --pack writes them)")  # fmt: skip
    with (
        open(os.path.join(directory, f"dict.{src}.txt"), "rb") as a,
        open(os.path.join(directory, f"dict.{tgt}.txt"), "rb") as b,
    ):
        if a.read() != b.read():
            raise DemoError(f"--teacher-from {directory}: dict.{src}.txt and dict.{tgt}.txt differ, but the demo's "
                            f"models share one joined dictionary")  # fmt: skip
    model = load_checkpoint(os.path.join(directory, "teacher.pt"), "--teacher-from's teacher.pt")["cfg"]["model"]
    model = Namespace(**model) if isinstance(model, dict) else model
    found = (model.encoder_layers, model.decoder_layers, model.encoder_embed_dim)
    wanted = (shape.encoder_layers, shape.decoder_layers, shape.embed_dim)
    if found != wanted:
        raise DemoError(f"--teacher-from {directory}: its teacher is {found[0]}+{found[1]} layers x {found[2]}, the "
                        f"{preset} preset's {wanted[0]}+{wanted[1]} x {wanted[2]}: give the preset it was trained with")  # fmt: skip


def main(argv: Optional[List[str]] = None) -> None:
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.WARNING, force=True)
    logging.getLogger("fairseq").setLevel(logging.WARNING)  # the in-process evaluation's data loading
    parser = argparse.ArgumentParser(prog="python -m fairseq_kd.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="default", help=f"one of {', '.join(PRESETS)} (default: default)")
    parser.add_argument("--locale", default="de", help="the gettext catalogs' language, translated into English (default: de)")
    parser.add_argument("--data", help="a directory with {train,valid,test}.{SRC,TGT} instead of the gettext catalogs")
    parser.add_argument("--source-lang", "-s", help="the source language of --data (default: the locale, de)")
    parser.add_argument("--target-lang", "-t", default="en", help="the target language (default: en)")
    parser.add_argument("--methods", help="comma-separated methods (default: the preset's; python -m fairseq_kd.methods)")
    parser.add_argument("--timing-rounds", type=int, help="time every system N more times by turns (default: the preset's)")
    parser.add_argument("--teacher-only", action="store_true", help="stop once the teacher is trained (a rerun goes on)")
    parser.add_argument("--teacher-from", metavar="DIR",
                        help="a teacher of the preset trained before: DIR/teacher.pt with its spm.model and dict.*.txt")  # fmt: skip
    parser.add_argument("--out", help="output directory; a rerun resumes in it (default: runs/demo, or runs/demo-PRESET)")
    args = parser.parse_args(argv)
    if args.data is None and args.source_lang and args.source_lang != args.locale:
        raise DemoError(f"-s {args.source_lang} without --data: the gettext corpus's source is --locale ({args.locale})")
    out = args.out or ("runs/demo" if args.preset == "default" else f"runs/demo-{args.preset}")
    check_output_path("--out", out)
    methods = [m for m in args.methods.split(",") if m] if args.methods else None
    Demo(
        out,
        args.preset,
        args.data,
        args.source_lang or args.locale,
        args.target_lang,
        args.timing_rounds,
        methods,
        args.teacher_only,
        args.teacher_from,
    ).run()


def cli_main(argv: Optional[List[str]] = None) -> int:
    return run(main, "python -m fairseq_kd.demo", argv)


__all__ = ["Demo", "DemoError", "PipelineError", "check_data_dir", "main", "cli_main"]
