"""fairseq_kd: knowledge distillation of fairseq translation models.

``fairseq-train --user-dir fairseq_kd`` and ``import fairseq_kd`` both register the
``translation_kd`` task, the ``label_smoothed_cross_entropy_with_kd`` criterion and the
``transformer_student`` model, and make fairseq's transformer accept ``--activation-fn swish``.
"""

from .checkpoints import allow_fairseq_checkpoints
from .models.swish import enable_swish

allow_fairseq_checkpoints()
enable_swish()  # --activation-fn swish, which fairseq 0.12 lacks (fairseq_kd/models/swish.py)

from . import criterions, models, tasks  # noqa: E402,F401
