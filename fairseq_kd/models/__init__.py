"""Student architectures (fairseq auto-imports this folder for ``--user-dir``).

Word-level KD students are stock fairseq architectures (``transformer`` and its named variants), so a
distilled student stays an ordinary fairseq model; architectures that need the teacher to be built
(DistilBERT-style initialisation) are registered here.
"""
