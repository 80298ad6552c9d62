"""Student architectures (fairseq auto-imports this folder for ``--user-dir``).

Word-level KD students are stock fairseq architectures (``transformer`` and its named variants), so a
distilled student stays an ordinary fairseq model. ``transformer_student`` adds DistilBERT-style
initialisation from the teacher's layers (:mod:`.student_init`) and is exported as a stock
``transformer``.
"""

from . import transformer_student  # noqa: F401
