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

import numpy as np
import torch

from .io import UserError, sha256_file, write_json

logger = logging.getLogger(__name__)


class TopKCacheError(UserError):
    pass


def split_identity(data_dir, split, src, tgt):
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


def read_meta(cache_dir):
    path = os.path.join(cache_dir, "meta.json")
    if not os.path.isfile(path):
        raise TopKCacheError(f"{cache_dir!r} is not a top-k cache (no meta.json): build one with fairseq-kd-cache-topk")
    with open(path) as f:
        return json.load(f)


class TopKCache:
    """A finished cache, memory-mapped read-only, checked against the data it is used with."""

    def __init__(self, cache_dir, identity=None):
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
        self.ids = np.load(os.path.join(cache_dir, "ids.npy"), mmap_mode="r")
        self.lprobs = np.load(os.path.join(cache_dir, "lprobs.npy"), mmap_mode="r")
        self.offsets = np.load(os.path.join(cache_dir, "offsets.npy"))

    def lookup(self, sample_ids, target, pad):
        """(ids, log-probabilities) for a collated batch, each B x T x k (zeros at padding), with
        *target* the batch's B x T right-padded targets and *sample_ids* their sentence ids."""
        B, T = target.shape
        ids = torch.zeros(B, T, self.k, dtype=torch.long)
        lprobs = torch.zeros(B, T, self.k, dtype=torch.float32)
        lengths = target.ne(pad).sum(1).tolist()
        for row, (s, length) in enumerate(zip(sample_ids.tolist(), lengths)):
            start, end = self.offsets[s], self.offsets[s + 1]
            if end - start != length:
                raise TopKCacheError(
                    f"sentence {s} has {length} target tokens but {end - start} in the top-k cache {self.dir!r}: "
                    "the cache does not belong to this data"
                )
            ids[row, :length] = torch.from_numpy(self.ids[start:end].astype(np.int64))
            lprobs[row, :length] = torch.from_numpy(self.lprobs[start:end].astype(np.float32))
        return ids.to(target.device), lprobs.to(target.device)


def build_cache(task, teacher, split, cache_dir, k, shard_size=10000, max_tokens=4096, data_dir=None, teacher_path=None):
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
        "sentences": len(dataset),
        "tokens": int(offsets[-1]),
        "shard_size": shard_size,
        "max_tokens": max_tokens,
        "complete": False,
    }
    os.makedirs(os.path.join(cache_dir, "shards"), exist_ok=True)
    meta_path = os.path.join(cache_dir, "meta.json")
    if os.path.isfile(meta_path):
        recorded = read_meta(cache_dir)
        different = [key for key in meta if key != "complete" and recorded.get(key) != meta[key]]
        if different:
            raise TopKCacheError(
                f"{cache_dir!r} holds a top-k cache built with other settings or data ({', '.join(different)}): "
                "rerun with the same settings to resume, or choose another output directory"
            )
        if recorded.get("complete"):
            logger.info(f"{cache_dir}: complete already")
            return recorded
    else:
        id_dtype = np.uint16 if vocab < 2**16 else np.int32
        np.save(os.path.join(cache_dir, "offsets.npy"), offsets)
        np.lib.format.open_memmap(
            os.path.join(cache_dir, "ids.npy"), mode="w+", dtype=id_dtype, shape=(int(offsets[-1]), k)
        ).flush()
        np.lib.format.open_memmap(
            os.path.join(cache_dir, "lprobs.npy"), mode="w+", dtype=np.float16, shape=(int(offsets[-1]), k)
        ).flush()
        write_json(meta_path, meta)
    ids_out = np.load(os.path.join(cache_dir, "ids.npy"), mmap_mode="r+")
    lprobs_out = np.load(os.path.join(cache_dir, "lprobs.npy"), mmap_mode="r+")

    teacher.eval()
    device = next(teacher.parameters()).device
    pad = task.target_dictionary.pad()
    num_shards = (len(dataset) + shard_size - 1) // shard_size
    for shard in range(num_shards):
        marker = os.path.join(cache_dir, "shards", f"{shard:05d}.done")
        if os.path.isfile(marker):
            continue
        indices = np.arange(shard * shard_size, min((shard + 1) * shard_size, len(dataset)))
        indices = indices[
            np.argsort(
                dataset.num_tokens_vec(indices) if hasattr(dataset, "num_tokens_vec") else sizes[indices], kind="stable"
            )
        ]
        batches = dataset.batch_by_size(indices, max_tokens=max_tokens)
        for batch_indices in batches:
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
        ids_out.flush()
        lprobs_out.flush()
        with open(marker, "w") as f:
            f.write("done\n")
        logger.info(f"{cache_dir}: shard {shard + 1} of {num_shards} done")
    meta["complete"] = True
    write_json(meta_path, meta)
    return meta
