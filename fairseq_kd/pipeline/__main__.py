"""``python -m fairseq_kd.pipeline``: the distillation pipeline's command line (see :mod:`fairseq_kd.pipeline`)."""

import argparse
import logging
import os
import sys
from typing import List, Optional

from .. import pipeline
from ..checkpoints import load_checkpoint
from ..cli import add_tokenizer_arguments, run
from ..evaluate import POST_PROCESSING
from ..io import check_output_path, check_outputs_apart
from .config import Config, PipelineError, Shape, Training, default_student
from .distil import Pipeline


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a run with a given teacher (the demo adds its corpus and teacher stages in front)."""
    parser.add_argument("--methods", default="baseline,init_kd,seq_kd",
                        help="comma-separated methods of fairseq_kd.methods (python -m fairseq_kd.methods lists them)")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=1, help="train the baseline and the best student with N seeds")
    parser.add_argument("--seeded-methods", help="comma-separated methods to train with every seed instead of the "
                        "baseline and the best student (a rerun may change it)")  # fmt: skip
    parser.add_argument("--timing-rounds", type=int, default=0, help="time every system N more times, by turns")
    parser.add_argument("--out", required=True, help="output directory; a rerun resumes in it")


def main(argv: Optional[List[str]] = None) -> None:
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.WARNING, force=True)
    logging.getLogger("fairseq").setLevel(logging.WARNING)  # the in-process evaluation's data loading
    parser = argparse.ArgumentParser(prog="python -m fairseq_kd.pipeline", description=pipeline.__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="the teacher's fairseq checkpoint")
    parser.add_argument("--data-bin", required=True, help="the data-bin the teacher was trained with")
    parser.add_argument("--references", required=True, help="directory with the raw valid.TGT and test.TGT references")
    parser.add_argument("--source-lang", "-s", required=True)
    parser.add_argument("--target-lang", "-t", required=True)
    add_tokenizer_arguments(parser, "the data (and --transfer)")
    parser.add_argument(
        "--transfer", help="raw monolingual source text for the teacher to translate (default: the training sources)"
    )
    parser.add_argument("--student", help="encoder layers, decoder layers, width, FFN width, heads (default: the teacher's "
                        "encoder, its depth and width, and one decoder layer)")  # fmt: skip
    parser.add_argument(
        "--max-update", type=int, default=4200, help="every student's updates (a rerun may raise it: the students continue)"
    )
    parser.add_argument("--warmup-updates", type=int, default=400)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--pseudolabel-beam", type=int, default=4, help="the teacher's beam for pseudo-labels (default: 4)")
    parser.add_argument("--pseudolabel-engine", choices=("fairseq", "ctranslate2"), default="fairseq",
                        help="the teacher's decoder for pseudo-labels (default: fairseq)")  # fmt: skip
    parser.add_argument(
        "--post-process", choices=POST_PROCESSING, default=None,
        help="how the translations become text for scoring: sentencepiece, subword_nmt, none, or auto (from the "
        "target dictionary); default: sentencepiece with --spm-model, subword_nmt with --bpe-codes, else auto",
    )  # fmt: skip
    add_arguments(parser)
    args = parser.parse_args(argv)
    check_outputs_apart({"--teacher": args.teacher, "--data-bin": args.data_bin, "--references": args.references,
                         "--transfer": args.transfer}, {"--out": args.out})  # fmt: skip
    check_output_path("--out", args.out)
    if args.student is None:
        if not os.path.isfile(args.teacher):
            raise PipelineError(f"--teacher {args.teacher!r} does not exist (give the teacher's fairseq checkpoint)")
        shape = default_student(load_checkpoint(args.teacher, "--teacher")["cfg"]["model"])
        print(f"the student: {shape.encoder_layers}+{shape.decoder_layers} layers, {shape.embed_dim} wide (FFN "
              f"{shape.ffn_dim}, {shape.heads} heads): the teacher's encoder and one decoder layer", flush=True)  # fmt: skip
    else:
        try:
            shape = Shape(*(int(x) for x in args.student.split(",")))
        except (TypeError, ValueError):
            raise PipelineError(f"--student {args.student!r}: give five integers, e.g. 2,1,128,512,4") from None
    config = Config(
        args.teacher, args.data_bin, args.references, args.source_lang, args.target_lang, shape,
        Training(args.max_update, args.warmup_updates, args.lr, args.max_tokens, args.dropout),
        methods=[m for m in args.methods.split(",") if m], seeds=args.seeds, spm_model=args.spm_model,
        seeded=[m for m in args.seeded_methods.split(",") if m] if args.seeded_methods else None,
        bpe_codes=args.bpe_codes, transfer=args.transfer, timing_rounds=args.timing_rounds,
        pseudolabel_engine=args.pseudolabel_engine, pseudolabel_beam=args.pseudolabel_beam,
        student_from_teacher=args.student is None,
    )  # fmt: skip
    config.evaluation.post_process = args.post_process or tokenizer_post_process(args.spm_model, args.bpe_codes)
    Pipeline(args.out, config).run()


def tokenizer_post_process(spm_model: Optional[str] = None, bpe_codes: Optional[str] = None) -> str:
    """The --post-process that undoes the data's tokenizer: the one given, else read from the dictionary."""
    return "sentencepiece" if spm_model else "subword_nmt" if bpe_codes else "auto"


if __name__ == "__main__":
    sys.exit(run(main, "python -m fairseq_kd.pipeline"))
