"""Distilling a teacher you already have: pseudo-labels -> students -> export -> CTranslate2 -> evaluation.

    python -m fairseq_kd.pipeline --teacher T.pt --data-bin DATA_BIN --references RAW_DIR --spm-model spm.model \
        --methods baseline,init_kd,seq_kd --out runs/distil [-s de -t en] [--transfer mono.de]

The teacher is any fairseq translation checkpoint and DATA_BIN the data-bin it was trained with (its
dictionaries, the training split the students learn from, valid and test); RAW_DIR holds the raw
references ``valid.TGT`` and ``test.TGT`` that translations are scored against. Stages, each skipped when
a rerun finds it finished (an interrupted fairseq-train resumes from its checkpoint):

1. pseudo-labels: ``fairseq-kd-pseudolabel``, the teacher's beam-search translations of the training
   sources (or of ``--transfer``, raw monolingual source text), binarized with its dictionaries; top-k
   sampled ones and the teacher's top-k cache when a method needs them; the low-data regime's data.
2. students: one ``fairseq-train`` per method of :mod:`fairseq_kd.methods` (all of one shape and budget),
   each exported with ``fairseq-kd-export`` to an ordinary fairseq checkpoint (OUT/models/NAME.pt).
3. evaluation on valid (:mod:`fairseq_kd.evaluate`); the student with the best valid BLEU converted to
   CTranslate2 int8; with ``--seeds N`` the baseline and that student trained again with seeds 2..N.
4. evaluation on valid and test with the paired bootstrap against the baseline and ``--timing-rounds``;
   OUT/results.json, OUT/results.md and OUT/bleu_vs_speed.png.

A run directory belongs to one set of settings: a rerun with others is refused before anything is done,
except ``--methods`` (more students are added), ``--timing-rounds``, ``--seeds`` and CTranslate2's threads
in the evaluation (they change the timing only; the translations are made again under them).
"""

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from typing import List, Optional

from . import methods as M
from .evaluate import POST_PROCESSING, SIGNIFICANCE, Settings, evaluate
from .io import WRITE_FAILURES, UserError, changed_settings, read_lines, run_lock, write_json, write_text

PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)
# settings a rerun may change: they decide what is measured, not how the models already made were made
# (CTranslate2's threads decide only the timing, and every cached translation is keyed on them)
RERUN_MAY_CHANGE = {"methods", "timing_rounds", "seeds", "evaluation.threads"}
# settings added after runs were made: a run directory without them was made with these values
SINCE_ADDED = {"pseudolabel_engine": "fairseq"}


class PipelineError(UserError):
    pass


def log(message=""):
    print(message, flush=True)


def minutes(seconds):
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


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

    def check(self):
        """One-line errors for a shape fairseq would take and then fail on (as --student's five numbers)."""
        values = (self.encoder_layers, self.decoder_layers, self.embed_dim, self.ffn_dim, self.heads)
        if min(values) < 1:
            raise PipelineError(f"--student {','.join(map(str, values))}: every number must be at least 1")
        if self.embed_dim % self.heads:
            raise PipelineError(
                f"--student: {self.heads} attention heads do not divide the width {self.embed_dim} (fairseq needs "
                "width = heads x head size)"
            )

    def flags(self, arch="transformer", layout=DEFAULT_LAYOUT):
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

    def check(self):
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

    def flags(self, seed=1):
        stop = [] if self.patience is None else ["--patience", self.patience]
        return [
            "--user-dir", PLUGIN_DIR, "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--clip-norm", "1.0",
            "--lr", self.lr, "--lr-scheduler", "inverse_sqrt", "--warmup-updates", self.warmup_updates,
            "--max-tokens", self.max_tokens, "--dropout", self.dropout, "--max-update", self.max_update,
            "--seed", seed, "--num-workers", "0", "--cpu",
            "--log-format", "simple", "--log-interval", "25", "--no-epoch-checkpoints",
            "--best-checkpoint-metric", "nll_loss", "--save-interval-updates", self.save_interval_updates,
            "--keep-interval-updates", "1", *stop,
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
    spm_model: Optional[str] = None
    bpe_codes: Optional[str] = None
    transfer: Optional[str] = None  # raw monolingual source text to pseudo-label instead of the training sources
    pseudolabel_beam: int = 4
    pseudolabel_engine: str = "fairseq"  # or "ctranslate2" (the teacher converted at float32)
    evaluation: Settings = field(default_factory=Settings)
    timing_rounds: int = 0
    chrf_floor: Optional[float] = None  # the table leaves out systems below it (they do not translate)


def check_settings(config: Config):
    """Every check of the settings alone: before any work, even before a teacher is made."""
    if not config.methods:
        raise PipelineError("--methods is empty: name one or more of " + ", ".join(M.METHODS))
    for name in config.methods:
        M.get(name)
    if len(set(config.methods)) != len(config.methods):
        raise PipelineError(f"--methods names a method twice: {','.join(config.methods)}")
    if "baseline" not in config.methods:
        raise PipelineError("--methods must include baseline: every student is compared with it")
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


def check_inputs(config: Config):
    """Every check of the files a run starts from: before anything is written."""
    check_settings(config)
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


def binarized_sentences(data_bin, split, src, tgt):
    """The number of sentences of a binarized split (its index's size field)."""
    from fairseq.data import data_utils

    dataset = data_utils.load_indexed_dataset(os.path.join(data_bin, f"{split}.{src}-{tgt}.{tgt}"), None)
    if dataset is None:
        raise PipelineError(f"--data-bin {data_bin}: the {split} split for {src}-{tgt} cannot be read")
    return len(dataset)


def config_record(config: Config):
    """The run's settings as they are written to (and compared with) OUT/pipeline.json."""
    record = dataclasses.asdict(config)
    for key in ("teacher", "data_bin", "references", "spm_model", "bpe_codes", "transfer"):
        if record[key]:
            record[key] = os.path.abspath(record[key])
    return json.loads(json.dumps(record))


def config_from_record(record) -> Config:
    """The settings of a run from its OUT/pipeline.json (read with :func:`load_config`): the inverse of
    :func:`config_record`, with SINCE_ADDED's settings at their defaults where an older run lacks them."""
    record = dict(SINCE_ADDED, **record)
    fields = {f.name for f in dataclasses.fields(Config)}
    values = {k: v for k, v in record.items() if k in fields}
    values["student"] = Shape(**record["student"])
    values["training"] = Training(**record["training"])
    values["evaluation"] = Settings(**record["evaluation"])
    return Config(**values)


def load_config(run_dir) -> Config:
    """The settings of the run in RUN_DIR."""
    path = os.path.join(run_dir, "pipeline.json")
    if not os.path.isfile(path):
        raise PipelineError(f"{run_dir} holds no pipeline.json: give the directory of a run of the pipeline or the demo")
    with open(path) as f:
        return config_from_record(json.load(f))


class Pipeline:
    """The stages of a distillation run in OUT, for the teacher and data of CONFIG."""

    def __init__(self, out, config: Config):
        self.out, self.config = out, config

    # ---- bookkeeping -----------------------------------------------------------------------------

    def path(self, *parts):
        return os.path.join(self.out, *parts)

    def check_run_dir(self):
        """A run directory belongs to one set of settings: a rerun with others (but for RERUN_MAY_CHANGE) is
        refused, and nothing in it is touched."""
        os.makedirs(self.out, exist_ok=True)
        path = self.path("pipeline.json")
        record = config_record(self.config)
        if os.path.exists(path):
            with open(path) as f:
                earlier = json.load(f)
            changed = changed_settings(flatten(earlier), flatten(record), SINCE_ADDED, RERUN_MAY_CHANGE)
            if changed:
                raise PipelineError(
                    f"{self.out} holds a run made with other "
                    + ", ".join(f"{k} ({_short(then)}, now {_short(now)})" for k, then, now in changed)
                    + f": its finished stages would not match; give another output directory or remove {self.out} to start over"
                )
        check_settings(self.config)
        write_json(path, record)

    def done_marker(self, stage):
        return self.path("stages", re.sub(r"[^\w.-]+", "_", stage) + ".done")

    def stage(self, name, fn, *args, key=None):
        """Runs FN(*ARGS) unless a rerun finds stage NAME finished (with the same KEY, when one is given:
        what the stage's result depends on besides the run's settings)."""
        marker = self.done_marker(name)
        if os.path.exists(marker):
            with open(marker) as f:
                if json.load(f).get("key") == key:
                    log(f"{name}: done earlier")
                    return
            log(f"{name}: done earlier with other inputs ({_short(key)} now): done again")
        log(f"{name} ...")
        start = time.time()
        fn(*args)
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        write_json(marker, {"seconds": round(time.time() - start, 1), "key": key})
        log(f"{name}: finished in {minutes(time.time() - start)}")

    def command(self, name, args, log_name, progress_total=None):
        """Runs a console script of this environment, its output appended to OUT/logs/LOG_NAME.log; shows
        the number of updates every 30 s when PROGRESS_TOTAL is given; fails with the log's tail."""
        os.makedirs(self.path("logs"), exist_ok=True)
        log_path = self.path("logs", log_name + ".log")
        cmd = [os.path.join(BIN, name)] + [str(a) for a in args]
        with open(log_path, "a") as f:
            f.write("\n$ " + " ".join(cmd) + "\n")
            f.flush()
            process = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
            start, shown, next_report = time.time(), None, time.time() + 30
            while process.poll() is None:
                time.sleep(1)
                if progress_total and time.time() >= next_report:
                    next_report += 30
                    updates = last_update(log_path)
                    if updates is not None and updates != shown:
                        log(f"    {log_name}: {updates}/{progress_total} updates, {minutes(time.time() - start)}")
                        shown = updates
        if process.returncode != 0:
            with open(log_path, errors="replace") as f:
                text = f.read()
            if name == "fairseq-train" and process.returncode < 0 and "done training in" in text[text.rfind("\n$ ") :]:
                # fairseq-train can abort while the interpreter shuts down, after it saved its last checkpoint
                log(f"    note: fairseq-train finished training, then died of signal {-process.returncode} at exit")
                return log_path
            output = text[text.rfind("\n$ ") :]
            full = _disk_full(output)
            if full:
                raise PipelineError(
                    f"{name} could not write ({full}; see the end of {log_path}): free some space and rerun the "
                    "same command (the finished stages and the last checkpoints are kept)"
                )
            refused = _refusal(name, process.returncode, output)
            if refused:
                raise PipelineError(f"{name} refused its input: {refused} (the command and its output: {log_path})")
            raise RuntimeError(f"{name} failed (exit status {process.returncode}); the end of {log_path}:\n{text[-3000:]}")
        return log_path

    def run(self):
        check_inputs(self.config)
        self.check_students_fit()
        with run_lock(self.out, "pipeline"):
            self.run_stages()

    def run_stages(self):
        self.check_run_dir()
        start = time.time()
        self.data_stages()
        for name in self.config.methods:
            self.stage(f"student {name}", self.student, name, 1)
        # the CTranslate2 model is the best of the students there are
        self.stage("ctranslate2", self.ctranslate2, key=list(self.config.methods))
        for seed in range(2, self.config.seeds + 1):
            for name in self.seeded_methods():
                self.stage(f"student {name}.seed{seed}", self.student, name, seed)
        self.report()
        log(f"done in {minutes(time.time() - start)}")

    def check_students_fit(self):
        """The student shape checked against the teacher for every method that starts from the teacher's layers
        (1 of every n layers; a narrower width as a sub-network), before any stage: a shape that does not fit
        fails here, not after the pseudo-labels and the first students."""
        from argparse import Namespace

        from .models.student_init import StudentInitError, select_layers
        from .models.width_pruning import WidthError, check_widths

        initialised = [name for name in self.config.methods if M.get(name).init_from_teacher]
        if not initialised:
            return
        model = self.teacher_cfg["model"]
        teacher = Namespace(**model) if isinstance(model, dict) else model
        s = self.config.student
        student = Namespace(encoder_embed_dim=s.embed_dim, decoder_embed_dim=s.embed_dim, encoder_ffn_embed_dim=s.ffn_dim,
                            decoder_ffn_embed_dim=s.ffn_dim, encoder_attention_heads=s.heads,
                            decoder_attention_heads=s.heads)  # fmt: skip
        try:
            for stack, layers in (("encoder", s.encoder_layers), ("decoder", s.decoder_layers)):
                select_layers(getattr(teacher, f"{stack}_layers"), layers, stack)
            check_widths(student, teacher)
        except (StudentInitError, WidthError) as e:
            reason = str(e).split(". ")[0]
            raise PipelineError(
                f"--student {s.encoder_layers},{s.decoder_layers},{s.embed_dim},{s.ffn_dim},{s.heads} does not fit the "
                f"teacher for {', '.join(initialised)}: {reason}; choose a --student that does"
            ) from None

    # ---- data ------------------------------------------------------------------------------------

    def needs(self, *kinds):
        return any(M.get(name).data in kinds for name in self.config.methods)

    def data_stages(self):
        if self.needs(M.TEACHER, M.MIXTURE, M.LOW_DATA):
            self.stage("pseudolabels", self.pseudolabels, "pseudolabels", [])
        if self.needs(M.TEACHER_SAMPLED):
            k = {M.get(n).sampling_topk for n in self.config.methods if M.get(n).sampling_topk}
            self.stage("pseudolabels sampled", self.pseudolabels, "pseudolabels-sampled", ["--sampling-topk", min(k)])
        if any(M.get(n).teacher == M.TOPK_CACHE for n in self.config.methods):
            self.stage("topk cache", self.topk_cache)
        if self.needs(M.LOW_DATA, M.LOW_DATA_REFERENCES):
            self.stage("low-data split", self.low_data)

    def pseudolabels(self, name, extra):
        c = self.config
        args = ["--teacher", c.teacher, "--data", c.data_bin, "--output", self.path(name), "--beam", c.pseudolabel_beam,
                "--max-tokens", "8000", "--source-lang", c.src, "--target-lang", c.tgt, "--cpu",
                "--engine", c.pseudolabel_engine] + extra  # fmt: skip
        if c.transfer:
            args += ["--input", c.transfer] + (["--spm-model", c.spm_model] if c.spm_model else ["--bpe-codes", c.bpe_codes])
        else:
            args += ["--subset", "train"]
        self.command("fairseq-kd-pseudolabel", args, name.replace("-", "_"))
        with open(self.path(name, "summary.json")) as f:
            summary = json.load(f)
        speed = summary.get("decoding", {}).get("sentences_per_s")
        log("    " + ", ".join(f"{k}: {v}" for k, v in summary.items() if not isinstance(v, (dict, list)) and k != "data_bin")
            + (f", {speed} sentences/s decoding" if speed else ""))  # fmt: skip

    def topk_cache(self):
        k = {M.get(n).kd_topk for n in self.config.methods if M.get(n).kd_topk}
        c = self.config
        self.command(
            "fairseq-kd-cache-topk",
            ["--teacher", c.teacher, "--data", c.data_bin, "--k", min(k), "--output", self.path("topk-cache"),
             "--source-lang", c.src, "--target-lang", c.tgt, "--cpu"] + self.teacher_data_flags,
            "topk_cache",
        )  # fmt: skip

    def low_data(self):
        """The low-data regime's data: the references of LOW_DATA_SHARE of the training pairs (those whose
        source's SHA-1 says so: deterministic, independent of order), and the teacher's translations of the
        other sources (of --transfer when given)."""
        c = self.config
        keep = low_data_selector()
        pairs = read_pairs(c.data_bin, "train", c.src, c.tgt)
        labelled = [p for p in pairs if keep(p[0])]
        self.binarize_pairs(labelled, "low-data-references")
        pseudo = read_pairs(self.path("pseudolabels", "data-bin"), "train", c.src, c.tgt)
        unlabelled = pseudo if c.transfer else [p for p in pseudo if not keep(p[0])]
        self.binarize_pairs(unlabelled, "low-data-pseudolabels")
        write_json(self.path("low-data.json"), {"references": len(labelled), "pseudolabels": len(unlabelled),
                                                 "training_pairs": len(pairs)})  # fmt: skip
        log(f"    {len(labelled)} of {len(pairs)} labelled pairs kept; {len(unlabelled)} teacher-labelled pairs")

    def binarize_pairs(self, pairs, name):
        from .io import binarize

        c = self.config
        prefix = self.path(name + "-tokens", "train")
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
        for side, lang in ((0, c.src), (1, c.tgt)):
            write_text(f"{prefix}.{lang}", "".join(p[side] + "\n" for p in pairs))
        binarize(prefix, self.path(name), c.src, c.tgt, c.data_bin)

    @functools.cached_property
    def teacher_cfg(self):
        """The teacher checkpoint's config (its task and model)."""
        from .checkpoints import load_checkpoint

        return load_checkpoint(self.config.teacher, "--teacher")["cfg"]

    @functools.cached_property
    def teacher_layout_flags(self):
        """The teacher's layer layout (layer-norm placement, activation, positions, embedding sharing) as
        fairseq-train flags: every student has it, the initialised ones because they take the teacher's
        tensors, the others so that all students differ only in method."""
        from .models.student_init import layout_flags

        return layout_flags(self.teacher_cfg["model"])

    @functools.cached_property
    def teacher_data_flags(self):
        """``--teacher-data DATA_BIN`` when the data directory that the teacher's checkpoint records does not
        hold its dictionaries here (a teacher trained on another machine, or from another working directory):
        DATA_BIN is the teacher's by the run's contract, and the pseudo-labeller checks their sizes against the
        teacher's embeddings. No flag when it does: the task then compares the teacher's own dictionaries
        with DATA_BIN's, symbol by symbol."""
        from .tasks.translation_kd import recorded_data_dir

        c = self.config
        recorded = recorded_data_dir(self.teacher_cfg["task"])
        if recorded and all(os.path.isfile(os.path.join(recorded, f"dict.{lang}.txt")) for lang in (c.src, c.tgt)):
            return []
        return ["--teacher-data", c.data_bin]

    def method_paths(self):
        c = self.config
        return M.MethodPaths(
            data=c.data_bin,
            teacher=c.teacher,
            pseudo=self.path("pseudolabels", "data-bin"),
            sampled=self.path("pseudolabels-sampled", "data-bin"),
            topk_cache=self.path("topk-cache"),
            low_references=self.path("low-data-references"),
            low_pseudo=self.path("low-data-pseudolabels"),
        )

    # ---- students --------------------------------------------------------------------------------

    def student(self, name, seed):
        method = M.get(name)
        c = self.config
        run = name if seed == 1 else f"{name}.seed{seed}"
        arch = c.student.flags("transformer_student" if method.init_from_teacher else "transformer", self.teacher_layout_flags)
        flags = method.flags(self.method_paths()) + arch + ["--source-lang", c.src, "--target-lang", c.tgt]
        if "--teacher-path" in flags:
            flags += self.teacher_data_flags
        save_dir = self.path("students", run)
        self.train(flags + c.training.flags(seed), save_dir, run, c.training.max_update)
        # the same budget for every student: its last checkpoint
        self.export(os.path.join(save_dir, "checkpoint_last.pt"), self.path("models", f"{run}.pt"))

    def train(self, flags, save_dir, log_name, max_update):
        """fairseq-train with FLAGS into SAVE_DIR, resuming what is there (a checkpoint_last.pt left truncated
        is repaired first). Nothing is run when checkpoint_last.pt has MAX_UPDATE updates already: fairseq-train,
        resumed there, would make one more before it stops."""
        repair_last_checkpoint(save_dir)
        done = checkpoint_updates(os.path.join(save_dir, "checkpoint_last.pt"))
        if done is not None and done >= max_update:
            log(f"    {log_name}: {save_dir}/checkpoint_last.pt has {done} updates already: not trained again")
            return
        self.command("fairseq-train", flags + ["--save-dir", save_dir], log_name, progress_total=max_update)

    def export(self, checkpoint, output):
        os.makedirs(os.path.dirname(output), exist_ok=True)
        self.command("fairseq-kd-export", [checkpoint, output, "--overwrite"], "export")

    # ---- evaluation ------------------------------------------------------------------------------

    def systems(self):
        """{name: model} of every system made so far: the teacher, the students, CTranslate2."""
        found = {"teacher": self.config.teacher}
        names = list(self.config.methods)
        names += [f"{n}.seed{s}" for s in range(2, self.config.seeds + 1) for n in self.seeded_methods(required=False)]
        for name in names:
            if os.path.exists(self.path("models", f"{name}.pt")):
                found[name] = self.path("models", f"{name}.pt")
        if os.path.isdir(self.path("models", "ctranslate2_int8")):
            found["ctranslate2_int8"] = self.path("models", "ctranslate2_int8")
        return found

    def evaluate(self, split, timing_rounds=0, systems=None):
        c = self.config
        return evaluate(
            systems or self.systems(), c.data_bin, os.path.join(c.references, f"{split}.{c.tgt}"), split=split,
            out_dir=self.path("eval", split), baseline="baseline", timing_rounds=timing_rounds,
            settings=c.evaluation, source_lang=c.src, target_lang=c.tgt, quiet=True,
        )  # fmt: skip

    def best_student(self, required=True):
        """The student (seed 1) with the best valid BLEU: the test split chooses nothing."""
        path = self.path("eval", "valid", "results.json")
        if not os.path.exists(path):
            if required:
                raise RuntimeError("the students have not been evaluated on valid yet")
            return None
        with open(path) as f:
            records = [r for r in json.load(f)["systems"] if r["name"] in self.config.methods]
        students = [r for r in records if r["name"] != "baseline"] or records
        return max(students, key=lambda r: r["bleu"])["name"]

    def seeded_methods(self, required=True):
        best = self.best_student(required)
        return ["baseline"] + ([best] if best and best != "baseline" else [])

    def ctranslate2(self):
        """The student with the best valid BLEU, in CTranslate2 int8."""
        from .checkpoints import export_ctranslate2

        students = {n: p for n, p in self.systems().items() if n in self.config.methods}
        self.evaluate("valid", systems=students)
        best = self.best_student()
        output = self.path("models", "ctranslate2_int8")
        shutil.rmtree(output, ignore_errors=True)
        export_ctranslate2(self.path("models", f"{best}.pt"), self.config.data_bin, output + ".tmp", "int8",
                           self.config.src, self.config.tgt)  # fmt: skip
        os.replace(output + ".tmp", output)
        write_json(self.path("models", "ctranslate2_int8.json"), {"student": best})
        log(f"    {best} (best valid BLEU) converted to CTranslate2 int8")

    # ---- report ----------------------------------------------------------------------------------

    def budget_line(self):
        """What every student of the comparison had: one shape and one training budget."""
        s, t = self.config.student, self.config.training
        return (
            f"Every student: {s.encoder_layers}+{s.decoder_layers} layers, {s.embed_dim} wide (FFN {s.ffn_dim}, "
            f"{s.heads} heads), {t.max_update:,} updates of up to {t.max_tokens:,} tokens, its last checkpoint: "
            "the same budget for every method."
        )

    def report(self):
        systems = self.systems()
        valid = {r.name: r for r in self.evaluate("valid", systems=systems)}
        test = self.evaluate("test", self.config.timing_rounds, systems=systems)
        ct2_source = None
        if os.path.exists(self.path("models", "ctranslate2_int8.json")):
            with open(self.path("models", "ctranslate2_int8.json")) as f:
                ct2_source = json.load(f)["student"]
        records = []
        for r in test:
            record = r.as_dict()
            record["method"] = describe(r.name, ct2_source)
            record["valid_bleu"] = valid[r.name].bleu
            record["valid_significance"] = valid[r.name].significance
            if r.name == "ctranslate2_int8" and ct2_source:
                record["params"] = next(x.params for x in test if x.name == ct2_source)
            records.append(record)
        seeds = seed_summary(records)
        floor = self.config.chrf_floor
        shown = [r for r in records if floor is None or r["chrf"] >= floor]
        below = [r["name"] for r in records if r not in shown]
        write_json(self.path("results.json"), {"settings": config_record(self.config), "systems": records,
                                               "seeds": seeds, "chrf_floor": floor, "below_chrf_floor": below})  # fmt: skip
        with open(self.path("eval", "test", "results.json")) as f:
            note = json.load(f)["note"]
        baseline = next(r for r in records if r["name"] == "baseline")
        table = results_table(shown, {m: v for m, v in seeds.items() if m in {r["name"] for r in shown}}, baseline)
        table += "\n" + self.budget_line() + "\n"
        if below:
            table += f"\nNot shown, test chrF below {floor} (they do not translate at this budget): {', '.join(below)}.\n"
        write_text(self.path("results.md"), f"{note}.\n\n{table}")
        from .evaluate import plot

        plot([_as_record(r) for r in shown], self.path("bleu_vs_speed.png"))
        log("\n" + table)
        log(f"written: {self.path('results.json')}, {self.path('results.md')}, {self.path('bleu_vs_speed.png')}")


def _refusal(name, status, output):
    """The message of a console script that stopped at a bad input (exit status 2, its last line
    "NAME: error: MESSAGE", as argparse and our console scripts end), else None."""
    lines = [line for line in output.splitlines() if line.strip()]
    if status == 2 and lines and lines[-1].startswith(f"{name}: error: "):
        return lines[-1][len(f"{name}: error: ") :]
    return None


def _disk_full(output):
    """The reason, when a command's OUTPUT ends in a write that failed for want of space, else None."""
    for reason in (os.strerror(e) for e in WRITE_FAILURES):
        if reason in output[-5000:]:
            return reason
    return None


def flatten(record, prefix=""):
    """{"training.lr": 0.002, ...}: a nested settings record with one key per value."""
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _short(value):
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe(name, ct2_source=None):
    if name == "teacher":
        return "the teacher"
    if name == "ctranslate2_int8":
        return f"{ct2_source} in CTranslate2 int8"
    base, _, seed = name.partition(".seed")
    summary = M.get(base).summary
    return f"{summary}, seed {seed}" if seed else summary


def seed_summary(records):
    """{method: {seeds, bleu_mean, bleu_std, chrf_mean, chrf_std}} of every method trained with several seeds."""
    by_method = {}
    for r in records:
        base, _, seed = r["name"].partition(".seed")
        if r["name"] in ("teacher", "ctranslate2_int8"):
            continue
        by_method.setdefault(base, []).append(r)
    out = {}
    for method, runs in by_method.items():
        if len(runs) > 1:
            out[method] = {"seeds": len(runs)}
            for key in ("bleu", "chrf"):
                values = [r[key] for r in runs]
                out[method][f"{key}_mean"] = round(statistics.mean(values), 2)
                out[method][f"{key}_std"] = round(statistics.stdev(values), 2)
    return out


def results_table(records, seeds=None, baseline=None):
    """The run's table: test BLEU with its 95% interval and paired-bootstrap p against the baseline (BASELINE,
    or the record named so), chrF, valid BLEU, speed and size; then the seed spread of the methods trained
    with several seeds."""
    head = ["system", "method", "BLEU", "vs baseline", "p", "chrF", "valid BLEU", "valid p", "sentences/s", "params", "MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = baseline or next((r for r in records if r["name"] == "baseline"), None)
    for r in records:
        sig, vsig = r["significance"].get("bleu", {}), r.get("valid_significance", {}).get("bleu", {})
        if r["name"] == "baseline" or not sig or base is None:
            versus, p, vp = "", "", ""
        else:
            versus = f"{r['bleu'] - base['bleu']:+.2f} ({sig['verdict']})"
            p, vp = f"{sig['p_value']:.4f}", f"{vsig.get('p_value', float('nan')):.4f}"
        bleu = f"{r['bleu']:.2f} ± {sig['ci']:.2f}" if sig else f"{r['bleu']:.2f}"
        cells = [r["name"], r["method"], bleu, versus, p, f"{r['chrf']:.2f}", f"{r['valid_bleu']:.2f}", vp,
                 f"{r['sentences_per_s']:.1f}", f"{r['params']:,}" if r.get("params") else "-", str(r["size_mb"])]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if seeds:
        text += "\n| method | seeds | BLEU mean ± std | chrF mean ± std |\n|---|---|---|---|\n"
        for method, s in seeds.items():
            text += f"| {method} | {s['seeds']} | {s['bleu_mean']:.2f} ± {s['bleu_std']:.2f} | {s['chrf_mean']:.2f} ± {s['chrf_std']:.2f} |\n"
    text += f"\n± is sacreBLEU's 95% bootstrap interval; a difference is a gain or a loss only when p < {SIGNIFICANCE}.\n"
    return text


def _as_record(r):
    from .evaluate import Record

    fields = {f.name for f in dataclasses.fields(Record)}
    return Record(**{k: v for k, v in r.items() if k in fields})


# ---- data helpers ---------------------------------------------------------------------------------


def low_data_selector(share=M.LOW_DATA_SHARE):
    """A predicate on source lines: True for the SHARE of them that the low-data regime keeps labelled."""
    buckets = round(1 / share)

    def keep(source_line):
        return int(hashlib.sha1(source_line.encode("utf-8")).hexdigest(), 16) % buckets == 0

    return keep


def read_pairs(data_bin, split, src, tgt):
    """[(source tokens, target tokens)] of a binarized split, as text."""
    from fairseq.data import Dictionary, data_utils

    columns = []
    for lang in (src, tgt):
        dictionary = Dictionary.load(os.path.join(data_bin, f"dict.{lang}.txt"))
        dataset = data_utils.load_indexed_dataset(os.path.join(data_bin, f"{split}.{src}-{tgt}.{lang}"), dictionary)
        if dataset is None:
            raise PipelineError(f"{data_bin} has no binarized {split} split for {src}-{tgt}")
        columns.append([dictionary.string(dataset[i]) for i in range(len(dataset))])
    return list(zip(*columns))


# ---- checkpoints ----------------------------------------------------------------------------------


def repair_last_checkpoint(save_dir):
    """fairseq writes its first checkpoint of a save atomically but *copies* it to checkpoint_last.pt: a run
    stopped during that copy leaves a truncated checkpoint_last.pt, from which fairseq-train cannot resume.
    Such a file is moved aside to checkpoint_last.pt.incomplete and replaced by the newest complete interval
    checkpoint of SAVE_DIR, so that the rerun resumes from there; without one, training starts again.
    Returns the checkpoint resumed from, or None."""
    last = os.path.join(save_dir, "checkpoint_last.pt")
    if not os.path.exists(last) or zipfile.is_zipfile(last):
        return None
    os.replace(last, last + ".incomplete")
    interval = []
    for name in os.listdir(save_dir):
        match = re.fullmatch(r"checkpoint_\d+_(\d+)\.pt", name)
        if match and zipfile.is_zipfile(os.path.join(save_dir, name)):
            interval.append((int(match.group(1)), name))
    if not interval:
        log(f"    note: {last} was incomplete (the run stopped while fairseq was writing it) and there is no")
        log(f"    complete interval checkpoint to resume from: training starts again (the file is kept as {last}.incomplete)")
        return None
    source = os.path.join(save_dir, max(interval)[1])
    shutil.copyfile(source, last + ".tmp")
    os.replace(last + ".tmp", last)
    log(f"    note: {last} was incomplete (the run stopped while fairseq was writing it; kept as")
    log(f"    {last}.incomplete): resuming from {os.path.basename(source)} instead")
    return source


def checkpoint_updates(path):
    """The number of updates a fairseq checkpoint was saved at, or None without one."""
    from .checkpoints import load_checkpoint

    if not os.path.exists(path):
        return None
    return load_checkpoint(path)["optimizer_history"][-1]["num_updates"]


def last_update(log_path):
    with open(log_path, errors="replace") as f:
        found = re.findall(r"num_updates[=\s](\d+)", f.read()[-20000:])
    return int(found[-1]) if found else None


# ---- command line ---------------------------------------------------------------------------------


def add_arguments(parser):
    """The options of a run with a given teacher (the demo adds its corpus and teacher stages in front)."""
    parser.add_argument("--methods", default="baseline,init_kd,seq_kd",
                        help="comma-separated methods of fairseq_kd.methods (python -m fairseq_kd.methods lists them)")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=1, help="train the baseline and the best student with N seeds")
    parser.add_argument("--timing-rounds", type=int, default=0, help="time every system N more times, by turns")
    parser.add_argument("--out", required=True, help="output directory; a rerun resumes in it")


def main(argv=None):
    import logging

    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.WARNING, force=True)
    logging.getLogger("fairseq").setLevel(logging.WARNING)  # the in-process evaluation's data loading
    parser = argparse.ArgumentParser(prog="python -m fairseq_kd.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="the teacher's fairseq checkpoint")
    parser.add_argument("--data-bin", required=True, help="the data-bin the teacher was trained with")
    parser.add_argument("--references", required=True, help="directory with the raw valid.TGT and test.TGT references")
    parser.add_argument("--source-lang", "-s", required=True)
    parser.add_argument("--target-lang", "-t", required=True)
    from .cli import add_tokenizer_arguments

    add_tokenizer_arguments(parser, "the data (and --transfer)")
    parser.add_argument(
        "--transfer", help="raw monolingual source text for the teacher to translate (default: the training sources)"
    )
    parser.add_argument("--student", default="2,1,128,512,4", help="encoder layers, decoder layers, width, FFN width, heads")
    parser.add_argument("--max-update", type=int, default=4200)
    parser.add_argument("--warmup-updates", type=int, default=400)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--pseudolabel-beam", type=int, default=4, help="the teacher's beam for pseudo-labels (default: 4)")
    parser.add_argument("--pseudolabel-engine", choices=("fairseq", "ctranslate2"), default="fairseq",
                        help="the teacher's decoder for pseudo-labels (default: fairseq)")  # fmt: skip
    parser.add_argument(
        "--post-process", choices=POST_PROCESSING, default=None,
        help="how the translations become text for scoring: sentencepiece, subword_nmt, none, or auto (from the "
        "target dictionary); default: sentencepiece with --spm-model, subword_nmt with --bpe-codes, else auto",
    )  # fmt: skip
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        shape = Shape(*(int(x) for x in args.student.split(",")))
    except (TypeError, ValueError):
        raise PipelineError(f"--student {args.student!r}: give five integers, e.g. 2,1,128,512,4") from None
    config = Config(
        args.teacher, args.data_bin, args.references, args.source_lang, args.target_lang, shape,
        Training(args.max_update, args.warmup_updates, args.lr, args.max_tokens, args.dropout),
        methods=[m for m in args.methods.split(",") if m], seeds=args.seeds, spm_model=args.spm_model,
        bpe_codes=args.bpe_codes, transfer=args.transfer, timing_rounds=args.timing_rounds,
        pseudolabel_engine=args.pseudolabel_engine, pseudolabel_beam=args.pseudolabel_beam,
    )  # fmt: skip
    config.evaluation.post_process = args.post_process or tokenizer_post_process(args.spm_model, args.bpe_codes)
    Pipeline(args.out, config).run()


def tokenizer_post_process(spm_model=None, bpe_codes=None):
    """The --post-process that undoes the data's tokenizer: the one given, else read from the dictionary."""
    return "sentencepiece" if spm_model else "subword_nmt" if bpe_codes else "auto"


if __name__ == "__main__":
    from .cli import run

    sys.exit(run(main, "python -m fairseq_kd.pipeline"))
