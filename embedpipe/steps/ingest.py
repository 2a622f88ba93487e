"""ingest: read documents from files, directories and globs into the documents schema."""

from __future__ import annotations

import codecs
import contextlib
import csv
import errno
import fnmatch
import glob
import hashlib
import json
import logging
import os
import re
import stat
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

import pyarrow as pa
from pydantic import Field

from embedpipe import schemas
from embedpipe.errors import SourceError
from embedpipe.steps.base import Link, Step, StepConfig, StepContext

Format = Literal["auto", "beir", "jsonl", "parquet", "csv", "text", "markdown", "html", "pdf"]

_BY_SUFFIX: dict[str, str] = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
    ".parquet": "parquet", ".csv": "csv", ".tsv": "csv",
    ".txt": "text", ".text": "text", ".rst": "text",
    ".md": "markdown", ".markdown": "markdown",
    ".html": "html", ".htm": "html", ".pdf": "pdf",
}  # fmt: skip
_ROW_FORMATS = {"beir", "jsonl", "parquet", "csv"}
# YAML between '---' lines at the very top; CRLF files too (Windows editors).
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(?:(.*?)\r?\n)??---[ \t]*(?:\r?\n|\Z)", re.DOTALL)
_FENCE = re.compile(r"^(```|~~~)")
_BATCH = 512
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
_NO_ROWS = {
    "csv": "CSV file has a header but no rows",
    "parquet": "Parquet file has no rows",
}
# Characters that show nothing: a document of only these is as empty as one of only spaces.
_INVISIBLE = {"Cc", "Cf", "Zs", "Zl", "Zp"}


def content_hash(title: str, text: str) -> str:
    return hashlib.blake2b(f"{title}\x1f{text}".encode(), digest_size=16).hexdigest()


@dataclass
class _Doc:
    doc_id: str
    text: str
    title: str
    source: str
    meta: dict[str, Any]


class IngestConfig(StepConfig):
    source: str | list[str] = Field(
        description="Files, directories or globs (** allowed), relative to the spec file."
    )
    format: Format = Field("auto", description="auto picks by file extension.")
    id_field: str | None = Field(
        None,
        description="Row formats: the field holding a stable document id "
        "(beir: _id). Default: path:row.",
    )
    text_field: str = Field("text", description="Row formats: the field holding the text.")
    title_field: str | None = Field("title", description="Row formats: the title field.")
    include: list[str] = Field(
        default_factory=list, description="Directories: only files matching these globs."
    )
    exclude: list[str] = Field(
        default_factory=list, description="Directories: skip files matching these globs."
    )
    max_file_mb: float = Field(
        100,
        gt=0,
        description="Whole-file formats: larger files are skipped with a reason; "
        "row formats: the limit for one JSON line.",
    )

    def sources(self) -> list[str]:
        return [self.source] if isinstance(self.source, str) else list(self.source)


class Ingest(Step):
    """Read documents: jsonl/BEIR, parquet, csv, text, markdown, html and pdf.

    ```yaml
    docs:
      type: ingest
      source: [../README.md, ../docs]   # files, directories or globs
      format: auto                      # or beir | jsonl | parquet | csv | text | markdown | ...
      id_field: _id                     # row formats; default path:row
    ```
    Unreadable, empty, binary or oversized inputs are skipped with a one-sentence reason; the
    run goes on. Text must be UTF-8: a UTF-16 file (byte-order mark) is skipped with a reason
    that says so. A ``.json`` file may hold a JSON array of objects (each one a row, numbered
    from 1), a single object, or JSON Lines. Directory symlinks are followed, except back into
    a directory already read (a symlink loop), which is skipped with a reason.
    """

    type = "ingest"
    Config = IngestConfig
    reads = None
    max_inputs = 0
    config: IngestConfig

    def output_schema(self, inputs: list[Link]) -> pa.Schema:
        return schemas.DOCUMENTS

    def preflight(self) -> list[tuple[tuple[str, ...], str]]:
        listed = isinstance(self.config.source, list)
        return [
            (("source", i) if listed else ("source",), problem)
            for i, problem in enumerate(_missing(s, self.base_dir) for s in self.config.sources())
            if problem
        ]

    def run(
        self, inputs: list[Iterator[pa.RecordBatch]], ctx: StepContext
    ) -> Iterator[pa.RecordBatch]:
        now = datetime.now(UTC)
        seen: dict[str, str] = {}
        rows: list[_Doc] = []
        for path, root, problem in self._files():
            if problem:
                _skip(ctx, _rel(path, root), problem)
                continue
            for doc in self._read(path, root, ctx):
                problem = _duplicate(doc, seen) or _unusable(doc)
                if problem:
                    _skip(ctx, doc.source, problem)
                    continue
                seen[doc.doc_id] = doc.source
                rows.append(doc)
                if len(rows) >= _BATCH:
                    yield _to_batch(rows, now)
                    rows = []
        if rows:
            yield _to_batch(rows, now)

    # -- finding files ------------------------------------------------------------------------
    def _files(self) -> Iterator[tuple[Path, Path, str | None]]:
        """(file, root that doc ids are relative to, why it cannot be read), in a stable order."""
        for source in self.config.sources():
            problem = _missing(source, self.base_dir)
            if problem:
                raise SourceError(f"steps.{self.name}.source: {problem}")
            path = _resolve(source, self.base_dir)
            if glob.has_magic(source):
                root = _static_prefix(path)
                for match, why in _glob(path):
                    yield match, root, why
            elif path.is_dir():
                for f, why in _walk(path, enter=_visible, keep=self._wanted):
                    yield f, path.parent, why
            else:
                yield path, path.parent, None

    def _wanted(self, parts: tuple[str, ...]) -> bool:
        """Directory sources: not hidden (.git, .DS_Store and friends), included, not excluded."""
        rel = Path(*parts)
        if any(part.startswith(".") for part in parts):
            return False
        if self.config.include and not any(_matches(rel, g) for g in self.config.include):
            return False
        return not any(_matches(rel, g) for g in self.config.exclude)

    # -- reading one file ---------------------------------------------------------------------
    def _read(self, path: Path, root: Path, ctx: StepContext) -> Iterator[_Doc]:
        rel = _rel(path, root)
        fmt = self.config.format
        if fmt == "auto":
            fmt = _BY_SUFFIX.get(path.suffix.lower(), "text")
        limit = int(self.config.max_file_mb * 2**20)
        try:
            info = path.stat()
            _check_file(rel, info)
            if fmt not in _ROW_FORMATS and info.st_size > limit:  # before reading a byte
                raise _Skip(_too_big(info.st_size, self.config.max_file_mb))
            if fmt not in ("parquet", "pdf"):  # the binary formats check their own headers
                with path.open("rb") as fh:
                    _sniff(fh.read(16))
            if fmt in _ROW_FORMATS:
                yield from self._rows(path, rel, fmt, ctx)
                return
            doc = _read_whole(path, rel, fmt)
        except _Skip as skip:
            _skip(ctx, rel, str(skip))
            return
        except OSError as exc:
            _skip(ctx, rel, f"cannot read file: {exc.strerror or _brief(exc)}")
            return
        except Exception as exc:  # a parser's bug on odd input costs one file, never the run
            _skip(ctx, rel, f"cannot read file ({type(exc).__name__}: {_brief(exc)})")
            return
        yield doc

    def _rows(self, path: Path, rel: str, fmt: str, ctx: StepContext) -> Iterator[_Doc]:
        cfg = self.config
        id_field = cfg.id_field or ("_id" if fmt == "beir" else None)
        needed = [cfg.text_field, id_field]
        skipped_before, found = len(ctx.skipped), 0
        for n, record in _records(path, fmt, rel, ctx, cfg.max_file_mb, needed):
            found += 1
            where = f"{rel}:{n}"
            if not isinstance(record, dict):
                _skip(ctx, where, f"row is {_kind(record)}, not a JSON object")
                continue
            problem, doc_id = _row_id(record, id_field, where)
            problem = problem or _row_text(record, cfg.text_field)
            if problem:
                _skip(ctx, where, problem)
                continue
            title = record.get(cfg.title_field) if cfg.title_field else None
            used = {id_field, cfg.text_field, cfg.title_field}
            meta = {k: v for k, v in record.items() if k not in used}
            yield _Doc(doc_id, record[cfg.text_field], str(title or ""), where, meta)
        if not found and len(ctx.skipped) == skipped_before:  # else the file vanishes silently
            raise _Skip(
                _NO_ROWS.get(fmt, "file has no JSON records (only blank lines, or an empty array)")
            )


class _Skip(Exception):
    """A document-level problem: skip it with this reason."""


def _skip(ctx: StepContext, item: str, reason: str) -> None:
    """``ctx.skip`` with an item the catalog can store (file names need not be UTF-8) and a
    one-line reason (parser messages may span lines)."""
    ctx.skip(_printable(item), " ".join(_printable(reason).split()))


def _check_file(rel: str, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):  # reading a named pipe would wait forever
        raise _Skip(f"not a regular file ({_file_kind(info.st_mode)})")
    if info.st_size == 0:
        raise _Skip("empty file")  # row formats would otherwise yield nothing, silently
    if not _encodable(rel):  # the name becomes the doc id, which Arrow stores as UTF-8
        raise _Skip("file name is not valid UTF-8, which document ids must be; rename the file")


def _too_big(size: int, max_mb: float, what: str = "file") -> str:
    # bytes, not rounded MB: "100 MB, over max_file_mb=100" would read as no reason
    limit = int(max_mb * 2**20)
    return f"{what} is {size:,} bytes, over max_file_mb={max_mb:g} ({limit:,} bytes)"


# -- rows -------------------------------------------------------------------------------------


def _row_id(record: dict[str, Any], id_field: str | None, where: str) -> tuple[str | None, str]:
    """(why the row has no usable id, the id)."""
    if id_field is None:
        return None, where
    if id_field not in record:
        return f"row has no '{id_field}' field (id_field)", ""
    raw = record[id_field]
    if raw is None or raw == "":
        return f"field '{id_field}' (id_field) is {_kind(raw)}, so the row has no id", ""
    # str() of a float, list or object is no stable id: 1.0 and 1 would differ, {"$oid": ..}
    # would depend on key order.
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        return f"field '{id_field}' (id_field) is {_kind(raw)}, not a string or integer", ""
    return None, str(raw)


def _row_text(record: dict[str, Any], text_field: str) -> str | None:
    if text_field not in record:
        return f"row has no '{text_field}' field (text_field)"
    text = record[text_field]
    if not isinstance(text, str):
        return f"field '{text_field}' (text_field) is {_kind(text)}, not a string"
    nul = text.find("\x00")
    if nul >= 0:  # whole files with NUL bytes are binary; a row holding one is no better
        return f"text contains a NUL character at offset {nul:,}; remove it to index this row"
    return None


def _records(
    path: Path, fmt: str, rel: str, ctx: StepContext, max_mb: float, needed: list[str | None]
) -> Iterator[tuple[int, Any]]:
    """(1-based row/line number, record) for the row formats, streaming."""
    if fmt == "parquet":
        yield from _parquet_records(path, rel, ctx, needed)
    elif fmt == "csv":
        yield from _csv_records(path, rel, ctx, needed)
    elif path.suffix.lower() == ".json" and _json_document(path, max_mb):
        yield from _json_whole(path, rel, ctx, max_mb)
    else:
        with path.open("rb") as fh:
            yield from _json_lines(fh, rel, ctx, max_mb)


def _json_document(path: Path, max_mb: float) -> bool:
    """Is this .json file one JSON document (an array, or an object over several lines)
    rather than JSON Lines?"""
    with path.open("rb") as fh:
        head = fh.read(4096).removeprefix(codecs.BOM_UTF8).lstrip()[:1]
        fh.seek(0)
        return head == b"[" or (head == b"{" and not _parses(fh.readline(int(max_mb * 2**20))))


def _json_whole(path: Path, rel: str, ctx: StepContext, max_mb: float) -> Iterator[tuple[int, Any]]:
    """A JSON array, each element a row (numbered from 1), or a single object, one row."""
    size = path.stat().st_size
    if size > max_mb * 2**20:
        raise _Skip(f"{_too_big(size, max_mb)}, and a .json array is read whole; use .jsonl")
    try:
        value = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise _Skip(f"{_not_utf8(exc, 'offset', exc.start)}; save it as UTF-8") from exc
    except json.JSONDecodeError as exc:
        # Several values one after another, or a first line already broken: JSON Lines.
        if exc.msg == "Extra data" or exc.lineno == 1:
            with path.open("rb") as fh:
                yield from _json_lines(fh, rel, ctx, max_mb)
            return
        raise _Skip(f"not valid JSON ({_json_error(exc, exc.lineno)})") from exc
    except RecursionError as exc:
        raise _Skip("JSON is nested too deeply to parse") from exc
    yield from enumerate(value if isinstance(value, list) else [value], start=1)


def _parses(line: bytes) -> bool:
    try:
        json.loads(line.decode("utf-8-sig"))
    except (ValueError, RecursionError):
        return False
    return True


def _json_lines(
    fh: IO[bytes], rel: str, ctx: StepContext, max_mb: float
) -> Iterator[tuple[int, Any]]:
    limit = int(max_mb * 2**20)
    n = 0
    # readline with a limit: one enormous line must not be loaded whole just to be refused
    while raw := fh.readline(limit + 1):
        n += 1
        where = f"{rel}:{n}"
        if len(raw) > limit and not raw.endswith(b"\n"):
            size = len(raw) + _discard_line(fh)
            _skip(ctx, where, _too_big(size, max_mb, "line") + ", too long for one document")
            continue
        if n == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)  # Windows tools write one
        if not raw.strip():
            continue
        try:
            yield n, json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            _skip(ctx, where, f"line is {_not_utf8(exc, 'column', exc.start + 1)}")
        except json.JSONDecodeError as exc:
            _skip(ctx, where, _bad_line(raw, exc))
        except RecursionError:
            _skip(ctx, where, "line is JSON nested too deeply to parse")


def _discard_line(fh: IO[bytes]) -> int:
    """Read past the rest of a line, 1 MB at a time; the number of bytes read."""
    size = 0
    while chunk := fh.readline(2**20):
        size += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return size


def _bad_line(raw: bytes, exc: json.JSONDecodeError) -> str:
    where = _json_error(exc)
    # The parser ran off the end of the last line: an export or copy was cut short.
    ran_out = exc.msg.startswith("Unterminated") or exc.pos >= len(exc.doc.rstrip())
    if ran_out and not raw.endswith(b"\n"):
        return (
            f"last line is not valid JSON and has no newline, so the file looks truncated ({where})"
        )
    return f"line is not valid JSON ({where})"


def _json_error(exc: json.JSONDecodeError, line: int | None = None) -> str:
    # msg reads "Expecting ',' delimiter" or "Invalid control character at"
    where = f"line {line} column {exc.colno}" if line else f"column {exc.colno}"
    return f"{exc.msg.removesuffix(' at')} at {where}"


def _parquet_records(
    path: Path, rel: str, ctx: StepContext, needed: list[str | None]
) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise _Skip(f"not a Parquet file, or a damaged one ({_brief(exc)})") from exc
    schema = pf.schema_arrow
    _check_columns(schema.names, needed)
    text = schema.field(needed[0]).type if needed[0] else pa.string()
    if not _is_text(text):  # one reason for the file, not one per row
        raise _Skip(f"column '{needed[0]}' (text_field) holds {text}, not strings")
    n = 0
    try:
        for batch in pf.iter_batches(batch_size=_BATCH):
            for record in batch.to_pylist():
                n += 1
                yield n, record
    except (pa.ArrowException, OSError) as exc:
        _skip(ctx, f"{rel}:{n + 1}", f"cannot read Parquet from this row on ({_brief(exc)})")


def _csv_records(
    path: Path, rel: str, ctx: StepContext, needed: list[str | None]
) -> Iterator[tuple[int, Any]]:
    # The standard library's reader, not Arrow's: every value stays text (id "007" is not 7),
    # and a ragged or undecodable row is skipped alone, by its number, while the rest is read.
    csv.field_size_limit(2**31 - 1)  # the default 128 KB would refuse a long document
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        header = next((row for row in reader if row), None)
        if header is None:
            raise _Skip("CSV file has only blank lines")
        _check_header(header, needed)
        n = 0
        try:
            for row in reader:
                if not row:
                    continue  # blank lines do not count as rows, as in Arrow's reader
                n += 1
                problem = _bad_csv_row(row, header)
                if problem:
                    _skip(ctx, f"{rel}:{n}", problem)
                    continue
                yield n, dict(zip(header, row, strict=True))
        except csv.Error as exc:
            _skip(ctx, f"{rel}:{n + 1}", f"cannot parse CSV from this row on ({_brief(exc)})")


def _is_text(dtype: pa.DataType) -> bool:
    if pa.types.is_dictionary(dtype):  # pandas categoricals
        dtype = dtype.value_type
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype)


def _check_header(header: list[str], needed: list[str | None]) -> None:
    for value in header:
        if not _encodable(value):
            raise _Skip("CSV header is not valid UTF-8; re-save the file as UTF-8")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise _Skip(f"CSV header repeats column '{repeated[0]}', so its values would be lost")
    _check_columns(header, needed)


def _check_columns(names: Sequence[str], needed: list[str | None]) -> None:
    """A column the config names but the file lacks fails every row: one reason for the file."""
    for name, key in zip(needed, ("text_field", "id_field"), strict=True):
        if name is not None and name not in names:
            shown = ", ".join(f"'{c}'" for c in names[:10]) + (", ..." if len(names) > 10 else "")
            raise _Skip(f"no column '{name}' ({key}); the file's columns are {shown}")


def _bad_csv_row(row: list[str], header: list[str]) -> str | None:
    if len(row) != len(header):
        fields = f"{len(row)} field" + ("s" if len(row) != 1 else "")
        return f"row has {fields} but the header has {len(header)}"
    for name, value in zip(header, row, strict=True):
        if not _encodable(value):
            return f"column '{name}' is not valid UTF-8; re-save the file as UTF-8"
    return None


# -- whole files ------------------------------------------------------------------------------


def _sniff(head: bytes) -> None:
    """Refuse, by their first bytes, files that only look like text by name."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise _Skip(
            "file is UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8"
        )
    for magic, what in _MAGIC:
        if head.startswith(magic):
            raise _Skip(f"not text: the file is {what}")


def _decode(data: bytes) -> str:
    nul = data.find(b"\x00")  # anywhere: a text header does not make an archive text
    if nul >= 0:
        raise _Skip(f"binary file (contains NUL bytes, the first at offset {nul:,})")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _Skip(f"{_not_utf8(exc, 'offset', exc.start)}; save it as UTF-8") from exc


def _not_utf8(exc: UnicodeDecodeError, at: str, where: int) -> str:
    return f"not valid UTF-8 (byte {exc.object[exc.start]:#04x} at {at} {where:,})"


def _read_whole(path: Path, rel: str, fmt: str) -> _Doc:
    if fmt == "pdf":
        return _read_pdf(path, rel)
    text = _decode(path.read_bytes())
    meta: dict[str, Any] = {}
    title = ""
    if fmt == "markdown":
        text, meta = _front_matter(text)
        if meta and _blank(text):
            raise _Skip("empty document: markdown with front matter but no text after it")
        title = str(meta.pop("title", "") or _first_heading(text) or path.stem)
    elif fmt == "html":
        text, title = _html_text(text)
        if _blank(text):
            raise _Skip(
                "empty document: HTML with no visible text (scripts and styles are dropped)"
            )
    return _Doc(rel, text, title or "", rel, meta)


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


def _read_pdf(path: Path, rel: str) -> _Doc:
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
        raise _Skip("PDF is encrypted with a password; decrypt it first") from exc
    except Exception as exc:  # pypdf raises many kinds on damaged files, not only PyPdfError
        raise _Skip(
            f"unreadable PDF, damaged or truncated ({type(exc).__name__}: {_brief(exc)})"
        ) from exc
    if not pages:
        raise _Skip("PDF has no pages")
    if all(_blank(p) for p in pages):
        raise _Skip(
            f"PDF has no text layer on its {len(pages)} page(s); scanned pages need OCR first"
        )
    return _Doc(rel, "\n\n".join(pages), title, rel, {"pages": len(pages)})


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


# -- every document ---------------------------------------------------------------------------


def _duplicate(doc: _Doc, seen: dict[str, str]) -> str | None:
    first = seen.get(doc.doc_id)
    if first is None:
        return None
    if first == doc.source:  # two sources, same relative path: say why, not "seen at itself"
        return (
            f"duplicate doc_id '{doc.doc_id}': an earlier source has a file at the same "
            "relative path, and ids are paths relative to their source"
        )
    return f"duplicate doc_id '{doc.doc_id}' (first seen at {first})"


def _unusable(doc: _Doc) -> str | None:
    if _blank(doc.text):
        return "empty document: no text after extraction"
    # A lone surrogate ("\ud800" in JSON) is valid JSON but no valid Unicode: Arrow would fail
    # the whole batch on it.
    meta = json.dumps(doc.meta, default=str, ensure_ascii=False)
    for name, value in (("doc_id", doc.doc_id), ("text", doc.text), ("title", doc.title),
                        ("meta", meta)):  # fmt: skip
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            lone = ord(value[exc.start])
            return f"{name} is not valid Unicode: it holds an unpaired surrogate (U+{lone:04X})"
    return None


def _blank(text: str) -> bool:
    # all() stops at the first visible character, so this is cheap for real documents
    return all(unicodedata.category(c) in _INVISIBLE for c in text)


def _to_batch(rows: list[_Doc], now: datetime) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(
        [
            {
                "doc_id": d.doc_id,
                "text": d.text,
                "title": d.title,
                "source": d.source,
                "meta": json.dumps(d.meta, default=str, ensure_ascii=False),
                "content_hash": content_hash(d.title, d.text),
                "ingested_at": now,
            }
            for d in rows
        ],
        schema=schemas.DOCUMENTS,
    )


# -- paths ------------------------------------------------------------------------------------


def _resolve(source: str, base_dir: Path) -> Path:
    path = Path(source).expanduser()
    return path if path.is_absolute() else base_dir / path


def _static_prefix(pattern: Path) -> Path:
    parts = []
    for part in pattern.parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return Path(*parts)


def _missing(source: str, base_dir: Path) -> str | None:
    """Why ``source`` matches nothing, or None when it matches something."""
    path = _resolve(source, base_dir)
    if glob.has_magic(source):
        if not any(why is None for _, why in _glob(path)):
            return f"'{source}' matches no files (resolved to {path})"
        return None
    if path.is_symlink() and not path.exists():
        return f"'{source}' is a {_link_problem(path)} (resolved to {path})"
    if not path.exists():
        return f"'{source}' does not exist (resolved to {path})"
    return None


def _glob(pattern: Path) -> Iterator[tuple[Path, str | None]]:
    """Files matching ``pattern``, with glob.glob's rules, but walked with ``_walk``:
    glob.glob follows symlink loops until the kernel gives up, exponentially long."""
    prefix = _static_prefix(pattern)
    pats = pattern.parts[len(prefix.parts) :]
    if pats[-1:] == ("**",):  # 'a/**' matches what is below a, never a file named a
        pats = (*pats[:-1], "*", "**")
    if not prefix.is_dir():
        return
    yield from _walk(
        prefix,
        enter=lambda parts: _glob_match(parts, pats, partial=True),
        keep=lambda parts: _glob_match(parts, pats),
    )


def _glob_match(parts: Sequence[str], pats: Sequence[str], *, partial: bool = False) -> bool:
    """glob.glob's rules, one path segment at a time: ``**`` spans any number of directories,
    and a wildcard matches a leading '.' only where its pattern starts with one. partial:
    could a path below ``parts`` still match?"""
    if not parts:
        return bool(pats) if partial else all(p == "**" for p in pats)
    if not pats:
        return False
    if pats[0] == "**":
        return _glob_match(parts, pats[1:], partial=partial) or (
            not parts[0].startswith(".") and _glob_match(parts[1:], pats, partial=partial)
        )
    name, pat = parts[0], pats[0]
    ok = fnmatch.fnmatchcase(name, pat) and (not name.startswith(".") or pat.startswith("."))
    return ok and _glob_match(parts[1:], pats[1:], partial=partial)


def _walk(
    top: Path,
    enter: Callable[[tuple[str, ...]], bool],
    keep: Callable[[tuple[str, ...]], bool],
) -> Iterator[tuple[Path, str | None]]:
    """Every file below ``top`` that ``keep`` wants, in sorted order, with why it cannot be read
    (None when it can), and every directory ``enter`` wants that cannot be walked, with why.

    Directory symlinks are followed, but never into a directory already walked: a link back
    to its own parent would otherwise be a loop, and links between siblings a blow-up."""
    seen = {top.resolve()}

    def walk(
        folder: Path, rel: tuple[str, ...], ancestors: frozenset[Path]
    ) -> Iterator[tuple[Path, str | None]]:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            yield folder, f"cannot read directory: {exc.strerror or _brief(exc)}"
            return
        for entry in entries:
            path, parts = Path(entry.path), (*rel, entry.name)
            try:
                mode = os.stat(path).st_mode  # follows symlinks
            except OSError as exc:
                if keep(parts):
                    yield path, _link_problem(path, exc)
                continue
            if not stat.S_ISDIR(mode):
                if keep(parts):
                    ok = stat.S_ISREG(mode)
                    yield path, None if ok else f"not a regular file ({_file_kind(mode)})"
                continue
            if not enter(parts):
                continue
            real = path.resolve()
            if real in ancestors:  # only a symlink can lead back up
                yield path, f"symlink loop: it points back to {real.name}/, which contains it"
            elif real in seen and entry.is_symlink():
                yield path, f"symlink to a directory already read ({real}); not read twice"
            else:
                seen.add(real)
                yield from walk(path, parts, ancestors | {real})

    yield from walk(top, (), frozenset(seen))


def _visible(parts: tuple[str, ...]) -> bool:
    return not parts[-1].startswith(".")


def _link_problem(path: Path, exc: OSError | None = None) -> str:
    try:
        target = os.readlink(path)
    except OSError:
        return f"cannot read: {(exc and exc.strerror) or 'unknown error'}"
    if exc is None:
        try:
            os.stat(path)
        except OSError as err:
            exc = err
    if exc is not None and exc.errno == errno.ELOOP:
        return f"symlink loop: following '{target}' leads back to the link, never to a file"
    if exc is not None and exc.errno == errno.ENOENT:
        return f"broken symlink: its target '{target}' does not exist"
    return f"cannot read: {(exc and exc.strerror) or 'unknown error'}"


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a file or directory"


def _matches(rel: Path, pattern: str) -> bool:
    """``PurePath.match`` (from the right), with ``**`` at either end spanning any number of
    directories: Python 3.11 reads ``**`` as ``*``, so ``**/*.md`` would miss top-level files
    and ``build/**`` anything deeper than ``build/x``."""
    while pattern.startswith("**/"):
        pattern = pattern[3:]  # matching from the right allows any directories before
    if pattern in ("", "**"):
        return True
    if pattern.endswith("/**"):
        return any(parent.match(pattern[:-3]) for parent in rel.parents if parent.parts)
    return rel.match(pattern)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


# -- text helpers -----------------------------------------------------------------------------


def _kind(value: Any) -> str:
    """A JSON value's kind, for reasons: 'null', 'an integer', 'an object'..."""
    if value is None:
        return "null"
    if isinstance(value, str) and not value:
        return "an empty string"
    kinds = {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
             list: "a list", dict: "an object"}  # fmt: skip
    return kinds.get(type(value), f"a {type(value).__name__}")


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _printable(text: str) -> str:
    """``text``, with what UTF-8 cannot hold escaped: undecodable file-name bytes as \\xe9."""
    if _encodable(text):
        return text
    try:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()


def _brief(exc: BaseException, limit: int = 120) -> str:
    """An exception's first sentence on one line, cut to ``limit`` characters."""
    text = " ".join(str(exc).split()).split(". ")[0].rstrip(".") or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
