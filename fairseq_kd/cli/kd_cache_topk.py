"""fairseq-kd-cache-topk: the teacher's top-k distributions over a training split, for word-level KD
without a teacher in memory (fairseq-train ... --teacher-topk-cache DIR).

    fairseq-kd-cache-topk --teacher T.pt --data DATA_BIN [--subset train] [--k 8] [--output DIR]

The teacher is teacher-forced on the split's targets (the references, or pseudo-labels when DATA_BIN is
a fairseq-kd-pseudolabel data-bin). The cache goes to DATA_BIN/topk-SUBSET-kK unless --output says
otherwise; it is written in shards of --shard-size sentences, and a rerun resumes after the last
finished shard. See fairseq_kd/topk_cache.py for the format.
"""

import argparse
import logging
import os
import sys

import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from ..io import check_output_path, check_outputs_apart, colon_free, data_bin_pair, run_lock
from ..topk_cache import TopKCacheError, build_cache
from . import run

logger = logging.getLogger("fairseq_kd.cache_topk")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fairseq-kd-cache-topk", description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="the teacher's checkpoint")
    parser.add_argument("--data", required=True, help="data-bin with the split, binarized with the teacher's dictionaries")
    parser.add_argument(
        "--teacher-data", help="the data-bin the teacher was trained with (default: the one its checkpoint records)"
    )
    parser.add_argument("--subset", default="train")
    parser.add_argument("--k", type=int, default=8, help="tokens kept per target position (default: 8)")
    parser.add_argument("--output", default=None, help="cache directory (default: DATA/topk-SUBSET-kK)")
    parser.add_argument("--source-lang", "-s", help="default: inferred from --data")
    parser.add_argument("--target-lang", "-t", help="default: inferred from --data")
    parser.add_argument("--shard-size", type=int, default=10000, help="sentences per resumable shard")
    parser.add_argument("--max-tokens", type=int, default=4096, help="tokens per teacher batch")
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--fp16", action="store_true", help="run the teacher in half precision (GPU)")
    return parser


def main(args: argparse.Namespace) -> int:
    if args.k < 1 or args.shard_size < 1 or args.max_tokens < 1:
        raise TopKCacheError("--k, --shard-size and --max-tokens must be >= 1")
    data_bin_pair(args.data, "--data", args.source_lang, args.target_lang, TopKCacheError)
    output = args.output or os.path.join(args.data, f"topk-{args.subset}-k{args.k}")
    check_output_path("--output", output)
    check_outputs_apart({"--teacher": args.teacher, "--data": args.data}, {"--output": output})
    flags = [colon_free(args.data), "--task", "translation_kd", "--teacher-path", args.teacher, "--arch", "transformer"]
    if args.teacher_data:
        flags += ["--teacher-data", args.teacher_data]
    if args.source_lang and args.target_lang:
        flags += ["--source-lang", args.source_lang, "--target-lang", args.target_lang]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), flags))
    task = tasks.setup_task(cfg.task)
    if not os.path.isfile(
        os.path.join(args.data, f"{args.subset}.{task.cfg.source_lang}-{task.cfg.target_lang}.{task.cfg.target_lang}.idx")
    ):
        raise TopKCacheError(f"{args.data} has no binarized {args.subset} split with targets to run the teacher on")
    vocab = len(task.target_dictionary)
    if args.k > vocab:
        raise TopKCacheError(f"--k must be in 1..{vocab} (the target vocabulary), got {args.k}")
    # checks the teacher's dictionaries and direction against the data, like training does
    teacher = task.load_teacher(args.teacher)
    task.load_dataset(args.subset)
    if not args.cpu and torch.cuda.is_available():
        teacher = teacher.cuda()
    if args.fp16:
        teacher = teacher.half()
    with run_lock(output, "fairseq-kd-cache-topk"):
        meta = build_cache(task, teacher, args.subset, output, args.k, args.shard_size, args.max_tokens,
                           data_dir=args.data, teacher_path=args.teacher)  # fmt: skip
    size = sum(os.path.getsize(os.path.join(output, name)) for name in ("ids.npy", "lprobs.npy", "offsets.npy"))
    print(
        f"wrote the top-{args.k} cache {output}: {meta['sentences']:,} sentences, {meta['tokens']:,} target tokens, "
        f"{size / 2**20:.1f} MiB ({size / max(meta['tokens'], 1):.1f} bytes per target token)"
    )
    print(
        f"train with: fairseq-train {args.data} --user-dir fairseq_kd --task translation_kd --teacher-topk-cache {output} ..."
    )


def cli_main() -> None:
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO, stream=sys.stderr)
    sys.exit(run(lambda argv: main(get_parser().parse_args(argv)), "fairseq-kd-cache-topk"))


if __name__ == "__main__":
    cli_main()
