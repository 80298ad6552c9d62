"""The two decoders of a transfer set's shard: fairseq-generate, and CTranslate2.

Each writes SHARD_DIR/generate-SPLIT.txt in fairseq-generate's format (``H-ID\\tSCORE\\tTOKENS``, n-best per id
and best first, then a ``Translated N sentences ... in Ts (S sentences/s, ...)`` line, T counting decoding
only) and SHARD_DIR/DONE, through a temporary directory renamed into place: a shard is done, or absent.

* ``fairseq``: ``fairseq-generate`` in-process, with the teacher's checkpoint or an ensemble of them (their
  distributions averaged, as fairseq's generator does). Shard k of n is what generate's distributed rank k
  of a world of n translates.
* ``ctranslate2``: the teacher converted once (:func:`convert_teacher`; float32 unless told otherwise), then
  :func:`fairseq_kd.ct2.translate` under fairseq-generate's batches and length bound. Shard k of n holds the
  sentences whose id is k modulo n.
"""

import argparse
import json
import logging
import os
import shutil
from typing import Any, Tuple

import ctranslate2
from fairseq import options
from fairseq_cli import generate

from .. import ct2
from ..checkpoints import export_ctranslate2, export_student
from ..generate_log import read_speed
from ..io import colon_free, write_json, write_text
from ..runs import PLUGIN_DIR, is_done, mark_done
from .labels import PseudoLabelError

logger = logging.getLogger("fairseq_kd.pseudolabel")


ENGINES = ("fairseq", "ctranslate2")


def shard_dir(out_dir: str, shard: int, num_shards: int) -> str:
    return os.path.join(out_dir, "shards", f"{shard:03d}-of-{num_shards:03d}")


def shard_done(out_dir: str, shard: int, num_shards: int) -> bool:
    return is_done(os.path.join(shard_dir(out_dir, shard, num_shards), "DONE"))


def decoding_seconds(path: str) -> Tuple[int, float]:
    """(sentences, seconds of decoding) that a shard's log reports."""
    with open(path, encoding="utf-8") as f:
        speed = read_speed(f.read())
    return (speed["sentences"], speed["seconds"]) if speed else (0, 0.0)


def translate_shard(args: argparse.Namespace, job: Any, shard: int) -> None:
    """Translates one shard with ARGS.engine unless it was done before. JOB is the transfer set (see
    :mod:`fairseq_kd.pseudolabel.run`)."""
    done_dir = shard_dir(args.output, shard, args.num_shards)
    if shard_done(args.output, shard, args.num_shards):
        logger.info(f"shard {shard} of {args.num_shards}: done earlier, not redone")
        return
    tmp = done_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    search = f"top-{args.sampling_topk} sampling" if args.sampling_topk else f"beam {args.beam}, {args.nbest}-best"
    logger.info(f"shard {shard} of {args.num_shards}: translating {job.what} with {args.engine} ({search})")
    if args.engine == "ctranslate2":
        _ctranslate2_shard(args, job, shard, os.path.join(tmp, f"generate-{job.split}.txt"))
    else:
        _fairseq_shard(args, job, shard, tmp)
    mark_done(os.path.join(tmp, "DONE"))
    shutil.rmtree(done_dir, ignore_errors=True)
    os.replace(tmp, done_dir)


def _fairseq_shard(args, job, shard, tmp):
    flags = [
        colon_free(job.data_bin), "--path", os.pathsep.join(colon_free(t) for t in args.teachers), "--task", "translation",
        "--gen-subset", job.split,
        "--source-lang", job.src, "--target-lang", job.tgt,
        "--beam", str(max(args.beam, args.nbest)), "--nbest", str(args.nbest),
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
    try:
        generate.main(options.parse_args_and_arch(options.get_generation_parser(), flags))
    except ZeroDivisionError:
        # fairseq-generate divides by its translation time when it prints its final statistics: a shard
        # that got no batch (more shards than batches) ends there, with a complete (empty) log
        with open(os.path.join(tmp, f"generate-{job.split}.txt"), encoding="utf-8") as f:
            if any(line.startswith("H-") for line in f):
                raise
        logger.info(f"shard {shard} of {args.num_shards}: no batch fell to this shard")


def convert_teacher(args: argparse.Namespace, job: Any) -> str:
    """The teacher as a CTranslate2 model in OUTPUT/ctranslate2-teacher, converted once per teacher file and
    weight type (float32 keeps the teacher's search; int8 is faster and not quite the same)."""

    if len(args.teachers) > 1:
        raise PseudoLabelError("CTranslate2 decodes one model: give one --teacher, or --engine fairseq for an ensemble")
    model_dir = os.path.join(args.output, "ctranslate2-teacher")
    marker = os.path.join(model_dir, "converted.json")
    wanted = {"teacher_sha256": job.teacher_sha256, "quantization": args.quantization}
    if os.path.isfile(marker):
        with open(marker) as f:
            if json.load(f) == wanted:
                return model_dir
    logger.info(f"converting the teacher to CTranslate2 ({args.quantization}) in {model_dir}")
    exported = os.path.join(args.output, "teacher.exported.pt")
    export_student(args.teachers[0], exported, overwrite=True)
    try:
        export_ctranslate2(exported, args.data, model_dir, args.quantization, job.src, job.tgt)
    finally:
        os.remove(exported)
    write_json(marker, wanted)
    return model_dir


def _ctranslate2_shard(args, job, shard, path):
    # on the CPU one batch per core at once (inter_threads), each on one core: on 2 cores this decoded 1.9x
    # one batch on one core and 1.14x one batch on both (benchmarks/results/ct2_parallel.md).
    # Sampling keeps one batch at a time: CTranslate2's random generators are per worker thread, and which
    # batches a worker gets would change the draws
    on_cpu = args.device == "cpu" or ctranslate2.get_cuda_device_count() == 0
    parallel = args.threads if on_cpu and not args.sampling_topk else 1
    threads = 1 if parallel > 1 else args.threads
    translator = ct2.translator(convert_teacher(args, job), args.device, threads, parallel=parallel)
    ctranslate2.set_random_seed(args.seed)
    skipped = set(job.skipped)
    ids = [i for i in range(len(job.sources)) if i % args.num_shards == shard and i not in skipped]
    step = max(1, len(ids) // 10)

    def progress(done, total):
        if done // step != (done - 1) // step or done == total:
            logger.info(f"shard {shard} of {args.num_shards}: {done}/{total} sentences")

    results, seconds = ct2.translate(
        translator, [job.sources[i].split() for i in ids], beam=args.beam, nbest=args.nbest,
        sampling_topk=args.sampling_topk, max_len_a=args.max_len_a, max_len_b=args.max_len_b,
        max_tokens=args.max_tokens, batch_size=args.batch_size, on_batch=progress,
    )  # fmt: skip
    del translator
    tokens = sum(len(r.tokens[0]) + 1 for r in results)
    lines = [f"H-{i}\t{score:.6f}\t{' '.join(hyp)}\n" for i, r in zip(ids, results) for hyp, score in zip(r.tokens, r.scores)]
    seconds = max(seconds, 1e-9)
    lines.append(
        # fairseq-generate's line, with the seconds to the millisecond (a small shard decodes in less than 0.05 s)
        f"Translated {len(ids):,} sentences ({tokens:,} tokens) in {seconds:.3f}s "
        f"({len(ids) / seconds:.2f} sentences/s, {tokens / seconds:.2f} tokens/s)\n"
    )
    write_text(path, "".join(lines))
