"""Student architectures (fairseq auto-imports this folder for ``--user-dir``)."""
