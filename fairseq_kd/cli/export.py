"""fairseq-kd-export STUDENT_CHECKPOINT OUTPUT_CHECKPOINT [--ctranslate2 DIR --data DATA_BIN]

Writes a distilled student as an ordinary fairseq translation checkpoint that stock
``fairseq-generate``/``fairseq-interactive`` run with no ``--user-dir``, no teacher and, on
torch >= 2.6, no ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``; optionally also as a CTranslate2 model.
"""

import argparse
import logging
import os
import sys


def get_parser():
    parser = argparse.ArgumentParser(prog="fairseq-kd-export", description=__doc__.split("\n\n")[1])
    parser.add_argument("student", metavar="STUDENT_CHECKPOINT", help="a checkpoint written by fairseq-train")
    parser.add_argument("output", metavar="OUTPUT_CHECKPOINT", help="where to write the exported student")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT_CHECKPOINT if it exists")
    parser.add_argument("--ctranslate2", metavar="DIR", help="also convert the student to a CTranslate2 model in DIR")
    parser.add_argument("--data", metavar="DATA_BIN", help="the data-bin with the dictionaries (for --ctranslate2)")
    parser.add_argument("--quantization", default="int8", help="CTranslate2 weight type (default: int8)")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.WARNING)

    from fairseq_kd.checkpoints import CheckpointError, export_ctranslate2, export_student
    from fairseq_kd.ct2 import WEIGHT_TYPES as CT2_WEIGHT_TYPES
    from fairseq_kd.io import check_output_path

    if args.ctranslate2 and not args.data:
        raise CheckpointError("--ctranslate2 needs --data DATA_BIN (its dictionaries)")
    if args.ctranslate2 and os.path.exists(args.ctranslate2) and not args.overwrite:
        raise CheckpointError(f"{args.ctranslate2} exists (give --overwrite to replace it)")
    if args.ctranslate2 and args.quantization not in CT2_WEIGHT_TYPES:
        raise CheckpointError(f"--quantization {args.quantization!r} is not one of {', '.join(CT2_WEIGHT_TYPES)}")
    check_output_path("OUTPUT_CHECKPOINT", args.output, file_expected=True)
    state = export_student(args.student, args.output, overwrite=args.overwrite)
    if args.ctranslate2:
        export_ctranslate2(args.output, args.data, args.ctranslate2, args.quantization)
        print(f"wrote {args.ctranslate2} (CTranslate2, {args.quantization})")
    cfg = state["cfg"]
    num_params = sum(t.numel() for t in state["model"].values() if t.is_floating_point())
    print(
        f"wrote {args.output} ({os.path.getsize(args.output) / 2**20:.1f} MB, {num_params:,} parameters, "
        f"arch {cfg['model'].get('arch')}, task {cfg['task']['_name']})\n"
        f"run it with: fairseq-generate {cfg['task'].get('data') or 'DATA_BIN'} --path {args.output}"
    )
    return 0


def cli_main(argv=None):
    from . import run

    return run(main, "fairseq-kd-export", argv)


if __name__ == "__main__":
    sys.exit(cli_main())
