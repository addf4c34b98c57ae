"""A text file's bytes as text: UTF-8 when they are (the fast path), else the legacy encoding they are in.

One function for every reader, so a document is indexed, searched and shown (`get`, `--full`) as the
same text: detection is deterministic, a function of the bytes alone.

Detection (charset-normalizer) runs only on bytes that are not UTF-8, and only on a bounded sample:
the SAMPLE_BYTES from the start of the line that holds the first byte UTF-8 refuses (the part of a
mostly-ASCII file that tells the encodings apart), cut at a line end. Its time is then bounded
whatever the file's size; the whole file is decoded with the encoding found, strictly: bytes that
encoding cannot read mean the file is skipped, never shown with replacement characters.

A UTF-8 file with lines in a legacy encoding (pasted from an old file) is read line by line: UTF-8 lines
as UTF-8, the others in the encoding detected from them.

Binary files are skipped: NUL bytes (near the start; anywhere in a file that is not UTF-8; text in
UTF-16/32 carries a byte-order mark, read before that check), or no encoding under which the bytes read
as text.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Any

SNIFF_BYTES = 8192
"""Bytes looked at for NULs, the sign of a binary file."""
SAMPLE_BYTES = 64 * 1024
"""Bytes handed to charset detection at most: its time grows with them (about 30 ms for 64 KiB)."""
CANDIDATES = ("cp1252", "cp1250", "iso8859_2", "cp1251", "koi8_r", "koi8_u", "cp1253", "iso8859_7", "cp1254",
              "cp1255", "cp1256", "cp1257", "cp874", "gb18030", "big5", "cp932", "euc_jp", "cp949")
"""The encodings text files are met in: Windows code pages and their ISO and KOI8 kin, and the CJK ones.
DOS and Mac code pages are left out, and cp1258 (Vietnamese, whose 0xEC and 0xF2 are combining marks):
they are rare now, and decode the bytes of a Western text to other letters with a score that ties with
the right reading (a “quote” in cp437 is ôquoteö). All of
them keep ASCII as ASCII, which markdown's structure is written in."""
PREFERRED = "cp1252"
"""Where detection ties (Western text in which cp1250, cp1252, cp1257... all decode every byte met,
often to the same letters), the encoding meant most often: windows-1252, which browsers also read
for a declared ISO-8859-1. Ties are what charset-normalizer cannot tell apart by how messy or how
coherent the text looks: a short text's encoding is a guess whatever reads it."""
_TIE = 0.01
_PREFERRED_MESS = 0.25
_BOMS = ((codecs.BOM_UTF32_LE, "utf_32"), (codecs.BOM_UTF32_BE, "utf_32"),
         (codecs.BOM_UTF16_LE, "utf_16"), (codecs.BOM_UTF16_BE, "utf_16"))  # UTF-32 LE starts like UTF-16 LE


@dataclass(frozen=True)
class Undecodable:
    """Why a file is not text: `code` is binary, unknown_encoding or invalid_encoding."""

    code: str
    message: str


@dataclass(frozen=True)
class Decoded:
    text: str
    encoding: str  # a Python codec name (utf_8 for the fast path), or utf_8+NAME for UTF-8 with NAME lines


def line_count(text: str) -> int:
    """A text's lines as an editor numbers them: a last line without its newline counts, an empty
    text has none."""
    return text.count("\n") + (1 if text and not text.endswith("\n") else 0)


def decode_text(data: bytes) -> Decoded | Undecodable:
    """The text of a file's bytes, a leading BOM dropped and CRLF line ends made LF."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return _strict(data, encoding)
    if b"\x00" in data[:SNIFF_BYTES]:
        return Undecodable("binary", "looks like a binary file (NUL bytes)")
    try:
        return _clean(data.decode("utf-8"), "utf_8")
    except UnicodeDecodeError as exc:
        first_bad = exc.start
    if b"\x00" in data:  # past the sniffed start: a text file in a legacy encoding has none either
        return Undecodable("binary", "looks like a binary file (NUL bytes)")
    if not data[:first_bad].isascii():
        # UTF-8 letters before the first byte UTF-8 refuses: a UTF-8 file with lines pasted in from a
        # legacy one. Read as a whole in the legacy encoding, its UTF-8 would turn to mojibake ("CrÃ¨me").
        return _mixed(data)
    detected = detect(_sample(data, first_bad))
    if detected is None:
        return Undecodable("unknown_encoding", f"not UTF-8 (at byte {first_bad}), and no other text encoding fits it")
    return _strict(data, detected)


def _mixed(data: bytes) -> Decoded | Undecodable:
    """UTF-8 lines as UTF-8, the others in the one legacy encoding they read best in together."""
    lines = data.split(b"\n")
    legacy = [i for i, line in enumerate(lines) if not _is_utf8(line)]
    legacy_lines = set(legacy)
    detected = detect(b"\n".join(lines[i] for i in legacy)[:SAMPLE_BYTES])
    if detected is None:
        return Undecodable("unknown_encoding", "UTF-8 with lines in no text encoding that fits them")
    text = [line.decode("utf-8") if i not in legacy_lines else "" for i, line in enumerate(lines)]
    for i in legacy:
        try:
            text[i] = lines[i].decode(detected)
        except UnicodeDecodeError:
            return Undecodable("invalid_encoding", f"UTF-8 with lines in {detected}, but line {i + 1} is neither")
    return _clean("\n".join(text), f"utf_8+{detected}")


def _is_utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def detect(sample: bytes) -> str | None:
    """The encoding among CANDIDATES that `sample` (not UTF-8) is most likely in, or None when it reads
    as text in none of them."""
    from charset_normalizer import from_bytes  # ~40 ms to import: only once a file needs it

    matches = list(from_bytes(sample, cp_isolation=list(CANDIDATES)))
    if not matches:
        return None
    best = matches[0]

    def ties(match: Any) -> bool:
        return bool(match.chaos <= best.chaos + _TIE and match.coherence >= best.coherence - _TIE)

    if any(ties(m) and PREFERRED in (m.encoding, *m.could_be_from_charset) for m in matches):
        return PREFERRED
    # Having found several perfect readings, charset-normalizer stops trying others: the preferred
    # one may not be among them, and is judged on its own, with a looser bound on its mess: the mess
    # detector finds short Western text ("un café à Paris") messier in cp1252 than in cp1257, where
    # "à" reads "ą"; the language it reads as (coherence) must still be as good.
    preferred = from_bytes(sample, cp_isolation=[PREFERRED], threshold=_PREFERRED_MESS).best()
    if (preferred is not None and preferred.coherence >= best.coherence - _TIE
            and preferred.chaos <= best.chaos + _PREFERRED_MESS):
        return PREFERRED
    return str(best.encoding)


def _sample(data: bytes, first_bad: int) -> bytes:
    """At most SAMPLE_BYTES from the start of the line holding `first_bad` (from `first_bad` itself when
    that line started long before), ending at a line end when one is in reach: a multi-byte character
    is then never cut."""
    start = data.rfind(b"\n", 0, first_bad) + 1
    if first_bad - start > SAMPLE_BYTES // 2:
        start = first_bad
    sample = data[start:start + SAMPLE_BYTES]
    if start + SAMPLE_BYTES < len(data):
        end = sample.rfind(b"\n")
        if end > first_bad - start:
            sample = sample[:end + 1]
    return sample


def _strict(data: bytes, encoding: str) -> Decoded | Undecodable:
    try:
        return _clean(data.decode(encoding), encoding)
    except UnicodeDecodeError as exc:
        return Undecodable("invalid_encoding", f"looks like {encoding}, but byte {exc.start} is not valid in it")
    except LookupError:  # a codec this Python lacks
        return Undecodable("unknown_encoding", f"in {encoding}, which this Python cannot decode")


def _clean(text: str, encoding: str) -> Decoded:
    return Decoded(text.removeprefix("\ufeff").replace("\r\n", "\n"), encoding)
