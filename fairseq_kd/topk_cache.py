"""Cached top-k teacher distributions: offline word-level KD with no teacher in memory.

The teacher runs once over a training split, teacher-forced on its targets (the references, or a
pseudo-label data-bin), and for every target token its k most probable tokens are stored with their
log-probabilities at temperature 1:

    DIR/ids.npy       (N, k) uint16 (int32 for vocabularies of 65,536 or more): token ids
    DIR/lprobs.npy    (N, k) float16: log q_i, the teacher's full-softmax log-probabilities
    DIR/offsets.npy   (S + 1,) int64: sentence s has rows offsets[s] .. offsets[s + 1]
    DIR/meta.json     k, the split's identity (SHA-256 of its binarized files and dictionaries), the teacher
    DIR/shards/       one marker per finished shard of sentences (the build resumes from them)

N is the number of target tokens (EOS included), S the number of sentences, in the data-bin's order.
Training at temperature T uses the top-k distribution renormalised at T:
``q~_i = exp(log q_i / T) / sum_{j in top-k} exp(log q_j / T)``, the same as the renormalised top-k of
the teacher's softmax(z / T).
"""

import json
import logging
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from fairseq.data import BaseWrapperDataset

from .io import UserError, sha256_file, write_json
from .runs import check_recorded, is_done, mark_done

logger = logging.getLogger(__name__)


class TopKCacheError(UserError):
    pass


def split_identity(data_dir: str, split: str, src: str, tgt: str) -> Dict[str, str]:
    """{file name: SHA-256} of a binarized split and its dictionaries: the same data in the same order
    with the same dictionaries, not only the same sizes."""
    names = [f"{split}.{src}-{tgt}.{lang}.{ext}" for lang in (src, tgt) for ext in ("bin", "idx")]
    names += [f"dict.{src}.txt", f"dict.{tgt}.txt"]
    identity = {}
    for name in names:
        path = os.path.join(data_dir, name)
        if not os.path.isfile(path):
            raise TopKCacheError(f"{path} does not exist: the cache is made for a binarized split with both sides")
        identity[name] = sha256_file(path)
    return identity


def read_meta(cache_dir: str) -> Dict[str, Any]:
    path = os.path.join(cache_dir, "meta.json")
    if not os.path.isfile(path):
        raise TopKCacheError(f"{cache_dir!r} is not a top-k cache (no meta.json): build one with fairseq-kd-cache-topk")
    with open(path) as f:
        return json.load(f)


class TopKCache:
    """A finished cache, memory-mapped read-only, checked against the data it is used with."""

    def __init__(self, cache_dir: str, identity: Optional[Dict[str, str]] = None):
        meta = read_meta(cache_dir)
        if not meta.get("complete"):
            raise TopKCacheError(f"the top-k cache {cache_dir!r} is incomplete: rerun fairseq-kd-cache-topk to finish it")
        if identity is not None and meta["identity"] != identity:
            different = sorted(k for k in set(identity) | set(meta["identity"]) if identity.get(k) != meta["identity"].get(k))
            raise TopKCacheError(
                f"the top-k cache {cache_dir!r} was made for other data: {', '.join(different)} differ from the files "
                f"it was built from ({meta['data']}). A cache fits only the exact binarized split (same sentences, "
                "same order, same dictionaries): rebuild it with fairseq-kd-cache-topk"
            )
        self.dir = cache_dir
        self.k = meta["k"]
        self._open()

    def _open(self):
        self.ids = np.load(os.path.join(self.dir, "ids.npy"), mmap_mode="r")
        self.lprobs = np.load(os.path.join(self.dir, "lprobs.npy"), mmap_mode="r")
        self.offsets = np.load(os.path.join(self.dir, "offsets.npy"))

    def __getstate__(self):
        # a data-loader worker reopens the memory maps rather than receiving a copy of the whole cache
        return {"dir": self.dir, "k": self.k}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()

    def lookup(self, sample_ids: torch.Tensor, target: torch.Tensor, pad: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(ids, log-probabilities) for a collated batch, each B x T x k (zeros at padding), with
        *target* the batch's B x T right-padded targets and *sample_ids* their sentence ids."""
        B, T = target.shape
        sentences = sample_ids.cpu().numpy()
        lengths = target.ne(pad).sum(1).cpu().numpy()
        starts = self.offsets[sentences]
        stored = self.offsets[sentences + 1] - starts
        wrong = np.flatnonzero(stored != lengths)
        if len(wrong):
            s, row = int(sentences[wrong[0]]), wrong[0]
            raise TopKCacheError(
                f"sentence {s} has {lengths[row]} target tokens but {stored[row]} in the top-k cache {self.dir!r}: "
                "the cache does not belong to this data"
            )
        # the cache rows of every target token, batch row by batch row
        rows = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(int(lengths.sum()))
        present = torch.arange(T) < torch.from_numpy(lengths)[:, None]  # B x T
        ids = torch.zeros(B, T, self.k, dtype=torch.long)
        lprobs = torch.zeros(B, T, self.k, dtype=torch.float32)
        ids[present] = torch.from_numpy(self.ids[rows].astype(np.int64))
        lprobs[present] = torch.from_numpy(self.lprobs[rows].astype(np.float32))
        return ids.to(target.device), lprobs.to(target.device)


class TopKCacheDataset(BaseWrapperDataset):
    """A training split whose collated batches carry their cache rows, ``batch["teacher_topk"]`` = (ids,
    log-probabilities), each B x T x k: the lookup runs in the data loader (its workers, with
    ``--num-workers``), not in the training step."""

    def __init__(self, dataset: Any, cache: TopKCache, pad: int):
        super().__init__(dataset)
        self.cache, self.pad = cache, pad

    def collater(self, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
        batch = self.dataset.collater(samples)
        if batch and batch.get("target") is not None:
            batch["teacher_topk"] = self.cache.lookup(batch["id"], batch["target"], self.pad)
        return batch


def build_cache(task: Any, teacher: torch.nn.Module, split: str, cache_dir: str, k: int, shard_size: int = 10000,
                max_tokens: int = 4096, data_dir: Optional[str] = None, teacher_path: Optional[str] = None) -> Dict[str, Any]:  # fmt: skip
    """Runs *teacher* (eval mode) over *split* of *task* and writes the cache, shard by shard. A shard
    is marked done only after its rows are flushed to disk; rerunning skips finished shards, so an
    interrupted build resumes, and its result equals an uninterrupted build's."""
    src, tgt = task.cfg.source_lang, task.cfg.target_lang
    identity = split_identity(data_dir, split, src, tgt)
    dataset = task.dataset(split)
    sizes = np.asarray(dataset.tgt_sizes, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    vocab = len(task.target_dictionary)
    if not 1 <= k <= vocab:
        raise TopKCacheError(f"--k must be in 1..{vocab} (the target vocabulary), got {k}")
    meta = {
        "k": k,
        "split": split,
        "data": os.path.abspath(data_dir),
        "identity": identity,
        "teacher": os.path.abspath(teacher_path) if teacher_path else None,
        # what the teacher file holds: a cache of another teacher at the same path is not resumed
        "teacher_sha256": sha256_file(teacher_path) if teacher_path else None,
        "sentences": len(dataset),
        "tokens": int(offsets[-1]),
        "shard_size": shard_size,
        "max_tokens": max_tokens,
        "complete": False,
    }
    meta_path = os.path.join(cache_dir, "meta.json")
    if _start_or_resume(cache_dir, meta, offsets, vocab):
        logger.info(f"{cache_dir}: complete already")
        return read_meta(cache_dir)
    ids_out = np.load(os.path.join(cache_dir, "ids.npy"), mmap_mode="r+")
    lprobs_out = np.load(os.path.join(cache_dir, "lprobs.npy"), mmap_mode="r+")
    teacher.eval()
    num_shards = (len(dataset) + shard_size - 1) // shard_size
    for shard in range(num_shards):
        marker = os.path.join(cache_dir, "shards", f"{shard:05d}.done")
        if is_done(marker):
            continue
        indices = np.arange(shard * shard_size, min((shard + 1) * shard_size, len(dataset)))
        _write_rows(task, teacher, dataset, indices, offsets, k, max_tokens, ids_out, lprobs_out)
        ids_out.flush()
        lprobs_out.flush()
        mark_done(marker)
        logger.info(f"{cache_dir}: shard {shard + 1} of {num_shards} done")
    meta["complete"] = True
    write_json(meta_path, meta)
    return meta


def _start_or_resume(cache_dir, meta, offsets, vocab):
    """Creates the cache's files, or checks that the existing ones were made with META's settings; True when
    that cache is complete."""
    os.makedirs(os.path.join(cache_dir, "shards"), exist_ok=True)
    meta_path = os.path.join(cache_dir, "meta.json")
    recorded = check_recorded(meta_path, meta, "a top-k cache", TopKCacheError, may_change=("complete",), keys=meta,
                              unrecorded_ok=("teacher_sha256",), write=False)  # fmt: skip
    if recorded is not None:
        return bool(recorded.get("complete"))
    rows, k = int(offsets[-1]), meta["k"]
    np.save(os.path.join(cache_dir, "offsets.npy"), offsets)
    id_dtype = np.uint16 if vocab < 2**16 else np.int32
    np.lib.format.open_memmap(os.path.join(cache_dir, "ids.npy"), mode="w+", dtype=id_dtype, shape=(rows, k)).flush()
    np.lib.format.open_memmap(os.path.join(cache_dir, "lprobs.npy"), mode="w+", dtype=np.float16, shape=(rows, k)).flush()
    write_json(meta_path, meta)
    return False


def _write_rows(task, teacher, dataset, indices, offsets, k, max_tokens, ids_out, lprobs_out):
    """The teacher's top-k log-probabilities at every target token of the sentences INDICES, into the cache."""
    device = next(teacher.parameters()).device
    pad = task.target_dictionary.pad()
    sizes = dataset.num_tokens_vec(indices) if hasattr(dataset, "num_tokens_vec") else offsets[indices + 1] - offsets[indices]
    indices = indices[np.argsort(sizes, kind="stable")]
    for batch_indices in dataset.batch_by_size(indices, max_tokens=max_tokens):
        sample = dataset.collater([dataset[i] for i in batch_indices])
        net_input = {key: value.to(device) for key, value in sample["net_input"].items()}
        with torch.no_grad():
            logits, _ = teacher(**net_input)
            values, top = torch.log_softmax(logits.float(), dim=-1).topk(k, dim=-1)  # B x T x k
        for row, s in enumerate(sample["id"].tolist()):
            start, end = offsets[s], offsets[s + 1]
            length = int(sample["target"][row].ne(pad).sum())
            assert length == end - start, (s, length, end - start)
            ids_out[start:end] = top[row, :length].cpu().numpy().astype(ids_out.dtype)
            lprobs_out[start:end] = values[row, :length].cpu().numpy().astype(np.float16)
