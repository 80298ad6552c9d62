"""The teacher: loaded frozen and checked against the student's task (:func:`load_teacher`), and what it gives
the KD criterion, :class:`TeacherTargets`.

The ``translation_kd`` task builds them for each batch: from a live teacher or an ensemble
(:func:`run_teachers`), or from the top-k rows of ``--teacher-topk-cache`` that the data loader attached to
the batch (:class:`fairseq_kd.topk_cache.TopKCacheDataset`). The criterion pops them from the sample and
pops the logits from them, so that their memory is freed (or reused for the gradient) as soon as it is read.
"""

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch
from fairseq import models, utils
from fairseq.data import data_utils
from fairseq.models import FairseqEncoderDecoderModel
from torch import Tensor

from .checkpoints import dictionary_difference, load_checkpoint, recorded_data_dir
from .io import UserError

logger = logging.getLogger(__name__)


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
def capture_encoder_out(model: torch.nn.Module, enabled: bool = True) -> Iterator[Dict[str, Any]]:
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
def run_teachers(teachers: Sequence[torch.nn.Module], net_input: Dict[str, Tensor], *, topk: int = 0, hidden_states: bool = False,
                 encoder_states: bool = False, autocast: bool = False) -> TeacherTargets:  # fmt: skip
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


class TeacherError(UserError):
    pass


def hidden_sizes(model: torch.nn.Module) -> Dict[str, int]:
    """{"encoder": C, "decoder": C'}: the width of the per-layer hidden states of a transformer-like model."""
    return {"encoder": model.encoder.embed_tokens.embedding_dim, "decoder": model.decoder.embed_dim}


def layer_counts(model: torch.nn.Module) -> Optional[Dict[str, int]]:
    """{"encoder": L, "decoder": L'}, or None for a model without transformer-like layer stacks."""
    if not all(hasattr(getattr(model, stack), "layers") for stack in ("encoder", "decoder")):
        return None
    return {stack: len(getattr(model, stack).layers) for stack in ("encoder", "decoder")}


def check_output_layer(model: torch.nn.Module, who: str) -> None:
    if getattr(model.decoder, "adaptive_softmax", None) is not None:
        raise TeacherError(
            f"the {who} uses an adaptive softmax, whose output is not a distribution over the whole "
            "vocabulary: word-level KD needs a full softmax output layer"
        )


def load_teacher(task: Any, path: str, teacher_data: Optional[str] = None) -> FairseqEncoderDecoderModel:
    """The teacher of checkpoint PATH, frozen (eval mode, no gradients), after checking that it translates in
    TASK's direction with TASK's dictionaries (found in TEACHER_DATA, else where its checkpoint says)."""
    state = load_checkpoint(path, what="teacher checkpoint")
    teacher_cfg = state["cfg"]
    check_teacher_dictionaries(task, path, teacher_cfg, teacher_data)
    model_type = getattr(teacher_cfg.model, "_name", None) or getattr(teacher_cfg.model, "arch", None)
    if model_type not in models.ARCH_MODEL_REGISTRY and model_type not in models.MODEL_REGISTRY:
        # the teacher's architecture comes from a plugin of its own
        utils.import_user_module(teacher_cfg.common)
    try:
        # models.build_model, not task.build_model: the latter would also rebuild the
        # --eval-bleu sequence generator around the teacher.
        teacher = models.build_model(teacher_cfg.model, task, from_checkpoint=True)
        teacher.load_state_dict(state["model"], strict=True, model_cfg=teacher_cfg.model)
    except RuntimeError as e:
        raise TeacherError(f"could not load the teacher weights of {path!r} into its own architecture: {e}") from e
    if not isinstance(teacher, FairseqEncoderDecoderModel):
        raise TeacherError(f"teacher {path!r} is a {type(teacher).__name__}, not an encoder-decoder translation model")
    check_output_layer(teacher, f"teacher {path!r}")
    # eval() turns off dropout (and layer drop); requires_grad_(False) keeps the teacher out of
    # autograd even where a caller forgets torch.no_grad().
    teacher.eval()
    teacher.requires_grad_(False)
    num_params = sum(p.numel() for p in teacher.parameters())
    logger.info(f"teacher {path}: {type(teacher).__name__}, {num_params:,} parameters (frozen)")
    return teacher


def check_teacher_dictionaries(task: Any, path: str, teacher_cfg: Any, teacher_data: Optional[str] = None) -> None:
    """The teacher must translate in TASK's direction with TASK's dictionaries, symbol by symbol."""
    data_dir = teacher_data or recorded_data_dir(teacher_cfg.task)
    pair = teacher_cfg.task.get("source_lang"), teacher_cfg.task.get("target_lang")
    if None in pair and data_dir and os.path.isdir(data_dir):
        # not recorded when fairseq inferred it from the data-bin's file names: infer it the same way
        pair = tuple(data_utils.infer_language_pair(data_dir))
    if None not in pair and pair != (task.cfg.source_lang, task.cfg.target_lang):
        raise TeacherError(
            f"teacher {path!r} translates {pair[0]}->{pair[1]}, the student "
            f"{task.cfg.source_lang}->{task.cfg.target_lang}: a teacher must translate in the student's direction"
        )
    for side, ours in [("source", task.src_dict), ("target", task.tgt_dict)]:
        our_lang = task.cfg.source_lang if side == "source" else task.cfg.target_lang
        dict_path = os.path.join(data_dir or "", f"dict.{our_lang}.txt")
        if data_dir is None or not os.path.isfile(dict_path):
            raise TeacherError(
                f"cannot check the teacher's {side} dictionary: {dict_path!r} does not exist. Pass "
                f"--teacher-data DIR, where DIR holds the dict.{task.cfg.source_lang}.txt and "
                f"dict.{task.cfg.target_lang}.txt that teacher {path!r} was trained with"
            )
        difference = dictionary_difference(ours, task.load_dictionary(dict_path))
        if difference is not None:
            raise TeacherError(
                f"teacher {path!r} and the student must share one {side} dictionary, but they differ "
                f"({dict_path} vs the student's): {difference}. Binarize the student's data with the "
                f"teacher's dictionaries (fairseq-preprocess --srcdict/--tgtdict)"
            )
