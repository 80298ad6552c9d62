"""The systems of an evaluation and what they translate: fairseq checkpoints, CTranslate2 models and
transformers directories written by ``fairseq-kd-export --huggingface``, each inspected (kind, size,
parameters, digest) and checked against the data's dictionaries; the source split and its references."""

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from fairseq.data import Dictionary, data_utils
from fairseq.models import ARCH_MODEL_REGISTRY
from fairseq.tasks import TASK_REGISTRY

from .. import ct2
from ..checkpoints import (
    CheckpointError,
    check_embeddings_fit,
    check_fits_data,
    check_loadable_by_stock_fairseq,
    load_checkpoint,
)
from ..io import UserError, binarize, check_known_tokens, data_bin_pair, encode_lines, read_lines, sha256_file, write_text
from ..models.swish import uses_swish


class EvaluationError(UserError):
    pass


HF_VOCAB = "vocab.json"  # a transformers directory of fairseq-kd-export --huggingface: its tokens' ids


@dataclass
class System:
    name: str
    path: str
    kind: str  # "fairseq", "ctranslate2" or "huggingface"
    needs_plugin: bool = False
    use_vmap: bool = False  # CTranslate2 restricted to the model's vocabulary map (vmap.txt)
    embedding_shapes: Dict = field(default_factory=dict)  # a checkpoint's token embeddings, for the dictionary check
    params: Optional[int] = None
    size_mb: float = 0.0
    digest: str = ""
    cfg: Dict = field(default_factory=dict)  # a checkpoint's task and model settings, for the fit check


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


def use_vmap(systems: List[System], names: Sequence[str]) -> None:
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


def inspect_system(name: str, path: str) -> System:
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "model.bin")) and HF_VOCAB in os.listdir(path):
        return inspect_huggingface(name, path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "model.bin")):
            raise EvaluationError(
                f"{name}: {path} is a directory but not a CTranslate2 model (it has no model.bin), nor a Hugging Face "
                f"one of fairseq-kd-export --huggingface (it has no {HF_VOCAB})"
            )
        size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
        try:  # a truncated or foreign model.bin fails here, before any system translates
            ct2.translator(path, "cpu", 1)  # loaded, then freed
        except (RuntimeError, ValueError) as e:
            raise EvaluationError(
                f"{name}: CTranslate2 cannot load {path} ({str(e).splitlines()[0]}): convert the model again"
            ) from None
        return System(
            name, path, "ctranslate2", size_mb=round(size / 2**20, 2), digest=sha256_file(os.path.join(path, "model.bin"))
        )
    if not os.path.exists(path):
        raise EvaluationError(f"{name}: {path} does not exist (give a fairseq checkpoint or a CTranslate2 model directory)")
    state = load_checkpoint(path, what=f"{name}:")
    cfg = state["cfg"]
    task = (cfg.get("task") or {}).get("_name")
    model = cfg.get("model") or {}
    arch = model.get("arch") if isinstance(model, dict) else getattr(model, "arch", None)
    if task not in TASK_REGISTRY or (arch and arch not in ARCH_MODEL_REGISTRY):
        raise EvaluationError(f"{name}: {path} is a checkpoint of task {task!r}, arch {arch!r}, which fairseq does not know")
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
        cfg={"task": cfg.get("task") or {}, "model": model},
    )


def inspect_huggingface(name: str, path: str) -> System:
    """A transformers directory of ``fairseq-kd-export --huggingface`` (MarianMT or M2M100, with its vocab.json),
    loaded once to check it."""
    try:
        from transformers import AutoModelForSeq2SeqLM  # here, not at the top: an optional dependency (the [hf] extra)
    except ImportError:
        raise EvaluationError(
            f"{name}: {path} is a Hugging Face model; evaluating it needs transformers: pip install '.[hf]'"
        ) from None
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(path)
    except (OSError, ValueError, KeyError) as e:
        raise EvaluationError(
            f"{name}: transformers cannot load {path} ({str(e).splitlines()[0]}): export it again "
            "(fairseq-kd-export STUDENT OUT.pt --data DATA_BIN --huggingface DIR)"
        ) from None
    files = sorted(f for f in os.listdir(path) if f.endswith((".safetensors", ".bin", ".json")))
    weights = [f for f in files if not f.endswith(".json")]
    digest = "+".join(sha256_file(os.path.join(path, f)) for f in files)
    size = sum(os.path.getsize(os.path.join(path, f)) for f in weights)
    return System(name, path, "huggingface", params=count_parameters(model.state_dict()), size_mb=round(size / 2**20, 2),
                  digest=digest)  # fmt: skip


def count_parameters(model_state: Dict[str, torch.Tensor]) -> int:
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


def load_source(data_bin: str, split: str, references: str, source_lang: Optional[str] = None,
                target_lang: Optional[str] = None, source: Optional[str] = None, spm_model: Optional[str] = None,
                bpe_codes: Optional[str] = None, work_dir: Optional[str] = None) -> Source:  # fmt: skip
    """The source sentences (a split of DATA_BIN, or raw text SOURCE binarized with its dictionaries into
    WORK_DIR) and the references, each checked against the other."""
    src, tgt = data_bin_pair(data_bin, "DATA_BIN", source_lang, target_lang, EvaluationError)
    refs = read_lines(references, "--references")
    if source:
        lines = encode_lines(read_lines(source, "--source"), spm_model, bpe_codes)
        check_known_tokens(lines, os.path.join(data_bin, f"dict.{src}.txt"), "--source")
        if len(lines) != len(refs):
            raise EvaluationError(f"--source has {len(lines)} lines but --references {len(refs)}: they must be parallel")
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


def check_dictionaries(system: System, source: Source) -> None:
    """A model must use the data-bin's dictionaries: same size, and the same symbols where they can be read."""
    dicts = {lang: Dictionary.load(os.path.join(source.data_bin, f"dict.{lang}.txt")) for lang in (source.src, source.tgt)}
    if system.kind == "huggingface":
        with open(os.path.join(system.path, HF_VOCAB), encoding="utf-8") as f:
            vocab = json.load(f)
        for lang in (source.src, source.tgt):
            symbols = dicts[lang].symbols
            if len(vocab) != len(symbols) or set(vocab) != set(symbols):
                raise EvaluationError(
                    f"{system.name}: the Hugging Face model's vocab.json ({len(vocab)} tokens) does not hold "
                    f"{source.data_bin}'s dict.{lang}.txt ({len(symbols)}): evaluate it with the data-bin it was exported with"
                )
        return
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
    # the shapes read when the system was inspected: the checkpoint is not loaded again
    embeddings = {k: torch.empty(shape, device="meta") for k, shape in system.embedding_shapes.items()}
    try:
        check_fits_data(system.cfg, source.data_bin, source.src, source.tgt, what=f"{system.name}: {system.path}")
        check_embeddings_fit(embeddings, source.data_bin, source.src, source.tgt, what=system.name)
    except CheckpointError as e:
        raise EvaluationError(str(e)) from None


def _ct2_vocabularies(path):
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
