"""CTranslate2 search under fairseq-generate's conditions, shared by the evaluation and the pseudo-labeller.

fairseq-generate sorts the sentences by source length, cuts them into batches with fairseq's
``batch_by_size`` (``--max-tokens``, ``--batch-size``) and bounds each batch's output at
``max_len_a * (its longest source, with </s>) + max_len_b`` tokens. :func:`translate` does the same with
a CTranslate2 translator, so that both runtimes translate under one bound. CTranslate2's own input
truncation (1,024 tokens by default) is switched off: a sentence too long for the model is the caller's
to leave out, as fairseq-generate leaves it out, never silently cut.
"""

import math
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

# the weight types CTranslate2's converter writes (--quantization)
WEIGHT_TYPES = ("float32", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16")


@dataclass
class Hypotheses:
    tokens: List[List[str]]  # n-best target tokens, best first
    scores: List[float]  # each one's length-normalised log-probability, in log2 as fairseq-generate prints it


def batches(lengths: Sequence[int], max_tokens: Optional[int] = None, batch_size: Optional[int] = None):
    """Lists of positions into LENGTHS (token counts without </s>), in fairseq-generate's order and cut."""
    from fairseq.data import data_utils

    order = np.argsort(np.asarray(lengths, dtype=np.int64) + 1, kind="stable")
    return data_utils.batch_by_size(
        order, lambda i: lengths[i] + 1, max_tokens=max_tokens, max_sentences=batch_size, required_batch_size_multiple=1
    )


def translate(
    translator,
    sources: Sequence[List[str]],
    *,
    beam: int,
    max_len_a: float,
    max_len_b: int,
    max_tokens: Optional[int] = None,
    batch_size: Optional[int] = None,
    nbest: int = 1,
    sampling_topk: Optional[int] = None,
    on_batch=None,
):
    """(a :class:`Hypotheses` per source in SOURCES' order, seconds spent translating).

    SOURCES are token lists of the model's source vocabulary. With SAMPLING_TOPK each output is drawn
    from the top-k tokens at every step (beam 1), as fairseq's ``--sampling --sampling-topk``; seed it
    with ``ctranslate2.set_random_seed``. ON_BATCH(done, total) is called after each batch."""
    outputs = [None] * len(sources)
    search = dict(beam_size=1, sampling_topk=sampling_topk) if sampling_topk else dict(beam_size=max(beam, nbest))
    todo = batches([len(s) for s in sources], max_tokens, batch_size)
    done = 0
    seconds = 0.0
    for batch in todo:
        longest = max(len(sources[i]) for i in batch) + 1
        start = time.perf_counter()
        results = translator.translate_batch(
            [list(sources[i]) for i in batch],
            num_hypotheses=nbest,
            return_scores=True,
            max_input_length=0,
            max_decoding_length=int(max_len_a * longest + max_len_b) + 1,
            **search,
        )
        seconds += time.perf_counter() - start
        for i, result in zip(batch, results):
            outputs[i] = Hypotheses([list(h) for h in result.hypotheses], [s / math.log(2) for s in result.scores])
        done += len(batch)
        if on_batch:
            on_batch(done, len(sources))
    return outputs, seconds
