"""ingest: read documents from files, directories and globs into the documents schema.

The step keeps its config, the loop over files and the rules for skipping a file or a
document; finding files and reading each format live in ``embedpipe.steps.sources``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import Field

from embedpipe import schemas
from embedpipe.errors import SourceError
from embedpipe.steps.base import Link, Step, StepConfig, StepContext
from embedpipe.steps.sources.doc import Doc, Skip, blank, brief, encodable, kind, skip, too_big
from embedpipe.steps.sources.rows import records, row_id, row_text
from embedpipe.steps.sources.sniff import check_file, sniff
from embedpipe.steps.sources.walk import (
    glob_files,
    matches,
    missing,
    relative,
    resolve,
    static_prefix,
    visible,
    walk,
)
from embedpipe.steps.sources.whole import read_whole

Format = Literal["auto", "beir", "jsonl", "parquet", "csv", "text", "markdown", "html", "pdf"]

_BY_SUFFIX: dict[str, str] = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
    ".parquet": "parquet", ".csv": "csv", ".tsv": "csv",
    ".txt": "text", ".text": "text", ".rst": "text",
    ".md": "markdown", ".markdown": "markdown",
    ".html": "html", ".htm": "html", ".pdf": "pdf",
}  # fmt: skip
_ROW_FORMATS = {"beir", "jsonl", "parquet", "csv"}
_BATCH = 512  # documents in one output batch, at most
_BATCH_CHARS = 2**23  # characters of text in one output batch, past which it is yielded
_TITLE_MAX = 1000  # characters: every chunk row repeats its document's title
_SURROGATE = re.compile("[\ud800-\udfff]")
_NO_ROWS = {
    "csv": "CSV file has a header but no rows",
    "parquet": "Parquet file has no rows",
}


# The default size limit, by measurement (issue 13, 2 cores and 24 GiB): `pipe plan`, which
# ingests and chunks through the engine, peaks at 0.65-0.9 GB on one document at this limit
# (text, CJK text, markdown, HTML, a JSON line, a CSV row; 0.27 GB on a tiny file), and
# `pipe run` at 2.2 GB on 11 MB of one-line text, its encode step the largest part.
MAX_FILE_MB = 100


def content_hash(title: str, text: str) -> str:
    """blake2b of ``f"{title}\x1f{text}"`` in UTF-8; a long text is hashed in parts, so that
    no copy of it is made (the digest is the same)."""
    if len(text) <= 2**20:
        return hashlib.blake2b(f"{title}\x1f{text}".encode(), digest_size=16).hexdigest()
    h = hashlib.blake2b(f"{title}\x1f".encode(), digest_size=16)
    for i in range(0, len(text), 2**20):
        h.update(text[i : i + 2**20].encode())
    return h.hexdigest()


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
        MAX_FILE_MB,
        gt=0,
        description="Whole-file formats: larger files are skipped with a reason; "
        "row formats: the limit for one JSON line, CSV row or row's text.",
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

    Memory is bounded by ``max_file_mb`` for one document, not by the size of a file: row
    formats are read a row at a time, and batches are cut by characters as well as by rows.
    A title over 1,000 characters is cut there (at a space if one is near): every chunk
    repeats its document's title.
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
            for i, problem in enumerate(missing(s, self.base_dir) for s in self.config.sources())
            if problem
        ]

    def run(
        self, inputs: list[Iterator[pa.RecordBatch]], ctx: StepContext
    ) -> Iterator[pa.RecordBatch]:
        now = datetime.now(UTC)
        seen: dict[str, str] = {}
        rows: list[Doc] = []
        size = 0  # characters of text in rows
        for path, root, problem in self._files(ctx):
            if ctx.is_owned(path):  # the workspace's own tables, catalog and caches
                continue
            if problem:
                skip(ctx, relative(path, root), problem)
                continue
            for doc in self._read(path, root, ctx):
                problem = _duplicate(doc, seen) or _unusable(doc)
                if problem:
                    skip(ctx, doc.source, problem)
                    continue
                seen[doc.doc_id] = doc.source
                doc.title = _short_title(doc.title)
                rows.append(doc)
                size += len(doc.text)
                if len(rows) >= _BATCH or size >= _BATCH_CHARS:
                    yield _to_batch(rows, now)
                    rows, size = [], 0
        if rows:
            yield _to_batch(rows, now)

    # -- finding files ------------------------------------------------------------------------
    def _files(self, ctx: StepContext) -> Iterator[tuple[Path, Path, str | None]]:
        """(file, root that doc ids are relative to, why it cannot be read), in a stable order.
        Folders the engine owns (a workspace inside a source folder) are not walked."""

        def enter(top: Path) -> Callable[[tuple[str, ...]], bool]:
            if not ctx.owned:
                return visible
            return lambda parts: visible(parts) and not ctx.is_owned(top.joinpath(*parts))

        for source in self.config.sources():
            problem = missing(source, self.base_dir)
            if problem:
                raise SourceError(f"steps.{self.name}.source: {problem}")
            path = resolve(source, self.base_dir)
            if glob.has_magic(source):
                root = static_prefix(path)
                for match, why in glob_files(path):
                    yield match, root, why
            elif path.is_dir():
                for f, why in walk(path, enter=enter(path), keep=self._wanted):
                    yield f, path.parent, why
            else:
                yield path, path.parent, None

    def _wanted(self, parts: tuple[str, ...]) -> bool:
        """Directory sources: not hidden (.git, .DS_Store and friends), included, not excluded."""
        rel = Path(*parts)
        if any(part.startswith(".") for part in parts):
            return False
        if self.config.include and not any(matches(rel, g) for g in self.config.include):
            return False
        return not any(matches(rel, g) for g in self.config.exclude)

    # -- reading one file ---------------------------------------------------------------------
    def _read(self, path: Path, root: Path, ctx: StepContext) -> Iterator[Doc]:
        rel = relative(path, root)
        fmt = self.config.format
        if fmt == "auto":
            fmt = _BY_SUFFIX.get(path.suffix.lower(), "text")
        limit = int(self.config.max_file_mb * 2**20)
        try:
            info = path.stat()
            check_file(rel, info)
            if fmt not in _ROW_FORMATS and info.st_size > limit:  # before reading a byte
                raise Skip(too_big(info.st_size, self.config.max_file_mb))
            if fmt not in ("parquet", "pdf"):  # the binary formats check their own headers
                with path.open("rb") as fh:
                    sniff(fh.read(16))
            if fmt in _ROW_FORMATS:
                yield from self._rows(path, rel, fmt, ctx)
                return
            doc = read_whole(path, rel, fmt, limit)
        except Skip as exc:
            skip(ctx, rel, str(exc))
            return
        except OSError as exc:
            skip(ctx, rel, f"cannot read file: {exc.strerror or brief(exc)}")
            return
        except Exception as exc:  # a parser's bug on odd input costs one file, never the run
            skip(ctx, rel, f"cannot read file ({type(exc).__name__}: {brief(exc)})")
            return
        yield doc

    def _rows(self, path: Path, rel: str, fmt: str, ctx: StepContext) -> Iterator[Doc]:
        cfg = self.config
        id_field = cfg.id_field or ("_id" if fmt == "beir" else None)
        needed = [cfg.text_field, id_field]
        limit = int(cfg.max_file_mb * 2**20)
        skipped_before, found = ctx.skip_count, 0
        for n, record in records(path, fmt, rel, ctx, cfg.max_file_mb, needed):
            found += 1
            where = f"{rel}:{n}"
            if not isinstance(record, dict):
                skip(ctx, where, f"row is {kind(record)}, not a JSON object")
                continue
            problem, doc_id = row_id(record, id_field, where)
            problem = problem or row_text(record, cfg.text_field)
            if not problem and len(record[cfg.text_field]) > limit:  # a Parquet cell, say
                n_chars = len(record[cfg.text_field])
                problem = f"text is {n_chars:,} characters, over max_file_mb={cfg.max_file_mb:g}"
            if problem:
                skip(ctx, where, problem)
                continue
            title = record.get(cfg.title_field) if cfg.title_field else None
            used = {id_field, cfg.text_field, cfg.title_field}
            meta = {k: v for k, v in record.items() if k not in used}
            yield Doc(doc_id, record[cfg.text_field], str(title or ""), where, meta)
        if not found and ctx.skip_count == skipped_before:  # else the file vanishes silently
            raise Skip(
                _NO_ROWS.get(fmt, "file has no JSON records (only blank lines, or an empty array)")
            )


def _duplicate(doc: Doc, seen: dict[str, str]) -> str | None:
    first = seen.get(doc.doc_id)
    if first is None:
        return None
    if first == doc.source:  # two sources, same relative path: say why, not "seen at itself"
        return (
            f"duplicate doc_id '{doc.doc_id}': an earlier source has a file at the same "
            "relative path, and ids are paths relative to their source"
        )
    return f"duplicate doc_id '{doc.doc_id}' (first seen at {first})"


def _unusable(doc: Doc) -> str | None:
    if blank(doc.text):
        return "empty document: no text after extraction"
    # A lone surrogate ("\ud800" in JSON) is valid JSON but no valid Unicode: Arrow would fail
    # the whole batch on it. (A long value is searched, not encoded: no copy of it is made.)
    meta = json.dumps(doc.meta, default=str, ensure_ascii=False)
    for name, value in (("doc_id", doc.doc_id), ("text", doc.text), ("title", doc.title),
                        ("meta", meta)):  # fmt: skip
        if len(value) <= 2**16 and encodable(value):  # encoding a short value is quicker
            continue
        m = _SURROGATE.search(value)
        if m:
            lone = ord(m.group())
            return f"{name} is not valid Unicode: it holds an unpaired surrogate (U+{lone:04X})"
    return None


def _short_title(title: str) -> str:
    """``title``, cut to ``_TITLE_MAX`` characters (at a space in the last fifth, if any)."""
    if len(title) <= _TITLE_MAX:
        return title
    cut = title.rfind(" ", _TITLE_MAX * 4 // 5, _TITLE_MAX)
    return title[: cut if cut > 0 else _TITLE_MAX].rstrip() + "…"


def _to_batch(rows: list[Doc], now: datetime) -> pa.RecordBatch:
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
