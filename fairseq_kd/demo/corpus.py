"""The demo's built-in data: X->English segments (German by default, any locale with catalogs) from the gettext message catalogs installed on the
machine (``/usr/share/locale/de/LC_MESSAGES/*.mo``: messages of git, coreutils, PostgreSQL, GnuPG, ...),
human translations that need no network.

Every catalog entry pairs an English message (msgid) with its German translation (msgstr); plural
entries give one pair per form that has both sides. Messages are cleaned into segments:

* a message spanning several lines is split into one segment per line, but only where both sides have the
  same number of lines (else the lines cannot be paired, and the message is dropped unless it is one line);
* whitespace is normalised; message contexts are removed;
* empty, identical (untranslated), too short (fewer than 2 letters on a side) and too long pairs are dropped;
* pairs are deduplicated on the German side (the first translation of a segment wins, in file order), so
  no source segment can fall into two splits;
* the split is deterministic: each German segment's SHA-1 decides its split.

    python -m fairseq_kd.demo.corpus OUT_DIR     # writes OUT_DIR/{train,valid,test}.{de,en} and stats.json
"""

import argparse
import glob
import hashlib
import json
import os
import re
import struct
import sys
from collections import Counter
from typing import Any, Dict, List, Optional, Tuple

from ..io import UserError

LOCALE_DIR = "/usr/share/locale"
MIN_PAIRS = 3000


class CorpusError(UserError):
    pass


def read_mo(path: str) -> List[Tuple[str, str]]:
    """[(msgid, msgstr)] of a compiled gettext catalog, decoded with the charset its header declares;
    entries that do not decode are skipped. Plural entries come as one pair per form."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 20:
        raise CorpusError(f"{path} is not a gettext .mo file (too short)")
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic == 0x950412DE else ">" if magic == 0xDE120495 else None
    if endian is None:
        raise CorpusError(f"{path} is not a gettext .mo file (bad magic number)")
    _, count, originals, translations = struct.unpack(endian + "4I", data[4:20])

    def string(table, i):
        length, offset = struct.unpack(endian + "2I", data[table + 8 * i : table + 8 * i + 8])
        return data[offset : offset + length]

    raw = [(string(originals, i), string(translations, i)) for i in range(count)]
    charset = "utf-8"
    for msgid, msgstr in raw:
        if msgid == b"":
            match = re.search(rb"charset=([-\w]+)", msgstr)
            if match:
                charset = match[1].decode("ascii")
    pairs = []
    for msgid, msgstr in raw:
        if msgid == b"":
            continue
        try:
            ids, strs = msgid.decode(charset).split("\x00"), msgstr.decode(charset).split("\x00")
        except (UnicodeDecodeError, LookupError):
            continue
        ids[0] = ids[0].split("\x04")[-1]  # "context\x04message"
        # singular with form 0; the plural msgid with the last form (German has two)
        pairs.append((ids[0], strs[0]))
        if len(ids) == 2 and len(strs) >= 2:
            pairs.append((ids[1], strs[-1]))
    return pairs


def _letters(text):
    return sum(c.isalpha() for c in text)


def segments(english: str, german: str, max_words: int = 100) -> List[Tuple[str, str]]:
    """The cleaned (german, english) segments of one message, possibly none."""
    en_lines, de_lines = english.strip("\n").split("\n"), german.strip("\n").split("\n")
    if len(en_lines) != len(de_lines):
        if len(en_lines) > 1 or len(de_lines) > 1:
            return []
    out = []
    for en, de in zip(en_lines, de_lines):
        en, de = " ".join(en.split()), " ".join(de.split())
        if not en or not de or en == de:
            continue
        if _letters(en) < 2 or _letters(de) < 2:
            continue
        if len(en.split()) > max_words or len(de.split()) > max_words:
            continue
        out.append((de, en))
    return out


def split_of(german: str, valid_share: float, test_share: float) -> str:
    """'train', 'valid' or 'test', from the SHA-1 of the German segment: deterministic and independent of
    the order and number of catalogs."""
    x = int(hashlib.sha1(german.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if x < test_share else "valid" if x < test_share + valid_share else "train"


def build_corpus(out_dir: str, locale_dir: str = LOCALE_DIR, lang: str = "de", valid_share: float = 0.03,
                 test_share: float = 0.03, min_pairs: int = MIN_PAIRS) -> Dict[str, Any]:  # fmt: skip
    """Writes OUT_DIR/{train,valid,test}.{LANG,en} (LANG: the catalogs' locale, the source side) and
    OUT_DIR/stats.json; returns the stats."""
    if not re.fullmatch(r"[a-z]{2,3}(_[A-Z]{2})?", lang) or lang.startswith("en"):
        raise CorpusError(f"locale {lang!r}: give a gettext locale other than English, such as de, fr or pt_BR")
    paths = sorted(glob.glob(os.path.join(locale_dir, lang, "LC_MESSAGES", "*.mo")))
    if not paths:
        have = (
            sorted(d for d in os.listdir(locale_dir) if glob.glob(os.path.join(locale_dir, d, "LC_MESSAGES", "*.mo")))[:12]
            if os.path.isdir(locale_dir)
            else []
        )
        raise CorpusError(
            f"no gettext catalogs in {os.path.join(locale_dir, lang, 'LC_MESSAGES')}: choose a locale this machine has "
            f"({', '.join(have) or 'none'}), or run the demo on your own corpus with `make demo DATA=dir`"
        )
    stats = Counter()
    seen = set()
    splits = {"train": [], "valid": [], "test": []}
    for path in paths:
        try:
            messages = read_mo(path)
        except CorpusError:
            stats["unreadable catalogs"] += 1
            continue
        stats["catalogs"] += 1
        for english, german in messages:
            stats["messages"] += 1
            for de, en in segments(english, german):
                if de in seen:
                    stats["duplicate segments"] += 1
                    continue
                seen.add(de)
                splits[split_of(de, valid_share, test_share)].append((de, en))
    total = sum(len(v) for v in splits.values())
    if total < min_pairs:
        raise CorpusError(
            f"only {total} {lang}-English segments found in {len(paths)} catalogs under {locale_dir} (at least "
            f"{min_pairs} are needed): run the demo on your own corpus with `make demo DATA=dir`"
        )
    os.makedirs(out_dir, exist_ok=True)
    for split, pairs in splits.items():
        for side, lang_code in ((0, lang), (1, "en")):
            path = os.path.join(out_dir, f"{split}.{lang_code}")
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                f.writelines(pair[side] + "\n" for pair in pairs)
            os.replace(path + ".tmp", path)
    result = dict(stats, **{f"{split} segments": len(pairs) for split, pairs in splits.items()})
    with open(os.path.join(out_dir, "stats.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--locale-dir", default=LOCALE_DIR)
    parser.add_argument("--locale", default="de", help="the catalogs' language, the source side (default: de)")
    args = parser.parse_args(argv)
    try:
        print(json.dumps(build_corpus(args.out_dir, args.locale_dir, args.locale), indent=2))
    except CorpusError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
