"""What a teacher gives the KD criterion: :class:`TeacherTargets`.

The ``translation_kd`` task builds them for each batch: from a live teacher or an ensemble
(:func:`run_teachers`), or from the top-k rows of ``--teacher-topk-cache`` that the data loader attached to
the batch (:class:`fairseq_kd.topk_cache.TopKCacheDataset`). The criterion pops them from the sample and
pops the logits from them, so that their memory is freed (or reused for the gradient) as soon as it is read.
"""

import contextlib
from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import Tensor


@dataclass
class TeacherTargets:
    """One batch's teacher output, aligned with the batch's target positions (B x T).

    The distribution is given one of two ways:

    * ``logits``: each teacher's full B x T x V logits (several for an ensemble, whose members'
      tempered distributions the criterion averages);
    * ``topk_ids`` and ``topk_scores``, B x T x k each: the teacher's k most probable tokens and scores whose
      softmax at temperature T is the teacher's tempered distribution renormalised over those k (a live
      teacher's top-k logits, or a cache's log-probabilities at T = 1: softmax(log q / T) = q^(1/T) / sum).

    ``decoder_states`` and ``encoder_states`` are the first teacher's layer outputs (T x B x C and S x B x C,
    entry 0 the embeddings), for the hidden-state loss.
    """

    logits: Optional[List[Tensor]] = None
    topk_ids: Optional[Tensor] = None
    topk_scores: Optional[Tensor] = None
    decoder_states: Optional[List[Tensor]] = None
    encoder_states: Optional[List[Tensor]] = None

    def __post_init__(self):
        if (self.logits is None) == (self.topk_ids is None) or (self.topk_ids is None) != (self.topk_scores is None):
            raise ValueError("TeacherTargets hold either full logits or top-k ids with their scores")


@contextlib.contextmanager
def capture_encoder_out(model, enabled=True):
    """Records what ``model.encoder`` returns during a ``model(...)`` call, in the yielded dict's
    ``"encoder_out"`` key. A forward hook, rather than calling the encoder and decoder separately,
    keeps the call going through ``model.forward`` (and so through data-parallel wrappers)."""
    captured = {}
    if not enabled:
        yield captured
        return

    def hook(module, args, output):
        captured["encoder_out"] = output

    handle = model.encoder.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


@torch.no_grad()
def run_teachers(teachers, net_input, *, topk=0, hidden_states=False, encoder_states=False, autocast=False):
    """The teachers' :class:`TeacherTargets` on a batch's ``net_input``.

    With TOPK > 0 and one teacher, only its TOPK largest logits are kept (the top-k of softmax(z / T) are the
    top-k logits at any T): the vocabulary-sized logits are freed before the student runs. Each teacher
    follows the device and dtype of ``net_input``'s tensors' owner, which the caller has moved them to."""
    logits, decoder_states, encoder = [], None, None
    for n, teacher in enumerate(teachers):
        device = next(teacher.parameters()).device
        with torch.autocast(device.type, enabled=autocast):
            with capture_encoder_out(teacher, enabled=encoder_states and n == 0) as captured:
                out, extra = teacher(**net_input)
        if n == 0 and hidden_states:
            decoder_states = extra["inner_states"]
            encoder = captured["encoder_out"]["encoder_states"] if encoder_states else None
        logits.append(out)
    if topk > 0 and len(teachers) == 1:
        scores, ids = logits[0].topk(min(topk, logits[0].size(-1)), dim=-1)
        return TeacherTargets(topk_ids=ids, topk_scores=scores, decoder_states=decoder_states, encoder_states=encoder)
    return TeacherTargets(logits=logits, decoder_states=decoder_states, encoder_states=encoder)
