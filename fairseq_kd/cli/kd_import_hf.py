"""fairseq-kd-import-hf: a Hugging Face MarianMT (OPUS-MT) or FSMT (fairseq's WMT19) model as a fairseq teacher.

    fairseq-kd-import-hf MODEL_DIR OUT [-s SRC] [-t TGT] [--overwrite]

MODEL_DIR is a local ``save_pretrained`` directory (nothing is downloaded). OUT receives model.pt (a stock
fairseq transformer checkpoint), dict.SRC.txt and dict.TGT.txt, and MODEL_DIR's tokenizer files (MarianMT's
source.spm and target.spm, FSMT's merges.txt): binarize your corpus with them (fairseq-preprocess --srcdict OUT/dict.SRC.txt --tgtdict OUT/dict.TGT.txt)
and give OUT/model.pt as --teacher-path or to the pipeline. See fairseq_kd/hf.py for what is converted.
"""

import argparse
import os
import sys
from typing import List, Optional

from ..hf import HFImportError, import_hf
from ..io import check_output_path, check_outputs_apart
from . import run


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fairseq-kd-import-hf", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="a MarianMT save_pretrained directory")
    parser.add_argument("out", metavar="OUT", help="the directory to write the fairseq model and dictionaries to")
    parser.add_argument("--source-lang", "-s", help="the source language's code (default: FSMT's own; src for MarianMT)")
    parser.add_argument("--target-lang", "-t", help="the target language's code (default: FSMT's own; tgt for MarianMT)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT/model.pt if it exists")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        import transformers  # noqa: F401 (here, not at the top: an optional dependency, the [hf] extra)
    except ImportError:
        raise HFImportError("fairseq-kd-import-hf needs transformers: pip install '.[hf]' (or make install)") from None
    if args.source_lang and args.source_lang == args.target_lang:
        raise HFImportError(f"-s and -t are both {args.source_lang!r}: give two language codes")
    check_output_path("OUT", args.out)
    check_outputs_apart({"MODEL_DIR": args.model_dir}, {"OUT": args.out})
    if os.path.exists(os.path.join(args.out, "model.pt")) and not args.overwrite:
        raise HFImportError(f"{os.path.join(args.out, 'model.pt')} exists: give --overwrite to replace it")
    path = import_hf(args.model_dir, args.out, args.source_lang, args.target_lang)
    print(f"wrote {path} and its dictionaries; use it as --teacher-path {path}")
    return 0


def cli_main() -> None:
    sys.exit(run(main, "fairseq-kd-import-hf"))


if __name__ == "__main__":
    cli_main()
