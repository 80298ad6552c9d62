"""How every system translates the same source the same way (:class:`Settings`): fairseq-generate for a
fairseq checkpoint, CTranslate2 and transformers' generate() under fairseq-generate's batches and length bound
for a CTranslate2 model and a transformers directory; the translations kept and reused by what made them, and
the timing rounds taken by turns."""

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

from fairseq.data import data_utils

from .. import ct2
from ..generate_log import read_translations
from ..io import colon_free, read_lines, write_json, write_text
from ..runs import BIN, PLUGIN_DIR, run_logged
from .systems import HF_VOCAB, EvaluationError, Source, System

logger = logging.getLogger("fairseq_kd.evaluate")

POST_PROCESSING = ("auto", "sentencepiece", "subword_nmt", "none")
# bounds beyond which a translation cannot finish in reasonable memory and time: the output length bound
# a * source length + b, and the beam (fairseq keeps beam x batch decoder states)
MAX_LEN_A, MAX_BEAM = 10.0, 128


def detect_post_process(symbols: Sequence[str]) -> str:
    """The post-processing that a dictionary's SYMBOLS (specials excluded) were made for: "sentencepiece" when
    many start with "\u2581", "subword_nmt" when many end with "@@", else "none" (words, or a tokenizer whose
    units are joined by spaces)."""
    symbols = list(symbols) or [""]
    if sum(s.startswith("\u2581") for s in symbols) >= 0.1 * len(symbols):
        return "sentencepiece"
    if sum(s.endswith("@@") for s in symbols) >= 0.05 * len(symbols):
        return "subword_nmt"
    return "none"


def check_detokenized(name: str, hypotheses: List[str]) -> None:
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

    def check(self) -> None:
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


def translate_system(system: System, source: Source, settings: Settings, log_path: str) -> Tuple[List[str], Dict[str, float]]:
    """(detokenized hypotheses in corpus order, speed) of one translation of the source by SYSTEM."""
    if system.kind == "ctranslate2":
        return translate_ctranslate2(system, source, settings)
    if system.kind == "huggingface":
        return translate_huggingface(system, source, settings)
    return translate_fairseq(system, source, settings, log_path)


def translate_fairseq(system: System, source: Source, settings: Settings, log_path: str) -> Tuple[List[str], Dict[str, float]]:
    cmd = [os.path.join(BIN, "fairseq-generate"), colon_free(source.data_bin), "--path", colon_free(system.path),
           "--gen-subset", source.split,
           "--source-lang", source.src, "--target-lang", source.tgt,
           "--beam", settings.beam, "--batch-size", settings.batch_size,
           "--max-len-a", settings.max_len_a, "--max-len-b", settings.max_len_b,
           # else fairseq-generate leaves out the sentences beyond the last multiple of 8
           "--required-batch-size-multiple", "1", "--cpu"]  # fmt: skip
    if settings.post_process != "none":
        cmd += ["--post-process", settings.post_process]
    if system.needs_plugin:
        cmd += ["--user-dir", PLUGIN_DIR]
    code, text = run_logged(cmd, log_path, append=False)
    if code != 0:
        raise RuntimeError(
            f"{system.name}: fairseq-generate failed (exit status {code}); the end of {log_path}:\n{text[-2000:]}"
        )
    return read_translations(text, len(source.tokens), system.name)


def translate_ctranslate2(system: System, source: Source, settings: Settings) -> Tuple[List[str], Dict[str, float]]:
    """CTranslate2 beam search under fairseq-generate's conditions (:func:`fairseq_kd.ct2.translate`):
    its batches and its length bound. Timed over the ``translate_batch`` calls only, as fairseq-generate
    times its inference steps. The translator is freed afterwards: its threads must not compete with what
    runs next."""
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


def translate_huggingface(system: System, source: Source, settings: Settings) -> Tuple[List[str], Dict[str, float]]:
    """transformers' beam search under fairseq-generate's conditions: its batches (right-padded), its length
    bound, at least one token before ``</s>``, never ``<pad>``, a sentence finished once the beam has as many
    finished hypotheses (``early_stopping``, as fairseq). The source tokens are the split's, looked up in the
    model's vocab.json. Timed over the ``generate()`` calls only; torch's threads, as fairseq-generate's."""
    import torch
    from transformers import AutoModelForSeq2SeqLM  # here, not at the top: an optional dependency (the [hf] extra)
    from transformers.utils import logging as hf_logging

    model = AutoModelForSeq2SeqLM.from_pretrained(system.path).eval()
    search = dict(num_beams=settings.beam, early_stopping=True) if settings.beam > 1 else dict(num_beams=1)
    with open(os.path.join(system.path, HF_VOCAB), encoding="utf-8") as f:
        vocab = json.load(f)
    symbols = {i: s for s, i in vocab.items()}
    eos, pad = model.generation_config.eos_token_id, model.generation_config.pad_token_id
    outputs, seconds = [None] * len(source.tokens), 0.0
    # the settings given here replace the directory's generation defaults: no warning for each batch
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        for batch in ct2.batches([len(t) for t in source.tokens], batch_size=settings.batch_size):
            ids = [[vocab[t] for t in source.tokens[i]] + [eos] for i in batch]
            longest = max(len(x) for x in ids)
            input_ids = torch.full((len(ids), longest), pad, dtype=torch.long)
            mask = torch.zeros((len(ids), longest), dtype=torch.long)
            for row, x in enumerate(ids):
                input_ids[row, : len(x)], mask[row, : len(x)] = torch.tensor(x), 1
            start = time.perf_counter()
            with torch.no_grad():
                generated = model.generate(
                    input_ids=input_ids, attention_mask=mask, do_sample=False, **search,
                    max_new_tokens=int(settings.max_len_a * longest + settings.max_len_b) + 1, min_new_tokens=1,
                    bad_words_ids=[[pad]], eos_token_id=eos, pad_token_id=pad, forced_eos_token_id=eos,
                )  # fmt: skip
            seconds += time.perf_counter() - start
            for i, row in zip(batch, generated.tolist()):
                hypothesis = row[1:]  # after the decoder's start
                hypothesis = hypothesis[: hypothesis.index(eos)] if eos in hypothesis else hypothesis
                outputs[i] = [symbols[t] for t in hypothesis if t != pad]
    finally:
        hf_logging.set_verbosity(verbosity)
    del model
    n_tokens = sum(len(o) + 1 for o in outputs)  # + </s>, as fairseq-generate counts
    speed = {"sentences_per_s": round(len(outputs) / seconds, 2), "tokens_per_s": round(n_tokens / seconds, 2),
             "seconds": round(seconds, 3)}  # fmt: skip
    post = None if settings.post_process == "none" else settings.post_process
    return [data_utils.post_process(" ".join(o), post) if post else " ".join(o) for o in outputs], speed


def timing(systems: List[System], source: Source, settings: Settings, rounds: int, work: str,
           translations: Dict[str, List[str]], say: Callable[[str], None]) -> Dict[str, List[Dict[str, float]]]:  # fmt: skip
    """{name: [speed of each run]} of ROUNDS more translations per system, taken by turns (round r starts
    with the r-th system, so that none is always first or last); reused from WORK/timing.json when it was
    made of the same models with the same settings."""
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
            hypotheses, speed = translate_system(system, source, settings, log_path)
            if hypotheses != translations[system.name]:
                logger.warning(f"{system.name}: timing round {r + 1} translated differently from its scoring run")
            runs[system.name].append(speed)
        say(f"timing round {r + 1}/{rounds}, sentences/s: " + ", ".join(f"{n} {runs[n][-1]['sentences_per_s']}" for n in runs))
    write_json(path, {"key": key, "runs": runs})
    return runs


def cached_translation(system: System, source: Source, settings: Settings, work: str,
                       say: Callable[[str], None]) -> Tuple[List[str], Dict[str, float]]:  # fmt: skip
    """The system's translation of the source, reused from WORK when it was made from the same model file
    with the same settings and source."""
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
    hypotheses, speed = translate_system(system, source, settings, os.path.join(work, "logs", f"{system.name}.log"))
    write_text(base + ".txt", "".join(h + "\n" for h in hypotheses))
    write_json(base + ".json", {"key": key, "speed": speed})
    say(f"{system.name}: translated {len(hypotheses)} sentences, {speed['sentences_per_s']} sentences/s")
    return hypotheses, speed
