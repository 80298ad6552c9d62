"""Small file helpers shared by the console scripts and the pipeline: a user's-error type, digests,
atomic JSON writes, UTF-8 text, subword encoding and binarizing text with given dictionaries."""

import argparse
import atexit
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Type

from fairseq import options
from fairseq.data import Dictionary, encoders
from fairseq_cli import preprocess


class UserError(ValueError):
    """A mistake in what the user gave (a path, a number, a file's content): reported as one line."""


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


_LINKS = []  # the directory of this process's links to paths that hold ':' (made on first use)
_LINKED = {}  # path -> its link


def split_models(spec: str) -> List[str]:
    """The checkpoints of a ``--teacher``/``--teacher-path`` value: SPEC itself when it names a file (a path may
    hold ':'), else its ':'-separated members, an ensemble."""
    if os.path.isfile(spec) or os.pathsep not in spec:
        return [spec]
    return spec.split(os.pathsep)


def colon_free(path: str) -> str:
    """PATH as fairseq can be given it: fairseq reads ':' in a data directory or a --path as a list of them, so a
    path that holds ':' becomes a symbolic link to it in a temporary directory of this process (removed at
    exit); other paths are returned as they are."""
    if os.pathsep not in path:
        return path
    if path in _LINKED:
        return _LINKED[path]
    if not _LINKS:
        _LINKS.append(tempfile.mkdtemp(prefix="fairseq-kd-links-"))
        atexit.register(shutil.rmtree, _LINKS[0], True)
    link = os.path.join(_LINKS[0], f"{len(os.listdir(_LINKS[0]))}-{os.path.basename(path).replace(os.pathsep, '_')}")
    os.symlink(os.path.abspath(path), link)
    _LINKED[path] = link
    return link


_HELD = {}  # lock path -> (open file, depth): the locks this process holds


def _drop_inherited_locks():
    """In a forked child (a data-loading worker, say): closes its copies of the parent's lock files, so that
    the lock goes with the parent. A flock belongs to the open file, which a fork shares: a worker that
    outlives its killed parent by a few seconds would otherwise keep the run's directory locked."""
    for f, _ in _HELD.values():
        with contextlib.suppress(OSError):
            f.close()  # closing one copy leaves the parent's lock in place; unlocking would release it
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


@contextlib.contextmanager
def run_lock(out_dir: str, what: str, shared: bool = False, name: str = ".lock") -> Iterator[None]:
    """Holds OUT_DIR/NAME (.lock) for a run into OUT_DIR: a second run of WHAT into it is refused while this one runs
    (exclusive), or, with SHARED, only runs that want it exclusively are (the shards of one pseudo-labelling).
    The lock is the kernel's (flock): a run that is killed leaves none behind. Reentrant within a process."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.realpath(os.path.join(out_dir, name))
    if path in _HELD:
        f, depth = _HELD[path]
        _HELD[path] = (f, depth + 1)
        try:
            yield
        finally:
            _HELD[path] = (f, _HELD[path][1] - 1)
        return
    f = open(path, "a+")
    try:
        fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise UserError(
            f"{out_dir} is in use by a running {what} ({holder}): wait for it to finish, or choose another output directory"
        ) from None
    if not shared:
        f.truncate(0)
        f.write(f"pid {os.getpid()}\n")
        f.flush()
    _HELD[path] = (f, 1)
    try:
        yield
    finally:
        if _HELD.pop(path, None) is not None:  # absent in a forked child that unwinds: not its lock
            fcntl.flock(f, fcntl.LOCK_UN)
            f.close()


def write_json(path: str, value: Any) -> None:
    """Writes VALUE as JSON to PATH atomically: a reader sees the old file or the new one, never a part."""
    with _atomic(path) as f:
        json.dump(value, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_text(path: str, text: str) -> None:
    """Writes TEXT to PATH atomically."""
    with _atomic(path) as f:
        f.write(text)


@contextlib.contextmanager
def _atomic(path):
    """A text file written beside PATH that replaces it once complete; a failed write (a full disk) leaves
    PATH as it was and no partial file behind."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            yield f
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = path  # a failed write() names no file
        raise


# what a write that failed for want of space says (ENOSPC, EDQUOT; EFBIG under a file-size limit)
WRITE_FAILURES = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def write_failure(error: OSError) -> Optional[str]:
    """The one-line report of an OSError that is a full disk (or quota, or file-size limit), else None."""
    if not isinstance(error, OSError) or error.errno not in WRITE_FAILURES:
        return None
    where = f" {error.filename}" if error.filename else ""
    return (
        f"could not write{where}: {error.strerror}; free some space and rerun the same command "
        "(what was finished before is kept)"
    )


def data_bin_pair(path: str, flag: str, src: Optional[str] = None, tgt: Optional[str] = None,
                  error: Type[UserError] = UserError, lang_flags: Optional[str] = "--source-lang and --target-lang",
                  ) -> Tuple[str, str]:  # fmt: skip
    """The language pair (SRC, TGT) of the fairseq data-bin PATH (given as FLAG), checked before any work: SRC and
    TGT when both are given, else the one pair of its binarized splits; it must hold dict.SRC.txt and
    dict.TGT.txt. Raises ERROR, naming LANG_FLAGS (the command's flags that choose a pair; None: it has none)."""
    if not os.path.isdir(path):
        raise error(f"{flag} {path!r} is not a directory (give a fairseq data-bin, as fairseq-preprocess writes)")
    if not (src and tgt):
        pairs = sorted({m.group(1, 2) for f in os.listdir(path) if (m := re.fullmatch(r"\w+\.(\w+)-(\w+)\.\w+\.idx", f))})
        if not pairs:
            raise error(f"{flag} {path!r} is not a fairseq data-bin (no binarized split SPLIT.SRC-TGT.LANG.idx in it)")
        if len(pairs) > 1:
            choose = f"give {lang_flags}" if lang_flags else "give a data-bin of one pair"
            raise error(f"{flag} {path} holds language pairs {', '.join('-'.join(p) for p in pairs)}: {choose}")
        src, tgt = src or pairs[0][0], tgt or pairs[0][1]
    for lang in (src, tgt):
        if not os.path.isfile(os.path.join(path, f"dict.{lang}.txt")):
            raise error(f"{flag} {path} has no dict.{lang}.txt: give the data-bin of {src}-{tgt}"
                        + (f" (or check {lang_flags})" if lang_flags else ""))  # fmt: skip
    return src, tgt


def read_lines(path: str, what: str = "file") -> List[str]:
    """The lines of a UTF-8 text file, without their line ends; the first line that is not UTF-8 is a
    UserError naming it."""
    if not os.path.isfile(path):
        raise UserError(f"{what} {path!r} does not exist (or is not a file)")
    lines = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                lines.append(raw.decode("utf-8").rstrip("\r\n"))
            except UnicodeDecodeError as e:
                raise UserError(
                    f"{what} {path}, line {n}: not UTF-8 ({e.reason} at byte {e.start}); convert it to UTF-8"
                ) from None
            if "\x00" in lines[-1]:
                raise UserError(f"{what} {path}, line {n}: holds a NUL byte: is it a text file?")
    return lines


def check_output_path(flag: str, path: str, file_expected: bool = False) -> None:
    """A path that a run will write: refused when it is a file where a directory is meant (or a directory
    where a file is), or when the nearest existing directory above it is a file, before any work."""
    if os.path.exists(path) and os.path.isdir(path) == file_expected:
        kind = "a directory" if file_expected else "a file"
        raise UserError(f"{flag} {path} is {kind}: give {'a file' if file_expected else 'a directory'} path")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"{flag} {path} cannot be made: {parent} is a file")
    where = path if os.path.isdir(path) else parent
    if not os.access(where, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path} cannot be written: {where} is read-only for this user; give a writable path")


def check_outputs_apart(inputs: Dict[str, Optional[str]], outputs: Dict[str, Optional[str]]) -> None:
    """Refuses, in one line and before any work, an output that is an input or a directory that holds one
    (writing it, or replacing it with --overwrite, would destroy the input). INPUTS and OUTPUTS are {flag: path};
    None paths are skipped. An output inside an input directory replaces nothing of it and is allowed (a top-k
    cache lives in its data-bin by default)."""
    for out_flag, out in outputs.items():
        if not out:
            continue
        o = os.path.realpath(out)
        for in_flag, inp in inputs.items():
            if not inp:
                continue
            i = os.path.realpath(inp)
            if o == i:
                relation = "is"
            elif i.startswith(o.rstrip(os.sep) + os.sep):
                relation = "holds"
            else:
                continue
            raise UserError(
                f"{out_flag} {out} {relation} the input {in_flag} {inp}: writing there would destroy it; choose an "
                "output path outside the inputs"
            )


def encode_lines(lines: Sequence[str], spm_model: Optional[str] = None, bpe_codes: Optional[str] = None) -> List[str]:
    """LINES in the subword units of a sentencepiece model or of subword-nmt BPE codes (fairseq's own
    encoders); with neither, whitespace-normalised as they are. Empty lines stay empty."""
    if not (spm_model or bpe_codes):
        return [" ".join(line.split()) for line in lines]

    flag, path = ("--spm-model", spm_model) if spm_model else ("--bpe-codes", bpe_codes)
    if not os.path.isfile(path):
        raise UserError(f"{flag} {path!r} does not exist")
    if bpe_codes:
        try:
            import subword_nmt  # noqa: F401
        except ImportError:
            raise UserError("--bpe-codes needs the subword-nmt package: pip install subword-nmt") from None
    try:
        if spm_model:
            bpe = encoders.build_bpe(argparse.Namespace(bpe="sentencepiece", sentencepiece_model=spm_model))
        else:
            bpe = encoders.build_bpe(argparse.Namespace(bpe="subword_nmt", bpe_codes=bpe_codes, bpe_separator="@@"))
    except (RuntimeError, OSError, ValueError) as e:
        raise UserError(f"cannot load {flag} {path!r}: {str(e).splitlines()[0]}") from None
    return [bpe.encode(line) if line.strip() else "" for line in lines]


def check_known_tokens(lines: Sequence[str], dictionary: str, flag: str) -> None:
    """Refuses token lines of which most tokens are not in DICTIONARY (a dict.LANG.txt): raw text given without
    the tokenizer the data was made with, which fairseq would binarize to unknown tokens without a word."""
    symbols = set(Dictionary.load(dictionary).symbols)
    tokens = [token for line in lines for token in line.split()]
    unknown = sum(token not in symbols for token in tokens)
    if tokens and unknown > 0.5 * len(tokens):
        raise UserError(
            f"{flag}: {100 * unknown // len(tokens)}% of its tokens are not in {dictionary}: encode it as the data was "
            "made (--spm-model or --bpe-codes)"
        )


def binarize(prefix: str, dest_dir: str, src: str, tgt: str, data_dir: str, only_source: bool = False,
             split: str = "train") -> None:  # fmt: skip
    """fairseq-preprocess of PREFIX.SRC (and PREFIX.TGT) as SPLIT with DATA_DIR's dictionaries, into
    DEST_DIR (replaced atomically); the dictionaries are copied along."""

    tmp = dest_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    flags = ["--source-lang", src, f"--{split}pref", prefix, "--destdir", tmp, "--workers", "1"]
    flags += ["--srcdict", os.path.join(data_dir, f"dict.{src}.txt")]
    if only_source:
        flags += ["--only-source"]
    else:
        flags += ["--target-lang", tgt, "--tgtdict", os.path.join(data_dir, f"dict.{tgt}.txt")]
    preprocess.main(options.get_preprocessing_parser().parse_args(flags))
    if only_source:
        # fairseq names a source-only split SPLIT.SRC-None.SRC; generate looks for SPLIT.SRC-TGT.SRC
        for ext in ("bin", "idx"):
            os.replace(
                os.path.join(tmp, f"{split}.{src}-None.{src}.{ext}"), os.path.join(tmp, f"{split}.{src}-{tgt}.{src}.{ext}")
            )
    for lang in (src, tgt):
        shutil.copy(os.path.join(data_dir, f"dict.{lang}.txt"), os.path.join(tmp, f"dict.{lang}.txt"))
    shutil.rmtree(dest_dir, ignore_errors=True)
    os.replace(tmp, dest_dir)
