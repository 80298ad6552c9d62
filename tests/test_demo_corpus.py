"""The demo corpus from gettext catalogs, on .mo files written here."""

import os
import struct
import tempfile
import unittest

from fairseq_kd.demo.corpus import CorpusError, build_corpus, read_mo, segments, split_of


def write_mo(path, entries, charset="UTF-8"):
    """A compiled gettext catalog (the format msgfmt writes) of {msgid: msgstr} as raw strings; plural
    entries are "singular\\x00plural" -> "form0\\x00form1"."""
    entries = dict(entries)
    entries[""] = f"Content-Type: text/plain; charset={charset}\n"
    keys = sorted(entries)
    ids = [k.encode(charset) for k in keys]
    strs = [entries[k].encode(charset) if isinstance(entries[k], str) else entries[k] for k in keys]
    n = len(keys)
    originals, translations = 28, 28 + 8 * n
    offset = translations + 8 * n
    table, blob = b"", b""
    for group in (ids, strs):
        for s in group:
            table += struct.pack("<2I", len(s), offset + len(blob))
            blob += s + b"\x00"
    header = struct.pack("<7I", 0x950412DE, 0, n, originals, translations, 0, 0)
    with open(path, "wb") as f:
        f.write(header + table + blob)


class TestReadMo(unittest.TestCase):
    def test_plural_context_and_charset(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "a.mo")
            write_mo(
                path,
                {
                    "Open file": "Datei öffnen",
                    "menu\x04Quit": "Beenden",
                    "%d file\x00%d files": "%d Datei\x00%d Dateien",
                },
                charset="ISO-8859-1",
            )
            pairs = read_mo(path)
        self.assertIn(("Open file", "Datei öffnen"), pairs)
        self.assertIn(("Quit", "Beenden"), pairs)
        self.assertIn(("%d file", "%d Datei"), pairs)
        self.assertIn(("%d files", "%d Dateien"), pairs)

    def test_undecodable_entry_is_skipped_and_bad_file_is_an_error(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "a.mo")
            write_mo(path, {"good": "gut", "bad": b"\xff\xfe"})
            self.assertEqual(read_mo(path), [("good", "gut")])
            with open(path, "wb") as f:
                f.write(b"not a catalog at all")
            with self.assertRaisesRegex(CorpusError, "bad magic number"):
                read_mo(path)


class TestSegments(unittest.TestCase):
    def test_cleaning(self):
        self.assertEqual(segments("  Open   the file\n", "Datei  öffnen"), [("Datei öffnen", "Open the file")])
        self.assertEqual(
            segments("First line\nSecond line\n", "Erste Zeile\nZweite Zeile\n"),
            [("Erste Zeile", "First line"), ("Zweite Zeile", "Second line")],
        )
        self.assertEqual(segments("One\nTwo lines", "Eine Zeile"), [])  # lines cannot be paired
        self.assertEqual(segments("Nuoro", "Nuoro"), [])  # untranslated
        self.assertEqual(segments("%s", "%s!"), [])  # fewer than 2 letters
        self.assertEqual(segments("x " * 101, "y " * 101), [])  # too long

    def test_split_is_a_function_of_the_segment(self):
        self.assertEqual(split_of("Datei öffnen", 0.1, 0.1), split_of("Datei öffnen", 0.1, 0.1))
        shares = [split_of(f"Satz {i}", 0.1, 0.2) for i in range(5000)]
        self.assertAlmostEqual(shares.count("test") / 5000, 0.2, delta=0.02)
        self.assertAlmostEqual(shares.count("valid") / 5000, 0.1, delta=0.02)


class TestBuildCorpus(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.locale = os.path.join(self.tmp.name, "locale")
        os.makedirs(os.path.join(self.locale, "de", "LC_MESSAGES"))

    def tearDown(self):
        self.tmp.cleanup()

    def catalog(self, name, entries):
        write_mo(os.path.join(self.locale, "de", "LC_MESSAGES", name + ".mo"), entries)

    def read(self, out, split, lang):
        with open(os.path.join(out, f"{split}.{lang}"), encoding="utf-8") as f:
            return f.read().splitlines()

    def test_splits_are_disjoint_deduplicated_and_deterministic(self):
        self.catalog("a", {f"message number {i}": f"Nachricht Nummer {i}" for i in range(400)})
        # b repeats some of a's German segments with other English: the first (a's) wins
        self.catalog("b", {f"the message {i}": f"Nachricht Nummer {i}" for i in range(100)} | {"Quit": "Beenden"})
        out = os.path.join(self.tmp.name, "out")
        stats = build_corpus(out, self.locale, valid_share=0.1, test_share=0.1, min_pairs=10)
        german = {split: self.read(out, split, "de") for split in ("train", "valid", "test")}
        english = {split: self.read(out, split, "en") for split in ("train", "valid", "test")}
        everything = sum(german.values(), [])
        self.assertEqual(len(everything), len(set(everything)))  # no German segment twice, in or across splits
        self.assertEqual(len(everything), 401)
        self.assertEqual(stats["duplicate segments"], 100)
        for split in german:
            self.assertEqual(len(german[split]), len(english[split]))
            # every line still pairs a German segment with its own English message
            expected = {f"Nachricht Nummer {i}": f"message number {i}" for i in range(400)} | {"Beenden": "Quit"}
            self.assertEqual(english[split], [expected[de] for de in german[split]])
        self.assertGreater(len(german["valid"]), 10)
        self.assertGreater(len(german["test"]), 10)
        again = os.path.join(self.tmp.name, "again")
        build_corpus(again, self.locale, valid_share=0.1, test_share=0.1, min_pairs=10)
        for split in german:
            self.assertEqual(self.read(again, split, "de"), german[split])

    def test_too_few_segments_or_no_catalogs_stop_with_a_clear_message(self):
        self.catalog("a", {"Open file": "Datei öffnen"})
        with self.assertRaisesRegex(CorpusError, "only 1 de-English segments found .* `make demo DATA=dir`"):
            build_corpus(os.path.join(self.tmp.name, "out"), self.locale)
        self.assertFalse(os.path.exists(os.path.join(self.tmp.name, "out")))
        with self.assertRaisesRegex(CorpusError, "no gettext catalogs"):
            build_corpus(os.path.join(self.tmp.name, "out"), os.path.join(self.tmp.name, "nowhere"))

    def test_another_locale_names_its_files_by_that_language(self):
        os.makedirs(os.path.join(self.locale, "fr", "LC_MESSAGES"))
        write_mo(
            os.path.join(self.locale, "fr", "LC_MESSAGES", "a.mo"), {f"message {i}": f"le message {i}" for i in range(50)}
        )
        out = os.path.join(self.tmp.name, "fr")
        build_corpus(out, self.locale, lang="fr", valid_share=0.1, test_share=0.1, min_pairs=10)
        self.assertEqual(
            sorted(os.listdir(out)),
            sorted([f"{s}.{l}" for s in ("train", "valid", "test") for l in ("fr", "en")] + ["stats.json"]),
        )
        pairs = dict(zip(self.read(out, "train", "fr"), self.read(out, "train", "en")))
        self.assertTrue(pairs)
        self.assertEqual({pairs[fr] for fr in pairs}, {fr.replace("le ", "") for fr in pairs})
        for lang, message in [
            ("en", "other than English"),
            ("../de", "give a gettext locale"),
            ("sv", "choose a locale this machine has \\(fr\\)"),
        ]:
            with self.subTest(lang), self.assertRaisesRegex(CorpusError, message):
                build_corpus(os.path.join(self.tmp.name, "x"), self.locale, lang=lang)


if __name__ == "__main__":
    unittest.main()
