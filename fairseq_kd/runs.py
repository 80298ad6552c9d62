"""Run directories: the settings a run was made with, its finished stages and its logged commands.

Every resumable job of fairseq_kd (the pipeline, the demo, the pseudo-labeller, the top-k cache) keeps its
work in one directory and uses this module for three things:

* :func:`check_recorded` — the settings the directory was made with, recorded in a JSON file; a rerun
  with other settings (but for those that may change) is refused in one line, before anything is touched.
* :func:`is_done` / :func:`mark_done` — a stage (or shard) is finished when its marker exists, written
  only after the stage's results are complete; a marker may carry a key (what the stage read besides the
  settings, such as input digests): a marker of another key is not finished.
* :class:`RunDir` — the two together for a directory of named stages (``OUT/stages/NAME.done``), and
  :meth:`RunDir.command`, a console script of this environment with its output appended to
  ``OUT/logs/NAME.log``, its progress shown, and its failure reported in one line where it was a refusal.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Type

from .checkpoints import load_checkpoint  # torch and fairseq: loaded only when a checkpoint is read
from .io import WRITE_FAILURES, UserError, sha256_file, write_json

BIN = os.path.dirname(sys.executable)
PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))


def log(message: str = "") -> None:
    print(message, flush=True)


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


# ---- recorded settings ----------------------------------------------------------------------------------


def flatten(record: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """{"training.lr": 0.002, ...}: a nested settings record with one key per value."""
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def changed_settings(recorded: Dict[str, Any], now: Dict[str, Any], defaults: Optional[Dict[str, Any]] = None,
                     ignore: Iterable[str] = (), keys: Optional[Iterable[str]] = None) -> List[Tuple[str, Any, Any]]:  # fmt: skip
    """The settings of an earlier run (RECORDED) that differ from NOW's, as [(key, then, now)] sorted by key.
    A key that RECORDED lacks takes its value from DEFAULTS (a setting added since, at the value the earlier
    runs had); keys in IGNORE are not compared; KEYS limits the comparison (default: every key of both)."""
    defaults = defaults or {}
    names = set(recorded) | set(now) if keys is None else keys
    changes = []
    for key in sorted(names):
        then = recorded.get(key, defaults.get(key))
        if key not in ignore and then != now.get(key):
            changes.append((key, then, now.get(key)))
    return changes


def check_recorded(
    path: str,
    settings: Dict[str, Any],
    what: str,
    error: Type[UserError],
    *,
    defaults: Optional[Dict[str, Any]] = None,
    may_change: Iterable[str] = (),
    unrecorded_ok: Iterable[str] = (),
    keys: Optional[Iterable[str]] = None,
    remedy: str = "rerun with the same settings to resume, or give another output directory",
    write: bool = True,
) -> Optional[Dict[str, Any]]:
    """Compares SETTINGS with those recorded at PATH by an earlier run and raises ERROR naming every
    difference, one line. Nested records are compared value by value ("training.lr"). Not compared: keys in
    MAY_CHANGE, and keys of UNRECORDED_OK that the record lacks (values that early runs did not record); a key
    that the record lacks takes its value from DEFAULTS (a setting added since, at the value earlier runs had);
    KEYS limits the comparison to those top-level keys. Then records SETTINGS (unless WRITE is false).
    Returns the earlier record, or None."""
    earlier = None
    if os.path.exists(path):
        with open(path) as f:
            earlier = json.load(f)
        chosen = set(earlier) | set(settings) if keys is None else set(keys)
        then = flatten({k: v for k, v in dict(defaults or {}, **earlier).items() if k in chosen})
        now = flatten({k: v for k, v in settings.items() if k in chosen})
        skipped = set(may_change) | {k for k in unrecorded_ok if earlier.get(k) is None}
        # a skipped key skips the values nested under it ("inputs" skips "inputs.teacher")
        ignore = {k for k in set(then) | set(now) if k in skipped or k.split(".")[0] in skipped}
        changes = changed_settings(then, now, ignore=ignore)
        if changes:
            listed = "; ".join(f"{k}: {short(a)} then, {short(b)} now" for k, a, b in changes)
            raise error(f"{os.path.dirname(path) or '.'} holds {what} made with other settings ({listed}): {remedy}")
    if write:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        write_json(path, settings)
    return earlier


# files above this size are digested by their size, time and samples, not read whole
WHOLE_FILE_DIGEST_LIMIT = 256 * 2**20


def digest(path: str) -> Optional[str]:
    """What a file holds, for a rerun to see that an input changed: its SHA-256, or for a file over
    WHOLE_FILE_DIGEST_LIMIT its size, modification time and the SHA-256 of 16 evenly spaced 64 KiB samples;
    None for a file that does not exist."""
    if not os.path.isfile(path):
        return None
    size = os.path.getsize(path)
    if size <= WHOLE_FILE_DIGEST_LIMIT:
        return sha256_file(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for i in range(16):
            f.seek(i * (size - 2**16) // 15)
            h.update(f.read(2**16))
    return f"size {size}, mtime {int(os.path.getmtime(path))}, sampled {h.hexdigest()}"


# ---- stage markers ----------------------------------------------------------------------------------------


def is_done(marker: str, key: Any = None) -> bool:
    """Whether the stage of MARKER finished (with KEY, when one is given)."""
    if not os.path.isfile(marker):
        return False
    if key is None:
        return True
    return marker_key(marker) == key


def marker_key(marker: str) -> Any:
    """The key that MARKER records (None for a marker made before keys were recorded)."""
    with open(marker) as f:
        try:
            return json.load(f).get("key")
        except ValueError:
            return None


def mark_done(marker: str, key: Any = None, seconds: Optional[float] = None) -> None:
    """Marks a stage finished: call it only once everything the stage writes is complete."""
    os.makedirs(os.path.dirname(marker) or ".", exist_ok=True)
    write_json(marker, {"key": key, "seconds": None if seconds is None else round(seconds, 1)})


# ---- logged commands ----------------------------------------------------------------------------------


def run_logged(cmd: Sequence[Any], log_path: str, append: bool = True, every: Optional[Callable[[], None]] = None,
               env: Optional[Dict[str, str]] = None) -> Tuple[int, str]:  # fmt: skip
    """Runs CMD with its output written to LOG_PATH after a ``$ CMD`` line (appended unless APPEND is false),
    calling EVERY once a second while it runs; returns (exit status, the output of this command)."""
    cmd = [str(c) for c in cmd]
    with open(log_path, "a" if append else "w", encoding="utf-8") as f:
        f.write("\n$ " + " ".join(cmd) + "\n")
        f.flush()
        process = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=dict(env or os.environ, PYTHONUNBUFFERED="1"))
        while process.poll() is None:
            time.sleep(0.2 if every is None else 1)
            if every is not None:
                every()
    with open(log_path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    return process.returncode, text[text.rfind("\n$ ") :]


def refusal(name: str, status: int, output: str) -> Optional[str]:
    """The message of a console script that stopped at a bad input (exit status 2, its last line
    "NAME: error: MESSAGE", as argparse and our console scripts end), else None."""
    lines = [line for line in output.splitlines() if line.strip()]
    if status == 2 and lines and lines[-1].startswith(f"{name}: error: "):
        return lines[-1][len(f"{name}: error: ") :]
    return None


def disk_full(output: str) -> Optional[str]:
    """The reason, when a command's OUTPUT ends in a write that failed for want of space, else None."""
    for reason in (os.strerror(e) for e in WRITE_FAILURES):
        if reason in output[-5000:]:
            return reason
    return None


_VALIDATION = re.compile(r"valid on 'valid' subset \| (.*)$", re.MULTILINE)
_FIELD = re.compile(r"(\w+) (-?[\d.]+(?:e[-+]?\d+)?|inf|nan)(?: \||$)")


def validations(log_path: str) -> List[Dict[str, float]]:
    """The fields of every validation a fairseq-train log reports, in order: {"loss", "nll_loss", "ppl", "bleu"
    (with --eval-bleu), "num_updates", ...: value}, the numbers of fairseq's "valid on 'valid' subset | NAME VALUE
    | ..." lines (the losses in bits)."""
    with open(log_path, errors="replace") as f:
        return [{k: float(v) for k, v in _FIELD.findall(m.group(1))} for m in _VALIDATION.finditer(f.read())]


def last_update(log_path: str) -> Optional[int]:
    """The last number of updates a fairseq-train log reports."""
    with open(log_path, errors="replace") as f:
        found = re.findall(r"num_updates[=\s](\d+)", f.read()[-20000:])
    return int(found[-1]) if found else None


# ---- fairseq-train checkpoints ----------------------------------------------------------------------------


def repair_last_checkpoint(save_dir: str) -> Optional[str]:
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


def checkpoint_updates(path: str) -> Optional[int]:
    """The number of updates a fairseq checkpoint was saved at, or None without one."""

    if not os.path.exists(path):
        return None
    return load_checkpoint(path)["optimizer_history"][-1]["num_updates"]


# ---- a directory of named stages ------------------------------------------------------------------------


class RunDir:
    """A run's directory OUT: its recorded settings, its stages (OUT/stages/NAME.done) and its logged
    commands (OUT/logs/NAME.log). ERROR is the class of the one-line errors it raises."""

    error: Type[UserError] = UserError

    def __init__(self, out: str):
        self.out = out

    def path(self, *parts: str) -> str:
        return os.path.join(self.out, *parts)

    def check_recorded(self, name: str, settings: Dict[str, Any], what: str, **kwargs: Any) -> Optional[Dict[str, Any]]:
        """:func:`check_recorded` of the settings file OUT/NAME."""
        os.makedirs(self.out, exist_ok=True)
        return check_recorded(self.path(name), settings, what, self.error, **kwargs)

    def done_marker(self, stage: str) -> str:
        return self.path("stages", re.sub(r"[^\w.-]+", "_", stage) + ".done")

    def stage(self, name: str, fn: Callable[..., Any], *args: Any, key: Any = None, outputs: Sequence[str] = (),
              remake: bool = True, again: str = "done again") -> None:  # fmt: skip
        """Runs FN(*ARGS) unless a rerun finds stage NAME finished (with the same KEY, when one is given: what the
        stage's result depends on besides the run's settings) and its OUTPUTS (paths) all there. A finished stage
        whose result was deleted is done again, the log naming what was missing; with REMAKE false (a stage
        whose remade result could differ from what later stages were made of) that is refused in one line.
        AGAIN: what the log says FN does for a stage finished with another KEY."""
        marker = self.done_marker(name)
        missing = [path for path in outputs if not os.path.exists(path)]
        if is_done(marker, key) and not missing:
            log(f"{name}: done earlier")
            return
        if is_done(marker, key) and not remake:
            raise self.error(
                f"{', '.join(missing)} is missing, but the {name} stage was done: restore it, or remove {marker} to "
                f"make it again (and the later stages' markers in {os.path.dirname(marker)}, made from the old one)"
            )
        if is_done(marker, key):
            log(f"{name}: done earlier, but {', '.join(missing)} is missing: done again")
        elif os.path.exists(marker):
            log(f"{name}: done earlier with other inputs ({short(marker_key(marker))} then, {short(key)} now): {again}")
        log(f"{name} ...")
        start = time.time()
        fn(*args)
        mark_done(marker, key, time.time() - start)
        log(f"{name}: finished in {minutes(time.time() - start)}")

    def command(self, name: str, args: List[Any], log_name: str, progress_total: Optional[int] = None) -> str:
        """Runs console script NAME of this environment, its output appended to OUT/logs/LOG_NAME.log; shows
        the number of updates every 30 s when PROGRESS_TOTAL is given; a refusal or a full disk ends in one
        line, any other failure with the log's tail. Returns the log's path."""
        os.makedirs(self.path("logs"), exist_ok=True)
        log_path = self.path("logs", log_name + ".log")
        start, shown, next_report = time.time(), [None], [time.time() + 30]

        def progress():
            if progress_total and time.time() >= next_report[0]:
                next_report[0] += 30
                updates = last_update(log_path)
                if updates is not None and updates != shown[0]:
                    log(f"    {log_name}: {updates}/{progress_total} updates, {minutes(time.time() - start)}")
                    shown[0] = updates

        status, output = run_logged([os.path.join(BIN, name)] + list(args), log_path, every=progress)
        if status == 0:
            return log_path
        if name == "fairseq-train" and status < 0 and "done training in" in output:
            # fairseq-train can abort while the interpreter shuts down, after it saved its last checkpoint
            log(f"    note: fairseq-train finished training, then died of signal {-status} at exit")
            return log_path
        full = disk_full(output)
        if full:
            raise self.error(
                f"{name} could not write ({full}; see the end of {log_path}): free some space and rerun the "
                "same command (the finished stages and the last checkpoints are kept)"
            )
        refused = refusal(name, status, output)
        if refused:
            raise self.error(f"{name} refused its input: {refused} (the command and its output: {log_path})")
        raise RuntimeError(f"{name} failed (exit status {status}); the end of {log_path}:\n{output[-3000:]}")

    def train(self, flags: List[Any], save_dir: str, log_name: str, max_update: int) -> None:
        """fairseq-train with FLAGS into SAVE_DIR, resuming what is there (a checkpoint_last.pt left truncated
        is repaired first). Nothing is run when checkpoint_last.pt has MAX_UPDATE updates already: fairseq-train,
        resumed there, would make one more before it stops."""
        repair_last_checkpoint(save_dir)
        done = checkpoint_updates(os.path.join(save_dir, "checkpoint_last.pt"))
        if done is not None and done >= max_update:
            log(f"    {log_name}: {save_dir}/checkpoint_last.pt has {done} updates already: not trained again")
            return
        self.command("fairseq-train", flags + ["--save-dir", save_dir], log_name, progress_total=max_update)
