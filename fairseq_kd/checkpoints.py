"""Loading fairseq checkpoints on torch >= 2.6, and exporting a student that stock fairseq can run.

Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``, which refuses any pickled
class it does not know. Checkpoints written by fairseq's legacy (argparse) models hold
``argparse.Namespace`` (the model's ``cfg.model``), and runs with ``--eval-bleu`` hold numpy arrays
(logged BLEU counts), so stock fairseq can no longer load its own checkpoints. Two remedies, each
kept narrow:

* Importing :mod:`fairseq_kd` adds ``argparse.Namespace`` and numpy arrays, dtypes and scalars to
  torch's weights-only allow-list. Loading stays weights-only (no arbitrary code from the file
  runs); only these plain data classes become acceptable. fairseq's own loaders (resume,
  ``fairseq-generate --user-dir``) then work.
* :func:`export_student` writes a checkpoint made only of tensors and plain containers, with the
  stock ``translation`` task, so that stock ``fairseq-generate``/``fairseq-interactive`` load it
  with no plugin and no environment variable.
"""

import argparse
import contextlib
import logging
import os
import pickle
import zipfile
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from ctranslate2.converters import fairseq as ct2_fairseq
from fairseq import checkpoint_utils, tasks, utils
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterionConfig
from fairseq.data import Dictionary, data_utils
from fairseq.models import ARCH_MODEL_NAME_REGISTRY, ARCH_MODEL_REGISTRY, FairseqEncoderDecoderModel
from fairseq.tasks.translation import TranslationConfig
from omegaconf import OmegaConf

from .ct2 import vocabulary_map, write_vocabulary_map
from .io import UserError, colon_free

logger = logging.getLogger(__name__)


# the weights that fairseq ties with --share-all-embeddings / --share-decoder-input-output-embed
_TIED_SUFFIXES = ("embed_tokens.weight", "output_projection.weight")


def retie_embeddings(model_state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Makes equal copies of tied weights one tensor again, in place.

    A checkpoint saved by training on the CPU stores shared embeddings once; one saved on a GPU stores a copy
    per name (fairseq moves each tensor to the CPU on its own), which loads the same but makes the file larger
    by the copies. Only embedding and output-projection weights that are bit-for-bit equal are tied.
    """
    kept = []
    for key, tensor in model_state.items():
        if not key.endswith(_TIED_SUFFIXES):
            continue
        for first in kept:
            if first.shape == tensor.shape and first.dtype == tensor.dtype and torch.equal(first, tensor):
                model_state[key] = first
                break
        else:
            kept.append(tensor)
    return model_state


def _numpy_globals():
    # --eval-bleu logs its n-gram counts as numpy arrays, which end up in the metrics state.
    core = getattr(np, "_core", None) or np.core
    dtypes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    return [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype] + dtypes


# Plain data classes that fairseq itself pickles into translation checkpoints: the legacy models'
# argparse config, and numpy arrays and scalars in the logged metrics.
FAIRSEQ_CHECKPOINT_GLOBALS = [argparse.Namespace] + _numpy_globals()


def allow_fairseq_checkpoints() -> None:
    """Lets ``torch.load(weights_only=True)`` accept the plain classes fairseq pickles."""
    if hasattr(torch.serialization, "add_safe_globals"):  # torch >= 2.4
        torch.serialization.add_safe_globals(FAIRSEQ_CHECKPOINT_GLOBALS)


class CheckpointError(UserError):
    pass


def load_checkpoint(path: str, what: str = "checkpoint") -> Dict[str, Any]:
    """Loads a fairseq checkpoint to CPU with fairseq's own upgrade logic, turning the failures a
    user can fix (missing, truncated or foreign files) into one clear error."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} {path!r} does not exist (or is not a file)")
    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
    except (
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        EOFError,
        RuntimeError,
        OSError,
        KeyError,
        ValueError,
        UnicodeDecodeError,
    ) as e:  # fmt: skip  (a text file read as a pickle raises KeyError)
        raise CheckpointError(
            f"{what} {path!r} could not be read as a fairseq checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Is the file complete, and was it written by "
            "fairseq-train?"
        ) from e
    if not isinstance(state, dict) or "model" not in state or state.get("cfg") is None:
        raise CheckpointError(
            f"{what} {path!r} is not a fairseq checkpoint with a config: it has no 'model'/'cfg' entries "
            "(checkpoints from fairseq < 0.10 must be upgraded by loading and saving them with fairseq first)"
        )
    return state


def check_ctranslate2_convertible(state: Dict[str, Any], what: str = "the model") -> None:
    """Raises CheckpointError, before anything is written, for a model that CTranslate2's fairseq converter
    cannot take: another architecture family than a translation transformer, or its activation."""

    model_cfg = _stock_model_config(_plain(state["cfg"]["model"]))
    arch = model_cfg.get("arch") or model_cfg.get("_name")
    family = ARCH_MODEL_NAME_REGISTRY.get(arch)
    supported = set(ct2_fairseq._SUPPORTED_MODELS) - {"transformer_lm"}  # a language model translates nothing
    if family not in supported:
        raise CheckpointError(
            f"{what} is a {family or arch} model (arch {arch}): CTranslate2 converts the translation models "
            f"{', '.join(sorted(supported))}; export it without --ctranslate2"
        )
    activation = model_cfg.get("activation_fn", "relu")
    if activation not in ct2_fairseq._SUPPORTED_ACTIVATIONS:
        raise CheckpointError(f"{what} uses --activation-fn {activation}, which CTranslate2 does not convert")


def dictionary_difference(
    ours: Dictionary, theirs: Dictionary, names: Tuple[str, str] = ("student", "teacher")
) -> Optional[str]:
    """A description of the first difference between two dictionaries (the NAMES of their owners), or None if
    they are equal."""
    for i, (a, b) in enumerate(zip(ours.symbols, theirs.symbols)):
        if a != b:
            return f"index {i} is {a!r} for the {names[0]} but {b!r} for the {names[1]}"
    if len(ours) != len(theirs):
        shorter, longer, who = (ours, theirs, names[1]) if len(ours) < len(theirs) else (theirs, ours, names[0])
        return (
            f"the {names[0]} has {len(ours)} symbols and the {names[1]} {len(theirs)}; the {who}'s extra symbols "
            f"start with {longer.symbols[len(shorter)]!r} at index {len(shorter)}"
        )
    return None


def recorded_data_dir(task_cfg: Any) -> Optional[str]:
    """The first data directory that a checkpoint's task config records (None if it records none): where
    the teacher's dictionaries are unless --teacher-data says otherwise. It may be relative to a working
    directory elsewhere, or missing here."""
    return utils.split_paths(task_cfg["data"])[0] if task_cfg.get("data") else None


def check_fits_data(cfg: Dict[str, Any], data_bin: str, src: str, tgt: str, what: str = "the model") -> None:
    """A translation checkpoint's config (CFG) against the data it is to translate, before any work: an
    encoder-decoder model, of the data's direction (where it records one), trained with dictionaries equal to
    DATA_BIN's symbol by symbol (where the ones its config records are still there)."""
    model, task = cfg.get("model") or {}, cfg.get("task") or {}
    arch = model.get("arch") if hasattr(model, "get") else getattr(model, "arch", None)
    if arch in ARCH_MODEL_REGISTRY and not issubclass(ARCH_MODEL_REGISTRY[arch], FairseqEncoderDecoderModel):
        raise CheckpointError(
            f"{what} is a {arch} model (task {task.get('_name')}), not an encoder-decoder translation model: it cannot "
            "translate a source sentence"
        )
    languages = (task.get("source_lang"), task.get("target_lang"))
    if None not in languages and languages != (src, tgt):
        raise CheckpointError(
            f"{what} translates {languages[0]}->{languages[1]}, the data {src}->{tgt}: give a model of the data's "
            "direction (or the -s/-t of its own)"
        )
    recorded = recorded_data_dir(task)
    for lang in (src, tgt):
        theirs = os.path.join(recorded or "", f"dict.{lang}.txt")
        ours = os.path.join(data_bin, f"dict.{lang}.txt")
        if recorded and os.path.isfile(theirs) and os.path.isfile(ours):
            difference = dictionary_difference(Dictionary.load(ours), Dictionary.load(theirs), ("data", "model"))
            if difference:
                raise CheckpointError(
                    f"{what} was trained with {theirs}, which is not {ours} ({difference}): give the data-bin made "
                    "with its dictionaries"
                )


def check_embeddings_fit(
    model_state: Dict[str, torch.Tensor], data_bin: str, src: str, tgt: str, what: str = "the model"
) -> None:
    """Raises CheckpointError unless the model's encoder and decoder embeddings have as many rows as
    DATA_BIN's dict.SRC.txt and dict.TGT.txt have symbols: a model trained with other dictionaries."""

    for prefix, lang in (("encoder", src), ("decoder", tgt)):
        key = f"{prefix}.embed_tokens.weight"
        size = len(Dictionary.load(os.path.join(data_bin, f"dict.{lang}.txt")))
        if key in model_state and model_state[key].shape[0] != size:
            raise CheckpointError(
                f"{what}: its {prefix} has {model_state[key].shape[0]} embeddings but {data_bin}'s dict.{lang}.txt "
                f"{size} symbols: the model was trained with other dictionaries"
            )


def _plain(value):
    """Tensors and plain Python containers only: what ``torch.load(weights_only=True)`` accepts."""
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if OmegaConf.is_config(value):  # fairseq's loader turns a plain-dict config (an exported model's) into one
        value = OmegaConf.to_container(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    return str(value)  # enums and the like: fairseq's configs accept their string forms


def _stock_config(config, stock_dataclass, name):
    """Keeps only the fields of a stock fairseq dataclass, renamed to the stock registry key."""
    config = _plain(config) or {}
    fields = stock_dataclass.__dataclass_fields__
    out = {k: v for k, v in config.items() if k in fields}
    out["_name"] = name
    return out


def _stock_model_config(model_cfg):
    """Renames a plugin model that is a stock architecture with extra training-time options (it
    declares ``stock_arch`` and ``plugin_args``) to that stock architecture, without those options."""
    arch = model_cfg.get("arch") or model_cfg.get("_name")
    model_cls = ARCH_MODEL_REGISTRY.get(arch)
    stock_arch = getattr(model_cls, "stock_arch", None)
    if stock_arch is None:
        return model_cfg
    model_cfg = {k: v for k, v in model_cfg.items() if k not in model_cls.plugin_args}
    model_cfg["arch"] = stock_arch
    if "_name" in model_cfg:
        model_cfg["_name"] = stock_arch
    return model_cfg


def export_student(student_path: str, output_path: str, overwrite: bool = False) -> Dict[str, Any]:
    """Writes *student_path*'s model as an ordinary fairseq ``translation`` checkpoint.

    The result holds the student's weights and configuration only (no optimizer state, no
    criterion, no teacher), uses the stock ``translation`` task and ``label_smoothed_cross_entropy``
    criterion, and is made only of tensors and plain containers, so stock fairseq tools load it on
    torch >= 2.6 without ``--user-dir`` or ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``.

    Returns the written checkpoint's state dict.
    """
    if os.path.abspath(student_path) == os.path.abspath(output_path):
        raise CheckpointError("the output path must differ from the student checkpoint: export never overwrites its input")
    if os.path.exists(output_path) and not overwrite:
        raise CheckpointError(f"{output_path!r} already exists; remove it or pass --overwrite")
    state = load_checkpoint(student_path, what="student checkpoint")
    cfg = state["cfg"]

    cfg = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True) if OmegaConf.is_config(cfg) else cfg
    model_cfg = _stock_model_config(_plain(cfg["model"]))
    teacher_keys = [k for k in state["model"] if k.startswith("teacher") or ".teacher." in k]
    if teacher_keys:
        raise CheckpointError(f"{student_path!r} holds teacher weights ({teacher_keys[0]}, ...): refusing to export")

    retie_embeddings(state["model"])
    exported_cfg = _plain(cfg)
    exported_cfg["model"] = model_cfg
    exported_cfg["task"] = _stock_config(cfg["task"], TranslationConfig, "translation")
    criterion = _plain(cfg.get("criterion")) or {}
    exported_cfg["criterion"] = _stock_config(
        criterion, LabelSmoothedCrossEntropyCriterionConfig, "label_smoothed_cross_entropy"
    )
    exported_cfg["common"]["user_dir"] = None
    history = state["optimizer_history"][-1]
    exported = {
        "cfg": exported_cfg,
        "args": None,
        "model": state["model"],
        "optimizer_history": [
            {
                "criterion_name": "LabelSmoothedCrossEntropyCriterion",
                "optimizer_name": history.get("optimizer_name"),
                "lr_scheduler_state": {},
                "num_updates": history.get("num_updates", 0),
            }
        ],
        "extra_state": {"train_iterator": None, "exported_from": os.path.abspath(student_path)},
    }
    tmp_path = output_path + ".tmp"
    torch.save(exported, tmp_path)
    try:
        check_loadable_by_stock_fairseq(tmp_path)
    except Exception:
        os.remove(tmp_path)
        raise
    os.replace(tmp_path, output_path)
    return exported


@contextlib.contextmanager
def _only_torch_default_safe_globals():
    """Temporarily drops every allow-listed global (ours included), as in a process that never
    imported fairseq_kd."""
    extra = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        yield
    finally:
        torch.serialization.add_safe_globals(extra)


def check_loadable_by_stock_fairseq(path: str) -> None:
    """Fails unless *path* loads with ``weights_only=True`` and no allow-listed globals, and its
    task and model are stock fairseq ones."""
    with _only_torch_default_safe_globals():
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        if unsafe:
            raise CheckpointError(f"{path!r} still needs non-tensor globals to load: {unsafe}")
        state = torch.load(path, map_location="cpu", weights_only=True)
    task_name = state["cfg"]["task"]["_name"]
    arch = state["cfg"]["model"].get("arch")
    if task_name not in tasks.TASK_REGISTRY or task_name.endswith("_kd"):
        raise CheckpointError(f"{path!r} uses task {task_name!r}, which stock fairseq does not have")
    if arch not in ARCH_MODEL_REGISTRY or not ARCH_MODEL_REGISTRY[arch].__module__.startswith("fairseq."):
        raise CheckpointError(f"{path!r} uses architecture {arch!r}, which stock fairseq does not have")


def export_ctranslate2(exported_path: str, data_bin: str, output_dir: str, quantization: str = "int8",
                       source_lang: Optional[str] = None, target_lang: Optional[str] = None,
                       vocabulary_map: Optional[str] = None) -> None:  # fmt: skip
    """Converts an exported student (see :func:`export_student`) to a CTranslate2 model directory.

    CTranslate2's fairseq converter reads the model's settings from ``checkpoint["args"]`` as an
    ``argparse.Namespace``, which exported checkpoints keep as plain data in ``cfg["model"]`` (so that torch
    loads them weights-only): the converter is given a temporary copy that has both. A VOCABULARY_MAP file
    (:func:`learn_vocabulary_map`) is included in the model for ``use_vmap``."""
    try:
        from ctranslate2.converters import FairseqConverter
    except ImportError:
        raise CheckpointError("CTranslate2 export needs the ctranslate2 package: pip install ctranslate2") from None
    if not os.path.isfile(exported_path):
        raise CheckpointError(f"exported student {exported_path!r} does not exist (or is not a file)")
    try:
        state = torch.load(exported_path, map_location="cpu", weights_only=True)  # as exported: plain data only
        model_cfg = state["cfg"]["model"]
    except Exception:
        model_cfg = None
    if not isinstance(model_cfg, dict) or model_cfg.get("arch") not in ARCH_MODEL_REGISTRY:
        raise CheckpointError(f"{exported_path} is not an exported student: run fairseq-kd-export on it first")
    state["args"] = argparse.Namespace(**model_cfg)
    os.makedirs(os.path.dirname(os.path.abspath(output_dir)), exist_ok=True)
    copy = os.path.abspath(output_dir).rstrip("/") + ".for_ctranslate2.pt"
    torch.save(state, copy)
    try:
        FairseqConverter(
            copy, colon_free(data_bin), source_lang=source_lang, target_lang=target_lang, unsafe_deserialization=True
        ).convert(output_dir, quantization=quantization, force=True, vmap=vocabulary_map)
    finally:
        os.remove(copy)
    return output_dir


def learn_vocabulary_map(data_bin: str, split: str, path: str, source_lang: Optional[str] = None,
                         target_lang: Optional[str] = None, frequent: int = 100,
                         per_source: int = 50) -> Tuple[int, float, int]:  # fmt: skip
    """Learns a lexical shortlist from DATA_BIN's binarized SPLIT (:func:`fairseq_kd.ct2.vocabulary_map`)
    and writes it to PATH in CTranslate2's format. Returns (number of source tokens mapped, mean candidates
    per source token, sentence pairs read)."""

    if source_lang is None or target_lang is None:
        source_lang, target_lang = data_utils.infer_language_pair(data_bin)
    prefix = os.path.join(data_bin, f"{split}.{source_lang}-{target_lang}.")
    dictionaries, datasets = [], []
    for lang in (source_lang, target_lang):
        dictionaries.append(Dictionary.load(os.path.join(data_bin, f"dict.{lang}.txt")))
        dataset = data_utils.load_indexed_dataset(prefix + lang, dictionaries[-1])
        if dataset is None:
            raise CheckpointError(
                f"--vocab-map-split {split}: {prefix + lang}.bin/.idx do not exist; give a split binarized in {data_bin}"
            )
        datasets.append(dataset)
    if len(datasets[0]) != len(datasets[1]) or len(datasets[0]) == 0:
        raise CheckpointError(f"--vocab-map-split {split}: {prefix}* must hold one target per source (and at least one)")
    src_dict, tgt_dict = dictionaries
    pairs = ((datasets[0][i].numpy(), datasets[1][i].numpy()) for i in range(len(datasets[0])))
    size = max(len(src_dict), len(tgt_dict))
    always, candidates = vocabulary_map(pairs, size, min(src_dict.nspecial, tgt_dict.nspecial), frequent, per_source)
    write_vocabulary_map(path, always, candidates, src_dict.symbols, tgt_dict.symbols)
    mean = sum(len(c) for c in candidates.values()) / max(1, len(candidates))
    return len(candidates), mean, len(datasets[0])
