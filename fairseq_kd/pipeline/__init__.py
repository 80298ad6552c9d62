"""Distilling a teacher you already have: pseudo-labels -> students -> export -> CTranslate2 -> evaluation.

    python -m fairseq_kd.pipeline --teacher T.pt --data-bin DATA_BIN --references RAW_DIR --spm-model spm.model \
        --methods baseline,init_kd,seq_kd --out runs/distil [-s de -t en] [--transfer mono.de]

The teacher is any fairseq translation checkpoint and DATA_BIN the data-bin it was trained with (its
dictionaries, the training split the students learn from, valid and test); RAW_DIR holds the raw
references ``valid.TGT`` and ``test.TGT`` that translations are scored against. Stages, each skipped when
a rerun finds it finished (an interrupted fairseq-train resumes from its checkpoint):

1. pseudo-labels: ``fairseq-kd-pseudolabel``, the teacher's beam-search translations of the training
   sources (or of ``--transfer``, raw monolingual source text), binarized with its dictionaries; top-k
   sampled ones and the teacher's top-k cache when a method needs them; the low-data regime's data.
2. students: one ``fairseq-train`` per method of :mod:`fairseq_kd.methods` (all of one shape and budget),
   each exported with ``fairseq-kd-export`` to an ordinary fairseq checkpoint (OUT/models/NAME.pt).
3. evaluation on valid (:mod:`fairseq_kd.evaluate`); the student with the best valid BLEU converted to
   CTranslate2 int8; with ``--seeds N`` the baseline and that student trained again with seeds 2..N.
4. evaluation on valid and test with the paired bootstrap against the baseline and ``--timing-rounds``;
   OUT/results.json, OUT/results.md and OUT/bleu_vs_speed.png.

A run directory belongs to one set of settings: a rerun with others is refused before anything is done,
except ``--methods`` (more students are added), ``--timing-rounds``, ``--seeds`` and CTranslate2's threads
in the evaluation (they change the timing only; the translations are made again under them).
"""

from .config import DEFAULT_LAYOUT, Config, PipelineError, Shape, Training, check_config, check_inputs, load_config
from .distil import Pipeline

__all__ = [
    "DEFAULT_LAYOUT",
    "Config",
    "Pipeline",
    "PipelineError",
    "Shape",
    "Training",
    "check_config",
    "check_inputs",
    "load_config",
]
