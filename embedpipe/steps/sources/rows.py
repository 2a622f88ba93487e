"""rows: records from the row formats (JSON Lines, JSON, BEIR, CSV and Parquet), streamed.

Each record comes with its 1-based row or line number, so a bad row is skipped alone, by
``file:row``, while the rest of the file is read. A problem that would fail every row (a
missing column, an unreadable header) skips the file once instead.

Memory is bounded by the size limit (``max_file_mb``) for one row, not by the file: JSON Lines
and CSV are read a line at a time, a line or CSV row over the limit is read past and skipped,
and a .json array is parsed one element at a time.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections import deque
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
        yield from _csv_records(path, rel, ctx, needed, max_mb)
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
    """A JSON array, each element a row (numbered from 1), or a single object, one row. The
    array is parsed twice, an element at a time: first to check the whole file (a broken
    file gives no rows, only its reason), then to yield the rows, so that memory holds the
    file's text and one row, never a list of every row."""
    size = path.stat().st_size
    if size > max_mb * 2**20:
        raise Skip(f"{too_big(size, max_mb)}, and a .json array is read whole; use .jsonl")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Skip(f"{not_utf8(exc, 'offset', exc.start)}; save it as UTF-8") from exc
    try:
        for _ in _json_values(text):
            pass
    except json.JSONDecodeError as exc:
        # Several values one after another, or a first line already broken: JSON Lines.
        if exc.msg == "Extra data" or exc.lineno == 1:
            del text
            with path.open("rb") as fh:
                yield from _json_lines(fh, rel, ctx, max_mb)
            return
        raise Skip(f"not valid JSON ({_json_error(exc, exc.lineno)})") from exc
    except RecursionError as exc:
        raise Skip("JSON is nested too deeply to parse") from exc
    yield from enumerate(_json_values(text), start=1)


_JSON_SPACE = re.compile(r"[ \t\n\r]*")  # json's own whitespace


def _json_values(text: str) -> Iterator[Any]:
    """The elements of the JSON array ``text`` holds, one at a time, or the one value it holds
    when that is no array; errors as ``json.loads(text)`` raises them, positions included."""
    decode = json.JSONDecoder().raw_decode
    pos = _JSON_SPACE.match(text).end()
    if not text.startswith("[", pos):
        value, pos = decode(text, pos)
        _json_end(text, pos)
        yield value
        return
    pos = _JSON_SPACE.match(text, pos + 1).end()
    if text.startswith("]", pos):
        _json_end(text, pos + 1)
        return
    while True:
        value, pos = decode(text, pos)
        yield value
        pos = _JSON_SPACE.match(text, pos).end()
        if text.startswith("]", pos):
            _json_end(text, pos + 1)
            return
        if not text.startswith(",", pos):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
        pos = _JSON_SPACE.match(text, pos + 1).end()


def _json_end(text: str, pos: int) -> None:
    pos = _JSON_SPACE.match(text, pos).end()
    if pos != len(text):
        raise json.JSONDecodeError("Extra data", text, pos)


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
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            skip(ctx, where, f"line is {not_utf8(exc, 'column', exc.start + 1)}")
            continue
        except json.JSONDecodeError as exc:
            skip(ctx, where, _bad_line(raw, exc))
            continue
        except RecursionError:
            skip(ctx, where, "line is JSON nested too deeply to parse")
            continue
        del raw  # the line's bytes are not needed while its record is used
        yield n, record


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
    path: Path, rel: str, ctx: StepContext, needed: list[str | None], max_mb: float
) -> Iterator[tuple[int, Any]]:
    # The standard library's reader, not Arrow's: every value stays text (id "007" is not 7),
    # and a ragged or undecodable row is skipped alone, by its number, while the rest is read.
    csv.field_size_limit(2**31 - 1)  # the default 128 KB would refuse a long document
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
        lines = _Lines(fh, int(max_mb * 2**20), max_mb)
        records = _csv_rows(lines, delimiter)
        first = next(records, None)
        if first is None:
            raise Skip("CSV file has only blank lines")
        header, problem = first
        if header is None:  # what happens to the rows after it does not apply: say no more
            raise Skip(f"cannot read the CSV header: {str(problem).split('; ')[0]}")
        _check_header(header, needed)
        for n, (row, problem) in enumerate(records, start=1):
            problem = problem or _bad_csv_row(row, header)
            if problem:
                skip(ctx, f"{rel}:{n}", problem)
                continue
            yield n, dict(zip(header, row, strict=True))


class _Overflow(Exception):
    """A line, or the lines of one CSV record, past the size limit."""


class _Lines:
    """A CSV file's lines for csv.reader, numbered, at most ``limit`` characters each and
    together for one record. The lines of the record being read are kept, so that a damaged
    record can be given up at its first line and the lines after it read again. A line over
    the limit is read past, not held; it stands in the stream as (number, None, size)."""

    def __init__(self, fh: IO[str], limit: int, max_mb: float) -> None:
        self._fh, self.limit, self.max_mb = fh, limit, max_mb
        self._pending: deque[tuple[int, str | None, int]] = deque()  # lines to give again
        self.record: list[tuple[int, str]] = []  # (number, line) given for this record
        self._size = 0  # characters given for this record
        self._number = 0  # lines read from the file

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        n, line, size = self._pending.popleft() if self._pending else self._read()
        if line is None or self._size + size > self.limit:
            self._pending.appendleft((n, line, size))
            raise _Overflow
        self.record.append((n, line))
        self._size += size
        return line

    def _read(self) -> tuple[int, str | None, int]:
        line = self._fh.readline(self.limit + 1)  # newline="": \n, \r\n or \r ends a line
        if not line:
            raise StopIteration
        self._number += 1
        if len(line) <= self.limit or line.endswith(("\n", "\r")):
            return self._number, line, len(line)
        size = len(line)
        while chunk := self._fh.readline(2**20):
            size += len(chunk)
            if chunk.endswith(("\n", "\r")):
                break
        return self._number, None, size

    def begin(self) -> None:
        self.record, self._size = [], 0

    def give_up(self) -> None:
        """Drop the record's first line; the lines after it will be read again."""
        self._pending.extendleft((n, line, len(line)) for n, line in reversed(self.record[1:]))

    def drop(self) -> tuple[int, int]:
        """Drop the line past the limit that stopped an empty record: (number, size)."""
        n, _, size = self._pending.popleft()
        return n, size


def _csv_rows(lines: _Lines, delimiter: str) -> Iterator[tuple[list[str] | None, str | None]]:
    """(fields, None) for each record that is not blank, or (None, why) for a damaged one.

    A quoted field that does not end where CSV says it must (at the end of the file, or at a
    quote followed by text, or past the size limit), having run on over lines, is an
    unterminated quote: its opening quote swallowed the rows after it. That record is given
    up at its first line, with a reason naming the line, and the lines after it are read
    again as rows. A quote followed by text within one line (``"a"b``) is read leniently, as
    Python's csv module always has. A quoted field that runs over lines and ends properly is
    a multi-line value, and kept: nothing tells it from a quote that swallowed rows up to a
    later quote at the end of a line."""
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    while True:
        lines.begin()
        try:
            row = next(reader)
        except StopIteration:
            return
        except _Overflow:
            reader = csv.reader(lines, delimiter=delimiter, strict=True)
            limit = f"max_file_mb={lines.max_mb:g} ({lines.limit:,} characters)"
            if not lines.record:
                n, size = lines.drop()
                yield None, f"line {n:,} is {size:,} characters, over {limit}"
                continue
            first = lines.record[0][0]
            lines.give_up()
            yield (
                None,
                (
                    f"the row that starts on line {first:,} runs past {limit} without ending, "
                    "likely at an unterminated quote; the lines after it are read as rows"
                ),
            )
            continue
        except csv.Error as exc:
            reader = csv.reader(lines, delimiter=delimiter, strict=True)
            record = lines.record
            at_end = "end of data" in str(exc)
            if len(record) == 1 and not at_end:  # "a"b on one line: read leniently
                try:
                    row = next(csv.reader([record[0][1]], delimiter=delimiter), [])
                except csv.Error as lenient:
                    yield None, f"cannot parse the CSV row on line {record[0][0]:,} ({lenient})"
                    continue
            else:
                lines.give_up()
                yield None, _unterminated(record[0][0], record[-1][0], at_end)
                continue
        lines.begin()  # the record's lines are not needed once it is read: free them
        if row:  # blank lines are not rows, as in Arrow's reader
            yield row, None


def _unterminated(first: int, last: int, at_end: bool) -> str:
    if at_end:
        where = "the file ends inside it"
    else:
        where = f"it ends on line {last:,} at a quote followed by text, the start of a later field"
    return (
        f"unterminated quote: a quoted field opens on line {first:,} and {where}; the row is "
        "skipped and the lines after it are read as rows"
    )


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
