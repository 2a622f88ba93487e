"""whole: one document per file, for text, markdown, HTML and PDF.

Markdown gives its title from front matter or its first heading, HTML its visible text only,
PDF its text layer; a file that turns out to hold no text is skipped with a reason.

The file itself is held once, as text; nothing is built per line or per tag on top of it: the
first heading is found by scanning, front matter is parsed only when short and without YAML
aliases, HTML is read from the parser's events without a tree, and PDF text stops at the size
limit.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections import Counter
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from embedpipe.steps.sources.doc import Doc, Skip, blank, brief
from embedpipe.steps.sources.sniff import decode

# YAML between '---' lines at the very top; CRLF files too (Windows editors).
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(?:(.*?)\r?\n)??---[ \t]*(?:\r?\n|\Z)", re.DOTALL)
_FRONT_MATTER_MAX = 2**16  # characters: longer front matter is no front matter, but text
# The lines str.splitlines() sees: a code fence or a '# ' heading at the start of one.
_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
_LINE_MARK = re.compile(f"(?:^|(?<=[{_BREAKS}]))(?:```|~~~|# )")
_LINE_END = re.compile(f"[{_BREAKS}]")


def read_whole(path: Path, rel: str, fmt: str, limit: int) -> Doc:
    """The file at ``path`` as one document; ``limit``: the most characters of PDF text."""
    if fmt == "pdf":
        return _read_pdf(path, rel, limit)
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
    """(text after the front matter, its YAML mapping). Front matter that is too long, not
    a mapping, or not safe YAML (aliases, which can expand a few hundred bytes into
    gigabytes; nesting past Python's recursion limit) is left in the text, as invalid YAML
    always was."""
    m = _FRONT_MATTER.match(text, 0, _FRONT_MATTER_MAX)
    if not m or m.end() == _FRONT_MATTER_MAX < len(text):
        return text, {}
    import yaml

    try:
        meta = yaml.load(m.group(1) or "", Loader=_no_alias_loader()) or {}
    except (yaml.YAMLError, RecursionError):
        return text, {}
    if not isinstance(meta, dict):
        return text, {}
    return text[m.end() :].lstrip("\r\n"), {str(k): v for k, v in meta.items()}


@cache
def _no_alias_loader() -> Any:
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        """SafeLoader that refuses aliases (``*name``), the "billion laughs" of YAML."""

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                raise yaml.YAMLError("YAML aliases are not read in front matter")
            return super().compose_node(parent, index)

    return NoAliasLoader


def _first_heading(text: str) -> str | None:
    """The first '# ' line outside code fences, as ``text.splitlines()`` splits lines, found
    without making a list of every line."""
    in_fence = False
    for m in _LINE_MARK.finditer(text):
        if m.group() != "# ":
            in_fence = not in_fence  # '# comment' in a shell block is no title
        elif not in_fence:
            end = _LINE_END.search(text, m.end())
            return text[m.end() : end.start() if end else len(text)].strip()
    return None


def _html_text(html: str) -> tuple[str, str]:
    """(visible text, title) as ``BeautifulSoup(html, "html.parser")`` gives them, once
    script, style, noscript and template elements are removed: its non-empty lines, stripped,
    and the first <title>'s text. Read from the same parser's events into the text alone: a
    soup holds an object per tag and string, some 70 times the file's size."""
    from bs4.builder._htmlparser import BeautifulSoupHTMLParser, HTMLParserTreeBuilder
    from bs4.exceptions import ParserRejectedMarkup

    builder = HTMLParserTreeBuilder(store_line_numbers=False)
    sink = _HtmlText(builder)
    args, kwargs = builder.parser_args
    parser = BeautifulSoupHTMLParser(sink, *args, **kwargs)
    try:
        parser.feed(html)
        parser.close()
    except AssertionError as exc:  # as BeautifulSoup words it
        raise ParserRejectedMarkup(exc) from exc
    sink.endData()
    return "\n".join(sink.lines), "".join(sink.title)


class _HtmlText:
    """The part of a BeautifulSoup object that html.parser's events reach, keeping only what
    ``get_text`` would return: strings of the main content types (not comments, doctypes or
    the text of script, style, template, rt and rp), outside script, style, noscript and
    template elements, split into stripped non-empty lines; and the strings of the first
    <title>. Elements open and close as in BeautifulSoup: an end tag closes the most recent
    open element of its name and every element opened inside it, and is ignored when none is
    open; void elements (br, img...) close at once."""

    _HIDDEN = frozenset({"script", "style", "noscript", "template"})

    def __init__(self, builder: Any) -> None:
        from bs4.element import CData, NavigableString

        self.builder = builder  # the parser reads its attribute_dict_class
        self.contains_replacement_characters = False  # the parser sets it
        self._kept = (NavigableString, CData)  # exact types, as get_text compares them
        self._stack: list[str] = []
        self._open: Counter[str] = Counter()
        self._containers: list[int] = []  # stack depths of elements with a string class
        self._hidden = 0  # open script, style, noscript and template elements
        self._data: list[str] = []
        self._title_depth: int | None = None  # stack depth of the first <title> while open
        self._title_done = False
        self.lines: list[str] = []
        self.title: list[str] = []

    def handle_starttag(self, name: str, *_: Any, **__: Any) -> Any:
        self.endData()
        self._stack.append(name)
        self._open[name] += 1
        self._hidden += name in self._HIDDEN
        if name in self.builder.string_containers:
            self._containers.append(len(self._stack))
        if name == "title" and self._title_depth is None and not self._title_done:
            self._title_depth = len(self._stack)
        return _Element(name in self.builder.empty_element_tags)

    def handle_endtag(self, name: str, nsprefix: str | None = None) -> None:
        self.endData()
        if not self._open.get(name):
            return
        while self._stack:
            popped = self._pop()
            if popped == name:
                break

    def _pop(self) -> str:
        depth = len(self._stack)
        name = self._stack.pop()
        self._open[name] -= 1
        self._hidden -= name in self._HIDDEN
        if self._containers and self._containers[-1] == depth:
            self._containers.pop()
        if self._title_depth == depth:
            self._title_depth, self._title_done = None, True
        return name

    def handle_data(self, data: str) -> None:
        self._data.append(data)

    def endData(self, containerClass: Any = None) -> None:
        if not self._data:
            return
        text = "".join(self._data)
        self._data = []
        kind = containerClass or self._kept[0]
        if kind is self._kept[0] and self._containers:
            kind = self.builder.string_containers[self._stack[self._containers[-1] - 1]]
        if kind not in self._kept:
            return
        if self._title_depth is not None and text.strip():
            self.title.append(text.strip())
        if not self._hidden:
            self.lines.extend(line for line in (x.strip() for x in text.splitlines()) if line)


class _Element:
    """What the parser asks of the element a start tag made."""

    def __init__(self, void: bool) -> None:
        self.is_empty_element = void


def _read_pdf(path: Path, rel: str, limit: int) -> Doc:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError

    try:
        with _quiet("pypdf"):
            reader = PdfReader(path)  # an empty user password (common) is tried by itself
            pages, size = [], 0
            for page in reader.pages:  # pypdf caps what one stream may decompress to
                pages.append(page.extract_text() or "")
                size += len(pages[-1])
                if size > limit:  # compressed text can be far larger than the file
                    raise Skip(
                        f"PDF text is over {limit:,} characters (max_file_mb) by page "
                        f"{len(pages)} of {len(reader.pages)}; split the PDF"
                    )
            title = ""
            with contextlib.suppress(Exception):
                title = str((reader.metadata or {}).get("/Title") or "")
    except Skip:
        raise
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
