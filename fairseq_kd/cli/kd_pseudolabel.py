"""fairseq-kd-pseudolabel: a teacher's translations of a transfer set, as a data-bin ready for fairseq-train.

    fairseq-kd-pseudolabel --teacher T.pt --data DATA_BIN --subset train --output OUT
    fairseq-kd-pseudolabel --teacher T.pt --data DATA_BIN --input mono.de --spm-model spm.model --output OUT
    fairseq-kd-pseudolabel --teacher T.pt --data DATA_BIN --subset train --engine ctranslate2 --output OUT
    fairseq-kd-pseudolabel --teacher A.pt:B.pt --data DATA_BIN --subset train --nbest 8 --select chrf --output OUT

The transfer set is a binarized split of DATA_BIN (--subset) or a raw source text (--input), which is
tokenized like the data was (--spm-model, --bpe-codes, or nothing for text already in the dictionary's
tokens) and binarized with the teacher's source dictionary. fairseq-generate (a teacher, or an ensemble
A.pt:B.pt) or CTranslate2 (--engine ctranslate2: the teacher converted once, float32 unless
--quantization says otherwise) translates it in --num-shards shards (one process per GPU or machine with
--shard-id; a shard that finished is never redone). With --nbest N --select chrf the hypothesis kept per
sentence is the one closest to the reference by sentence chrF. A run without --shard-id translates the
shards still missing, merges them back into the transfer set's order, chooses, filters, checks and binarizes:

    OUT/train.{src,tgt}   the kept pairs, tokens, aligned line by line, in transfer-set order
    OUT/train.ids         the transfer-set line (0-based) of each pair; OUT/train.scores the teacher's scores
    OUT/train.nbest_rank  with --select chrf: the rank in the n-best list of each kept hypothesis
    OUT/dropped.tsv       id and reason of each dropped sentence; OUT/summary.json the counts and the speed
    OUT/data-bin/         train.{src}-{tgt}.* binarized with the teacher's dictionaries
"""

import argparse
import logging
import sys

from ..pseudolabel.engines import ENGINES
from ..pseudolabel.run import main
from . import add_tokenizer_arguments, run


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fairseq-kd-pseudolabel", description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="the teacher's checkpoint, or an ensemble's: A.pt:B.pt")
    parser.add_argument("--data", required=True, help="the teacher's data-bin (its dictionaries, and --subset)")
    parser.add_argument("--output", required=True, help="output directory (reruns resume in it)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--subset", help="translate this binarized split of --data (e.g. train)")
    source.add_argument("--input", help="translate this raw source text, one sentence per line (UTF-8)")
    add_tokenizer_arguments(parser, "--input")
    parser.add_argument("--source-lang", "-s", help="default: inferred from --data")
    parser.add_argument("--target-lang", "-t", help="default: inferred from --data")
    parser.add_argument("--beam", type=int, default=4, help="beam size (default: 4)")
    parser.add_argument(
        "--sampling-topk", type=int, default=None, help="sample from the top-k tokens instead of beam search (not the default)"
    )
    parser.add_argument("--nbest", type=int, default=1, help="hypotheses per sentence to choose from (default: 1)")
    parser.add_argument(
        "--select", choices=("score", "chrf"), default="score",
        help="keep the best-scored hypothesis (default) or the one of highest sentence chrF against the reference",
    )  # fmt: skip
    parser.add_argument(
        "--post-process", default="auto", choices=("auto", "sentencepiece", "subword_nmt", "none"),
        help="how subword units become text for chrF (default: guessed from the dictionary)",
    )  # fmt: skip
    parser.add_argument("--engine", choices=ENGINES, default="fairseq", help="the decoder (default: fairseq)")
    parser.add_argument(
        "--quantization", default="float32", help="--engine ctranslate2: the converted teacher's weights (default: float32)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="--engine ctranslate2: CPU cores to decode on, each its own batch at once (0, the default: every core)",
    )
    parser.add_argument("--max-tokens", type=int, default=4096, help="tokens per generation batch")
    parser.add_argument("--batch-size", type=int, default=None, help="sentences per generation batch")
    parser.add_argument("--max-len-a", type=float, default=1.5, help="output length limit a * len(src) + b")
    parser.add_argument("--max-len-b", type=int, default=10)
    parser.add_argument("--max-length-ratio", type=float, default=3.0, help="drop pairs whose length ratio exceeds this")
    parser.add_argument("--min-score", type=float, default=None, help="drop translations whose teacher score is lower")
    parser.add_argument("--num-shards", type=int, default=1)
    parser.add_argument("--shard-id", type=int, default=None, help="translate only this shard (0-based) and stop")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cpu", action="store_true", help="decode on the CPU even where a GPU is there")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--user-dir", default=None, help="the teacher's own plugin, if it needs one")
    return parser


def cli_main() -> None:
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO, stream=sys.stderr)
    sys.exit(run(lambda argv: main(get_parser().parse_args(argv)), "fairseq-kd-pseudolabel"))


if __name__ == "__main__":
    cli_main()
