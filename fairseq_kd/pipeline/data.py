"""The data a pipeline run makes besides pseudo-labels: the low-data regime's split, and pairs read from and
written to data-bins."""

import hashlib
import os
from typing import Callable, List, Tuple

from fairseq.data import Dictionary, data_utils

from .. import methods as M
from ..io import UserError, binarize, write_text


def binarized_sentences(data_bin: str, split: str, src: str, tgt: str) -> int:
    """The number of sentences of a binarized split (its index's size field)."""
    dataset = data_utils.load_indexed_dataset(os.path.join(data_bin, f"{split}.{src}-{tgt}.{tgt}"), None)
    if dataset is None:
        raise UserError(f"--data-bin {data_bin}: the {split} split for {src}-{tgt} cannot be read")
    return len(dataset)


def low_data_selector(share: float = M.LOW_DATA_SHARE) -> Callable[[str], bool]:
    """A predicate on source lines: True for the SHARE of them that the low-data regime keeps labelled."""
    buckets = round(1 / share)

    def keep(source_line):
        return int(hashlib.sha1(source_line.encode("utf-8")).hexdigest(), 16) % buckets == 0

    return keep


def read_pairs(data_bin: str, split: str, src: str, tgt: str) -> List[Tuple[str, str]]:
    """[(source tokens, target tokens)] of a binarized split, as text."""
    columns = []
    for lang in (src, tgt):
        dictionary = Dictionary.load(os.path.join(data_bin, f"dict.{lang}.txt"))
        dataset = data_utils.load_indexed_dataset(os.path.join(data_bin, f"{split}.{src}-{tgt}.{lang}"), dictionary)
        if dataset is None:
            raise UserError(f"{data_bin} has no binarized {split} split for {src}-{tgt}")
        columns.append([dictionary.string(dataset[i]) for i in range(len(dataset))])
    return list(zip(*columns))


def binarize_pairs(pairs: List[Tuple[str, str]], work_dir: str, dest_dir: str, src: str, tgt: str, data_bin: str) -> None:
    """PAIRS of token lines as the train split of DEST_DIR, binarized with DATA_BIN's dictionaries (the text in
    WORK_DIR)."""
    prefix = os.path.join(work_dir, "train")
    os.makedirs(work_dir, exist_ok=True)
    for side, lang in ((0, src), (1, tgt)):
        write_text(f"{prefix}.{lang}", "".join(p[side] + "\n" for p in pairs))
    binarize(prefix, dest_dir, src, tgt, data_bin)
