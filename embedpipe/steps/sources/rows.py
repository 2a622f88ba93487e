"""rows: records from the row formats (JSON Lines, JSON, BEIR, CSV and Parquet), streamed.

Each record comes with its 1-based row or line number, so a bad row is skipped alone, by
``file:row``, while the rest of the file is read. A problem that would fail every row (a
missing column, an unreadable header) skips the file once instead.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from embedpipe.steps.base import StepContext
from embedpipe.steps.sources.doc import Skip, brief, encodable, kind, skip, too_big
from embedpipe.steps.sources.sniff import not_utf8

_BATCH = 512  # Parquet rows read at a time


def row_id(record: dict[str, Any], id_field: str | None, where: str) -> tuple[str | None, str]:
    """(why the row has no usable id, the id)."""
    if id_field is None:
        return None, where
    if id_field not in record:
        return f"row has no '{id_field}' field (id_field)", ""
    raw = record[id_field]
    if raw is None or raw == "":
        return f"field '{id_field}' (id_field) is {kind(raw)}, so the row has no id", ""
    # str() of a float, list or object is no stable id: 1.0 and 1 would differ, {"$oid": ..}
    # would depend on key order.
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        return f"field '{id_field}' (id_field) is {kind(raw)}, not a string or integer", ""
    return None, str(raw)


def row_text(record: dict[str, Any], text_field: str) -> str | None:
    if text_field not in record:
        return f"row has no '{text_field}' field (text_field)"
    text = record[text_field]
    if not isinstance(text, str):
        return f"field '{text_field}' (text_field) is {kind(text)}, not a string"
    nul = text.find("\x00")
    if nul >= 0:  # whole files with NUL bytes are binary; a row holding one is no better
        return f"text contains a NUL character at offset {nul:,}; remove it to index this row"
    return None


def records(
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
        raise Skip(f"{too_big(size, max_mb)}, and a .json array is read whole; use .jsonl")
    try:
        value = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise Skip(f"{not_utf8(exc, 'offset', exc.start)}; save it as UTF-8") from exc
    except json.JSONDecodeError as exc:
        # Several values one after another, or a first line already broken: JSON Lines.
        if exc.msg == "Extra data" or exc.lineno == 1:
            with path.open("rb") as fh:
                yield from _json_lines(fh, rel, ctx, max_mb)
            return
        raise Skip(f"not valid JSON ({_json_error(exc, exc.lineno)})") from exc
    except RecursionError as exc:
        raise Skip("JSON is nested too deeply to parse") from exc
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
            skip(ctx, where, too_big(size, max_mb, "line") + ", too long for one document")
            continue
        if n == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)  # Windows tools write one
        if not raw.strip():
            continue
        try:
            yield n, json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            skip(ctx, where, f"line is {not_utf8(exc, 'column', exc.start + 1)}")
        except json.JSONDecodeError as exc:
            skip(ctx, where, _bad_line(raw, exc))
        except RecursionError:
            skip(ctx, where, "line is JSON nested too deeply to parse")


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
        raise Skip(f"not a Parquet file, or a damaged one ({brief(exc)})") from exc
    schema = pf.schema_arrow
    _check_columns(schema.names, needed)
    text = schema.field(needed[0]).type if needed[0] else pa.string()
    if not _is_text(text):  # one reason for the file, not one per row
        raise Skip(f"column '{needed[0]}' (text_field) holds {text}, not strings")
    n = 0
    try:
        for batch in pf.iter_batches(batch_size=_BATCH):
            for record in batch.to_pylist():
                n += 1
                yield n, record
    except (pa.ArrowException, OSError) as exc:
        skip(ctx, f"{rel}:{n + 1}", f"cannot read Parquet from this row on ({brief(exc)})")


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
            raise Skip("CSV file has only blank lines")
        _check_header(header, needed)
        n = 0
        try:
            for row in reader:
                if not row:
                    continue  # blank lines do not count as rows, as in Arrow's reader
                n += 1
                problem = _bad_csv_row(row, header)
                if problem:
                    skip(ctx, f"{rel}:{n}", problem)
                    continue
                yield n, dict(zip(header, row, strict=True))
        except csv.Error as exc:
            skip(ctx, f"{rel}:{n + 1}", f"cannot parse CSV from this row on ({brief(exc)})")


def _is_text(dtype: pa.DataType) -> bool:
    if pa.types.is_dictionary(dtype):  # pandas categoricals
        dtype = dtype.value_type
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype)


def _check_header(header: list[str], needed: list[str | None]) -> None:
    for value in header:
        if not encodable(value):
            raise Skip("CSV header is not valid UTF-8; re-save the file as UTF-8")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise Skip(f"CSV header repeats column '{repeated[0]}', so its values would be lost")
    _check_columns(header, needed)


def _check_columns(names: Sequence[str], needed: list[str | None]) -> None:
    """A column the config names but the file lacks fails every row: one reason for the file."""
    for name, key in zip(needed, ("text_field", "id_field"), strict=True):
        if name is not None and name not in names:
            shown = ", ".join(f"'{c}'" for c in names[:10]) + (", ..." if len(names) > 10 else "")
            raise Skip(f"no column '{name}' ({key}); the file's columns are {shown}")


def _bad_csv_row(row: list[str], header: list[str]) -> str | None:
    if len(row) != len(header):
        fields = f"{len(row)} field" + ("s" if len(row) != 1 else "")
        return f"row has {fields} but the header has {len(header)}"
    for name, value in zip(header, row, strict=True):
        if not encodable(value):
            return f"column '{name}' is not valid UTF-8; re-save the file as UTF-8"
    return None
