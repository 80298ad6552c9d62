"""CTranslate2 search under fairseq-generate's conditions, shared by the evaluation and the pseudo-labeller.

fairseq-generate sorts the sentences by source length, cuts them into batches with fairseq's
``batch_by_size`` (``--max-tokens``, ``--batch-size``) and bounds each batch's output at
``max_len_a * (its longest source, with </s>) + max_len_b`` tokens. :func:`translate` does the same with
a CTranslate2 translator, so that both runtimes translate under one bound. CTranslate2's own input
truncation (1,024 tokens by default) is switched off: a sentence too long for the model is the caller's
to leave out, as fairseq-generate leaves it out, never silently cut.
"""

import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import ctranslate2
import numpy as np
import torch
from fairseq.data import data_utils

# CTranslate2's intra_threads when none is given. On the 2-core machine this project is measured on, one
# thread decoded about twice as fast as two, in int8 and float32 alike (benchmarks/results/ct2_threads.md);
# give --threads N (0: every core) where more cores help.
DEFAULT_THREADS = 1

# the weight types CTranslate2's converter writes (--quantization)
WEIGHT_TYPES = ("float32", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16")


def translator(path: str, device: str = "cpu", threads: int = DEFAULT_THREADS, compute_type: str = "default",
               parallel: int = 1) -> "ctranslate2.Translator":  # fmt: skip
    """A ``ctranslate2.Translator`` with THREADS intra-op threads (0: every core) for each of PARALLEL batches
    decoded at once (CTranslate2's inter_threads; :func:`translate` then submits its batches together).
    Creating one sets the process's OpenMP thread count, torch's included (torch.get_num_threads() went from
    2 to 1 here); torch's count is put back, so that what runs next in the process computes as it did before."""

    torch_threads = torch.get_num_threads()
    try:
        return ctranslate2.Translator(
            path, device=device, compute_type=compute_type, intra_threads=threads or (os.cpu_count() or 1),
            inter_threads=parallel,
        )  # fmt: skip
    finally:
        torch.set_num_threads(torch_threads)


@dataclass
class Hypotheses:
    tokens: List[List[str]]  # n-best target tokens, best first
    scores: List[float]  # each one's length-normalised log-probability, in log2 as fairseq-generate prints it


def batches(lengths: Sequence[int], max_tokens: Optional[int] = None, batch_size: Optional[int] = None) -> List[np.ndarray]:
    """Lists of positions into LENGTHS (token counts without </s>), in fairseq-generate's order and cut."""

    order = np.argsort(np.asarray(lengths, dtype=np.int64) + 1, kind="stable")
    return data_utils.batch_by_size(
        order, lambda i: lengths[i] + 1, max_tokens=max_tokens, max_sentences=batch_size, required_batch_size_multiple=1
    )


def translate(
    translator: "ctranslate2.Translator",
    sources: Sequence[List[str]],
    *,
    beam: int,
    max_len_a: float,
    max_len_b: int,
    max_tokens: Optional[int] = None,
    batch_size: Optional[int] = None,
    nbest: int = 1,
    sampling_topk: Optional[int] = None,
    use_vmap: bool = False,
    on_batch: Optional[Callable[[int, int], None]] = None,
) -> Tuple[List["Hypotheses"], float]:
    """(a :class:`Hypotheses` per source in SOURCES' order, seconds spent translating: the batches' own
    times, or for a translator of several parallel batches the time from the first submission to the last).

    SOURCES are token lists of the model's source vocabulary. With SAMPLING_TOPK each output is drawn
    from the top-k tokens at every step (beam 1), as fairseq's ``--sampling --sampling-topk``; seed it
    with ``ctranslate2.set_random_seed``. With USE_VMAP each output is restricted to the model's vocabulary
    map (see :func:`vocabulary_map`). ON_BATCH(done, total) is called after each batch."""
    outputs = [None] * len(sources)
    search = dict(beam_size=1, sampling_topk=sampling_topk) if sampling_topk else dict(beam_size=max(beam, nbest))
    todo = batches([len(s) for s in sources], max_tokens, batch_size)
    # a translator that decodes several batches at once gets them all up front, and is waited on in order
    parallel = getattr(translator, "num_translators", 1) > 1
    done, seconds = 0, 0.0

    def submit(batch):
        longest = max(len(sources[i]) for i in batch) + 1
        return translator.translate_batch(
            [list(sources[i]) for i in batch], num_hypotheses=nbest, return_scores=True, max_input_length=0,
            max_decoding_length=int(max_len_a * longest + max_len_b) + 1, use_vmap=use_vmap,
            asynchronous=parallel, **search,
        )  # fmt: skip

    start = time.perf_counter()
    submitted = [submit(batch) for batch in todo] if parallel else None
    for n, batch in enumerate(todo):
        if parallel:
            results = [r.result() for r in submitted[n]]
        else:
            start = time.perf_counter()
            results = submit(batch)
            seconds += time.perf_counter() - start
        for i, result in zip(batch, results):
            outputs[i] = Hypotheses([list(h) for h in result.hypotheses], [s / math.log(2) for s in result.scores])
        done += len(batch)
        if on_batch:
            on_batch(done, len(sources))
    if parallel:
        seconds = time.perf_counter() - start
    return outputs, seconds


# ---- vocabulary map (lexical shortlist) -------------------------------------------------------------


def vocabulary_map(pairs: Iterable[Tuple[np.ndarray, np.ndarray]], vocab_size: int, nspecial: int, frequent: int = 100,
                   per_source: int = 50, chunk: int = 20000) -> Tuple[List[int], Dict[int, List[int]]]:  # fmt: skip
    """A lexical shortlist for CTranslate2's ``use_vmap``, learned from parallel data without alignments:
    (the ``frequent`` target ids of highest document frequency, {source id: its ``per_source`` target ids of
    highest sentence-level Dice coefficient 2 c(s, t) / (c(s) + c(t))}), c counting the sentence pairs a
    token (or both tokens) occur in. PAIRS yields (source ids, target ids) arrays of one shared-or-not
    vocabulary of VOCAB_SIZE ids; ids below NSPECIAL (fairseq's <s>, <pad>, </s>, <unk>) are left out:
    CTranslate2 always keeps its special tokens. Marian's shortlists (and Bergamot's students) keep the same
    two lists, the second from an alignment model's lexical table."""
    src_df = np.zeros(vocab_size, dtype=np.int64)
    tgt_df = np.zeros(vocab_size, dtype=np.int64)
    keys, counts, pending = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), []

    def merge():
        nonlocal keys, counts
        if pending:
            joined = np.concatenate([keys] + pending)
            weights = np.concatenate([counts] + [np.ones(len(p), dtype=np.int64) for p in pending])
            keys, inverse = np.unique(joined, return_inverse=True)
            counts = np.bincount(inverse, weights=weights).astype(np.int64)
            pending.clear()

    for n, (src, tgt) in enumerate(pairs, 1):
        s = np.unique(np.asarray(src, dtype=np.int64))
        t = np.unique(np.asarray(tgt, dtype=np.int64))
        s, t = s[s >= nspecial], t[t >= nspecial]
        src_df[s] += 1
        tgt_df[t] += 1
        pending.append((s[:, None] * vocab_size + t[None, :]).ravel())
        if n % chunk == 0:
            merge()
    merge()
    always = [int(i) for i in np.argsort(-tgt_df, kind="stable")[:frequent] if tgt_df[i] > 0]
    rows, cols = keys // vocab_size, keys % vocab_size
    dice = 2 * counts / (src_df[rows] + tgt_df[cols])
    order = np.lexsort((cols, -dice, rows))  # by source, then best first (ties: lower id)
    rows, cols = rows[order], cols[order]
    starts = np.searchsorted(rows, np.arange(vocab_size + 1))
    candidates = {
        int(s): [int(c) for c in cols[starts[s] : min(starts[s + 1], starts[s] + per_source)]]
        for s in range(vocab_size)
        if starts[s + 1] > starts[s]
    }
    return always, candidates


def write_vocabulary_map(path: str, always: Sequence[int], candidates: Dict[int, Sequence[int]], source_symbols: Sequence[str],
                         target_symbols: Sequence[str]) -> None:  # fmt: skip
    """Writes CTranslate2's vocabulary-map file: one ``source token<TAB>target tokens`` line per source
    token, and the line with the empty key: the target tokens that are always candidates."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("\t" + " ".join(target_symbols[i] for i in always) + "\n")
        for s, targets in sorted(candidates.items()):
            f.write(source_symbols[s] + "\t" + " ".join(target_symbols[i] for i in targets) + "\n")
