"""Text files in legacy encodings are decoded and indexed, not skipped; binary files still are, with
their reason; detection looks at a bounded sample, so no file makes it slow; and search, get and
snippets show the one decoded text."""

from __future__ import annotations

import codecs
import json
import os
import time
from pathlib import Path

import pytest

from qmdd import decoding
from qmdd.decoding import SAMPLE_BYTES, Decoded, Undecodable, decode_text
from tests.conftest import Env

FRENCH = ("# Café des élèves\n\nLes élèves sont très contents à la récréation. Ça coûte cher, "
          "mais la façade est naïve et très belle.\n")
RUSSIAN = "# Привет мир\n\nЭто тестовый документ на русском языке, он написан для проверки.\n"  # noqa: RUF001


def decoded(data: bytes) -> Decoded:
    result = decode_text(data)
    assert isinstance(result, Decoded), result
    return result


def test_utf8_is_the_fast_path_and_legacy_encodings_are_detected() -> None:
    assert decoded("# Café\r\n".encode()) == Decoded("# Café\n", "utf_8")
    assert decoded(codecs.BOM_UTF8 + b"# x\r\n").text == "# x\n"
    # Latin-1 text: the accents that cp1250 (a tie for charset detection) would turn into č and ń.
    french = decoded((FRENCH * 3).encode("latin-1"))
    assert french.text == FRENCH * 3 and french.encoding == "cp1252"
    assert decoded("Curly “quotes” — and 5€.\n".encode("cp1252")).text == "Curly “quotes” — and 5€.\n"
    assert decoded((RUSSIAN * 3).encode("cp1251")).text == RUSSIAN * 3
    # UTF-16 holds NUL bytes; its byte-order mark says it is text.
    assert decoded("# Hello\r\nwörld\n".encode("utf-16")).text == "# Hello\nwörld\n"
    # A mostly ASCII file: the sample starts where UTF-8 fails, so the accent far down decides.
    late = ("plain ascii line\n" * 20_000 + "Le café était très bon, señor.\n").encode("latin-1")
    assert decoded(late).text.endswith("Le café était très bon, señor.\n")


def test_short_western_text_is_not_read_as_a_baltic_or_vietnamese_page() -> None:
    # The mess detector finds these messier in cp1252 than in cp1257 ("à" → "ą") or cp1258 (combining marks).
    for text in ("Un café à Paris, déjà vu. " * 12, "Perché la città è più bella così? Però sì.\n",
                 "¿Dónde está la biblioteca? El niño comió piña y jamón.\n"):
        assert decoded(text.encode("latin-1")).text == text
    polish = "# Notatki\n\nZażółć gęślą jaźń. Łódź jest pięknym miastem w Polsce.\n"
    assert decoded(polish.encode("cp1250")).text == polish
    greek = "# Σημειώσεις\n\nΚαλημέρα κόσμε, αυτό είναι ένα ελληνικό κείμενο.\n"  # noqa: RUF001
    assert decoded(greek.encode("cp1253")).text == greek


def test_utf8_with_lines_pasted_from_a_legacy_file_reads_each_line_right() -> None:
    mixed = decoded("# Notes\n\nCrème brûlée\n".encode() + "old café, très bien\n".encode("latin-1"))
    assert mixed.text == "# Notes\n\nCrème brûlée\nold café, très bien\n"  # not "CrÃ¨me"
    assert mixed.encoding == "utf_8+cp1252"


def test_binary_bytes_are_refused_with_their_reason() -> None:
    # Not UTF-8 near the start, ASCII for longer than the sniffed part, then a binary tail.
    late_nul = b"caf\xe9\n" + b"x" * 70_000 + b"\x00\x01\x02"
    assert decode_text(late_nul) == Undecodable("binary", "looks like a binary file (NUL bytes)")
    nul = decode_text(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    assert isinstance(nul, Undecodable) and nul.code == "binary"
    noise = decode_text(bytes(range(0x80, 0x100)) * 100)
    assert isinstance(noise, Undecodable) and noise.code == "unknown_encoding"
    assert "not UTF-8" in noise.message


def test_detection_reads_a_bounded_sample_whatever_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = decoding.detect
    monkeypatch.setattr(decoding, "detect", lambda sample: seen.append(len(sample)) or real(sample))
    one_line = ("a" * 3_000_000 + "é" + "b" * 3_000_000).encode("latin-1")
    many_lines = ("Les élèves sont très contents.\n" * 300_000).encode("latin-1")
    mixed = "Crème brûlée\n".encode() * 150_000 + "Les élèves.\n".encode("latin-1") * 150_000
    for data in (one_line, many_lines, mixed):
        started = time.monotonic()
        assert isinstance(decode_text(data), Decoded)
        assert time.monotonic() - started < 5  # a hang guard: about 0.1 s here
    assert seen and max(seen) <= SAMPLE_BYTES


def test_a_latin1_file_is_indexed_and_shown_decoded(env: Env, tmp_path: Path) -> None:
    root = tmp_path / "legacy"
    root.mkdir()
    (root / "cafe.md").write_bytes((FRENCH + "\nLe mot rare: zygomorphe.\n").encode("latin-1"))
    (root / "russian.md").write_bytes(RUSSIAN.encode("cp1251"))
    (root / "image.md").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(64))
    summary = env.json("collection", "add", str(root), "--name", "legacy")["update"][0]
    assert {p["path"]: p["code"] for p in summary["problems"]} == {"image.md": "binary"}
    assert summary["indexed"] == 2

    hit = env.json("search", "élèves récréation")[0]
    assert hit["file"] == "qmd://legacy/cafe.md" and hit["title"] == "Café des élèves"
    assert "élèves" in hit["snippet"]
    assert env.json("search", "русском")[0]["file"] == "qmd://legacy/russian.md"
    got = env.json("get", "qmd://legacy/cafe.md")
    assert got["body"].startswith(FRENCH)
    full = json.loads(env.run("search", "zygomorphe", "--full", "--json").stdout)[0]
    assert full["body"].startswith(FRENCH)
