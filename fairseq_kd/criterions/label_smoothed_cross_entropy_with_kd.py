import math
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq import utils
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    label_smoothed_nll_loss,
)
from fairseq.logging import metrics
from fairseq.models import BaseFairseqModel
from torch import Tensor

from ..models.student_init import spread_layers
from ..teacher import TeacherTargets, capture_encoder_out
from .fused_kd import tempered_divergence_from_logits, tempered_kl_from_logits, tempered_topk_kl_from_logits
from .kd_criterion_config import LabelSmoothedCrossEntropyWithKDCriterionConfig, check_criterion_settings
from .kd_losses import (
    HIDDEN_LOSSES,
    defined_on_topk,
    effective_divergence,
    tempered_log_probs,
    topk_log_probs,
)
from .token_selection import SelectionQueue, select_top_tokens


@register_criterion("label_smoothed_cross_entropy_with_kd", dataclass=LabelSmoothedCrossEntropyWithKDCriterionConfig)
class LabelSmoothedCrossEntropyWithKDCriterion(LabelSmoothedCrossEntropyCriterion):
    """Label-smoothed cross-entropy plus word-level knowledge distillation and a hidden-state
    loss, with free non-negative weights::

        loss = nll_weight * LS-NLL(references)
             + kd_weight * T^2 * D(q^T, p^T)
             + cosine_weight * hidden

    where q^T and p^T are the teacher's and student's softmax at temperature T over the whole
    vocabulary (the mean of the members' distributions for a teacher ensemble) and D is
    ``--kd-divergence``: KL(q^T || p^T) by default, or reverse KL, JSD(beta), total variation or skew KL
    (:mod:`~fairseq_kd.criterions.kd_losses`). T^2 keeps the KD gradients' scale independent of T
    (Hinton et al., 2015). Every term is a sum over non-padding
    target tokens, like fairseq's own losses. ``hidden`` is the mean over paired layers of the
    summed per-token ``1 - cos(W h_student, h_teacher)`` (or the mean squared error with
    ``--hidden-loss mse``) of the decoder's layer outputs, plus the same for the encoder (over
    non-padding source tokens) with ``--cosine-encoder``. Layers are paired as the student was
    initialised from the teacher, else evenly (``student_init.spread_layers``). W is the identity when
    the widths are equal, else a learned linear map (no bias) from the student's width to the teacher's: a
    parameter of this criterion, trained with the student and saved in its checkpoints (fairseq
    saves a criterion's parameters), never part of the student model. Hidden states are matched
    against the first teacher of an ensemble.

    On a batch whose targets are the student's own translations (``sample["on_policy"]``, the task's
    ``--on-policy-fraction``) the NLL term is left out: the loss is the divergence to the teacher on the
    student's prefixes (and the hidden-state loss), as GKD's.

    In validation the loss is the plain label-smoothed NLL at temperature 1, exactly what
    ``label_smoothed_cross_entropy`` reports, so checkpoints compare with non-KD runs; D at
    T=1 and the cosine loss are logged beside it when a teacher ran.

    The teacher's output comes in ``sample["teacher"]``, a :class:`~fairseq_kd.teacher.TeacherTargets` that
    the ``translation_kd`` task builds (from a live teacher or ensemble, or from the top-k cache's rows that
    the data loader attached to the batch); :meth:`teacher_request` says what a live teacher must give.
    """

    # every setting's default is its config field's (fairseq builds the criterion from the config)
    def __init__(
        self,
        task: Any,
        sentence_avg: bool,
        label_smoothing: float,
        ignore_prefix_size: int,
        report_accuracy: bool,
        nll_weight: float,
        kd_weight: float,
        kd_temperature: float,
        cosine_weight: float,
        cosine_encoder: bool,
        hidden_loss: str,
        kd_topk: int,
        kd_selection: str,
        kd_selection_ratio: float,
        kd_selection_queue_size: int,
        kd_divergence: str,
        kd_beta: Optional[float],
    ):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        kd_selection, kd_divergence = str(kd_selection), str(kd_divergence)
        check_criterion_settings(nll_weight, kd_weight, kd_temperature, cosine_weight, cosine_encoder, kd_topk, kd_selection,
                       kd_selection_ratio, kd_selection_queue_size, kd_divergence, kd_beta)  # fmt: skip
        teacher = getattr(task, "teacher_kind", None)  # "live", "topk_cache" or None: what the task can give
        if (kd_weight > 0 or cosine_weight > 0) and teacher is None:
            raise ValueError(
                f"--kd-weight {kd_weight} / --cosine-weight {cosine_weight} need a teacher: train with "
                "--task translation_kd --teacher-path TEACHER.pt, or --teacher-topk-cache DIR for word-level KD "
                "(or set both weights to 0)"
            )
        if teacher == "topk_cache" and kd_weight > 0 and not defined_on_topk(kd_divergence, kd_beta):
            raise ValueError(
                f"--kd-divergence {kd_divergence} is infinite with a --teacher-topk-cache (no probability off the "
                "cached tokens): train with --teacher-path, or choose forward_kl, jsd (beta < 1), tvd or skew_kl"
            )
        if teacher == "topk_cache" and cosine_weight > 0:
            raise ValueError("--cosine-weight needs the teacher's hidden states, which a --teacher-topk-cache does not hold")
        self.nll_weight = nll_weight
        self.kd_weight = kd_weight
        self.kd_temperature = kd_temperature
        self.kd_divergence, self.kd_beta = effective_divergence(kd_divergence, kd_beta)  # as computed
        self.cosine_weight = cosine_weight
        self.cosine_encoder = cosine_encoder
        self.hidden_loss = str(hidden_loss)
        self.kd_topk = kd_topk
        self.kd_selection = kd_selection
        self.kd_selection_ratio = kd_selection_ratio
        self.selection_queue = SelectionQueue(kd_selection_queue_size) if kd_selection == "global" else None
        # the share of on-policy sentences is logged where the task makes some
        self.counts_on_policy = getattr(getattr(task, "cfg", None), "on_policy_fraction", 0) > 0
        # set by setup_hidden_matching once the student and teacher are known
        self.layer_pairs = None
        self.hidden_projections = None

    def setup_hidden_matching(self, student_widths: Dict[str, int], teacher_widths: Dict[str, int],
                              layer_pairs: Optional[Dict[str, List[Tuple[int, int]]]]) -> None:  # fmt: skip
        """Fixes which teacher layer each student layer is matched with, and adds a learned
        projection for each stack whose widths differ.

        Args:
            student_widths (dict): {"encoder": C_s, "decoder": C_s'} hidden sizes
            teacher_widths (dict): the same for the teacher
            layer_pairs (dict): {"encoder": [...], "decoder": [...]}: the 0-based teacher layer of
                each student layer
        """
        stacks = ("encoder", "decoder") if self.cosine_encoder else ("decoder",)
        self.layer_pairs = {stack: list(layer_pairs[stack]) for stack in stacks}
        projections = {
            stack: torch.nn.Linear(student_widths[stack], teacher_widths[stack], bias=False)
            for stack in stacks
            if student_widths[stack] != teacher_widths[stack]
        }
        self.hidden_projections = torch.nn.ModuleDict(projections) if projections else None

    @property
    def needs_teacher(self) -> bool:
        return self.kd_weight > 0 or self.cosine_weight > 0

    @property
    def needs_encoder_states(self) -> bool:
        return self.cosine_weight > 0 and self.cosine_encoder

    def teacher_request(self) -> Optional[Dict[str, Any]]:
        """What a live teacher must give for each batch (see :func:`fairseq_kd.teacher.run_teachers`), or None."""
        if not self.needs_teacher:
            return None
        return dict(topk=self.kd_topk, hidden_states=self.cosine_weight > 0, encoder_states=self.needs_encoder_states)

    def forward(
        self, model: BaseFairseqModel, sample: Dict[str, Any], reduce: bool = True
    ) -> Tuple[Tensor, int, Dict[str, Any]]:
        """(loss, sample size, logging outputs) of SAMPLE, whose ``sample["teacher"]`` (a
        :class:`~fairseq_kd.teacher.TeacherTargets`, put there by the ``translation_kd`` task) is popped:
        the teacher's vocabulary-sized logits are freed as soon as they are used."""
        teacher = sample.pop("teacher", None)
        if model.training and self.needs_teacher and teacher is None:
            raise RuntimeError("the KD criterion got no teacher output: train with --task translation_kd --teacher-path ...")
        with capture_encoder_out(model, enabled=teacher is not None and self.needs_encoder_states) as enc:
            net_output = model(**sample["net_input"])
        lprobs, target = self.get_lprobs_and_target(model, net_output, sample)  # (B * T) x V, (B * T)
        ls_loss, nll_loss = label_smoothed_nll_loss(lprobs, target, self.eps, ignore_index=self.padding_idx, reduce=reduce)
        T = self.kd_temperature if model.training else 1.0
        kd_loss = kd_tokens = hidden_loss = None
        if teacher is not None and (self.kd_weight > 0 or not model.training):
            ignore = target.eq(self.padding_idx)
            if model.training and self.kd_selection != "none":
                ignore = ignore | ~self.select_tokens(lprobs, target, ignore)
                kd_tokens = int((~ignore).sum())
            kd_loss = self.compute_kd_loss(lprobs, net_output[0], teacher, T, ignore, reduce)
        if teacher is not None and self.cosine_weight > 0 and teacher.decoder_states is not None:
            hidden_loss = self.compute_hidden_loss(net_output, enc.get("encoder_out"), teacher, sample, reduce)
        del teacher
        if not reduce:
            kd_loss, hidden_loss = (x.view_as(ls_loss) if x is not None else None for x in (kd_loss, hidden_loss))
        loss = ls_loss
        on_policy = sample.get("on_policy", False)  # the target is the student's own translation: no NLL term
        if model.training:
            loss = (0.0 if on_policy else self.nll_weight) * ls_loss
            loss = loss + self.kd_weight * T**2 * kd_loss if kd_loss is not None else loss
            loss = loss + self.cosine_weight * hidden_loss if hidden_loss is not None else loss
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = self.logging_output(model, net_output, sample, sample_size, loss, nll_loss, kd_loss, hidden_loss)
        if kd_tokens is not None:
            logging_output["kd_tokens"] = kd_tokens
        if model.training and self.counts_on_policy:
            logging_output["on_policy_sentences"] = sample["target"].size(0) if on_policy else 0
        return loss, sample_size, logging_output

    def compute_kd_loss(self, lprobs: Tensor, student_logits: Tensor, teacher: TeacherTargets, T: float, ignore: Tensor,
                        reduce: bool = True) -> Tensor:  # fmt: skip
        """D(q^T, p^T) of ``--kd-divergence`` over the positions not in IGNORE (without the T^2 factor), for each
        form of TEACHER; every form is fused (one vocabulary-sized buffer, the gradient).

        Args:
            lprobs (Tensor): (B * T') x V, the student's log-probabilities at T = 1
            student_logits (Tensor): B x T x V
            teacher (TeacherTargets): full logits (one per teacher) or top-k ids and scores
        """
        kind, beta = self.kd_divergence, self.kd_beta
        student_logits = self._flat(student_logits)
        if teacher.topk_ids is not None:
            # renormalised at T: softmax(scores / T) over the k tokens (the fused loss takes the student's logits)
            q = F.log_softmax(self._flat(teacher.topk_scores).float() / T, dim=-1)
            return self._topk_divergence(student_logits, self._flat(teacher.topk_ids), q, T, ignore, reduce)
        if len(teacher.logits) == 1 and self.kd_topk == 0:
            # from the student's log-probs, which the NLL term keeps anyway (softmax(lprobs / T) equals
            # softmax(z / T)); the teacher's logits, popped, become the gradient's buffer
            logits = self._flat(teacher.logits.pop())
            if kind == "forward_kl":
                return tempered_kl_from_logits(lprobs, logits, T, ignore, reduce, overwrite_teacher=True)
            return tempered_divergence_from_logits(
                lprobs, logits, kind, beta, T, ignore_mask=ignore, reduce=reduce, overwrite_teacher=True
            )
        teacher_lprobs = tempered_log_probs([self._flat(x) for x in teacher.logits], T)  # an ensemble's mean
        teacher.logits = None
        if self.kd_topk > 0:
            ids, q = topk_log_probs(teacher_lprobs, min(self.kd_topk, teacher_lprobs.size(-1)))
            return self._topk_divergence(student_logits, ids, q, T, ignore, reduce)
        return tempered_divergence_from_logits(
            student_logits, teacher_lprobs, kind, beta, T, teacher_is_log_probs=True, ignore_mask=ignore,
            reduce=reduce, overwrite_teacher=True,
        )  # fmt: skip

    def _topk_divergence(self, student_logits, ids, q, T, ignore, reduce):
        if self.kd_divergence == "forward_kl":
            return tempered_topk_kl_from_logits(student_logits, ids, q, T, ignore, reduce)
        return tempered_divergence_from_logits(
            student_logits, q, self.kd_divergence, self.kd_beta, T, teacher_ids=ids, ignore_mask=ignore, reduce=reduce
        )

    def logging_output(self, model: BaseFairseqModel, net_output: Any, sample: Dict[str, Any], sample_size: int, loss: Tensor,
                       nll_loss: Tensor, kd_loss: Optional[Tensor], hidden_loss: Optional[Tensor]) -> Dict[str, Any]:  # fmt: skip
        out = {
            "loss": loss.data,
            "nll_loss": nll_loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
        if kd_loss is not None:
            out["kd_loss"] = kd_loss.data
        if hidden_loss is not None:
            out["cos_loss" if self.hidden_loss == "cosine" else "mse_loss"] = hidden_loss.data
        if self.report_accuracy:
            n_correct, total = self.compute_accuracy(model, net_output, sample)
            out["n_correct"] = utils.item(n_correct.data)
            out["total"] = utils.item(total.data)
        return out

    def select_tokens(self, lprobs: Tensor, target: Tensor, ignore_mask: Tensor) -> Optional[Tensor]:
        """The target positions that get the KD loss under --kd-selection: those where the student's
        cross-entropy on the reference token is highest (Wang et al., 2021)."""
        token_nll = -lprobs.detach().gather(-1, target.unsqueeze(-1)).squeeze(-1)
        if self.kd_selection == "batch":
            return select_top_tokens(token_nll, ignore_mask, self.kd_selection_ratio)
        return self.selection_queue.select(token_nll, ignore_mask, self.kd_selection_ratio)

    def _flat(self, x):
        # B x T x V (or x k) -> (B * T') x V, aligned with get_lprobs_and_target's output
        if self.ignore_prefix_size > 0:
            x = x[:, self.ignore_prefix_size :, :]
        return x.reshape(-1, x.size(-1))

    def compute_hidden_loss(self, net_output: Any, encoder_out: Any, teacher: TeacherTargets, sample: Dict[str, Any],
                            reduce: bool = True) -> Tensor:  # fmt: skip
        # decoder layer outputs: T x B x C each, entry 0 being the embeddings -> B x T' x C
        student_states = [h.transpose(0, 1)[:, self.ignore_prefix_size :] for h in net_output[1]["inner_states"][1:]]
        teacher_states = [h.transpose(0, 1)[:, self.ignore_prefix_size :] for h in teacher.decoder_states[1:]]
        target_pad = sample["target"][:, self.ignore_prefix_size :].eq(self.padding_idx)  # B x T'
        loss = self._paired_loss("decoder", student_states, teacher_states, target_pad, reduce)
        if self.cosine_encoder:
            if not reduce:
                raise ValueError("--cosine-encoder has no per-target-token value: use reduce=True")
            # S x B x C each, entry 0 being the embeddings, as for the decoder
            student_enc = encoder_out["encoder_states"][1:]
            teacher_enc = teacher.encoder_states[1:]
            source_pad = sample["net_input"]["src_tokens"].eq(self.padding_idx).transpose(0, 1)  # S x B
            loss = loss + self._paired_loss("encoder", student_enc, teacher_enc, source_pad, reduce)
        return loss

    def _paired_loss(self, stack, student_states, teacher_states, pad_mask, reduce):
        if len(student_states) == 0 or len(teacher_states) == 0:
            raise ValueError(
                f"the hidden-state loss found no per-layer {stack} states (a transformer encoder returns them only "
                "with return_all_hiddens=True)"
            )
        pairs = self.layer_pairs[stack] if self.layer_pairs else spread_layers(len(teacher_states), len(student_states))
        if len(pairs) != len(student_states) or max(pairs) >= len(teacher_states):
            raise ValueError(
                f"{stack} layer pairs {pairs} do not fit a student with {len(student_states)} layers and a teacher "
                f"with {len(teacher_states)}"
            )
        project = self.hidden_projections[stack] if self.hidden_projections and stack in self.hidden_projections else None
        loss_fn = HIDDEN_LOSSES[self.hidden_loss]
        losses = []
        for i, j in enumerate(pairs):
            states = student_states[i] if project is None else project(student_states[i])
            losses.append(loss_fn(states, teacher_states[j], pad_mask, reduce))
        return sum(losses) / len(losses)

    @classmethod
    def reduce_metrics(cls, logging_outputs: List[Dict[str, Any]]) -> None:
        """Aggregate logging outputs from data parallel training."""
        super().reduce_metrics(logging_outputs)
        ntokens = sum(log.get("ntokens", 0) for log in logging_outputs)
        if any("kd_loss" in log for log in logging_outputs):
            kd_sum = sum(log.get("kd_loss", 0) for log in logging_outputs)
            # per token that got the KD loss: all of them, or those chosen by --kd-selection
            kd_tokens = sum(log.get("kd_tokens", log.get("ntokens", 0)) for log in logging_outputs)
            metrics.log_scalar("kd_loss", kd_sum / max(kd_tokens, 1) / math.log(2), kd_tokens, round=3)
            if any("kd_tokens" in log for log in logging_outputs):
                metrics.log_scalar("kd_selected", kd_tokens / ntokens, ntokens, round=3)
        if any("on_policy_sentences" in log for log in logging_outputs):
            # the share of sentences whose targets were the student's own translations
            nsentences = sum(log.get("nsentences", 0) for log in logging_outputs)
            on_policy = sum(log.get("on_policy_sentences", 0) for log in logging_outputs)
            metrics.log_scalar("on_policy", on_policy / max(nsentences, 1), nsentences, round=3)
        for key in ("cos_loss", "mse_loss"):
            if any(key in log for log in logging_outputs):
                hidden_sum = sum(log.get(key, 0) for log in logging_outputs)
                metrics.log_scalar(key, hidden_sum / ntokens, ntokens, round=3)
