"""ingest: read documents from files, directories and globs into the documents schema."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

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
        100, gt=0, description="Whole-file formats: larger files are skipped with a reason."
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
    Unreadable, empty, binary or oversized inputs are skipped with a reason; the run goes on.
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
        for path, root in self._files():
            for doc in self._read(path, root, ctx):
                if doc.doc_id in seen:
                    ctx.skip(
                        doc.source,
                        f"duplicate doc_id '{doc.doc_id}' (first seen at {seen[doc.doc_id]})",
                    )
                    continue
                if not doc.text.strip():
                    ctx.skip(doc.source, "empty document: no text after extraction")
                    continue
                seen[doc.doc_id] = doc.source
                rows.append(doc)
                if len(rows) >= _BATCH:
                    yield _to_batch(rows, now)
                    rows = []
        if rows:
            yield _to_batch(rows, now)

    # -- finding files ------------------------------------------------------------------------
    def _files(self) -> Iterator[tuple[Path, Path]]:
        """(file, root that doc ids are relative to), in a stable order."""
        for source in self.config.sources():
            problem = _missing(source, self.base_dir)
            if problem:
                raise SourceError(f"steps.{self.name}.source: {problem}")
            path = _resolve(source, self.base_dir)
            if glob.has_magic(source):
                root = _static_prefix(path)
                for match in sorted(glob.glob(str(path), recursive=True)):
                    if Path(match).is_file():
                        yield Path(match), root
            elif path.is_dir():
                for f in sorted(p for p in path.rglob("*") if p.is_file()):
                    rel = f.relative_to(path)
                    if any(part.startswith(".") for part in rel.parts):
                        continue  # .git, .DS_Store and friends
                    if self.config.include and not any(
                        _matches(rel, g) for g in self.config.include
                    ):
                        continue
                    if any(_matches(rel, g) for g in self.config.exclude):
                        continue
                    yield f, path.parent
            else:
                yield path, path.parent

    # -- reading one file ---------------------------------------------------------------------
    def _read(self, path: Path, root: Path, ctx: StepContext) -> Iterator[_Doc]:
        rel = _rel(path, root)
        fmt = self.config.format
        if fmt == "auto":
            fmt = _BY_SUFFIX.get(path.suffix.lower(), "text")
        try:
            size = path.stat().st_size
            if size == 0:
                raise _Skip("empty file")  # row formats would otherwise yield nothing, silently
            if fmt in _ROW_FORMATS:
                yield from self._rows(path, rel, fmt, ctx)
                return
            limit = self.config.max_file_mb * 2**20
            if size > limit:
                # bytes, not rounded MB: "100 MB, over max_file_mb=100" would read as no reason
                raise _Skip(
                    f"file is {size:,} bytes, over max_file_mb="
                    f"{self.config.max_file_mb:g} ({int(limit):,} bytes)"
                )
            doc = _read_whole(path, rel, fmt)
        except _Skip as skip:
            ctx.skip(rel, str(skip))
            return
        except OSError as exc:
            ctx.skip(rel, f"cannot read file: {exc.strerror or exc}")
            return
        if doc is not None:
            yield doc

    def _rows(self, path: Path, rel: str, fmt: str, ctx: StepContext) -> Iterator[_Doc]:
        cfg = self.config
        id_field = cfg.id_field or ("_id" if fmt == "beir" else None)
        for n, record in _records(path, fmt, rel, ctx):
            where = f"{rel}:{n}"
            if not isinstance(record, dict):
                ctx.skip(where, "row is not a JSON object")
                continue
            if id_field is not None:
                raw_id = record.get(id_field)
                if raw_id is None or str(raw_id) == "":
                    ctx.skip(where, f"row has no '{id_field}' field (id_field)")
                    continue
                doc_id = str(raw_id)
            else:
                doc_id = where
            text = record.get(cfg.text_field)
            if not isinstance(text, str):
                ctx.skip(where, f"row has no text in field '{cfg.text_field}' (text_field)")
                continue
            title = record.get(cfg.title_field) if cfg.title_field else None
            used = {id_field, cfg.text_field, cfg.title_field}
            meta = {k: v for k, v in record.items() if k not in used}
            yield _Doc(doc_id, text, str(title or ""), where, meta)


class _Skip(Exception):
    """A document-level problem: skip it with this reason."""


def _records(path: Path, fmt: str, rel: str, ctx: StepContext) -> Iterator[tuple[int, Any]]:
    """(1-based row/line number, record) for the row formats, streaming."""
    if fmt in ("jsonl", "beir"):
        with path.open("rb") as fh:
            for n, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    yield n, json.loads(raw)
                except UnicodeDecodeError:
                    ctx.skip(f"{rel}:{n}", "line is not valid UTF-8")
                except ValueError as exc:
                    ctx.skip(f"{rel}:{n}", f"line is not valid JSON ({exc.args[0][:60]})")
        return
    if fmt == "parquet":
        import pyarrow.parquet as pq

        n = 0
        try:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=_BATCH):
                for record in batch.to_pylist():
                    n += 1
                    yield n, record
        except pa.ArrowInvalid as exc:
            ctx.skip(f"{rel}:{n + 1}", f"cannot read Parquet: {exc}")
        return
    import pyarrow.csv as pcsv

    opts = pcsv.ParseOptions(delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    n = 0
    try:
        # Every column as text: inferred types turn id "007" into 7, reject numeric text, and
        # fail mid-file (losing the rest) when a later block breaks the type of the first.
        with pcsv.open_csv(path, parse_options=opts) as probe:
            names = probe.schema.names
        as_text = pcsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()))
        reader = pcsv.open_csv(path, parse_options=opts, convert_options=as_text)
        for batch in reader:
            for record in batch.to_pylist():
                n += 1
                yield n, record
    except pa.ArrowInvalid as exc:
        ctx.skip(f"{rel}:{n + 1}", f"cannot parse CSV: {exc}")


def _decode(data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise _Skip("binary file (contains NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _Skip(f"not valid UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start})") from exc


def _read_whole(path: Path, rel: str, fmt: str) -> _Doc | None:
    if fmt == "pdf":
        return _read_pdf(path, rel)
    text = _decode(path.read_bytes())
    meta: dict[str, Any] = {}
    title = ""
    if fmt == "markdown":
        text, meta = _front_matter(text)
        title = str(meta.pop("title", "") or _first_heading(text) or path.stem)
    elif fmt == "html":
        text, title = _html_text(text)
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
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(path)
        pages = [page.extract_text() or "" for page in reader.pages]
        title = ""
        with contextlib.suppress(Exception):
            title = str((reader.metadata or {}).get("/Title") or "")
    except (PyPdfError, ValueError, KeyError, TypeError) as exc:
        raise _Skip(f"unreadable PDF ({type(exc).__name__}: {str(exc)[:80]})") from exc
    return _Doc(rel, "\n\n".join(pages), title, rel, {"pages": len(pages)})


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
        if not any(Path(m).is_file() for m in glob.iglob(str(path), recursive=True)):
            return f"'{source}' matches no files (resolved to {path})"
        return None
    if not path.exists():
        return f"'{source}' does not exist (resolved to {path})"
    return None


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
