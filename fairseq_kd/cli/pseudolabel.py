"""fairseq-kd-pseudolabel: a teacher's beam-search translations of a transfer set, as a data-bin
ready for fairseq-train.

    fairseq-kd-pseudolabel --teacher T.pt --data DATA_BIN --subset train --output OUT
    fairseq-kd-pseudolabel --teacher T.pt --data DATA_BIN --input mono.de --spm-model spm.model --output OUT

The transfer set is a binarized split of DATA_BIN (--subset) or a raw source text (--input), which is
tokenized like the data was (--spm-model, --bpe-codes, or nothing for text already in the dictionary's
tokens) and binarized with the teacher's source dictionary. fairseq-generate translates it, in
--num-shards shards (one process per GPU or machine with --shard-id; a shard that finished is never
redone). A run without --shard-id translates the shards still missing, merges them back into the
transfer set's order, filters, checks and binarizes:

    OUT/train.{src,tgt}   the kept pairs, tokens, aligned line by line, in transfer-set order
    OUT/train.ids         the transfer-set line (0-based) of each pair; OUT/train.scores the teacher's scores
    OUT/dropped.tsv       id and reason of each dropped sentence; OUT/summary.json the counts
    OUT/data-bin/         train.{src}-{tgt}.* binarized with the teacher's dictionaries
"""

import argparse
import json
import logging
import os
import shutil
import sys

from ..io import binarize, encode_lines, read_lines, sha256_file
from ..pseudolabel import (
    Filters,
    PseudoLabelError,
    check_pseudolabels,
    merge_shards,
    read_hypotheses,
    select,
    write_pseudolabels,
    write_summary,
)
from . import add_tokenizer_arguments, run

logger = logging.getLogger("fairseq_kd.pseudolabel")

PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the settings that decide what a shard contains: a rerun with other values must not mix with earlier shards
GENERATION_SETTINGS = (
    "teacher",
    "data",
    "subset",
    "input",
    "spm_model",
    "bpe_codes",
    "beam",
    "sampling_topk",
    "max_tokens",
    "batch_size",
    "max_len_a",
    "max_len_b",
    "num_shards",
    "seed",
    "fp16",
)


def get_parser():
    parser = argparse.ArgumentParser(prog="fairseq-kd-pseudolabel", description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="the teacher's checkpoint")
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
    parser.add_argument("--max-tokens", type=int, default=4096, help="tokens per generation batch")
    parser.add_argument("--batch-size", type=int, default=None, help="sentences per generation batch")
    parser.add_argument("--max-len-a", type=float, default=1.5, help="output length limit a * len(src) + b")
    parser.add_argument("--max-len-b", type=int, default=10)
    parser.add_argument("--max-length-ratio", type=float, default=3.0, help="drop pairs whose length ratio exceeds this")
    parser.add_argument("--min-score", type=float, default=None, help="drop translations whose teacher score is lower")
    parser.add_argument("--num-shards", type=int, default=1)
    parser.add_argument("--shard-id", type=int, default=None, help="translate only this shard (0-based) and stop")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--user-dir", default=None, help="the teacher's own plugin, if it needs one")
    return parser


def settings_of(args):
    values = vars(args)
    out = {k: values[k] for k in GENERATION_SETTINGS}
    for key in ("teacher", "data", "input", "spm_model", "bpe_codes"):
        if out[key]:
            out[key] = os.path.abspath(out[key])
    return out


def check_args(args):
    """Every check that needs no work done: before anything is written."""
    if args.num_shards < 1:
        raise PseudoLabelError(f"--num-shards must be >= 1, got {args.num_shards}")
    if args.shard_id is not None and not 0 <= args.shard_id < args.num_shards:
        raise PseudoLabelError(f"--shard-id {args.shard_id} is not in 0..{args.num_shards - 1}")
    if args.beam < 1:
        raise PseudoLabelError(f"--beam must be >= 1, got {args.beam}")
    if not args.max_length_ratio >= 1:
        raise PseudoLabelError(f"--max-length-ratio must be >= 1, got {args.max_length_ratio}")
    for flag, path in [
        ("--teacher", args.teacher),
        ("--input", args.input),
        ("--spm-model", args.spm_model),
        ("--bpe-codes", args.bpe_codes),
    ]:
        if path and not os.path.isfile(path):
            raise PseudoLabelError(f"{flag} {path!r} does not exist")
    if not os.path.isdir(args.data):
        raise PseudoLabelError(f"--data {args.data!r} is not a directory")
    if (args.spm_model or args.bpe_codes) and not args.input:
        raise PseudoLabelError("--spm-model/--bpe-codes apply to --input only: a --subset is already binarized")
    if args.bpe_codes:
        try:
            import subword_nmt  # noqa: F401
        except ImportError:
            raise PseudoLabelError("--bpe-codes needs the subword-nmt package: pip install subword-nmt") from None


def check_manifest(args, out_dir):
    path = os.path.join(out_dir, "pseudolabel.json")
    settings = settings_of(args)
    if os.path.exists(path):
        with open(path) as f:
            recorded = json.load(f)
        different = [k for k in GENERATION_SETTINGS if recorded.get(k) != settings[k]]
        if different:
            raise PseudoLabelError(
                f"{out_dir} holds pseudo-labels made with other settings ({', '.join(f'{k}: {recorded.get(k)!r} then, {settings[k]!r} now' for k in different)}): "
                "rerun with the same settings to resume, or choose another --output"
            )
    else:
        write_summary(path, settings)


def read_raw_input(path):
    """The lines of a UTF-8 text file, with a clear error for the first line that is not UTF-8."""
    lines = read_lines(path, "the transfer set")
    if not lines:
        raise PseudoLabelError(f"the transfer set {path} is empty")
    return lines


def tokenize(lines, args):
    return encode_lines(lines, args.spm_model, args.bpe_codes)


def transfer_set(args, out_dir, src, tgt, sources=None):
    """(data-bin, split, source token lines, source sizes, target sizes or None) of the transfer set;
    *sources* are the tokenized lines of --input."""
    from fairseq.data import Dictionary, data_utils

    if args.input:
        gen_data = os.path.join(out_dir, "transfer")
        prefix = os.path.join(out_dir, "transfer_tokens")
        if not os.path.isfile(os.path.join(gen_data, f"train.{src}-{tgt}.{src}.idx")):
            with open(prefix + "." + src, "w", encoding="utf-8") as f:
                f.writelines(line + "\n" for line in sources)
            binarize(prefix, gen_data, src, tgt, args.data, only_source=True)
        split = "train"
    else:
        gen_data, split = args.data, args.subset
    src_dict = Dictionary.load(os.path.join(args.data, f"dict.{src}.txt"))
    src_data = data_utils.load_indexed_dataset(os.path.join(gen_data, f"{split}.{src}-{tgt}.{src}"), src_dict)
    if src_data is None:
        raise PseudoLabelError(f"{gen_data} has no binarized {split} split for {src}-{tgt}")
    if len(src_data) == 0:
        raise PseudoLabelError(f"the transfer set ({gen_data}, {split}) is empty")
    tgt_data = data_utils.load_indexed_dataset(os.path.join(gen_data, f"{split}.{src}-{tgt}.{tgt}"), None)
    if not args.input:
        sources = [src_dict.string(src_data[i]) for i in range(len(src_data))]
    # copies: the sizes of a memory-mapped dataset are views of a mapping that closes with the dataset
    return gen_data, split, sources, src_data.sizes.copy(), (tgt_data.sizes.copy() if tgt_data is not None else None)


def too_long(teacher_cfg, src_sizes, tgt_sizes):
    """Ids that fairseq-generate skips because they exceed the teacher's positions (sizes count EOS)."""
    max_src = min(1024, getattr(teacher_cfg, "max_source_positions", None) or 1024)
    max_tgt = min(1024, getattr(teacher_cfg, "max_target_positions", None) or 1024)
    skipped = [i for i, n in enumerate(src_sizes) if n > max_src]
    if tgt_sizes is not None:
        skipped = sorted(set(skipped) | {i for i, n in enumerate(tgt_sizes) if n > max_tgt})
    return skipped


def shard_dir(out_dir, shard, num_shards):
    return os.path.join(out_dir, "shards", f"{shard:03d}-of-{num_shards:03d}")


def generate_shard(args, gen_data, split, src, tgt, shard):
    """Runs fairseq-generate on one shard; the shard counts as done only once its log is complete."""
    from fairseq import options
    from fairseq_cli import generate

    done_dir = shard_dir(args.output, shard, args.num_shards)
    if os.path.isfile(os.path.join(done_dir, "DONE")):
        logger.info(f"shard {shard} of {args.num_shards}: done earlier, not redone")
        return
    tmp = done_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    flags = [
        gen_data, "--path", args.teacher, "--task", "translation", "--gen-subset", split,
        "--source-lang", src, "--target-lang", tgt,
        "--beam", str(args.beam), "--nbest", "1",
        "--max-tokens", str(args.max_tokens), "--required-batch-size-multiple", "1",
        "--max-len-a", str(args.max_len_a), "--max-len-b", str(args.max_len_b),
        "--skip-invalid-size-inputs-valid-test",
        # generate shards its batches by the distributed world: set it, so that a machine's GPU count
        # never silently translates only a fraction of the data
        "--distributed-world-size", str(args.num_shards), "--distributed-rank", str(shard),
        "--results-path", tmp, "--seed", str(args.seed), "--no-progress-bar",
        "--user-dir", args.user_dir or PLUGIN_DIR,
    ]  # fmt: skip
    if args.batch_size:
        flags += ["--batch-size", str(args.batch_size)]
    if args.sampling_topk:
        flags += ["--sampling", "--sampling-topk", str(args.sampling_topk), "--beam", "1"]
    if args.cpu:
        flags += ["--cpu"]
    if args.fp16:
        flags += ["--fp16"]
    logger.info(f"shard {shard} of {args.num_shards}: translating {gen_data} ({split}) with beam {args.beam}")
    try:
        generate.main(options.parse_args_and_arch(options.get_generation_parser(), flags))
    except ZeroDivisionError:
        # fairseq-generate divides by its translation time when it prints its final statistics: a shard
        # that got no batch (more shards than batches) ends there, with a complete (empty) log
        with open(os.path.join(tmp, f"generate-{split}.txt"), encoding="utf-8") as f:
            if any(line.startswith("H-") for line in f):
                raise
        logger.info(f"shard {shard} of {args.num_shards}: no batch fell to this shard")
    with open(os.path.join(tmp, "DONE"), "w") as f:
        f.write("complete\n")
    shutil.rmtree(done_dir, ignore_errors=True)
    os.replace(tmp, done_dir)


def main(args):
    from fairseq.data import data_utils

    from ..checkpoints import load_checkpoint

    check_args(args)
    src, tgt = args.source_lang, args.target_lang
    if not (src and tgt):
        src, tgt = data_utils.infer_language_pair(args.data)
        if not (src and tgt):
            raise PseudoLabelError(f"cannot infer the language pair of {args.data}: give --source-lang and --target-lang")
    for lang in (src, tgt):
        if not os.path.isfile(os.path.join(args.data, f"dict.{lang}.txt")):
            raise PseudoLabelError(f"{args.data} has no dict.{lang}.txt: --data must be the teacher's data-bin")
    teacher_cfg = load_checkpoint(args.teacher, what="teacher checkpoint")["cfg"]["model"]

    # bad input fails before anything is written
    tokenized = tokenize(read_raw_input(args.input), args) if args.input else None
    os.makedirs(args.output, exist_ok=True)
    check_manifest(args, args.output)
    gen_data, split, sources, src_sizes, tgt_sizes = transfer_set(args, args.output, src, tgt, tokenized)
    shards = [args.shard_id] if args.shard_id is not None else range(args.num_shards)
    for shard in shards:
        generate_shard(args, gen_data, split, src, tgt, shard)
    if args.shard_id is not None:
        missing = [
            i
            for i in range(args.num_shards)
            if not os.path.isfile(os.path.join(shard_dir(args.output, i, args.num_shards), "DONE"))
        ]
        print(
            f"shard {args.shard_id} done; {len(missing)} shards to go"
            + ("" if missing else ": run without --shard-id to merge")
        )
        return

    skipped = too_long(teacher_cfg, src_sizes, tgt_sizes)
    per_shard = []
    for shard in range(args.num_shards):
        with open(
            os.path.join(shard_dir(args.output, shard, args.num_shards), f"generate-{split}.txt"), encoding="utf-8"
        ) as f:
            per_shard.append(read_hypotheses(f))
    hypotheses = merge_shards(per_shard, len(sources), skipped)
    filters = Filters(args.max_length_ratio, args.max_len_a, args.max_len_b, args.min_score)
    labels = select(sources, hypotheses, filters, skipped)
    if not labels.ids:
        raise PseudoLabelError(
            f"every one of the {len(sources)} translations was dropped: {({k: len(v) for k, v in labels.dropped.items()})}"
        )

    prefix = os.path.join(args.output, "train")
    write_pseudolabels(labels, prefix, src, tgt)
    with open(os.path.join(args.output, "dropped.tsv"), "w", encoding="utf-8") as f:
        f.writelines(f"{i}\t{reason}\n" for reason, ids in labels.dropped.items() for i in ids)
    kept = check_pseudolabels(prefix, src, tgt, sources, filters)
    binarize(prefix, os.path.join(args.output, "data-bin"), src, tgt, args.data)
    binarized = data_utils.load_indexed_dataset(os.path.join(args.output, "data-bin", f"train.{src}-{tgt}.{tgt}"), None)
    if len(binarized) != kept:
        raise PseudoLabelError(f"the binarized pseudo-labels have {len(binarized)} sentences, the text {kept}")

    summary = {
        "transfer_sentences": len(sources),
        "kept": kept,
        "dropped": {reason: len(ids) for reason, ids in labels.dropped.items()},
        "data_bin": os.path.abspath(os.path.join(args.output, "data-bin")),
        "sha256_of_targets": sha256_file(f"{prefix}.{tgt}"),
    }
    write_summary(os.path.join(args.output, "summary.json"), summary)
    print(json.dumps(summary, indent=2))


def cli_main():
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO, stream=sys.stderr)
    sys.exit(run(lambda argv: main(get_parser().parse_args(argv)), "fairseq-kd-pseudolabel"))


if __name__ == "__main__":
    cli_main()
