"""Evaluation of translation systems the same way: quality with significance, speed, size.

    fairseq-kd-evaluate DATA_BIN --split test --references test.en teacher=T.pt student=S.pt \
        ct2=ct2_dir --baseline teacher --timing-rounds 5 --out eval/

Every system translates the same source (a binarized split of DATA_BIN, or ``--source`` raw text encoded
with ``--spm-model``/``--bpe-codes``) with the same beam, batch size and length bound:

* a fairseq checkpoint (one written by fairseq-train or by ``fairseq-kd-export``) with stock
  ``fairseq-generate``, given ``--user-dir`` only when the checkpoint needs the plugin;
* a CTranslate2 model directory with CTranslate2, batched and bounded as fairseq-generate batches and
  bounds (sentences sorted by length, ``max_len_a * longest source + max_len_b``).

Scores are sacreBLEU's BLEU and chrF on detokenized text, with their signatures. With ``--baseline NAME``
each other system is compared with it by sacreBLEU's paired bootstrap resampling (its own implementation,
1,000 resamples, seed 12345 unless ``SACREBLEU_SEED`` says otherwise): the p-value and the system's 95%
confidence interval; a difference is called a gain or a loss only when p < 0.05. Speed (sentences/s and
target tokens/s, translation only: fairseq-generate's own measure, and the same span for CTranslate2) is
the one of the scoring run, or with ``--timing-rounds N`` the median of N more translations per system,
taken by turns (round r starts with the r-th system), every run kept. Parameters count shared tensors once.

Written to ``--out``: results.json (every field, every timing run, the settings), results.md, the
BLEU-against-speed plot bleu_vs_speed.png, and translations/NAME.txt. A rerun into the same directory
translates again only the systems whose files or settings changed.
"""

import contextlib
import dataclasses
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from .io import UserError, encode_lines, read_lines, run_lock, sha256_file, write_json, write_text

logger = logging.getLogger(__name__)

PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)
SIGNIFICANCE = 0.05


class EvaluationError(UserError):
    pass


POST_PROCESSING = ("auto", "sentencepiece", "subword_nmt", "none")
# bounds beyond which a translation cannot finish in reasonable memory and time: the output length bound
# a * source length + b, and the beam (fairseq keeps beam x batch decoder states)
MAX_LEN_A, MAX_BEAM = 10.0, 128


def detect_post_process(symbols):
    """The post-processing that a dictionary's SYMBOLS (specials excluded) were made for: "sentencepiece" when
    many start with "\u2581", "subword_nmt" when many end with "@@", else "none" (words, or a tokenizer whose
    units are joined by spaces)."""
    symbols = list(symbols) or [""]
    if sum(s.startswith("\u2581") for s in symbols) >= 0.1 * len(symbols):
        return "sentencepiece"
    if sum(s.endswith("@@") for s in symbols) >= 0.05 * len(symbols):
        return "subword_nmt"
    return "none"


def check_detokenized(name, hypotheses):
    """Refuses hypotheses of which most still hold subword marks: scored as they are, every system would get
    a BLEU near 0 and every comparison would mean nothing."""
    marked = sum(("\u2581" in h) or ("@@ " in h + " ") for h in hypotheses)
    if hypotheses and marked > 0.5 * len(hypotheses):
        raise EvaluationError(
            f"{name}: {marked} of {len(hypotheses)} translations still hold subword marks (\u2581 or @@) after "
            "post-processing: give --post-process sentencepiece or subword_nmt, as the data was made"
        )


@dataclass
class Settings:
    """How every system translates; the same for all of them."""

    beam: int = 4
    batch_size: int = 64
    max_len_a: float = 1.5
    max_len_b: int = 10
    # fairseq's --post-process: how subword units become text; "auto": read from the target dictionary's symbols
    post_process: str = "auto"
    threads: int = (
        1  # CTranslate2's intra_threads (0: every core; see fairseq_kd.ct2.DEFAULT_THREADS); fairseq-generate uses torch's default
    )
    bootstrap_samples: int = 1000

    def check(self):
        if self.post_process not in POST_PROCESSING:
            raise EvaluationError(f"--post-process {self.post_process!r}: choose one of {', '.join(POST_PROCESSING)}")
        if self.beam < 1 or self.batch_size < 1:
            raise EvaluationError(f"--beam and --batch-size must be at least 1 (got {self.beam} and {self.batch_size})")
        if self.beam > MAX_BEAM:
            raise EvaluationError(f"--beam {self.beam}: at most {MAX_BEAM} (each hypothesis keeps its own decoder state)")
        if not 0 <= self.max_len_a <= MAX_LEN_A or not 1 <= self.max_len_b <= 1024:
            raise EvaluationError(
                f"--max-len-a must be in [0, {MAX_LEN_A}] and --max-len-b in [1, 1024] (got {self.max_len_a}, {self.max_len_b})"
            )
        if self.threads < 0:
            raise EvaluationError(f"--threads {self.threads}: give 0 (every core) or more")
        if self.bootstrap_samples < 100:
            raise EvaluationError(f"--bootstrap-samples must be at least 100 (got {self.bootstrap_samples})")


@dataclass
class System:
    name: str
    path: str
    kind: str  # "fairseq" or "ctranslate2"
    needs_plugin: bool = False
    use_vmap: bool = False  # CTranslate2 restricted to the model's vocabulary map (vmap.txt)
    embedding_shapes: Dict = field(default_factory=dict)  # a checkpoint's token embeddings, for the dictionary check
    params: Optional[int] = None
    size_mb: float = 0.0
    digest: str = ""


def parse_systems(specs: Sequence[str]) -> List[System]:
    """NAME=PATH specifications, each checked: unique names, readable models."""
    pairs, seen = [], set()
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise EvaluationError(f"system {spec!r} is not NAME=PATH (for example student=checkpoints/student.pt)")
        if not re.fullmatch(r"[\w.+-]+", name):
            raise EvaluationError(f"system name {name!r}: use letters, digits and . _ + - only")
        if name in seen:
            raise EvaluationError(f"two systems are named {name!r}: give each system its own name")
        seen.add(name)
        pairs.append((name, path))
    if not pairs:
        raise EvaluationError("no system to evaluate: give one or more NAME=PATH")
    return [inspect_system(name, path) for name, path in pairs]


def use_vmap(systems, names):
    """Marks the CTranslate2 systems of NAMES to translate with their vocabulary map; their digest changes
    with it, so a translation without the map is never reused for one with it."""
    by_name = {s.name: s for s in systems}
    for name in names:
        system = by_name.get(name)
        if system is None:
            raise EvaluationError(f"--use-vmap {name}: no system of that name ({', '.join(by_name)})")
        if system.kind != "ctranslate2" or not os.path.isfile(os.path.join(system.path, "vmap.txt")):
            raise EvaluationError(
                f"--use-vmap {name}: {system.path} is not a CTranslate2 model with a vocabulary map (vmap.txt); "
                "make one with fairseq-kd-export --ctranslate2 DIR --vocab-map-split train"
            )
        system.use_vmap = True
        system.digest += "+vmap:" + sha256_file(os.path.join(system.path, "vmap.txt"))


def inspect_system(name, path) -> System:
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "model.bin")):
            raise EvaluationError(f"{name}: {path} is a directory but not a CTranslate2 model (it has no model.bin)")
        size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
        return System(
            name, path, "ctranslate2", size_mb=round(size / 2**20, 2), digest=sha256_file(os.path.join(path, "model.bin"))
        )
    if not os.path.exists(path):
        raise EvaluationError(f"{name}: {path} does not exist (give a fairseq checkpoint or a CTranslate2 model directory)")
    from .checkpoints import load_checkpoint

    state = load_checkpoint(path, what=f"{name}:")
    cfg = state["cfg"]
    task = (cfg.get("task") or {}).get("_name")
    model = cfg.get("model") or {}
    arch = model.get("arch") if isinstance(model, dict) else getattr(model, "arch", None)
    from fairseq.models import ARCH_MODEL_REGISTRY
    from fairseq.tasks import TASK_REGISTRY

    if task not in TASK_REGISTRY or (arch and arch not in ARCH_MODEL_REGISTRY):
        raise EvaluationError(f"{name}: {path} is a checkpoint of task {task!r}, arch {arch!r}, which fairseq does not know")
    from .checkpoints import CheckpointError, check_loadable_by_stock_fairseq
    from .models.swish import uses_swish

    try:
        check_loadable_by_stock_fairseq(path)  # an exported student: stock fairseq-generate runs it
        needs_plugin = uses_swish(model)  # but fairseq 0.12 runs swish only with the plugin
    except CheckpointError:
        needs_plugin = True  # a training checkpoint: fairseq-generate loads it with the plugin
    return System(
        name,
        path,
        "fairseq",
        needs_plugin=needs_plugin,
        params=count_parameters(state["model"]),
        size_mb=round(os.path.getsize(path) / 2**20, 2),
        digest=sha256_file(path),
        embedding_shapes={k: tuple(v.shape) for k, v in state["model"].items() if k.endswith("embed_tokens.weight")},
    )


def count_parameters(model_state) -> int:
    """Parameters of a model state, each shared tensor counted once."""
    seen, total = set(), 0
    for tensor in model_state.values():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key not in seen and tensor.is_floating_point():
            seen.add(key)
            total += tensor.numel()
    return total


@dataclass
class Source:
    """What every system translates: a binarized split, its token lines and the references."""

    data_bin: str
    split: str
    src: str
    tgt: str
    tokens: List[List[str]]
    references: List[str]


def load_source(data_bin, split, references, source_lang=None, target_lang=None, source=None, spm_model=None,
                bpe_codes=None, work_dir=None) -> Source:  # fmt: skip
    """The source sentences (a split of DATA_BIN, or raw text SOURCE binarized with its dictionaries into
    WORK_DIR) and the references, each checked against the other."""
    from fairseq.data import Dictionary, data_utils

    if not os.path.isdir(data_bin):
        raise EvaluationError(f"data-bin {data_bin!r} is not a directory")
    src, tgt = source_lang, target_lang
    if not (src and tgt):
        pairs = sorted({m.group(1, 2) for f in os.listdir(data_bin) if (m := re.fullmatch(r"\w+\.(\w+)-(\w+)\.\w+\.idx", f))})
        if len(pairs) != 1:
            raise EvaluationError(f"{data_bin} holds language pairs {pairs or 'none'}: give --source-lang and --target-lang")
        src, tgt = src or pairs[0][0], tgt or pairs[0][1]
    for lang in (src, tgt):
        if not os.path.isfile(os.path.join(data_bin, f"dict.{lang}.txt")):
            raise EvaluationError(f"{data_bin} has no dict.{lang}.txt (is {src}-{tgt} its language pair?)")
    refs = read_lines(references, "--references")
    if source:
        lines = encode_lines(read_lines(source, "--source"), spm_model, bpe_codes)
        if len(lines) != len(refs):
            raise EvaluationError(f"--source has {len(lines)} lines but --references {len(refs)}: they must be parallel")
        from .io import binarize

        bin_dir = os.path.join(work_dir or tempfile.mkdtemp(), "source-bin")
        prefix = os.path.join(os.path.dirname(bin_dir), "source_tokens")
        os.makedirs(os.path.dirname(bin_dir), exist_ok=True)
        write_text(f"{prefix}.{src}", "".join(line + "\n" for line in lines))
        binarize(prefix, bin_dir, src, tgt, data_bin, only_source=True, split="test")
        data_bin, split = bin_dir, "test"
    src_dict = Dictionary.load(os.path.join(data_bin, f"dict.{src}.txt"))
    dataset = data_utils.load_indexed_dataset(os.path.join(data_bin, f"{split}.{src}-{tgt}.{src}"), src_dict)
    if dataset is None:
        raise EvaluationError(f"{data_bin} has no binarized {split} split for {src}-{tgt}")
    tokens = [src_dict.string(dataset[i]).split() for i in range(len(dataset))]
    if len(tokens) != len(refs):
        raise EvaluationError(
            f"--references {references} has {len(refs)} lines but the {split} split of {data_bin} has {len(tokens)} "
            "sentences: give the references of that split"
        )
    return Source(data_bin, split, src, tgt, tokens, refs)


def check_dictionaries(system: System, source: Source):
    """A model must use the data-bin's dictionaries: same size, and the same symbols where they can be read."""
    from fairseq.data import Dictionary

    dicts = {lang: Dictionary.load(os.path.join(source.data_bin, f"dict.{lang}.txt")) for lang in (source.src, source.tgt)}
    if system.kind == "ctranslate2":
        vocab = _ct2_vocabularies(system.path)
        for side, lang in (("source", source.src), ("target", source.tgt)):
            # CTranslate2's fairseq converter names fairseq's <pad> "<blank>"
            symbols = ["<blank>" if s == "<pad>" else s for s in dicts[lang].symbols]
            theirs = vocab[side]
            if theirs != symbols:
                raise EvaluationError(
                    f"{system.name}: the CTranslate2 model's {side} vocabulary ({len(theirs)} tokens) is not "
                    f"{source.data_bin}'s dict.{lang}.txt ({len(symbols)}): evaluate it with the data-bin it was converted from"
                )
        return
    import torch

    from .checkpoints import CheckpointError
    from .checkpoints import check_dictionaries as check_embeddings

    # the shapes read when the system was inspected: the checkpoint is not loaded again
    embeddings = {k: torch.empty(shape, device="meta") for k, shape in system.embedding_shapes.items()}
    try:
        check_embeddings(embeddings, source.data_bin, source.src, source.tgt, what=system.name)
    except CheckpointError as e:
        raise EvaluationError(str(e)) from None


def _ct2_vocabularies(path):
    import json

    def load(name):
        with open(os.path.join(path, name), encoding="utf-8") as f:
            if name.endswith(".json"):
                return json.load(f)
            return [line.rstrip("\n") for line in f]

    for shared in ("shared_vocabulary.json", "shared_vocabulary.txt"):
        if os.path.exists(os.path.join(path, shared)):
            vocab = load(shared)
            return {"source": vocab, "target": vocab}
    found = {}
    for side in ("source", "target"):
        for ext in ("json", "txt"):
            if os.path.exists(os.path.join(path, f"{side}_vocabulary.{ext}")):
                found[side] = load(f"{side}_vocabulary.{ext}")
    if len(found) != 2:
        raise EvaluationError(f"{path} has no vocabulary files: is it a complete CTranslate2 model?")
    return found


# ---- translation ------------------------------------------------------------------------------------


TRANSLATED = re.compile(
    r"Translated ([\d,]+) sentences \(([\d,]+) tokens\) in ([\d.]+)s \(([\d.]+) sentences/s, ([\d.]+) tokens/s\)"
)


def translate(system: System, source: Source, settings: Settings, log_path):
    """(detokenized hypotheses in corpus order, speed) of one translation of the source by SYSTEM."""
    if system.kind == "ctranslate2":
        return translate_ctranslate2(system, source, settings)
    return translate_fairseq(system, source, settings, log_path)


def translate_fairseq(system, source, settings, log_path):
    cmd = [os.path.join(BIN, "fairseq-generate"), source.data_bin, "--path", system.path, "--gen-subset", source.split,
           "--source-lang", source.src, "--target-lang", source.tgt,
           "--beam", settings.beam, "--batch-size", settings.batch_size,
           "--max-len-a", settings.max_len_a, "--max-len-b", settings.max_len_b,
           # else fairseq-generate leaves out the sentences beyond the last multiple of 8
           "--required-batch-size-multiple", "1", "--cpu"]  # fmt: skip
    if settings.post_process != "none":
        cmd += ["--post-process", settings.post_process]
    if system.needs_plugin:
        cmd += ["--user-dir", PLUGIN_DIR]
    cmd = [str(c) for c in cmd]
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    with open(log_path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    if code != 0:
        raise RuntimeError(
            f"{system.name}: fairseq-generate failed (exit status {code}); the end of {log_path}:\n{text[-2000:]}"
        )
    return parse_generate_output(text, len(source.tokens), system.name)


def parse_generate_output(text, num_sentences, name="system"):
    """The D- lines of a fairseq-generate log in corpus order, and the speed it printed."""
    hypotheses = {}
    for line in text.splitlines():
        if line.startswith("D-"):
            parts = line.split("\t", 2)
            hypotheses[int(parts[0][2:])] = parts[2] if len(parts) == 3 else ""
    match = TRANSLATED.search(text)
    if not match:
        raise RuntimeError(f"{name}: fairseq-generate printed no 'Translated ... sentences' line")
    missing = [i for i in range(num_sentences) if i not in hypotheses]
    if missing:
        raise RuntimeError(
            f"{name}: fairseq-generate gave no translation of {len(missing)} sentences (the first: {missing[0]})"
        )
    speed = {"sentences_per_s": float(match[4]), "tokens_per_s": float(match[5]), "seconds": float(match[3])}
    return [hypotheses[i] for i in range(num_sentences)], speed


def translate_ctranslate2(system, source, settings):
    """CTranslate2 beam search under fairseq-generate's conditions (:func:`fairseq_kd.ct2.translate`):
    its batches and its length bound. Timed over the ``translate_batch`` calls only, as fairseq-generate
    times its inference steps. The translator is freed afterwards: its threads must not compete with what
    runs next."""
    from fairseq.data import data_utils

    from . import ct2

    translator = ct2.translator(system.path, "cpu", settings.threads)
    results, seconds = ct2.translate(
        translator, source.tokens, beam=settings.beam, batch_size=settings.batch_size,
        max_len_a=settings.max_len_a, max_len_b=settings.max_len_b, use_vmap=system.use_vmap,
    )  # fmt: skip
    del translator
    outputs = [r.tokens[0] for r in results]
    tokens = sum(len(o) + 1 for o in outputs)  # + </s>, as fairseq-generate counts
    speed = {
        "sentences_per_s": round(len(outputs) / seconds, 2),
        "tokens_per_s": round(tokens / seconds, 2),
        "seconds": round(seconds, 3),
    }
    post = None if settings.post_process == "none" else settings.post_process
    return [data_utils.post_process(" ".join(o), post) if post else " ".join(o) for o in outputs], speed


# ---- scores -----------------------------------------------------------------------------------------


def score(hypotheses, references):
    import sacrebleu

    bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
    return {
        "bleu": round(bleu.corpus_score(hypotheses, [references]).score, 2),
        "chrf": round(chrf.corpus_score(hypotheses, [references]).score, 2),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


def paired_bootstrap(baseline, systems: Dict[str, List[str]], references, samples=1000):
    """sacreBLEU's paired bootstrap resampling of every system in SYSTEMS against BASELINE (both
    {name: hypotheses}): {name: {metric: {p_value, mean, ci, verdict}}} for BLEU and chrF; the baseline
    gets its own mean and interval."""
    import sacrebleu
    from sacrebleu.significance import PairedTest

    named = [baseline] + [(n, h) for n, h in systems.items() if n != baseline[0]]
    metrics = {"BLEU": sacrebleu.BLEU(), "chrF": sacrebleu.CHRF()}
    logging.getLogger("sacrebleu").setLevel(logging.WARNING)
    signatures, scores = PairedTest(named, metrics, [references], test_type="bs", n_samples=samples)()
    out = {}
    for i, (name, _) in enumerate(named):
        out[name] = {}
        for metric, results in scores.items():  # "BLEU", "chrF2": the metrics' own names
            if metric == "System":
                continue
            result = results[i]
            entry = {"mean": round(float(result.mean), 2), "ci": round(float(result.ci), 2)}
            if i > 0:
                entry["p_value"] = round(float(result.p_value), 4)
                entry["verdict"] = verdict(result.score - results[0].score, result.p_value)
            out[name]["bleu" if metric.startswith("BLEU") else "chrf"] = entry
    return out, {m: str(s) for m, s in signatures.items()}


def verdict(difference, p_value):
    """'gain' or 'loss' only when the paired bootstrap gives p < 0.05; else 'no significant difference'. Equal
    scores are never a difference: sacreBLEU gives identical outputs p = 1 / (samples + 1) on purpose
    (``sacrebleu.significance._compute_p_value``: "a zero difference should not be attributed to chance")."""
    if difference != 0 and p_value < SIGNIFICANCE:
        return "gain" if difference > 0 else "loss"
    return "no significant difference"


# ---- the whole evaluation ---------------------------------------------------------------------------


@dataclass
class Record:
    name: str
    path: str
    kind: str
    bleu: float
    chrf: float
    sentences_per_s: float
    tokens_per_s: float
    params: Optional[int]
    size_mb: float
    bleu_signature: str = ""
    chrf_signature: str = ""
    significance: Dict = field(default_factory=dict)  # against the baseline (paired bootstrap)
    speed_runs: List[Dict] = field(default_factory=list)

    def as_dict(self):
        return dataclasses.asdict(self)


def evaluate(systems, data_bin, references, split="test", out_dir=None, baseline=None, timing_rounds=0,
             settings: Optional[Settings] = None, source_lang=None, target_lang=None, source=None, spm_model=None,
             bpe_codes=None, quiet=False, vmap=()) -> List[Record]:  # fmt: skip
    """Translates, scores, compares and times SYSTEMS ({name: path} or NAME=PATH strings) on one split; the
    CTranslate2 systems named in VMAP translate with their vocabulary map (``use_vmap``).

    Every input is checked before anything is translated. Returns one :class:`Record` per system, in the
    order given; with OUT_DIR, writes results.json, results.md, bleu_vs_speed.png and the translations, and
    reuses the translations of an earlier run there for the systems whose model and settings are the same."""
    settings = settings or Settings()
    settings.check()
    specs = [f"{n}={p}" for n, p in systems.items()] if isinstance(systems, dict) else list(systems)
    names = [spec.partition("=")[0] for spec in specs]
    if baseline is not None and baseline not in names:
        raise EvaluationError(f"--baseline {baseline!r} is not one of the systems ({', '.join(names)})")
    if timing_rounds < 0:
        raise EvaluationError(f"--timing-rounds must be 0 or more, not {timing_rounds}")
    parsed = parse_systems(specs)
    use_vmap(parsed, vmap)
    work = out_dir or tempfile.mkdtemp(prefix="fairseq-kd-evaluate-")
    if source:  # raw text is binarized into the work directory
        os.makedirs(work, exist_ok=True)
    src = load_source(data_bin, split, references, source_lang, target_lang, source, spm_model, bpe_codes, work)
    for system in parsed:
        check_dictionaries(system, src)
    if settings.post_process == "auto":
        from fairseq.data import Dictionary

        target_dict = Dictionary.load(os.path.join(src.data_bin, f"dict.{src.tgt}.txt"))
        post_process = detect_post_process(target_dict.symbols[target_dict.nspecial :])
        settings = dataclasses.replace(settings, post_process=post_process)
    # every input checked: the work starts, one writer per OUT_DIR at a time (a second is refused while it runs)
    with run_lock(work, "an evaluation") if out_dir else contextlib.nullcontext():
        os.makedirs(os.path.join(work, "translations"), exist_ok=True)
        os.makedirs(os.path.join(work, "logs"), exist_ok=True)
        say = (lambda message: None) if quiet else (lambda message: print(message, flush=True))

        translations, speeds = {}, {}
        for system in parsed:
            translations[system.name], speeds[system.name] = cached_translation(system, src, settings, work, say)
        runs = timing(parsed, src, settings, timing_rounds, work, translations, say)

        records = []
        for system in parsed:
            check_detokenized(system.name, translations[system.name])
            scores = score(translations[system.name], src.references)
            timed = runs[system.name] or [speeds[system.name]]
            records.append(
                Record(system.name, system.path, system.kind + ("+vmap" if system.use_vmap else ""), scores["bleu"], scores["chrf"],
                       round(statistics.median(r["sentences_per_s"] for r in timed), 2),
                       round(statistics.median(r["tokens_per_s"] for r in timed), 2),
                       system.params, system.size_mb, scores["bleu_signature"], scores["chrf_signature"],
                       speed_runs=runs[system.name] or [speeds[system.name]])  # fmt: skip
            )
        significance_signatures = {}
        if baseline is not None and len(parsed) > 1:
            tests, significance_signatures = paired_bootstrap(
                (baseline, translations[baseline]), translations, src.references, settings.bootstrap_samples
            )
            for record in records:
                record.significance = dict(tests[record.name], baseline=baseline)
        if out_dir:
            write_report(out_dir, records, src, settings, baseline, timing_rounds, significance_signatures, quiet)
    return records


def timing(systems, source, settings, rounds, work, translations, say):
    """{name: [speed of each run]} of ROUNDS more translations per system, taken by turns (round r starts
    with the r-th system, so that none is always first or last); reused from WORK/timing.json when it was
    made of the same models with the same settings."""
    import json

    runs = {s.name: [] for s in systems}
    if not rounds:
        return runs
    path = os.path.join(work, "timing.json")
    key = {"systems": [[s.name, s.digest] for s in systems], "settings": dataclasses.asdict(settings), "rounds": rounds,
           "data_bin": os.path.abspath(source.data_bin), "split": source.split}  # fmt: skip
    if os.path.exists(path):
        with open(path) as f:
            earlier = json.load(f)
        if earlier.get("key") == key:
            say(f"timing: {rounds} rounds measured earlier ({path})")
            return earlier["runs"]
    for r in range(rounds):
        for system in systems[r % len(systems) :] + systems[: r % len(systems)]:
            log_path = os.path.join(work, "logs", f"timing_{system.name}_{r + 1}.log")
            hypotheses, speed = translate(system, source, settings, log_path)
            if hypotheses != translations[system.name]:
                logger.warning(f"{system.name}: timing round {r + 1} translated differently from its scoring run")
            runs[system.name].append(speed)
        say(f"timing round {r + 1}/{rounds}, sentences/s: " + ", ".join(f"{n} {runs[n][-1]['sentences_per_s']}" for n in runs))
    write_json(path, {"key": key, "runs": runs})
    return runs


def cached_translation(system, source, settings, work, say):
    """The system's translation of the source, reused from WORK when it was made from the same model file
    with the same settings and source."""
    import json

    base = os.path.join(work, "translations", system.name)
    key = {"digest": system.digest, "settings": dataclasses.asdict(settings), "data_bin": os.path.abspath(source.data_bin),
           "split": source.split, "sentences": len(source.tokens)}  # fmt: skip
    if os.path.exists(base + ".json") and os.path.exists(base + ".txt"):
        with open(base + ".json") as f:
            earlier = json.load(f)
        if earlier.get("key") == key:
            hypotheses = read_lines(base + ".txt")
            if len(hypotheses) == len(source.tokens):
                say(f"{system.name}: translated earlier ({base}.txt)")
                return hypotheses, earlier["speed"]
    hypotheses, speed = translate(system, source, settings, os.path.join(work, "logs", f"{system.name}.log"))
    write_text(base + ".txt", "".join(h + "\n" for h in hypotheses))
    write_json(base + ".json", {"key": key, "speed": speed})
    say(f"{system.name}: translated {len(hypotheses)} sentences, {speed['sentences_per_s']} sentences/s")
    return hypotheses, speed


# ---- report -----------------------------------------------------------------------------------------


def results_table(records, baseline=None):
    """A Markdown table of RECORDS; with a baseline, each score carries its paired-bootstrap p-value."""
    head = ["system", "BLEU", "chrF"]
    if baseline:
        head += [f"BLEU vs {baseline}", "p (BLEU)"]
    head += ["sentences/s", "tokens/s", "params", "MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        bleu = r.significance.get("bleu", {})
        cells = [r.name, f"{r.bleu:.2f} ± {bleu['ci']:.2f}" if bleu else f"{r.bleu:.2f}", f"{r.chrf:.2f}"]
        if baseline:
            if r.name == baseline:
                cells += ["(baseline)", ""]
            else:
                base = next(x for x in records if x.name == baseline)
                cells += [f"{r.bleu - base.bleu:+.2f} ({bleu['verdict']})", f"{bleu['p_value']:.4f}"]
        cells += [f"{r.sentences_per_s:.1f}", f"{r.tokens_per_s:.0f}", f"{r.params:,}" if r.params else "-", f"{r.size_mb}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(out_dir, records, source, settings, baseline, timing_rounds, significance_signatures, quiet=False):
    speeds = (
        f"speeds: median of {timing_rounds} translations per system, taken by turns"
        if timing_rounds
        else "speeds: the scoring translation of each system"
    )
    note = (
        f"{source.split} split of {source.data_bin} ({len(source.tokens)} sentences, {source.src}->{source.tgt}); beam "
        f"{settings.beam}, batch {settings.batch_size} sentences, length bound {settings.max_len_a:g} x source + "
        f"{settings.max_len_b}, CPU; {speeds}"
        + (f"; ± is sacreBLEU's 95% bootstrap interval, p its paired bootstrap against {baseline} "
           f"({settings.bootstrap_samples} resamples; a gain or loss only when p < {SIGNIFICANCE})" if baseline else "")  # fmt: skip
    )
    write_json(
        os.path.join(out_dir, "results.json"),
        {
            "split": source.split,
            "data_bin": os.path.abspath(source.data_bin),
            "sentences": len(source.tokens),
            "languages": [source.src, source.tgt],
            "settings": dataclasses.asdict(settings),
            "timing_rounds": timing_rounds,
            "baseline": baseline,
            "significance_signatures": significance_signatures,
            "note": note,
            "systems": [r.as_dict() for r in records],
        },
    )
    table = results_table(records, baseline)
    write_text(os.path.join(out_dir, "results.md"), f"{note}.\n\n{table}")
    plot(records, os.path.join(out_dir, "bleu_vs_speed.png"))
    if not quiet:
        print("\n" + table + f"({note})", flush=True)


def plot(records, path, highlight=("teacher",)):
    """BLEU against speed (log scale), one labelled point per system; labels placed by adjustText so that
    they overlap neither each other nor the points."""
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # before its import, which logs
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from adjustText import adjust_text

    logging.getLogger("adjustText").setLevel(logging.WARNING)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs, ys = [r.sentences_per_s for r in records], [r.bleu for r in records]
    colors = ["tab:red" if r.name in highlight else "tab:blue" for r in records]
    ax.scatter(xs, ys, color=colors, zorder=3)
    ax.set_xscale("log")
    ax.margins(x=0.2, y=0.15)
    ax.set_xlabel("sentences per second (log scale)")
    ax.set_ylabel("BLEU")
    ax.set_title("BLEU against translation speed")
    ax.grid(True, alpha=0.3)
    texts = [ax.text(x, y, r.name, fontsize=8) for r, x, y in zip(records, xs, ys)]
    adjust_text(texts, x=xs, y=ys, ax=ax, arrowprops=dict(arrowstyle="-", color="0.6", lw=0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
