"""A pipeline run's settings: the student's shape, its training, the run's other choices; their checks, and
their record in OUT/pipeline.json."""

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from .. import methods as M
from ..evaluate import Settings
from ..io import UserError, read_lines
from ..runs import PLUGIN_DIR
from .data import binarized_sentences

# settings a rerun may change: they decide what is measured, not how the models already made were made
# (CTranslate2's threads decide only the timing, and every cached translation is keyed on them)
RERUN_MAY_CHANGE = {"methods", "timing_rounds", "seeds", "seeded", "evaluation.threads"}
# a setting a rerun may raise, not lower: the students' budget. Each student continues from its last checkpoint,
# as fairseq-train does with a larger --max-update; the inverse_sqrt schedule does not depend on the budget, so
# the student continued to N updates is the one a run with N updates from the start makes
RERUN_MAY_RAISE = "training.max_update"
# settings added after runs were made: a run directory without them was made with these values
SINCE_ADDED = {"pseudolabel_engine": "fairseq", "student_from_teacher": False, "seeded": None}


class PipelineError(UserError):
    pass


# the layer layout of a model trained here unless told otherwise: fairseq's post-norm transformer, with one
# embedding matrix for source, target and output (the data has one joint dictionary)
DEFAULT_LAYOUT = ("--share-all-embeddings",)


@dataclass
class Shape:
    encoder_layers: int
    decoder_layers: int
    embed_dim: int
    ffn_dim: int
    heads: int

    def check(self) -> None:
        """One-line errors for a shape fairseq would take and then fail on (as --student's five numbers)."""
        values = (self.encoder_layers, self.decoder_layers, self.embed_dim, self.ffn_dim, self.heads)
        if min(values) < 1:
            raise PipelineError(f"--student {','.join(map(str, values))}: every number must be at least 1")
        if self.embed_dim % self.heads:
            raise PipelineError(
                f"--student: {self.heads} attention heads do not divide the width {self.embed_dim} (fairseq needs "
                "width = heads x head size)"
            )

    def flags(self, arch: str = "transformer", layout: Sequence[str] = DEFAULT_LAYOUT) -> List[Any]:
        """fairseq-train's architecture flags; LAYOUT: the layer layout's (post-norm layers with one shared
        embedding matrix by default; a given teacher's from :func:`fairseq_kd.models.student_init.layout_flags`)."""
        return [
            "--arch", arch, *layout,
            "--encoder-layers", self.encoder_layers, "--decoder-layers", self.decoder_layers,
            "--encoder-embed-dim", self.embed_dim, "--decoder-embed-dim", self.embed_dim,
            "--encoder-ffn-embed-dim", self.ffn_dim, "--decoder-ffn-embed-dim", self.ffn_dim,
            "--encoder-attention-heads", self.heads, "--decoder-attention-heads", self.heads,
        ]  # fmt: skip


@dataclass
class Training:
    """How every model of a run trains (fairseq-train's optimisation flags)."""

    max_update: int
    warmup_updates: int
    lr: float = 0.002
    max_tokens: int = 4096
    dropout: float = 0.1
    save_interval_updates: int = 200
    # stop when the valid NLL has not improved for this many validations (fairseq's --patience); None: never
    patience: Optional[int] = None
    # also log valid BLEU at every validation (fairseq's --eval-bleu, beam 4 and the evaluation's length bound),
    # its subword units removed as this says (sentencepiece, subword_nmt or none); None: no BLEU while training
    eval_bleu: Optional[str] = None

    def check(self) -> None:
        """One-line errors for optimisation values that fairseq would take and fail on later (a NaN at the first
        update, a batch that holds no sentence)."""
        if not 0 < self.lr < 1:
            raise PipelineError(f"--lr {self.lr}: give a learning rate in (0, 1), e.g. 0.002")
        if not 0 <= self.dropout < 1:
            raise PipelineError(f"--dropout {self.dropout}: give a probability in [0, 1)")
        if self.warmup_updates < 0:
            raise PipelineError(f"--warmup-updates {self.warmup_updates}: give 0 or more")
        if self.max_tokens < 64:
            raise PipelineError(f"--max-tokens {self.max_tokens}: a batch must hold at least one sentence; give 64 or more")
        if self.patience is not None and self.patience < 1:
            raise PipelineError(f"patience {self.patience}: give 1 or more validations (or none)")
        if self.eval_bleu not in (None, "sentencepiece", "subword_nmt", "none"):
            raise PipelineError(f"eval_bleu {self.eval_bleu!r}: give sentencepiece, subword_nmt or none (or None)")

    def flags(self, seed: int = 1) -> List[Any]:
        extra = [] if self.patience is None else ["--patience", self.patience]
        if self.eval_bleu:
            search = {"beam": 4, "max_len_a": Settings.max_len_a, "max_len_b": Settings.max_len_b}
            extra += ["--eval-bleu", "--eval-bleu-args", json.dumps(search), "--eval-bleu-detok", "space"]
            extra += [] if self.eval_bleu == "none" else ["--eval-bleu-remove-bpe", self.eval_bleu]
        return [
            "--user-dir", PLUGIN_DIR, "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--clip-norm", "1.0",
            "--lr", self.lr, "--lr-scheduler", "inverse_sqrt", "--warmup-updates", self.warmup_updates,
            "--max-tokens", self.max_tokens, "--dropout", self.dropout, "--max-update", self.max_update,
            "--seed", seed, "--num-workers", "0", "--cpu",
            "--log-format", "simple", "--log-interval", "25", "--no-epoch-checkpoints",
            "--best-checkpoint-metric", "nll_loss", "--save-interval-updates", self.save_interval_updates,
            "--keep-interval-updates", "1", *extra,
        ]  # fmt: skip


@dataclass
class Config:
    teacher: str
    data_bin: str
    references: str  # a directory with the raw valid.TGT and test.TGT
    src: str
    tgt: str
    student: Shape
    training: Training
    methods: List[str] = field(default_factory=lambda: ["baseline", "seq_kd"])
    seeds: int = 1
    # the methods trained with every seed; None: the baseline and the student with the best valid BLEU
    seeded: Optional[List[str]] = None
    spm_model: Optional[str] = None
    bpe_codes: Optional[str] = None
    transfer: Optional[str] = None  # raw monolingual source text to pseudo-label instead of the training sources
    pseudolabel_beam: int = 4
    pseudolabel_engine: str = "fairseq"  # or "ctranslate2" (the teacher converted at float32)
    evaluation: Settings = field(default_factory=Settings)
    timing_rounds: int = 0
    chrf_floor: Optional[float] = None  # the table leaves out systems below it (they do not translate)
    student_from_teacher: bool = False  # the student's shape is the default one derived from the teacher


def check_config(config: Config) -> None:
    """Every check of the settings alone: before any work, even before a teacher is made."""
    if not config.methods:
        raise PipelineError("--methods is empty: name one or more of " + ", ".join(M.METHODS))
    for name in config.methods:
        M.get(name)
    if len(set(config.methods)) != len(config.methods):
        raise PipelineError(f"--methods names a method twice: {','.join(config.methods)}")
    if "baseline" not in config.methods:
        raise PipelineError("--methods must include baseline: every student is compared with it")
    unknown = [name for name in config.seeded or () if name not in config.methods]
    if unknown:
        raise PipelineError(f"--seeded-methods {','.join(unknown)}: not in --methods ({','.join(config.methods)})")
    if config.seeds < 1 or config.timing_rounds < 0:
        raise PipelineError(
            f"--seeds must be at least 1 and --timing-rounds at least 0 (got {config.seeds}, {config.timing_rounds})"
        )
    if config.training.max_update < 1:
        raise PipelineError(f"the students' budget must be at least 1 update (got {config.training.max_update})")
    config.training.check()
    config.student.check()
    if config.transfer and not (config.spm_model or config.bpe_codes):
        raise PipelineError("--transfer is raw text: give the tokenizer the data was made with (--spm-model or --bpe-codes)")
    config.evaluation.check()


def check_inputs(config: Config) -> None:
    """Every check of the files a run starts from: before anything is written."""
    check_config(config)
    if not os.path.isfile(config.teacher):
        raise PipelineError(f"--teacher {config.teacher!r} does not exist (give the teacher's fairseq checkpoint)")
    if not os.path.isdir(config.data_bin):
        raise PipelineError(f"--data-bin {config.data_bin!r} is not a directory (give the teacher's data-bin)")
    for split in ("train", "valid", "test"):
        for lang in (config.src, config.tgt):
            if not os.path.isfile(os.path.join(config.data_bin, f"{split}.{config.src}-{config.tgt}.{lang}.idx")):
                raise PipelineError(
                    f"--data-bin {config.data_bin} has no binarized {split} split for {config.src}-{config.tgt} "
                    f"(no {split}.{config.src}-{config.tgt}.{lang}.idx): check -s/-t"
                )
    for split in ("valid", "test"):
        path = os.path.join(config.references, f"{split}.{config.tgt}")
        if not os.path.isfile(path):
            raise PipelineError(f"--references {config.references} has no {split}.{config.tgt} (the raw references)")
        # the same number of sentences as the binarized split: a wrong file is found now, not after the students
        sentences = binarized_sentences(config.data_bin, split, config.src, config.tgt)
        references = len(read_lines(path, "--references"))
        if references != sentences:
            raise PipelineError(
                f"--references {path} has {references} lines but the {split} split of {config.data_bin} has {sentences} "
                "sentences: give the raw references of that split"
            )
    for flag, path in (("--spm-model", config.spm_model), ("--bpe-codes", config.bpe_codes), ("--transfer", config.transfer)):
        if path and not os.path.isfile(path):
            raise PipelineError(f"{flag} {path!r} does not exist")


def default_student(teacher_model_cfg: Any) -> Shape:
    """The student a run takes unless told otherwise: the teacher's encoder (its depth and width: every
    initialised method then takes all of its encoder layers) and one decoder layer, the deep-encoder,
    shallow-decoder shape that decodes fastest for its quality (Kasai et al. 2021)."""

    def value(name: str) -> Any:
        return teacher_model_cfg.get(name) if hasattr(teacher_model_cfg, "get") else getattr(teacher_model_cfg, name)

    return Shape(value("encoder_layers"), 1, value("encoder_embed_dim"), value("encoder_ffn_embed_dim"),
                 value("encoder_attention_heads"))  # fmt: skip


def config_record(config: Config) -> Dict[str, Any]:
    """The run's settings as they are written to (and compared with) OUT/pipeline.json."""
    record = dataclasses.asdict(config)
    for key in ("teacher", "data_bin", "references", "spm_model", "bpe_codes", "transfer"):
        if record[key]:
            record[key] = os.path.abspath(record[key])
    return json.loads(json.dumps(record))


def config_from_record(record: Dict[str, Any]) -> Config:
    """The settings of a run from its OUT/pipeline.json (read with :func:`load_config`): the inverse of
    :func:`config_record`, with SINCE_ADDED's settings at their defaults where an older run lacks them."""
    record = dict(SINCE_ADDED, **record)
    fields = {f.name for f in dataclasses.fields(Config)}
    values = {k: v for k, v in record.items() if k in fields}
    values["student"] = Shape(**record["student"])
    values["training"] = Training(**record["training"])
    values["evaluation"] = Settings(**record["evaluation"])
    return Config(**values)


def load_config(run_dir: str) -> Config:
    """The settings of the run in RUN_DIR."""
    path = os.path.join(run_dir, "pipeline.json")
    if not os.path.isfile(path):
        raise PipelineError(f"{run_dir} holds no pipeline.json: give the directory of a run of the pipeline or the demo")
    with open(path) as f:
        return config_from_record(json.load(f))
