"""Text files: one sample per line, with an optional fastText-style `__label__X` prefix.

    __label__pos a gorgeous , witty , seductive movie .
    __label__3 plain text with an integer class
    a line without a label

Files are read as UTF-8 (a byte-order mark is dropped). A file that is not valid UTF-8 is read,
with a warning, as Windows-1252 when every byte is defined there, else as latin-1 (which decodes
any byte). gensim's bundled corpora are such files: pang_lee_polarity.cor uses byte 0x97, an em
dash in Windows-1252 but an invisible control character in latin-1 that tokenizers drop.
"""

from __future__ import annotations

import codecs
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = frozenset({".txt", ".text", ".cor"})
LABEL_PREFIX = "__label__"
# A tokenizer keeps a few hundred tokens; a 100k-character "line" is a file without newlines
# (minified JSON, a binary) and would only cost time and memory to tokenize.
MAX_LINE_CHARS = 100_000
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class TextLine:
    """One non-blank line: its 1-based number in the file, its text and its raw label (or None)."""

    line_no: int
    text: str
    label: str | None
    truncated: bool = False  # the line was longer than MAX_LINE_CHARS and was cut


def detect_encoding(path: Path) -> str:
    """"utf-8-sig" when the whole file is valid UTF-8, else "cp1252" or "latin-1" (with a warning)."""
    with open(path, "rb") as stream:
        head = stream.read(4)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) and not head.startswith(codecs.BOM_UTF32_LE):
        if _first_decode_error(path, "utf-16") is None:
            return "utf-16"  # Windows' "Unicode" text files; the BOM gives the byte order
    error = _first_decode_error(path, "utf-8")
    if error is None:
        return "utf-8-sig"
    fallback = "cp1252" if _first_decode_error(path, "cp1252") is None else "latin-1"
    logger.warning(
        "%s is not valid UTF-8 (byte 0x%02x); reading it as %s", path, error.object[error.start], fallback
    )
    return fallback


def _first_decode_error(path: Path, encoding: str) -> UnicodeDecodeError | None:
    """Decode the file in chunks (never all of it in memory); the first error, or None."""
    decoder = codecs.getincrementaldecoder(encoding)()
    try:
        with open(path, "rb") as stream:
            while chunk := stream.read(_CHUNK_BYTES):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError as error:
        return error
    return None


def split_label(line: str) -> tuple[str | None, str]:
    """"__label__pos some text" -> ("pos", "some text"); a line without the prefix -> (None, line)."""
    if not line.startswith(LABEL_PREFIX):
        return None, line
    head, _, rest = line.partition(" ")
    return head[len(LABEL_PREFIX):] or None, rest.strip()


def iter_text_lines(path: Path, encoding: str) -> Iterator[TextLine]:
    """Non-blank lines of `path`, labels split off, over-long lines cut to MAX_LINE_CHARS.

    At most MAX_LINE_CHARS + 1 characters of a line are held at once: the rest of an over-long
    line (a file without newlines) is read in pieces and dropped."""
    with open(path, encoding=encoding, errors="replace") as stream:
        line_no = 0
        while raw := stream.readline(MAX_LINE_CHARS + 1):
            line_no += 1
            truncated = len(raw) > MAX_LINE_CHARS and not raw.endswith("\n")
            if truncated:
                _skip_rest_of_line(stream)
            line = raw[:MAX_LINE_CHARS].strip()
            if not line:
                continue
            label, text = split_label(line)
            yield TextLine(line_no, text, label, truncated)


def _skip_rest_of_line(stream) -> None:
    while (rest := stream.readline(_CHUNK_BYTES)) and not rest.endswith("\n"):
        pass


def warn_truncated(path: Path, line: TextLine) -> None:
    logger.warning(
        "%s:%d is longer than %d characters; keeping the start", path, line.line_no, MAX_LINE_CHARS
    )
