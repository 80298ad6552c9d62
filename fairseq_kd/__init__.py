"""fairseq_kd: knowledge distillation of fairseq translation models.

``fairseq-train --user-dir fairseq_kd`` and ``import fairseq_kd`` both register the
``translation_kd`` task, the ``label_smoothed_cross_entropy_with_kd`` criterion and the
``transformer_student`` model.
"""

from .checkpoints import allow_fairseq_checkpoints

allow_fairseq_checkpoints()

from . import criterions, models, tasks  # noqa: E402,F401
