"""Evaluation of translation systems the same way: quality with significance, speed, size.

    fairseq-kd-evaluate DATA_BIN --split test --references test.en teacher=T.pt student=S.pt \
        ct2=ct2_dir --baseline teacher --timing-rounds 5 --out eval/

Every system translates the same source (a binarized split of DATA_BIN, or ``--source`` raw text encoded
with ``--spm-model``/``--bpe-codes``) with the same beam, batch size and length bound:

* a fairseq checkpoint (one written by fairseq-train or by ``fairseq-kd-export``) with stock
  ``fairseq-generate``, given ``--user-dir`` only when the checkpoint needs the plugin;
* a CTranslate2 model directory with CTranslate2, batched and bounded as fairseq-generate batches and
  bounds (sentences sorted by length, ``max_len_a * longest source + max_len_b``);
* a Hugging Face directory written by ``fairseq-kd-export --huggingface`` (MarianMT or M2M100) with
  transformers' ``generate()``, batched and bounded the same way, its beam search stopping as fairseq's.

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
import os
import statistics
import tempfile
from typing import Dict, List, Optional, Sequence, Union

from fairseq.data import Dictionary

from ..io import run_lock
from .report import Record, plot, pyplot, results_table, seed_summary, write_report
from .scores import SIGNIFICANCE, paired_bootstrap, score, verdict
from .systems import (
    EvaluationError,
    Source,
    System,
    check_dictionaries,
    count_parameters,
    inspect_system,
    load_source,
    parse_systems,
    use_vmap,
)
from .translation import (
    MAX_BEAM,
    MAX_LEN_A,
    POST_PROCESSING,
    Settings,
    cached_translation,
    check_detokenized,
    detect_post_process,
    timing,
    translate_system,
)

__all__ = [
    "MAX_BEAM", "MAX_LEN_A", "POST_PROCESSING", "SIGNIFICANCE", "EvaluationError", "Record", "Settings", "Source",
    "System", "check_detokenized", "check_dictionaries", "count_parameters", "detect_post_process", "evaluate",
    "inspect_system", "load_source", "paired_bootstrap", "parse_systems", "plot", "pyplot", "results_table", "score",
    "seed_summary", "translate_system", "use_vmap", "verdict",
]  # fmt: skip


def evaluate(
    systems: Union[Dict[str, str], Sequence[str]],
    data_bin: str,
    references: str,
    split: str = "test",
    out_dir: Optional[str] = None,
    baseline: Optional[str] = None,
    timing_rounds: int = 0,
    settings: Optional[Settings] = None,
    source_lang: Optional[str] = None,
    target_lang: Optional[str] = None,
    source: Optional[str] = None,
    spm_model: Optional[str] = None,
    bpe_codes: Optional[str] = None,
    quiet: bool = False,
    vmap: Sequence[str] = (),
) -> List[Record]:
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
    src = load_source(data_bin, split, references, source_lang, target_lang, source, spm_model, bpe_codes, work)
    for system in parsed:
        check_dictionaries(system, src)
    if settings.post_process == "auto":
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
