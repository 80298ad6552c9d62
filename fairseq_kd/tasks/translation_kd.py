import atexit
import importlib.util
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
from fairseq import utils
from fairseq.criterions import FairseqCriterion
from fairseq.data import Dictionary
from fairseq.data.multilingual.sampled_multi_dataset import SampledMultiDataset
from fairseq.models import BaseFairseqModel, FairseqEncoderDecoderModel
from fairseq.models.transformer import TransformerModelBase
from fairseq.optim import FairseqOptimizer
from fairseq.optim.amp_optimizer import AMPOptimizer
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationTask, load_langpair_dataset

from ..io import split_models
from ..models.student_init import spread_layers
from ..teacher import (
    TeacherError,
    TeacherTargets,
    check_output_layer,
    dictionary_difference,
    hidden_sizes,
    layer_counts,
    load_teacher,
    run_teachers,
)
from ..topk_cache import TopKCache, TopKCacheDataset, TopKCacheError, split_identity
from . import on_policy
from .mixture import parse_mixture
from .translation_kd_config import TranslationKDConfig

logger = logging.getLogger(__name__)


def check_not_tpu_without_xla(tpu: bool) -> None:
    """fairseq 0.12's --bf16 (and --memory-efficient-bf16) is a TPU option: it implies --tpu, and the
    trainer then asks torch_xla for its device, which fails with an AttributeError on 'xla_device' after
    the task, the model and the teacher have been built. Say so before that, where no TPU can be used."""
    if tpu and importlib.util.find_spec("torch_xla") is None:
        raise ValueError(
            "--bf16 in fairseq 0.12 means training on a TPU (it implies --tpu), and torch_xla is not installed: "
            "on GPUs use --fp16 or --amp instead (the teacher runs in the student's dtype), on CPUs drop --bf16"
        )


def _destroy_process_group_at_exit():
    """fairseq-train never destroys its process group. With gloo, a process that exits with the group
    alive can abort (SIGABRT) while the interpreter shuts down, when gloo's threads release tensors they
    still hold: the run is complete, but its exit status says it crashed. Destroying the group while the
    interpreter is intact avoids that."""
    if (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and not _destroy_process_group_at_exit.registered
    ):
        atexit.register(lambda: torch.distributed.is_initialized() and torch.distributed.destroy_process_group())
        _destroy_process_group_at_exit.registered = True


_destroy_process_group_at_exit.registered = False


@register_task("translation_kd", dataclass=TranslationKDConfig)
class TranslationKDTask(TranslationTask):
    """
    Translation with knowledge distillation from a frozen teacher (or ensemble of teachers).

    The teacher is loaded when the student is built for training, kept on the task (never inside
    the student, so it is not saved in checkpoints, not wrapped for data parallelism and not seen by
    the optimizer), run in eval mode without gradients on each batch, and its output handed to the
    criterion as ``sample["teacher"]`` (:class:`~fairseq_kd.teacher.TeacherTargets`). It follows the
    student's device and dtype. With ``--teacher-topk-cache`` the training split's batches carry the cache's
    top-k rows instead, looked up by the data loader.

    Args:
        src_dict (~fairseq.data.Dictionary): dictionary for the source language
        tgt_dict (~fairseq.data.Dictionary): dictionary for the target language

    .. note::

        The task is compatible with :mod:`fairseq-train`, :mod:`fairseq-generate`,
        :mod:`fairseq-validate` and :mod:`fairseq-interactive`; reloading a student checkpoint
        never loads (or needs) the teacher.
    """

    cfg: TranslationKDConfig

    def __init__(self, cfg: TranslationKDConfig, src_dict: Dictionary, tgt_dict: Dictionary):
        super().__init__(cfg, src_dict, tgt_dict)
        check_not_tpu_without_xla(getattr(cfg, "tpu", False))
        self.mixture = parse_mixture(cfg.train_mixture, cfg.train_mixture_probs)
        if cfg.teacher_topk_cache and cfg.teacher_path:
            raise ValueError("--teacher-topk-cache replaces the live teacher: give it or --teacher-path, not both")
        if cfg.teacher_topk_cache and self.mixture:
            raise ValueError(
                "--teacher-topk-cache covers one binarized training split; it cannot follow a --train-mixture "
                "(binarize the mixture as one corpus, or use --teacher-path)"
            )
        on_policy.check_on_policy_settings(cfg.on_policy_fraction, str(cfg.on_policy_decoding), cfg.on_policy_temperature)
        self.topk_cache = None
        self.teachers = []
        self._on_policy_generator = None
        # what the criterion needs to know of the student: widths, depths, and the teacher layer
        # each student layer was initialised from (if it was)
        self._student_hidden_sizes = None
        self._student_layer_counts = None
        self._student_init_layers = None
        _destroy_process_group_at_exit()

    @property
    def teacher_kind(self) -> Optional[str]:
        """What this task gives a KD criterion: "live" (--teacher-path), "topk_cache" or None."""
        return "live" if self.cfg.teacher_path else "topk_cache" if self.cfg.teacher_topk_cache else None

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs: Any) -> None:
        """Loads a split; with ``--train-mixture``, the training split is a
        :class:`~fairseq.data.multilingual.sampled_multi_dataset.SampledMultiDataset` that draws each
        epoch's examples from the mixture's corpora with the given probabilities."""
        if split == self.cfg.train_subset and self.cfg.teacher_topk_cache:
            if self.topk_cache is None:
                paths = utils.split_paths(self.cfg.data)
                if len(paths) > 1:
                    raise TopKCacheError("--teacher-topk-cache covers one data-bin; the data is split over several")
                identity = split_identity(paths[0], split, self.cfg.source_lang, self.cfg.target_lang)
                self.topk_cache = TopKCache(self.cfg.teacher_topk_cache, identity)
                logger.info(
                    f"word-level KD against the top-{self.topk_cache.k} cache {self.cfg.teacher_topk_cache} (no teacher in memory)"
                )
            super().load_dataset(split, epoch, combine, **kwargs)
            # the batches carry their cache rows, looked up by the data loader (the cache covers training only:
            # validation reports the NLL without a KD term)
            self.datasets[split] = TopKCacheDataset(self.datasets[split], self.topk_cache, self.tgt_dict.pad())
            return
        if split != self.cfg.train_subset or self.mixture is None:
            return super().load_dataset(split, epoch, combine, **kwargs)
        paths, probs = self.mixture
        datasets = OrderedDict()
        for path in paths:
            self._check_mixture_member(path, split)
            datasets[path] = load_langpair_dataset(
                path,
                split,
                self.cfg.source_lang,
                self.src_dict,
                self.cfg.target_lang,
                self.tgt_dict,
                combine=combine,
                dataset_impl=self.cfg.dataset_impl,
                upsample_primary=self.cfg.upsample_primary,
                left_pad_source=self.cfg.left_pad_source,
                left_pad_target=self.cfg.left_pad_target,
                max_source_positions=self.cfg.max_source_positions,
                max_target_positions=self.cfg.max_target_positions,
                load_alignments=self.cfg.load_alignments,
                truncate_source=self.cfg.truncate_source,
                num_buckets=self.cfg.num_batch_buckets,
                shuffle=True,
                pad_to_multiple=self.cfg.required_seq_len_multiple,
            )
        self.datasets[split] = SampledMultiDataset(
            datasets,
            sampling_ratios=probs,
            seed=self.cfg.seed,
            epoch=epoch,
            split=split,
            # every member is a LanguagePairDataset with our dictionaries: one collater fits all
            shared_collater=True,
        )
        sizes = ", ".join(
            f"{path} {len(d):,} x {p if probs else 'size'}" for (path, d), p in zip(datasets.items(), probs or paths)
        )
        logger.info(f"{split}: a mixture of {sizes}; {len(self.datasets[split]):,} examples per epoch")

    def _check_mixture_member(self, path, split):
        src, tgt = self.cfg.source_lang, self.cfg.target_lang
        for lang, ours in [(src, self.src_dict), (tgt, self.tgt_dict)]:
            dict_path = os.path.join(path, f"dict.{lang}.txt")
            if not os.path.isfile(dict_path):
                raise FileNotFoundError(
                    f"--train-mixture member {path!r} has no {dict_path!r}: is it a data-bin made by fairseq-preprocess?"
                )
            difference = dictionary_difference(ours, self.load_dictionary(dict_path))
            if difference is not None:
                raise ValueError(
                    f"--train-mixture member {path!r} was binarized with another {lang} dictionary than {self.cfg.data!r}: "
                    f"{difference}. Binarize it with fairseq-preprocess --srcdict/--tgtdict from the main data-bin"
                )
        prefix = os.path.join(path, f"{split}.{src}-{tgt}.")
        for lang in (src, tgt):
            if not os.path.isfile(prefix + lang + ".idx"):
                raise FileNotFoundError(
                    f"--train-mixture member {path!r} has no {split} split for {src}-{tgt} ({prefix + lang}.idx)"
                )

    def build_model(self, cfg: Any, from_checkpoint: bool = False) -> BaseFairseqModel:
        """Builds the student and, when training starts (not when a checkpoint is reloaded for
        generation or validation), loads the teacher(s) given by ``--teacher-path`` and, with
        ``--init-from-teacher``, initialises the student from the (first) teacher's layers.

        A run that resumes from its ``checkpoint_last.pt`` also builds the model this way; fairseq
        then loads the checkpoint's weights (a strict load of every tensor) over the initialised
        ones, so the resumed student continues its own weights."""
        model = super().build_model(cfg, from_checkpoint)
        if from_checkpoint:
            return model
        init_from_teacher = getattr(cfg, "init_from_teacher", False)
        if init_from_teacher and not self.cfg.teacher_path:
            raise ValueError("--init-from-teacher needs a teacher: add --teacher-path TEACHER.pt")
        if self.cfg.teacher_path:
            self._student_hidden_sizes = hidden_sizes(model)
            self._student_layer_counts = layer_counts(model)
            check_output_layer(model, "student")
            self.teachers = [self.load_teacher(path) for path in split_models(self.cfg.teacher_path)]
        if init_from_teacher:
            teacher = self.teachers[0]
            if not isinstance(teacher, TransformerModelBase):
                raise TeacherError(
                    f"--init-from-teacher copies transformer layers, but the teacher is a {type(teacher).__name__}: "
                    "train the student without --init-from-teacher"
                )
            if len(self.teachers) > 1:
                logger.info("--init-from-teacher: initialising the student from the first teacher of the ensemble")
            self._student_init_layers = model.teacher_layers(teacher)
            model.init_from_teacher(teacher, lambda: self.calibration_sample(cfg))
        return model

    def calibration_sample(self, cfg: Any) -> Iterator[Dict[str, torch.Tensor]]:
        """One-sentence ``net_input`` dicts of ``--init-calibration-sentences`` training examples drawn with
        ``--seed``: what a narrower student's units are chosen on. The training split is loaded for it here;
        fairseq loads it again for training."""
        split = self.cfg.train_subset
        self.load_dataset(split)
        dataset = self.datasets[split]
        count = min(cfg.init_calibration_sentences, len(dataset))
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(getattr(cfg, "seed", 1)))
        logger.info(f"--init-width-selection importance: the teacher's activations on {count:,} {split} sentences")
        for i in order[:count].tolist():
            yield dataset.collater([dataset[i]])["net_input"]

    def load_teacher(self, path: str) -> FairseqEncoderDecoderModel:
        """The frozen teacher of checkpoint PATH, checked against this task (:func:`fairseq_kd.teacher.load_teacher`)."""
        return load_teacher(self, path, self.cfg.teacher_data)

    def build_criterion(self, cfg: Any, from_checkpoint: bool = False) -> FairseqCriterion:
        """Builds the criterion and checks that it and the teacher fit each other."""
        criterion = super().build_criterion(cfg, from_checkpoint)
        if self.cfg.on_policy_fraction > 0 and not from_checkpoint:
            if self.teacher_kind != "live":
                raise ValueError(
                    "--on-policy-fraction needs the live teacher (--teacher-path): it scores the student's own "
                    "translations, which no top-k cache holds"
                )
            if not getattr(criterion, "kd_weight", 0) > 0:
                raise ValueError(
                    "--on-policy-fraction trains on the teacher's distributions over the student's translations: use "
                    "--criterion label_smoothed_cross_entropy_with_kd with --kd-weight > 0"
                )
        if self.cfg.teacher_topk_cache and not from_checkpoint and not getattr(criterion, "needs_teacher", False):
            raise ValueError(
                "--teacher-topk-cache is set but the criterion does not use it: use --criterion "
                "label_smoothed_cross_entropy_with_kd with --kd-weight > 0 (or drop the cache)"
            )
        if not self.teachers:
            return criterion
        if not getattr(criterion, "needs_teacher", False):
            if self._student_init_layers is not None and not from_checkpoint:
                # the teacher was wanted only as the student's starting point: it has served, free it
                logger.info(
                    f"the teacher initialised the student and is not used by criterion {type(criterion).__name__}: "
                    "training without it"
                )
                self.teachers = []
                return criterion
            raise ValueError(
                f"--teacher-path is set but criterion {type(criterion).__name__} does not use a teacher: use "
                "--criterion label_smoothed_cross_entropy_with_kd with --kd-weight > 0, or --init-from-teacher "
                "(model transformer_student) to only start from it, or drop --teacher-path"
            )
        if getattr(criterion, "cosine_weight", 0) > 0:
            teacher = self.teachers[0]
            teacher_layers, student_layers = layer_counts(teacher), self._student_layer_counts
            if teacher_layers is None or student_layers is None:
                raise ValueError(
                    "--cosine-weight matches the hidden states of transformer layers, but the "
                    f"{'teacher' if teacher_layers is None else 'student'} has no encoder/decoder layer stacks"
                )
            layer_pairs = self._student_init_layers or {
                stack: spread_layers(teacher_layers[stack], student_layers[stack]) for stack in ("encoder", "decoder")
            }
            criterion.setup_hidden_matching(self._student_hidden_sizes, hidden_sizes(teacher), layer_pairs)
            for stack, pairs in criterion.layer_pairs.items():
                logger.info(
                    f"hidden-state loss: student {stack} layers 0..{len(pairs) - 1} <-> teacher {stack} layers {pairs}"
                    + (
                        " (learned width projection)"
                        if criterion.hidden_projections and stack in criterion.hidden_projections
                        else ""
                    )
                )
        return criterion

    def add_teacher_targets(self, sample: Dict[str, Any], model: BaseFairseqModel, criterion: FairseqCriterion,
                            optimizer: Optional[FairseqOptimizer] = None) -> None:  # fmt: skip
        """Puts the batch's :class:`~fairseq_kd.teacher.TeacherTargets` in ``sample["teacher"]``: the live
        teachers' output, in the student's device and dtype, as the criterion requests it; or the cache rows
        that the data loader attached."""
        request = criterion.teacher_request() if self.teachers and hasattr(criterion, "teacher_request") else None
        if request is not None:
            p = next(model.parameters())
            for teacher in self.teachers:
                t = next(teacher.parameters())
                if (t.device, t.dtype) != (p.device, p.dtype):
                    teacher.to(device=p.device, dtype=p.dtype)
            autocast = isinstance(optimizer, AMPOptimizer)
            sample["teacher"] = run_teachers(self.teachers, sample["net_input"], autocast=autocast, **request)
        elif "teacher_topk" in sample:
            ids, scores = sample.pop("teacher_topk")
            sample["teacher"] = TeacherTargets(topk_ids=ids, topk_scores=scores)

    def train_step(self, sample: Dict[str, Any], model: BaseFairseqModel, criterion: FairseqCriterion,
                   optimizer: FairseqOptimizer, update_num: int, ignore_grad: bool = False) -> Tuple[torch.Tensor, int, Dict[str, Any]]:  # fmt: skip
        if self.on_policy(update_num):
            sample = self.student_translations(sample, model)
        self.add_teacher_targets(sample, model, criterion, optimizer)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def on_policy(self, update_num: int) -> bool:
        """Whether update UPDATE_NUM trains on the student's own translations (:func:`.on_policy.draw`)."""
        return on_policy.draw(self.cfg.on_policy_fraction, self.cfg.seed, update_num)

    def student_translations(self, sample: Dict[str, Any], model: BaseFairseqModel) -> Dict[str, Any]:
        """SAMPLE with the student's own translations as target (:func:`.on_policy.student_translations`)."""
        if self._on_policy_generator is None:
            self._on_policy_generator = on_policy.generator(self, model, self.cfg)
        return on_policy.student_translations(self._on_policy_generator, sample, model, self.tgt_dict)

    def valid_step(
        self, sample: Dict[str, Any], model: BaseFairseqModel, criterion: FairseqCriterion
    ) -> Tuple[torch.Tensor, int, Dict[str, Any]]:
        self.add_teacher_targets(sample, model, criterion)
        return super().valid_step(sample, model, criterion)
