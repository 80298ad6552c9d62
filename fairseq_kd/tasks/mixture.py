"""Sequence-level interpolation's training data: several data-bins (the references, the teacher's
translations) sampled with given probabilities (``--train-mixture``, ``--train-mixture-probs``)."""

from typing import List, Optional, Tuple


def parse_mixture(paths: Optional[str], probs: Optional[str]) -> Optional[Tuple[List[str], Optional[List[float]]]]:
    """(paths, probabilities or None) from ``--train-mixture`` and ``--train-mixture-probs``, or None
    without a mixture. Raises ValueError for probabilities that are not a distribution over the paths."""
    if not paths:
        if probs:
            raise ValueError("--train-mixture-probs is set without --train-mixture: give the data-bins to mix")
        return None
    paths = [p.strip() for p in paths.split(",") if p.strip()]
    if len(set(paths)) != len(paths):
        raise ValueError(
            f"--train-mixture lists a data-bin twice ({paths}): give each once and weight it with --train-mixture-probs"
        )
    if not probs:
        return paths, None
    try:
        values = [float(p) for p in probs.split(",")]
    except ValueError:
        raise ValueError(f"--train-mixture-probs {probs!r} is not a comma-separated list of numbers") from None
    if len(values) != len(paths):
        raise ValueError(
            f"--train-mixture-probs has {len(values)} probabilities for {len(paths)} --train-mixture data-bins: give one per data-bin"
        )
    if any(not 0 < p <= 1 for p in values):
        raise ValueError(
            f"--train-mixture-probs {probs!r}: every probability must be in (0, 1]; drop a data-bin instead of giving it 0"
        )
    if abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"--train-mixture-probs {probs!r} sum to {sum(values):g}, not 1")
    return paths, values
