"""The methods of NeMo's NMT distillation guide, as this project runs them: one table that the demo, the
benchmarks, the recipes' tests and the docs all read.

Each :class:`Method` gives everything that makes a student of that method: its training data, its loss
(weights, temperature, label smoothing, cosine term), its teacher (none, live, or a top-k cache) and its
initialisation. ``guide`` says where in the guide each setting comes from (its section, the setting as it
is written there, and the line of the guide's text); ``not_in_guide`` names every setting the guide does
not give and why the value was chosen. Where the guide is ambiguous both readings are methods.

The guide's sections are quoted by their titles: "Hinton-style World-Level Distillation for NMT" and its
"EXAMPLE", "DistilBERT-style Distillation", "Sequence-level Distillation", "Sequence-Level Interpolation",
"Hybrid Distillation" and "Low Data Regime".

    python -m fairseq_kd.methods            # the table, as Markdown
"""

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .io import UserError

# What every student that learns from the teacher shares: the guide's scripts all set these.
GUIDE_TEMPERATURE = 1.0  # every script: TEMPERATURE=1.0 (lines 101, 369, 474)
GUIDE_KD_WEIGHT = 1.0  # every script: DISTILLATION_LOSS_WEIGHT=1.0 (lines 98, 366, 471)
GUIDE_LABEL_SMOOTHING = 0.0  # every script: model.label_smoothing=0.0 (lines 116, 294, 384, 493)
# "Hybrid Distillation": TEACHER_PREDICTIONS_PROB=0.34, GROUNDTRUTH_DATASET_PROB=0.66 (lines 477-478)
GUIDE_MIXTURE = (0.66, 0.34)  # (references, teacher's translations)
# "Low Data Regime": "5% of ground labels and pseudo labels (with a 1:2 mixture)" (line 541)
LOW_DATA_SHARE = 0.05
LOW_DATA_MIXTURE = (0.333333, 0.666667)  # (the 5% references, the teacher's translations of the rest)
# fairseq's usual recipe for a translation baseline (its examples train with --label-smoothing 0.1)
FAIRSEQ_LABEL_SMOOTHING = 0.1

LS_TEACHER_NOTE = (
    '"EXAMPLE" (line 88): "Label-smoothing is not recommended when training the teacher or student when '
    'performing distillation [Muller et al. 2019]"; every script sets model.label_smoothing=0.0'
)

# training data
REFERENCES = "references"  # the labelled training split
TEACHER = "teacher"  # the teacher's beam-search translations of the training sources
TEACHER_SAMPLED = "teacher_sampled"  # the same, sampled from the teacher's top-k tokens
MIXTURE = "mixture"  # references and teacher's translations, sampled with `mixture` probabilities
LOW_DATA = "low_data"  # 5% of the references and the teacher's translations of the other 95% of the sources
LOW_DATA_REFERENCES = "low_data_references"  # the same 5% of the references, alone
DATA_KINDS = (REFERENCES, TEACHER, TEACHER_SAMPLED, MIXTURE, LOW_DATA, LOW_DATA_REFERENCES)

# where the word-level KD targets come from
LIVE = "live"  # the teacher runs on every batch
TOPK_CACHE = "topk_cache"  # its top-k distributions, computed once (fairseq-kd-cache-topk)


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    data: str = REFERENCES
    label_smoothing: float = GUIDE_LABEL_SMOOTHING
    nll_weight: float = 1.0
    kd_weight: float = 0.0
    kd_temperature: float = GUIDE_TEMPERATURE
    cosine_weight: float = 0.0
    cosine_encoder: bool = False
    teacher: Optional[str] = None  # None, LIVE or TOPK_CACHE
    kd_topk: Optional[int] = None  # TOPK_CACHE: the cache's k (fairseq-kd-cache-topk --k)
    kd_divergence: str = "forward_kl"  # --kd-divergence (fairseq_kd/criterions/kd_losses.py)
    kd_beta: Optional[float] = None  # --kd-beta of jsd and skew_kl
    on_policy_fraction: float = 0.0  # --on-policy-fraction: the share of updates on the student's translations
    init_from_teacher: bool = False
    mixture: Optional[Tuple[float, float]] = None
    sampling_topk: Optional[int] = None  # TEACHER_SAMPLED: fairseq-kd-pseudolabel --sampling-topk
    guide: str = ""
    not_in_guide: str = ""

    def __post_init__(self):
        if self.data not in DATA_KINDS:
            raise ValueError(f"method {self.name}: unknown data {self.data!r}")
        if (self.kd_weight > 0 or self.cosine_weight > 0) != (self.teacher is not None):
            raise ValueError(f"method {self.name}: word-level KD or the cosine loss needs a teacher, and only they do")
        if self.cosine_weight > 0 and self.teacher != LIVE:
            raise ValueError(f"method {self.name}: the cosine loss needs the live teacher's hidden states")
        if (self.teacher == TOPK_CACHE) != (self.kd_topk is not None):
            raise ValueError(f"method {self.name}: kd_topk is the top-k cache's k, and only it has one")
        if (self.data in (MIXTURE, LOW_DATA)) != (self.mixture is not None):
            raise ValueError(f"method {self.name}: mixture probabilities belong to mixed data, and it needs them")
        if (self.data == TEACHER_SAMPLED) != (self.sampling_topk is not None):
            raise ValueError(f"method {self.name}: sampling_topk belongs to sampled pseudo-labels")
        if (self.kd_divergence != "forward_kl" or self.on_policy_fraction > 0) and not self.kd_weight > 0:
            raise ValueError(f"method {self.name}: a divergence or on-policy batches need word-level KD")
        if self.on_policy_fraction > 0 and self.teacher != LIVE:
            raise ValueError(f"method {self.name}: on-policy batches need the live teacher")

    @property
    def needs_kd_criterion(self) -> bool:
        return self.teacher is not None

    def criterion_flags(self) -> List[str]:
        """The criterion and its settings, as fairseq-train flags."""
        if not self.needs_kd_criterion:
            return ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", _num(self.label_smoothing)]
        flags = ["--criterion", "label_smoothed_cross_entropy_with_kd", "--label-smoothing", _num(self.label_smoothing)]
        flags += ["--nll-weight", _num(self.nll_weight), "--kd-weight", _num(self.kd_weight)]
        flags += ["--kd-temperature", _num(self.kd_temperature)]
        if self.kd_divergence != "forward_kl":
            flags += ["--kd-divergence", self.kd_divergence]
        if self.kd_beta is not None:
            flags += ["--kd-beta", _num(self.kd_beta)]
        if self.cosine_weight:
            flags += ["--cosine-weight", _num(self.cosine_weight)] + (["--cosine-encoder"] if self.cosine_encoder else [])
        return flags

    def flags(self, paths: "MethodPaths") -> List[str]:
        """fairseq-train flags for this method's data, task, teacher, criterion and initialisation; the
        data directory (``paths.data``) comes first. Architecture and optimisation are the caller's."""
        # the baseline too: translation_kd is fairseq's translation task plus what KD needs, and it cuts the
        # batches anew every epoch, so that a student resumed from a checkpoint repeats an uninterrupted one
        flags = [paths.data, "--task", "translation_kd"]
        train = {
            REFERENCES: None,
            TEACHER: [paths.pseudo],
            TEACHER_SAMPLED: [paths.sampled],
            MIXTURE: [paths.data, paths.pseudo],
            LOW_DATA: [paths.low_references, paths.low_pseudo],
            LOW_DATA_REFERENCES: [paths.low_references],
        }[self.data]
        if train is not None:
            if None in train:
                raise ValueError(f"method {self.name} needs the data-bins {train}: some are not given")
            flags += ["--train-mixture", ",".join(train)]
        if self.mixture is not None:
            flags += ["--train-mixture-probs", ",".join(_num(p) for p in self.mixture)]
        if self.teacher == LIVE or self.init_from_teacher:
            if paths.teacher is None:
                raise ValueError(f"method {self.name} needs the teacher's checkpoint")
            flags += ["--teacher-path", paths.teacher]
        if self.teacher == TOPK_CACHE:
            if paths.topk_cache is None:
                raise ValueError(f"method {self.name} needs a top-k cache of the teacher (fairseq-kd-cache-topk)")
            flags += ["--teacher-topk-cache", paths.topk_cache]
        if self.init_from_teacher:
            flags += ["--init-from-teacher"]
        if self.on_policy_fraction > 0:
            flags += ["--on-policy-fraction", _num(self.on_policy_fraction)]
        return flags + self.criterion_flags()


@dataclass
class MethodPaths:
    """The files a method's flags refer to."""

    data: str  # the references' data-bin (dictionaries, valid and test)
    teacher: Optional[str] = None
    pseudo: Optional[str] = None  # data-bin of the teacher's beam translations of the training sources
    sampled: Optional[str] = None  # data-bin of its top-k-sampled translations
    topk_cache: Optional[str] = None
    low_references: Optional[str] = None  # data-bin of the low-data regime's 5% of the references
    low_pseudo: Optional[str] = None  # data-bin of the teacher's translations of the other 95% of the sources


def _num(x):
    return f"{x:g}" if isinstance(x, float) else str(x)


_WORD_KD_GUIDE = (
    '"Hinton-style ... EXAMPLE" (lines 97-101): DISTILLATION_LOSS_WEIGHT=1.0, STUDENT_TRAIN_LOSS_WEIGHT={nll}, '
    'TEMPERATURE=1.0, model.label_smoothing=0.0; its prose (line 88): "using alpha_NLL=1.0 and '
    'alpha_WORD-LEVEL=1.0", and (line 65) "temperatures [0.5, 1.0] ... with alpha_WORD-KD=1.0"'
)
_MIXTURE_GUIDE = (
    '"Hybrid Distillation" (lines 477-478): TEACHER_PREDICTIONS_PROB=0.34, GROUNDTRUTH_DATASET_PROB=0.66, given to '
    "model.train_ds.concat_sampling_probabilities (line 515; the interpolation script uses the same variables, "
    "line 406, without setting them)"
)
_INIT_GUIDE = (
    '"DistilBERT-style Distillation" (line 163): "sample 1 of every n_enc layers from the encoder and 1 of every '
    'n_dec layers from the decoder"'
)
_INIT_NOTE = (
    "the student's width equals the teacher's (the initialisation copies whole layers); the guide \"do[es] not "
    'recommend DistilBERT initialization for NMT" (line 169): it is measured to test that claim'
)

# (name suffix, description, --kd-divergence, --kd-beta, source): the divergences beyond forward KL
_DIVERGENCE_METHODS = [
    ("rkl", "reverse KL", "reverse_kl", None, "reverse KL from Gu et al. 2024 (MiniLLM, https://arxiv.org/abs/2306.08543)"),
    ("jsd", "JSD(0.5)", "jsd", 0.5, "the generalised JSD of Agarwal et al. 2024 (GKD, https://arxiv.org/abs/2306.13649) at "
     "beta 0.5, TRL's default"),
    ("tvd", "total variation", "tvd", None, "total variation distance from Wen et al. 2023 (f-DISTILL, "
     "https://arxiv.org/abs/2307.15190)"),
    ("skl", "skew KL(0.1)", "skew_kl", 0.1, "skew KL of Ko et al. 2024 (DistiLLM, https://arxiv.org/abs/2402.03898) at "
     "its alpha 0.1"),
]  # fmt: skip

METHODS: Dict[str, Method] = {
    m.name: m
    for m in [
        Method(
            "baseline",
            "NLL on the references (fairseq's usual recipe, label smoothing 0.1)",
            label_smoothing=FAIRSEQ_LABEL_SMOOTHING,
            not_in_guide="the baseline learns nothing from the teacher, so the guide's advice against label smoothing "
            "does not apply: fairseq's usual --label-smoothing 0.1 makes it the strong (fair) baseline",
        ),
        Method(
            "word_kd",
            "word-level KD, KL only (alpha_NLL 0, as the guide's script)",
            nll_weight=0.0,
            kd_weight=GUIDE_KD_WEIGHT,
            teacher=LIVE,
            guide=_WORD_KD_GUIDE.format(nll="0.0"),
            not_in_guide="the guide is ambiguous about alpha_NLL: its script has 0.0, its prose 1.0; this is the script's "
            "reading (word_kd_nll the prose's)",
        ),
        Method(
            "word_kd_nll",
            "word-level KD + NLL (alpha_NLL 1, as the guide's prose)",
            nll_weight=1.0,
            kd_weight=GUIDE_KD_WEIGHT,
            teacher=LIVE,
            guide=_WORD_KD_GUIDE.format(nll="0.0"),
            not_in_guide="the prose's reading of alpha_NLL (1.0); word_kd is the script's (0.0)",
        ),
        Method(
            "word_kd_topk",
            "word-level KD + NLL from a top-k cache of the teacher (k = 8)",
            nll_weight=1.0,
            kd_weight=GUIDE_KD_WEIGHT,
            teacher=TOPK_CACHE,
            kd_topk=8,
            guide=_WORD_KD_GUIDE.format(nll="0.0"),
            not_in_guide="the top-k cache is not in the guide (it computes the teacher's distributions once, keeping the "
            "8 most likely tokens); k = 8 as in Tan et al. 2019's top-k KD; the other settings are word_kd_nll's",
        ),
        Method(
            "seq_kd",
            "sequence-level KD: NLL on the teacher's beam translations",
            data=TEACHER,
            guide='"Sequence-level Distillation" (line 277): "Train the student with NLL on this teacher-generated '
            'dataset"; beam search (line 208); its script sets model.label_smoothing=0.0 (line 294)',
        ),
        Method(
            "seq_kd_sampled",
            "sequence-level KD on top-k-sampled translations (k = 10)",
            data=TEACHER_SAMPLED,
            sampling_topk=10,
            guide='"Sequence-level Distillation" (line 208): top-k sampling "did not perform as well as the beam search '
            'method"; measured to test that claim',
            not_in_guide="the guide does not give its k (translate_ddp.py's --topk); k = 10 was chosen: small enough that "
            "the samples stay translations, large enough to differ from beam search",
        ),
        Method(
            "interpolation",
            "sequence-level interpolation: NLL on references (0.66) and teacher's translations (0.34)",
            data=MIXTURE,
            mixture=GUIDE_MIXTURE,
            guide='"Sequence-Level Interpolation" (line 356): the training data "augment[ed] ... with this teacher-generated '
            'data by sampling examples from datasets with different probabilities"; ' + _MIXTURE_GUIDE,
            not_in_guide="the interpolation script (lines 366-367) sets DISTILLATION_LOSS_WEIGHT=1.0 and "
            "STUDENT_TRAIN_LOSS_WEIGHT=1.0, the same as hybrid's; the prose's interpolation has no word-level term "
            "(hybrid is defined as interpolation plus word-level KD), so this method is NLL only",
        ),
        Method(
            "hybrid",
            "hybrid: interpolation + word-level KD (alpha_NLL 1, alpha_KD 1)",
            data=MIXTURE,
            mixture=GUIDE_MIXTURE,
            nll_weight=1.0,
            kd_weight=GUIDE_KD_WEIGHT,
            teacher=LIVE,
            guide='"Hybrid Distillation" (lines 471-478): DISTILLATION_LOSS_WEIGHT=1.0, STUDENT_TRAIN_LOSS_WEIGHT=1.0, '
            "TEMPERATURE=1.0, model.label_smoothing=0.0 (line 493); " + _MIXTURE_GUIDE,
        ),
        Method(
            "distilbert",
            "DistilBERT-style: init from 1 of every n teacher layers + NLL + word-level KD + cosine",
            nll_weight=1.0,
            kd_weight=GUIDE_KD_WEIGHT,
            cosine_weight=1.0,
            cosine_encoder=True,
            teacher=LIVE,
            init_from_teacher=True,
            guide=_INIT_GUIDE + "; the triple loss alpha_NLL L_NLL + alpha_KD L_KD + alpha_cos L_cos (line 167); "
            "distill_encoder=True in every script (line 149)",
            not_in_guide="the guide gives no weights for this run: alpha_NLL 1 and alpha_KD 1 are its word-level "
            "example's prose, T 1 and label smoothing 0 every script's; alpha_cos = 1 weighs each token's cosine loss "
            "(between 0 and 2) like its NLL; " + _INIT_NOTE,
        ),
        Method(
            "init_seq_kd",
            "DistilBERT-style init + sequence-level KD (NLL on the teacher's translations)",
            data=TEACHER,
            init_from_teacher=True,
            guide=_INIT_GUIDE + '; "Sequence-level Distillation" (line 277)',
            not_in_guide="the guide does not combine the initialisation with sequence-level KD; " + _INIT_NOTE,
        ),
        Method(
            "low_data",
            "low-data regime: 5% of the references + teacher's translations of the rest (1:2), hybrid",
            data=LOW_DATA,
            mixture=LOW_DATA_MIXTURE,
            nll_weight=1.0,
            kd_weight=GUIDE_KD_WEIGHT,
            teacher=LIVE,
            guide='"Low Data Regime" (line 541): "Using only 5% of ground labels and pseudo labels (with a 1:2 mixture) at '
            "a temperature of 1 with hybrid distillation\"; hybrid's weights",
            not_in_guide='"1:2" is read as ground truth 1 : pseudo-labels 2; the pseudo-labels are the teacher\'s '
            "translations of the other 95% of the training sources (their references unused), as monolingual data",
        ),
        Method(
            "low_data_baseline",
            "baseline on the low-data regime's 5% of the references only",
            data=LOW_DATA_REFERENCES,
            label_smoothing=FAIRSEQ_LABEL_SMOOTHING,
            guide='"Low Data Regime" (line 541): the comparison the guide draws',
            not_in_guide="the baseline's recipe (label smoothing 0.1) on the same 5% as low_data",
        ),
        # an ablation of the DistilBERT-style student: what it owes to its initialisation, to word-level KD
        # and to the cosine loss (with baseline, distilbert and init_seq_kd); init_kd is also the recommended recipe
        Method(
            "init_nll",
            "DistilBERT-style init + NLL on the references (ablation)",
            init_from_teacher=True,
            guide=_INIT_GUIDE,
            not_in_guide="an ablation, not a method of the guide: label smoothing 0 as for every student that learns "
            "from the teacher (here through its initialisation)",
        ),
        Method(
            "init_kd",
            "DistilBERT-style init + NLL + word-level KD (distilbert without the cosine loss)",
            nll_weight=1.0,
            kd_weight=GUIDE_KD_WEIGHT,
            teacher=LIVE,
            init_from_teacher=True,
            guide=_INIT_GUIDE + "; word-level KD as word_kd_nll",
            not_in_guide="distilbert without its cosine loss, not a method of the guide; the demo's recommended "
            "recipe: the best student of the full and the default preset on valid BLEU (benchmarks/results/README.md)",
        ),
        # beyond the guide: init_kd with another divergence (init_kd_ and the divergence's short name), or with
        # updates on the student's own translations; measured against init_kd in benchmarks/divergences.py
        *[
            Method(
                f"init_kd_{short}",
                f"init_kd with {title} instead of forward KL",
                nll_weight=1.0,
                kd_weight=GUIDE_KD_WEIGHT,
                teacher=LIVE,
                init_from_teacher=True,
                kd_divergence=divergence,
                kd_beta=beta,
                guide=_INIT_GUIDE + "; word-level KD as word_kd_nll, with another divergence",
                not_in_guide=f"the guide's word-level KD is forward KL only; {source}; every other setting is init_kd's",
            )
            for short, title, divergence, beta, source in _DIVERGENCE_METHODS
        ],
        Method(
            "init_kd_on_policy",
            "init_kd with half of the updates on the student's own sampled translations (on-policy, GKD)",
            nll_weight=1.0,
            kd_weight=GUIDE_KD_WEIGHT,
            teacher=LIVE,
            init_from_teacher=True,
            on_policy_fraction=0.5,
            guide=_INIT_GUIDE + "; word-level KD as word_kd_nll",
            not_in_guide="on-policy distillation is not in the guide: Agarwal et al. 2024 (GKD, "
            "https://arxiv.org/abs/2306.13649); lambda 0.5 (half of the updates on the student's translations, sampled at "
            "temperature 1, with the divergence alone; the other half init_kd's) was chosen between GKD's supervised "
            "(0) and fully on-policy (1) ends; forward KL, so that only the prefixes differ from init_kd",
        ),
    ]
}

# the methods beyond the guide: the ablation's init_nll, the recommended init_kd and its variants
BEYOND_GUIDE = ["init_nll", "init_kd"] + [f"init_kd_{short}" for short, *_ in _DIVERGENCE_METHODS] + ["init_kd_on_policy"]

# the teacher: NLL on the references, without label smoothing
TEACHER_LABEL_SMOOTHING = GUIDE_LABEL_SMOOTHING


def get(name: str) -> Method:
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}: choose among {', '.join(METHODS)}")
    return METHODS[name]


def table() -> str:
    """Every method's settings, as a Markdown table."""
    keys = ["data", "mixture", "label_smoothing", "nll_weight", "kd_weight", "kd_temperature", "cosine_weight",
            "teacher", "kd_topk", "init_from_teacher", "sampling_topk", "kd_divergence", "kd_beta",
            "on_policy_fraction"]  # fmt: skip
    lines = ["| method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for m in METHODS.values():
        values = dataclasses.asdict(m)
        lines.append(f"| {m.name} | " + " | ".join("" if values[k] is None else str(values[k]) for k in keys) + " |")
    lines += ["", "Where each setting comes from:", ""]
    for m in METHODS.values():
        lines.append(f"- **{m.name}** ({m.summary}). Guide: {m.guide or 'nothing (not a method of the guide)'}."
                     + (f" Not in the guide: {m.not_in_guide}." if m.not_in_guide else ""))  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> None:
    argparse.ArgumentParser(description="The distillation methods' settings, traced to NeMo's guide").parse_args(argv)
    print(table(), end="")


if __name__ == "__main__":
    main()
