"""The translation_kd task's settings: fairseq's translation task's, and the teacher's (a live teacher or
ensemble, its top-k cache), the mixture of corpora, the student's initialisation and the on-policy batches."""

from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import ChoiceEnum
from fairseq.tasks.translation import TranslationConfig
from omegaconf import II

ON_POLICY_DECODING_CHOICES = ChoiceEnum(["sample", "greedy"])


@dataclass
class TranslationKDConfig(TranslationConfig):
    # options for the teacher
    teacher_path: Optional[str] = field(
        default=None,
        metadata={
            "help": "trained fairseq translation checkpoint used as a frozen teacher; several paths "
            "separated by ':' form an ensemble whose distributions are averaged"
        },
    )
    teacher_data: Optional[str] = field(
        default=None,
        metadata={
            "help": "directory holding the teacher's dict.SRC.txt and dict.TGT.txt, to check that teacher "
            "and student share their dictionaries (default: the data directory recorded in the teacher checkpoint)"
        },
    )
    teacher_topk_cache: Optional[str] = field(
        default=None,
        metadata={
            "help": "a top-k cache of the teacher's distributions on the training split (fairseq-kd-cache-topk): "
            "word-level KD against it, with no teacher in memory (instead of --teacher-path)"
        },
    )
    # options for training on a mixture of corpora
    train_mixture: Optional[str] = field(
        default=None,
        metadata={
            "help": "comma-separated data-bins whose training splits are mixed into one training set, e.g. the "
            "references' and the teacher's (pseudo-labelled) data; each must be binarized with this task's "
            "dictionaries. The data directory still gives the dictionaries and the validation split"
        },
    )
    train_mixture_probs: Optional[str] = field(
        default=None,
        metadata={
            "help": "comma-separated sampling probabilities of the --train-mixture data-bins, in the same order, "
            "summing to 1: the share of each in every epoch's training examples (default: proportional to size)"
        },
    )
    # fairseq 0.12 cuts the training batches once, seeded with the epoch the batch iterator is first built at
    # (seed + epoch, then reused), so a run resumed at epoch k > 1 batched otherwise than one that never
    # stopped. Cut anew every epoch, seeded with that epoch, a resumed run repeats the uninterrupted one
    # exactly (tests/test_scale.py). fairseq's own name and meaning, as its audio tasks have it.
    rebuild_batches: bool = field(
        default=True,
        metadata={"help": "cut the training batches anew at every epoch, so that a resumed run repeats an "
                  "uninterrupted one (the flag turns it off)"},
    )  # fmt: skip
    # on-policy distillation (Agarwal et al. 2024, GKD)
    on_policy_fraction: float = field(
        default=0.0,
        metadata={
            "help": "the probability that an update's targets are the student's own translations of its sources (made "
            "without gradients in the training step), with word-level KD to the teacher on the student's prefixes and "
            "no NLL term (GKD's lambda; 0: the references, as without it). Needs word-level KD (--kd-weight > 0)"
        },
    )
    on_policy_decoding: ON_POLICY_DECODING_CHOICES = field(
        default="sample",
        metadata={
            "help": "how the student translates for --on-policy-fraction: sample (at --on-policy-temperature) or greedy"
        },
    )
    on_policy_temperature: float = field(
        default=1.0, metadata={"help": "the student's sampling temperature for --on-policy-decoding sample"}
    )
    seed: int = II("common.seed")
    tpu: bool = II("common.tpu")
