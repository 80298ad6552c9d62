"""The real-data demo (``python -m fairseq_kd.demo``): its built-in corpus (gettext catalogs), its presets, and its
stages in front of the distillation pipeline (:mod:`fairseq_kd.demo.stages`)."""
