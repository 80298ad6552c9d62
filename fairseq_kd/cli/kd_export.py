"""fairseq-kd-export STUDENT_CHECKPOINT OUTPUT_CHECKPOINT [--ctranslate2 DIR --data DATA_BIN]

Writes a distilled student as an ordinary fairseq translation checkpoint that stock
``fairseq-generate``/``fairseq-interactive`` run with no ``--user-dir``, no teacher and, on
torch >= 2.6, no ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``; optionally also as a CTranslate2 model.
"""

import argparse
import glob
import logging
import os
import sys
from typing import List, Optional

from .. import ct2
from ..checkpoints import (
    CheckpointError,
    check_ctranslate2_convertible,
    export_ctranslate2,
    export_student,
    learn_vocabulary_map,
    load_checkpoint,
)
from ..evaluate import count_parameters
from ..hf import HFExportError, check_exportable, export_huggingface
from ..io import check_output_path, check_outputs_apart, data_bin_pair
from ..models.swish import uses_swish
from . import run


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fairseq-kd-export", description=__doc__.split("\n\n")[1])
    parser.add_argument("student", metavar="STUDENT_CHECKPOINT", help="a checkpoint written by fairseq-train")
    parser.add_argument("output", metavar="OUTPUT_CHECKPOINT", help="where to write the exported student")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT_CHECKPOINT if it exists")
    parser.add_argument("--ctranslate2", metavar="DIR", help="also convert the student to a CTranslate2 model in DIR")
    parser.add_argument("--data", metavar="DATA_BIN", help="the data-bin with the dictionaries (for --ctranslate2)")
    parser.add_argument("--quantization", default="int8", help="CTranslate2 weight type (default: int8)")
    parser.add_argument("--vocab-map-split", metavar="SPLIT",
                        help="with --ctranslate2: learn a lexical shortlist from the binarized SPLIT of --data (e.g. "
                             "train) and include it in the model, for CTranslate2's use_vmap")  # fmt: skip
    parser.add_argument(
        "--vocab-map-frequent",
        type=int,
        default=100,
        metavar="N",
        help="the shortlist's N most frequent target tokens, always candidates (default: 100)",
    )
    parser.add_argument(
        "--vocab-map-per-source",
        type=int,
        default=50,
        metavar="N",
        help="the shortlist's candidates per source token, by Dice coefficient (default: 50)",
    )
    parser.add_argument("--huggingface", metavar="DIR",
                        help="also write the student as a Hugging Face directory in DIR: MarianMT for a post-norm "
                             "student, M2M100 for a pre-norm one (needs --data; one joint dictionary)")  # fmt: skip
    parser.add_argument("--spm-model", help="with --huggingface: the data's sentencepiece model, for its tokenizer")
    parser.add_argument("--target-spm-model", help="with --huggingface: the target side's own sentencepiece model, "
                        "where it has one (an imported OPUS-MT teacher's target.spm)")  # fmt: skip
    return parser


def check_huggingface_export(args: argparse.Namespace) -> None:
    """--huggingface's inputs, before anything is written."""
    try:
        import transformers  # noqa: F401 (here, not at the top: an optional dependency, the [hf] extra)
    except ImportError:
        raise HFExportError("--huggingface needs transformers: pip install '.[hf]' (or make install)") from None
    if not args.data:
        raise HFExportError("--huggingface needs --data DATA_BIN (its dictionary becomes the model's vocabulary)")
    if os.path.exists(args.huggingface) and not args.overwrite:
        raise HFExportError(f"{args.huggingface} exists (give --overwrite to replace it)")
    check_output_path("--huggingface", args.huggingface)
    for flag, path in (("--spm-model", args.spm_model), ("--target-spm-model", args.target_spm_model)):
        if path and not os.path.isfile(path):
            raise HFExportError(f"{flag} {path!r} does not exist")
    if args.target_spm_model and not args.spm_model:
        raise HFExportError("--target-spm-model needs --spm-model (the source side's)")


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.WARNING)

    check_outputs_apart(
        {"STUDENT_CHECKPOINT": args.student, "--data": args.data},
        {"OUTPUT_CHECKPOINT": args.output, "--ctranslate2": args.ctranslate2, "--huggingface": args.huggingface},
    )
    if args.huggingface:
        check_huggingface_export(args)
    if args.ctranslate2:
        check_output_path("--ctranslate2", args.ctranslate2)
    if args.ctranslate2 and not args.data:
        raise CheckpointError("--ctranslate2 needs --data DATA_BIN (its dictionaries)")
    if args.ctranslate2 and os.path.exists(args.ctranslate2) and not args.overwrite:
        raise CheckpointError(f"{args.ctranslate2} exists (give --overwrite to replace it)")
    if args.ctranslate2 and args.quantization not in ct2.WEIGHT_TYPES:
        raise CheckpointError(f"--quantization {args.quantization!r} is not one of {', '.join(ct2.WEIGHT_TYPES)}")
    if args.vocab_map_split and not args.ctranslate2:
        raise CheckpointError("--vocab-map-split is for a CTranslate2 model: add --ctranslate2 DIR")
    if args.vocab_map_frequent < 0 or args.vocab_map_per_source < 1:
        raise CheckpointError("--vocab-map-frequent must be >= 0 and --vocab-map-per-source >= 1")
    if args.data:
        src, tgt = data_bin_pair(args.data, "--data", error=CheckpointError, lang_flags=None)
    if args.vocab_map_split and not glob.glob(os.path.join(glob.escape(args.data), f"{args.vocab_map_split}.*-*.*.idx")):
        raise CheckpointError(f"--vocab-map-split {args.vocab_map_split}: {args.data} has no binarized split of that name")
    check_output_path("OUTPUT_CHECKPOINT", args.output, file_expected=True)
    if args.ctranslate2:  # before OUTPUT_CHECKPOINT is written
        check_ctranslate2_convertible(load_checkpoint(args.student, "STUDENT_CHECKPOINT"), args.student)
    if args.huggingface:
        check_exportable(load_checkpoint(args.student, "STUDENT_CHECKPOINT"), args.data, src, tgt)  # its refusals
    state = export_student(args.student, args.output, overwrite=args.overwrite)
    if args.ctranslate2:
        vmap = None
        if args.vocab_map_split:
            vmap = os.path.abspath(args.ctranslate2).rstrip("/") + ".vmap.txt"
            mapped, mean, pairs = learn_vocabulary_map(
                args.data, args.vocab_map_split, vmap, frequent=args.vocab_map_frequent, per_source=args.vocab_map_per_source
            )
            print(f"vocabulary map from {pairs:,} {args.vocab_map_split} pairs: {mapped:,} source tokens, "
                  f"{mean:.1f} candidates each, {args.vocab_map_frequent} always")  # fmt: skip
        try:
            export_ctranslate2(args.output, args.data, args.ctranslate2, args.quantization, vocabulary_map=vmap)
        finally:
            if vmap and os.path.exists(vmap):
                os.remove(vmap)  # the model directory holds its copy, vmap.txt
        print(f"wrote {args.ctranslate2} (CTranslate2, {args.quantization}{', with vmap.txt' if vmap else ''})")
    if args.huggingface:
        name = export_huggingface(args.output, args.data, args.huggingface, src, tgt, args.spm_model, args.target_spm_model)
        print(
            f"wrote {args.huggingface} ({name}{' with its tokenizer' if args.spm_model else ', no tokenizer: give --spm-model'})"
        )
    cfg = state["cfg"]
    num_params = count_parameters(state["model"])  # a shared embedding once, as fairseq-kd-evaluate counts
    if uses_swish(cfg["model"]):
        print("its activation is swish, which fairseq 0.12 runs only with --user-dir fairseq_kd (CTranslate2 as it is)")
    print(
        f"wrote {args.output} ({os.path.getsize(args.output) / 2**20:.1f} MB, {num_params:,} parameters, "
        f"arch {cfg['model'].get('arch')}, task {cfg['task']['_name']})\n"
        f"run it with: fairseq-generate {cfg['task'].get('data') or 'DATA_BIN'} --path {args.output}"
    )
    return 0


def cli_main(argv: Optional[List[str]] = None) -> int:
    return run(main, "fairseq-kd-export", argv)


if __name__ == "__main__":
    sys.exit(cli_main())
