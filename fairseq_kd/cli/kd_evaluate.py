"""fairseq-kd-evaluate: translation systems evaluated the same way, with sacreBLEU's paired bootstrap.

    fairseq-kd-evaluate DATA_BIN --split test --references test.en NAME=PATH [NAME=PATH ...]
        [--baseline NAME] [--timing-rounds N] [--out DIR]

Each PATH is a fairseq checkpoint (written by fairseq-train or fairseq-kd-export), a CTranslate2 model
directory, or a Hugging Face directory written by ``fairseq-kd-export --huggingface``. See :mod:`fairseq_kd.evaluate` for what is measured and how.
"""

import argparse
import logging
import sys
from typing import List, Optional

from ..evaluate import Settings, evaluate, results_table
from ..io import check_output_path, check_outputs_apart
from . import add_tokenizer_arguments, run


def get_parser() -> argparse.ArgumentParser:

    d = Settings()
    parser = argparse.ArgumentParser(prog="fairseq-kd-evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("data", metavar="DATA_BIN", help="the data-bin the systems were trained with (its dictionaries)")
    parser.add_argument(
        "systems",
        metavar="NAME=PATH",
        nargs="+",
        help="a fairseq checkpoint, a CTranslate2 directory or a Hugging Face directory of fairseq-kd-export --huggingface",
    )
    parser.add_argument("--references", required=True, help="the references of the split, raw text, one per line")
    parser.add_argument("--split", default="test", help="the binarized split of DATA_BIN to translate (default: test)")
    parser.add_argument("--source", help="raw source text to translate instead of a binarized split")
    add_tokenizer_arguments(parser, "--source")
    parser.add_argument("--source-lang", "-s", help="default: inferred from DATA_BIN")
    parser.add_argument("--target-lang", "-t", help="default: inferred from DATA_BIN")
    parser.add_argument("--baseline", help="compare every other system with this one (paired bootstrap)")
    parser.add_argument("--timing-rounds", type=int, default=0, help="time every system N more times by turns (medians)")
    parser.add_argument("--out", help="write results.json, results.md, bleu_vs_speed.png and translations here")
    parser.add_argument("--beam", type=int, default=d.beam, help=f"beam size (default: {d.beam})")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help=f"sentences per batch (default: {d.batch_size})")
    parser.add_argument("--max-len-a", type=float, default=d.max_len_a, help="output length bound a * source length + b")
    parser.add_argument("--max-len-b", type=int, default=d.max_len_b)
    parser.add_argument(
        "--post-process",
        default=d.post_process,
        choices=["auto", "sentencepiece", "subword_nmt", "none"],
        help="how subword units become text, as fairseq's --post-process; auto (the default): sentencepiece or "
        "subword_nmt where the target dictionary's symbols are theirs, else none",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=d.threads,
        help=f"CTranslate2 threads, 0: every core (default: {d.threads}, the fastest on 2 cores)",
    )
    parser.add_argument("--bootstrap-samples", type=int, default=d.bootstrap_samples)
    parser.add_argument("--use-vmap", action="append", default=[], metavar="NAME",
                        help="this CTranslate2 system (repeatable) translates with its vocabulary map (fairseq-kd-export "
                             "--vocab-map-split); list a model twice under two names to compare")  # fmt: skip
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(
        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.WARNING, stream=sys.stderr
    )
    settings = Settings(args.beam, args.batch_size, args.max_len_a, args.max_len_b, args.post_process, args.threads,
                        args.bootstrap_samples)  # fmt: skip
    inputs = {"DATA_BIN": args.data, "--references": args.references, "--source": args.source}
    inputs.update({spec.partition("=")[0]: spec.partition("=")[2] for spec in args.systems})
    check_outputs_apart(inputs, {"--out": args.out})
    if args.out:
        check_output_path("--out", args.out)
    records = evaluate(
        args.systems, args.data, args.references, split=args.split, out_dir=args.out, baseline=args.baseline,
        timing_rounds=args.timing_rounds, settings=settings, source_lang=args.source_lang,
        target_lang=args.target_lang, source=args.source, spm_model=args.spm_model, bpe_codes=args.bpe_codes,
        vmap=args.use_vmap,
    )  # fmt: skip
    if not args.out:
        print(results_table(records, args.baseline))
    return 0


def cli_main() -> None:
    sys.exit(run(main, "fairseq-kd-evaluate"))


if __name__ == "__main__":
    cli_main()
