"""The pseudo-labeller's run: the transfer set, its shards, the choice among n-best lists, filters, the
integrity check and binarizing; what ``fairseq-kd-pseudolabel`` does (see :mod:`fairseq_kd.cli.kd_pseudolabel`)."""

import argparse
import collections
import json
import logging
import math
import os
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
from fairseq.data import Dictionary, data_utils

from .. import ct2
from ..checkpoints import CheckpointError, check_embeddings_fit, check_fits_data, load_checkpoint
from ..generate_log import Hypothesis, read_nbest
from ..io import (
    binarize,
    check_known_tokens,
    check_output_path,
    check_outputs_apart,
    data_bin_pair,
    encode_lines,
    read_lines,
    run_lock,
    sha256_file,
    split_models,
    write_json,
)
from ..runs import check_recorded
from .engines import decoding_seconds, shard_dir, shard_done, translate_shard
from .labels import (
    Filters,
    PseudoLabelError,
    check_pseudolabels,
    chrf_scores,
    merge_shards,
    select,
    write_pseudolabels,
)

logger = logging.getLogger("fairseq_kd.pseudolabel")

# the settings that decide what a shard contains: a rerun with other values must not mix with earlier
# shards. A manifest written before a setting existed holds its default.
GENERATION_SETTINGS = {
    "teacher": None,
    "teacher_sha256": None,
    "source_sha256": None,  # what is translated: --input, or the source side of --subset
    "data": None,
    "subset": None,
    "input": None,
    "spm_model": None,
    "bpe_codes": None,
    "engine": "fairseq",
    "quantization": None,
    "beam": 4,
    "nbest": 1,
    "sampling_topk": None,
    "max_tokens": 4096,
    "batch_size": None,
    "max_len_a": 1.5,
    "max_len_b": 10,
    "num_shards": 1,
    "seed": 1,
    "fp16": False,
}


@dataclass
class TransferSet:
    data_bin: str  # the binarized transfer set: --data, or OUTPUT/transfer for --input
    split: str
    src: str
    tgt: str
    sources: List[str]  # token lines
    references: Optional[List[str]]  # token lines of the target side, when the transfer set is parallel
    skipped: List[int]  # ids too long for the teacher (fairseq-generate skips them)
    teacher_sha256: str
    what: str = ""


def settings_of(args: argparse.Namespace) -> Dict[str, Any]:
    out = {k: getattr(args, k, default) for k, default in GENERATION_SETTINGS.items()}
    out["teacher"] = os.pathsep.join(os.path.abspath(t) for t in args.teachers)
    for key in ("data", "input", "spm_model", "bpe_codes"):
        if out[key]:
            out[key] = os.path.abspath(out[key])
    if args.engine != "ctranslate2":
        out["quantization"] = None
    return out


def _positive(args, *names):
    for name in names:
        value = getattr(args, name)
        if value is not None and not value >= 1:
            raise PseudoLabelError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def check_args(args: argparse.Namespace) -> None:
    """Every check that needs no work done: before anything is written."""
    args.teachers = split_models(args.teacher)
    _positive(args, "num_shards", "beam", "nbest", "sampling_topk", "max_tokens", "batch_size", "max_length_ratio")
    if args.shard_id is not None and not 0 <= args.shard_id < args.num_shards:
        raise PseudoLabelError(f"--shard-id {args.shard_id} is not in 0..{args.num_shards - 1}")
    if not (args.max_len_a >= 0 and args.max_len_b >= 1 and args.max_len_a * 1024 + args.max_len_b < float("inf")):
        raise PseudoLabelError(f"--max-len-a {args.max_len_a} / --max-len-b {args.max_len_b}: give a >= 0 and b >= 1, finite")
    if args.min_score is not None and not -math.inf < args.min_score < math.inf:
        raise PseudoLabelError(f"--min-score must be a number (a log2-probability per token), got {args.min_score}")
    check_output_path("--output", args.output)
    check_outputs_apart(
        {"--data": args.data, "--input": args.input, "--spm-model": args.spm_model, "--bpe-codes": args.bpe_codes,
         **{"--teacher": t for t in args.teachers}},
        {"--output": args.output},
    )  # fmt: skip
    if args.sampling_topk and args.nbest > 1:
        raise PseudoLabelError("--nbest applies to beam search: sampling (--sampling-topk) draws one translation")
    if args.select == "chrf" and args.nbest < 2:
        raise PseudoLabelError("--select chrf chooses among n-best hypotheses: give --nbest 2 or more")
    if args.select == "chrf" and args.input:
        raise PseudoLabelError("--select chrf needs references: use a parallel --subset of the data-bin, not --input")
    for flag, path in [("--teacher", t) for t in args.teachers] + [
        ("--input", args.input), ("--spm-model", args.spm_model), ("--bpe-codes", args.bpe_codes),
    ]:  # fmt: skip
        if path is not None and not os.path.isfile(path):
            raise PseudoLabelError(f"{flag} {path!r} does not exist (or is not a file)")
    if not os.path.isdir(args.data):
        raise PseudoLabelError(f"--data {args.data!r} is not a directory")
    if (args.spm_model or args.bpe_codes) and not args.input:
        raise PseudoLabelError("--spm-model/--bpe-codes apply to --input only: a --subset is already binarized")
    if args.bpe_codes:
        try:
            import subword_nmt  # noqa: F401
        except ImportError:
            raise PseudoLabelError("--bpe-codes needs the subword-nmt package: pip install subword-nmt") from None
    if args.engine == "ctranslate2":
        _check_ctranslate2(args)


def _check_ctranslate2(args):
    try:
        import ctranslate2
    except ImportError:
        raise PseudoLabelError("--engine ctranslate2 needs the ctranslate2 package: pip install ctranslate2") from None
    if len(args.teachers) > 1:
        raise PseudoLabelError("CTranslate2 decodes one model: give one --teacher, or --engine fairseq for an ensemble")
    if args.quantization not in ct2.WEIGHT_TYPES:
        raise PseudoLabelError(f"--quantization {args.quantization!r} is not one of {', '.join(ct2.WEIGHT_TYPES)}")
    if args.fp16:
        raise PseudoLabelError("--fp16 is fairseq's: with --engine ctranslate2 give --quantization float16")
    if not args.threads >= 0:
        raise PseudoLabelError(f"--threads must be >= 0 (0: every core), got {args.threads}")
    device = "cpu" if args.cpu or ctranslate2.get_cuda_device_count() == 0 else "cuda"
    supported = ctranslate2.get_supported_compute_types(device)
    if args.quantization not in supported:
        # CTranslate2 would convert the weights to another type with a warning, and the labels' summary would
        # name a type that did not run
        raise PseudoLabelError(
            f"--quantization {args.quantization} does not run on this {device} in CTranslate2 (it would run as another "
            f"type): choose one of {', '.join(sorted(supported))}"
        )
    args.device = "cpu" if args.cpu else "auto"
    args.threads = args.threads or os.cpu_count() or 1


def source_file(args: argparse.Namespace, src: str, tgt: str) -> str:
    """The file whose sentences are translated: --input, or the binarized source side of --subset."""
    if args.input:
        return args.input
    for pair in (f"{src}-{tgt}", f"{tgt}-{src}"):  # fairseq-preprocess names a split by its direction
        path = os.path.join(args.data, f"{args.subset}.{pair}.{src}.bin")
        if os.path.isfile(path):
            return path
    raise PseudoLabelError(f"--subset {args.subset}: {args.data} has no binarized {src} side of it")


def check_manifest(out_dir: str, settings: Dict[str, Any]) -> None:
    """OUT_DIR's pseudo-labels belong to one set of settings: a rerun with others is refused before any work.
    The first manifests did not record the digests: theirs are not compared."""
    check_recorded(os.path.join(out_dir, "pseudolabel.json"), settings, "pseudo-labels", PseudoLabelError,
                   defaults=GENERATION_SETTINGS, unrecorded_ok=("teacher_sha256", "source_sha256"),
                   keys=GENERATION_SETTINGS, remedy="rerun with the same settings to resume, or choose another --output")  # fmt: skip


def tokenize(lines: List[str], args: argparse.Namespace) -> List[str]:
    return encode_lines(lines, args.spm_model, args.bpe_codes)


def read_raw_input(path: str) -> List[str]:
    """The lines of a UTF-8 text file, with a clear error for the first line that is not UTF-8."""
    lines = read_lines(path, "the transfer set")
    if not lines:
        raise PseudoLabelError(f"the transfer set {path} is empty")
    return lines


def language_pair(args: argparse.Namespace) -> Tuple[str, str]:
    src, tgt = data_bin_pair(args.data, "--data", args.source_lang, args.target_lang, PseudoLabelError)
    if args.subset and not os.path.isfile(os.path.join(args.data, f"{args.subset}.{src}-{tgt}.{src}.idx")):
        raise PseudoLabelError(f"{args.data} has no binarized {args.subset} split for {src}-{tgt}")
    if args.sampling_topk:
        size = len(Dictionary.load(os.path.join(args.data, f"dict.{tgt}.txt")))
        if args.sampling_topk > size:
            raise PseudoLabelError(f"--sampling-topk {args.sampling_topk} is larger than the target vocabulary ({size})")
    return src, tgt


def load_teachers(args: argparse.Namespace, src: str, tgt: str) -> List[Any]:
    """The model configs of the teacher (or of each ensemble member), each checked against the data-bin's
    dictionaries."""

    configs = []
    for path in args.teachers:
        state = load_checkpoint(path, what="teacher checkpoint")
        try:
            check_fits_data(state["cfg"], args.data, src, tgt, what=f"teacher {path}")
            check_embeddings_fit(state["model"], args.data, src, tgt, what=f"teacher {path}")
        except CheckpointError as e:
            raise PseudoLabelError(str(e)) from None
        configs.append(state["cfg"]["model"])
    return configs


def too_long(teacher_cfgs: List[Any], src_sizes: np.ndarray, tgt_sizes: np.ndarray) -> List[int]:
    """Ids that fairseq-generate skips because they exceed a teacher's positions (sizes count EOS)."""
    max_src = min(min(1024, getattr(c, "max_source_positions", None) or 1024) for c in teacher_cfgs)
    max_tgt = min(min(1024, getattr(c, "max_target_positions", None) or 1024) for c in teacher_cfgs)
    skipped = {i for i, n in enumerate(src_sizes) if n > max_src}
    if tgt_sizes is not None:
        skipped |= {i for i, n in enumerate(tgt_sizes) if n > max_tgt}
    return sorted(skipped)


def transfer_set(args: argparse.Namespace, src: str, tgt: str, teacher_cfgs: List[Any], teacher_sha256: str,
                 tokenized: Optional[List[str]] = None) -> TransferSet:  # fmt: skip
    """The transfer set: a --subset of --data, or the tokenized lines of --input binarized into OUTPUT/transfer."""

    if args.input:
        data_bin, split = os.path.join(args.output, "transfer"), "train"
        if not os.path.isfile(os.path.join(data_bin, f"train.{src}-{tgt}.{src}.idx")):
            prefix = os.path.join(args.output, "transfer_tokens")
            with open(prefix + "." + src, "w", encoding="utf-8") as f:
                f.writelines(line + "\n" for line in tokenized)
            binarize(prefix, data_bin, src, tgt, args.data, only_source=True)
    else:
        data_bin, split = args.data, args.subset
    dicts = {lang: Dictionary.load(os.path.join(args.data, f"dict.{lang}.txt")) for lang in (src, tgt)}
    src_data = data_utils.load_indexed_dataset(os.path.join(data_bin, f"{split}.{src}-{tgt}.{src}"), dicts[src])
    if src_data is None:
        raise PseudoLabelError(f"{data_bin} has no binarized {split} split for {src}-{tgt}")
    if len(src_data) == 0:
        raise PseudoLabelError(f"the transfer set ({data_bin}, {split}) is empty")
    tgt_data = data_utils.load_indexed_dataset(os.path.join(data_bin, f"{split}.{src}-{tgt}.{tgt}"), dicts[tgt])
    sources = tokenized if args.input else [dicts[src].string(src_data[i]) for i in range(len(src_data))]
    references = None
    if tgt_data is not None and args.select == "chrf":
        references = [dicts[tgt].string(tgt_data[i]) for i in range(len(tgt_data))]
    if args.select == "chrf" and references is None:
        raise PseudoLabelError(f"--select chrf needs references, but {data_bin} has no {tgt} side of {split}")
    skipped = too_long(teacher_cfgs, src_data.sizes, tgt_data.sizes if tgt_data is not None else None)
    return TransferSet(data_bin, split, src, tgt, sources, references, skipped, teacher_sha256, f"{data_bin} ({split})")


def detokenizer(args: argparse.Namespace, dictionary_symbols: List[str]) -> Callable[[str], str]:
    """fairseq's post-processing of subword units into text (for chrF): --post-process, or guessed from
    the dictionary (sentencepiece's '▁', subword-nmt's '@@')."""

    symbol = args.post_process
    if symbol == "auto":
        symbol = "none"
        if any(s.startswith("\u2581") for s in dictionary_symbols):
            symbol = "sentencepiece"
        elif any(s.endswith("@@") for s in dictionary_symbols):
            symbol = "subword_nmt"
    return (lambda text: text) if symbol == "none" else (lambda text: data_utils.post_process(text, symbol))


def choose(
    args: argparse.Namespace, job: TransferSet, nbest: Dict[int, List[Hypothesis]]
) -> Tuple[Dict[int, Hypothesis], Optional[Dict[int, int]], Dict[str, Any]]:
    """({id: chosen hypothesis}, {id: its rank in the n-best list}, what the choice did)."""
    if args.select != "chrf":
        return {i: h[0] for i, h in nbest.items()}, None, {"by": "teacher score", "nbest": args.nbest}

    symbols = Dictionary.load(os.path.join(args.data, f"dict.{job.tgt}.txt")).symbols
    scores = chrf_scores(nbest, job.references, detokenizer(args, symbols))
    ranks = {i: max(range(len(s)), key=lambda k: (s[k], -k)) for i, s in scores.items()}
    what = {
        "by": "sentence chrF against the reference",
        "nbest": args.nbest,
        "rank_counts": {str(r): n for r, n in sorted(collections.Counter(ranks.values()).items())},
        "mean_chrf_of_best_scored": round(statistics.fmean(s[0] for s in scores.values()), 2),
        "mean_chrf_of_chosen": round(statistics.fmean(s[ranks[i]] for i, s in scores.items()), 2),
    }
    return {i: nbest[i][ranks[i]] for i in nbest}, ranks, what


def read_shards(args: argparse.Namespace, job: TransferSet) -> Tuple[Dict[int, List[Hypothesis]], Dict[str, float]]:
    per_shard, sentences, seconds = [], 0, 0.0
    for shard in range(args.num_shards):
        path = os.path.join(shard_dir(args.output, shard, args.num_shards), f"generate-{job.split}.txt")
        with open(path, encoding="utf-8") as f:
            per_shard.append(read_nbest(f))
        n, s = decoding_seconds(path)
        sentences, seconds = sentences + n, seconds + s
    speed = {"sentences": sentences, "seconds": round(seconds, 2)}
    if seconds:
        speed["sentences_per_s"] = round(sentences / seconds, 2)
    return merge_shards(per_shard, len(job.sources), job.skipped), speed


def assemble(args: argparse.Namespace, job: TransferSet) -> Dict[str, Any]:
    """Merges, chooses, filters, writes, checks and binarizes the pseudo-labels; returns the summary."""

    nbest, speed = read_shards(args, job)
    hypotheses, ranks, selection = choose(args, job, nbest)
    filters = Filters(args.max_length_ratio, args.max_len_a, args.max_len_b, args.min_score)
    labels = select(job.sources, hypotheses, filters, job.skipped)
    if not labels.ids:
        dropped = {k: len(v) for k, v in labels.dropped.items()}
        raise PseudoLabelError(f"every one of the {len(job.sources)} translations was dropped: {dropped}")
    prefix = os.path.join(args.output, "train")
    write_pseudolabels(labels, prefix, job.src, job.tgt)
    if ranks is not None:
        with open(f"{prefix}.nbest_rank", "w") as f:
            f.writelines(f"{ranks[i]}\n" for i in labels.ids)
    with open(os.path.join(args.output, "dropped.tsv"), "w", encoding="utf-8") as f:
        f.writelines(f"{i}\t{reason}\n" for reason, ids in labels.dropped.items() for i in ids)
    kept = check_pseudolabels(prefix, job.src, job.tgt, job.sources, filters)
    data_bin = os.path.join(args.output, "data-bin")
    binarize(prefix, data_bin, job.src, job.tgt, args.data)
    binarized = data_utils.load_indexed_dataset(os.path.join(data_bin, f"train.{job.src}-{job.tgt}.{job.tgt}"), None)
    if len(binarized) != kept:
        raise PseudoLabelError(f"the binarized pseudo-labels have {len(binarized)} sentences, the text {kept}")
    return {
        "transfer_sentences": len(job.sources),
        "kept": kept,
        "dropped": {reason: len(ids) for reason, ids in labels.dropped.items()},
        "engine": args.engine if args.engine == "fairseq" else f"ctranslate2 ({args.quantization})",
        "selection": selection,
        "decoding": speed,
        "data_bin": os.path.abspath(data_bin),
        "sha256_of_targets": sha256_file(f"{prefix}.{job.tgt}"),
    }


def main(args: argparse.Namespace) -> None:
    check_args(args)
    src, tgt = language_pair(args)
    teacher_cfgs = load_teachers(args, src, tgt)
    # bad input fails before anything is written
    tokenized = tokenize(read_raw_input(args.input), args) if args.input else None
    if tokenized is not None:
        check_known_tokens(tokenized, os.path.join(args.data, f"dict.{src}.txt"), "--input")
    # shards may be translated by several processes at once; the run that merges them is alone
    with run_lock(args.output, "fairseq-kd-pseudolabel", shared=args.shard_id is not None):
        make_pseudolabels(args, src, tgt, teacher_cfgs, tokenized)


def make_pseudolabels(
    args: argparse.Namespace, src: str, tgt: str, teacher_cfgs: List[Any], tokenized: Optional[List[str]]
) -> None:
    settings = settings_of(args)
    settings["teacher_sha256"] = ":".join(sha256_file(t) for t in args.teachers)
    settings["source_sha256"] = sha256_file(source_file(args, src, tgt))
    check_manifest(args.output, settings)
    job = transfer_set(args, src, tgt, teacher_cfgs, settings["teacher_sha256"], tokenized)
    for shard in [args.shard_id] if args.shard_id is not None else range(args.num_shards):
        lock = f".shard-{shard:03d}-of-{args.num_shards:03d}.lock"
        with run_lock(args.output, f"translation of shard {shard}", name=lock):
            translate_shard(args, job, shard)
    if args.shard_id is not None:
        missing = [i for i in range(args.num_shards) if not shard_done(args.output, i, args.num_shards)]
        print(
            f"shard {args.shard_id} done; {len(missing)} shards to go"
            + ("" if missing else ": run without --shard-id to merge")
        )
        return
    summary = assemble(args, job)
    write_json(os.path.join(args.output, "summary.json"), summary)
    print(json.dumps(summary, indent=2))
