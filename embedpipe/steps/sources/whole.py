"""whole: one document per file, for text, markdown, HTML and PDF.

Markdown gives its title from front matter or its first heading, HTML its visible text only,
PDF its text layer; a file that turns out to hold no text is skipped with a reason.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from embedpipe.steps.sources.doc import Doc, Skip, blank, brief
from embedpipe.steps.sources.sniff import decode

# YAML between '---' lines at the very top; CRLF files too (Windows editors).
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(?:(.*?)\r?\n)??---[ \t]*(?:\r?\n|\Z)", re.DOTALL)
_FENCE = re.compile(r"^(```|~~~)")


def read_whole(path: Path, rel: str, fmt: str) -> Doc:
    if fmt == "pdf":
        return _read_pdf(path, rel)
    text = decode(path.read_bytes())
    meta: dict[str, Any] = {}
    title = ""
    if fmt == "markdown":
        text, meta = _front_matter(text)
        if meta and blank(text):
            raise Skip("empty document: markdown with front matter but no text after it")
        title = str(meta.pop("title", "") or _first_heading(text) or path.stem)
    elif fmt == "html":
        text, title = _html_text(text)
        if blank(text):
            raise Skip("empty document: HTML with no visible text (scripts and styles are dropped)")
    return Doc(rel, text, title or "", rel, meta)


def _front_matter(text: str) -> tuple[str, dict[str, Any]]:
    m = _FRONT_MATTER.match(text)
    if not m:
        return text, {}
    import yaml

    try:
        meta = yaml.safe_load(m.group(1) or "") or {}
    except yaml.YAMLError:
        return text, {}
    if not isinstance(meta, dict):
        return text, {}
    return text[m.end() :].lstrip("\r\n"), {str(k): v for k, v in meta.items()}


def _first_heading(text: str) -> str | None:
    in_fence = False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence  # '# comment' in a shell block is no title
        elif line.startswith("# ") and not in_fence:
            return line[2:].strip()
    return None


def _html_text(html: str) -> tuple[str, str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    title = soup.title.get_text(strip=True) if soup.title else ""
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    lines = (line.strip() for line in soup.get_text("\n").splitlines())
    return "\n".join(line for line in lines if line), title


def _read_pdf(path: Path, rel: str) -> Doc:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError

    try:
        with _quiet("pypdf"):
            reader = PdfReader(path)  # an empty user password (common) is tried by itself
            pages = [page.extract_text() or "" for page in reader.pages]
            title = ""
            with contextlib.suppress(Exception):
                title = str((reader.metadata or {}).get("/Title") or "")
    except FileNotDecryptedError as exc:
        raise Skip("PDF is encrypted with a password; decrypt it first") from exc
    except Exception as exc:  # pypdf raises many kinds on damaged files, not only PyPdfError
        raise Skip(
            f"unreadable PDF, damaged or truncated ({type(exc).__name__}: {brief(exc)})"
        ) from exc
    if not pages:
        raise Skip("PDF has no pages")
    if all(blank(p) for p in pages):
        raise Skip(
            f"PDF has no text layer on its {len(pages)} page(s); scanned pages need OCR first"
        )
    return Doc(rel, "\n\n".join(pages), title, rel, {"pages": len(pages)})


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Silence a library's warnings: "EOF marker not found" on the terminal, without the file's
    name, says less than the skip reason that follows it."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
