"""fairseq-generate's output, read back: the one parser of it in fairseq_kd.

fairseq-generate prints, per sentence id, ``H-ID\\tSCORE\\tTOKENS`` (each hypothesis of its n-best list, best
first) and ``D-ID\\tSCORE\\tTEXT`` (the same after ``--post-process``), in the order its batches finish, and at
the end ``Translated N sentences (T tokens) in Ss (X sentences/s, Y tokens/s)``, S counting the inference
steps only. The pseudo-labeller's CTranslate2 engine writes the same lines.
"""

import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

_LINE = re.compile(r"^([HD])-(\d+)\t(\S+)\t(.*)$")
TRANSLATED = re.compile(
    r"Translated ([\d,]+) sentences \(([\d,]+) tokens\) in ([\d.]+)s \(([\d.]+) sentences/s, ([\d.]+) tokens/s\)"
)


@dataclass
class Hypothesis:
    score: float  # the length-normalised log2-probability, as fairseq-generate prints it
    text: str  # space-separated target tokens (H- lines) or the post-processed text (D- lines)


def read_nbest(lines: Iterable[str], kind: str = "H") -> Dict[int, List[Hypothesis]]:
    """{sentence id: its hypotheses, best first} of the H- lines (KIND "D": of the D- lines) of LINES."""
    nbest: Dict[int, List[Hypothesis]] = {}
    for line in lines:
        match = _LINE.match(line.rstrip("\n"))
        if match and match[1] == kind:
            text = match[4].strip() if kind == "H" else match[4]  # D- lines: the text as fairseq made it
            nbest.setdefault(int(match[2]), []).append(Hypothesis(float(match[3]), text))
    return nbest


def read_speed(text: str) -> Optional[Dict[str, float]]:
    """{sentences, tokens, seconds, sentences_per_s, tokens_per_s} of the Translated line of TEXT, or None."""
    match = TRANSLATED.search(text)
    if not match:
        return None
    return {
        "sentences": int(match[1].replace(",", "")),
        "tokens": int(match[2].replace(",", "")),
        "seconds": float(match[3]),
        "sentences_per_s": float(match[4]),
        "tokens_per_s": float(match[5]),
    }


def read_translations(text: str, num_sentences: int, name: str = "system") -> Tuple[List[str], Dict[str, float]]:
    """(the best D- line of every sentence in corpus order, {sentences_per_s, tokens_per_s, seconds}) of a
    fairseq-generate log; a missing sentence or a missing Translated line is an error naming NAME."""
    found = read_nbest(text.splitlines(), kind="D")
    speed = read_speed(text)
    if speed is None:
        raise RuntimeError(f"{name}: fairseq-generate printed no 'Translated ... sentences' line")
    missing = [i for i in range(num_sentences) if i not in found]
    if missing:
        raise RuntimeError(
            f"{name}: fairseq-generate gave no translation of {len(missing)} sentences (the first: {missing[0]})"
        )
    hypotheses = [found[i][0].text for i in range(num_sentences)]
    return hypotheses, {k: speed[k] for k in ("sentences_per_s", "tokens_per_s", "seconds")}
