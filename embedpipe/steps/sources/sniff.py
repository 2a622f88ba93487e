"""sniff: refuse a file that cannot be read as text before a parser sees it.

A name says ``.txt`` but the bytes may be a zip, an image, UTF-16 or a named pipe. Checking
the file's kind, size and first bytes gives one clear reason ("not text: the file is a PNG
image") where a parser would give a confusing one, or wait forever.
"""

from __future__ import annotations

import codecs
import os
import stat

from embedpipe.steps.sources.doc import Skip, encodable
from embedpipe.steps.sources.walk import file_kind

# Files that are not text although their name says so: what they are, and what to do instead.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip-compressed; decompress it first"),
    (b"PK\x03\x04", "a zip archive (docx, xlsx and epub files are zips); export it as text"),
    (b"%PDF-", "a PDF; name it .pdf or set format: pdf"),
    (b"\x89PNG\r\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x7fELF", "an executable"),
    (b"PAR1", "a Parquet file; name it .parquet or set format: parquet"),
    (b"SQLite format 3\x00", "an SQLite database"),
)


def check_file(rel: str, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):  # reading a named pipe would wait forever
        raise Skip(f"not a regular file ({file_kind(info.st_mode)})")
    if info.st_size == 0:
        raise Skip("empty file")  # row formats would otherwise yield nothing, silently
    if not encodable(rel):  # the name becomes the doc id, which Arrow stores as UTF-8
        raise Skip("file name is not valid UTF-8, which document ids must be; rename the file")


def sniff(head: bytes) -> None:
    """Refuse, by their first bytes, files that only look like text by name."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise Skip(
            "file is UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8"
        )
    for magic, what in _MAGIC:
        if head.startswith(magic):
            raise Skip(f"not text: the file is {what}")


def decode(data: bytes) -> str:
    nul = data.find(b"\x00")  # anywhere: a text header does not make an archive text
    if nul >= 0:
        raise Skip(f"binary file (contains NUL bytes, the first at offset {nul:,})")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Skip(f"{not_utf8(exc, 'offset', exc.start)}; save it as UTF-8") from exc


def not_utf8(exc: UnicodeDecodeError, at: str, where: int) -> str:
    return f"not valid UTF-8 (byte {exc.object[exc.start]:#04x} at {at} {where:,})"
