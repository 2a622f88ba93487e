"""doc: what every reader shares: the Doc it yields, the Skip it raises instead, and the
helpers that word each skip reason as one plain sentence.

A problem with one file or row never fails the run: readers raise ``Skip`` (or call ``skip``
for a row) and the step records the reason in the catalog.
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass
from typing import Any

from embedpipe.steps.base import StepContext

# Characters that show nothing: a document of only these is as empty as one of only spaces.
_INVISIBLE = {"Cc", "Cf", "Zs", "Zl", "Zp"}


@dataclass
class Doc:
    """One document as read, before it becomes a row of the documents schema."""

    doc_id: str
    text: str
    title: str
    source: str
    meta: dict[str, Any]


class Skip(Exception):
    """A document-level problem: skip it with this reason."""


def skip(ctx: StepContext, item: str, reason: str) -> None:
    """``ctx.skip`` with an item the catalog can store (file names need not be UTF-8) and a
    one-line reason (parser messages may span lines)."""
    ctx.skip(printable(item), " ".join(printable(reason).split()))


def too_big(size: int, max_mb: float, what: str = "file") -> str:
    # bytes, not rounded MB: "100 MB, over max_file_mb=100" would read as no reason
    limit = int(max_mb * 2**20)
    return f"{what} is {size:,} bytes, over max_file_mb={max_mb:g} ({limit:,} bytes)"


def kind(value: Any) -> str:
    """A JSON value's kind, for reasons: 'null', 'an integer', 'an object'..."""
    if value is None:
        return "null"
    if isinstance(value, str) and not value:
        return "an empty string"
    kinds = {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
             list: "a list", dict: "an object"}  # fmt: skip
    return kinds.get(type(value), f"a {type(value).__name__}")


def blank(text: str) -> bool:
    # all() stops at the first visible character, so this is cheap for real documents
    return all(unicodedata.category(c) in _INVISIBLE for c in text)


def encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """``text``, with what UTF-8 cannot hold escaped: undecodable file-name bytes as \\xe9."""
    if encodable(text):
        return text
    try:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()


def brief(exc: BaseException, limit: int = 120) -> str:
    """An exception's first sentence on one line, cut to ``limit`` characters."""
    text = " ".join(str(exc).split()).split(". ")[0].rstrip(".") or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
