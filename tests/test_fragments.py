"""The store's fragment path (issue 19): where an executor writes an index step's rows as Lance
fragments on its workers, the store commits them, with its deletions, in one version, and the
table holds exactly what the store's own write makes. The fragments here are written in this
process by Lance's own ``write_fragments``, as a Ray task writes them (tests/test_ray.py runs
them on Ray)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from lance.fragment import write_fragments

import embedpipe
from embedpipe.engine import lance as store_mod
from embedpipe.engine.lance import LanceStore
from embedpipe.engine.workspace import Workspace
from embedpipe.errors import ExecutorError
from embedpipe.steps.base import IndexTarget
from tests.conftest import BASIC_SPEC


class Here:
    """A fragment writer in this process: each batch becomes one fragment, as a task's piece."""

    def __init__(self) -> None:
        self.pieces = self.rows = 0

    def __call__(
        self,
        uri: str,
        batches: Iterator[pa.RecordBatch],
        schema: pa.Schema,
        *,
        mode: str,
        storage_version: str | None,
        storage_options: dict[str, str],
        label: str,
    ) -> list[Any]:
        out: list[Any] = []
        for batch in batches:
            self.pieces += 1
            self.rows += batch.num_rows
            table = pa.Table.from_batches([batch])
            out += write_fragments(
                table,
                uri,
                schema=schema,
                mode=mode,
                data_storage_version=storage_version,
                storage_options=storage_options or None,
            )
        return out


def rows(ids: list[str], edited: frozenset[str] = frozenset()) -> list[pa.RecordBatch]:
    """Chunks as the index step hands them to the store, in batches of 7."""
    dims = 384  # the spec's model's
    vectors = np.random.default_rng(0).standard_normal((len(ids), dims)).astype(np.float32)
    texts = [f"text of {i}" + (" (edited)" if i in edited else "") for i in ids]
    table = pa.table(
        {
            "chunk_id": ids,
            "doc_id": [i.split("#")[0] for i in ids],
            "text": texts,
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dims),
            "run_id": ["r"] * len(ids),
        }
    )
    return table.to_batches(max_chunksize=7)


def content(ws: Workspace, table: str) -> pa.Table:
    data = ws.connect().open_table(table).to_lance().to_table()
    return data.sort_by("chunk_id")


def test_fragments_commit_what_the_store_writes(
    tmp_path: Path, write_spec: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d", "text": "x"}\n')
    target = embedpipe.load(write_spec(BASIC_SPEC)).dag.targets["index"]
    # The same table without its text column: another schema.
    lean = embedpipe.load(write_spec(BASIC_SPEC), overrides=["steps.index.store_columns=[]"])
    target_lean = lean.dag.targets["index"]
    assert target_lean.schema != target.schema
    here, there = Workspace(tmp_path / "here"), Workspace(tmp_path / "there")
    writer = Here()
    plain, fragmented = LanceStore(here), LanceStore(there, writer)

    def write(
        batches: list[pa.RecordBatch], to: IndexTarget = target
    ) -> tuple[dict[str, int], dict[str, int]]:
        a = plain.write(to, lambda: iter(batches))
        b = fragmented.write(to, lambda: iter(batches))
        assert content(here, "tiny").equals(content(there, "tiny"))
        return a, b

    ids = [f"doc{d}#{c}" for d in range(10) for c in range(4)]
    a, b = write(rows(ids))  # a new table: 40 rows, 6 pieces, one Overwrite commit
    assert a == b and b["version"] == 1 and b["computed"] == 40
    assert writer.pieces == 6 and len(content(there, "tiny")) == 40

    # An incremental write: 3 rows edited, doc9 gone, 4 rows added: one Update commit.
    edited = frozenset(ids[:3])
    now = [*ids[:36], *(f"doc10#{c}" for c in range(4))]
    a, b = write(rows(now, edited=edited))
    assert a == b and b["version"] == 2
    assert (b["new"], b["changed"], b["deleted"]) == (4, 3, 4)
    fragments = there.connect().open_table("tiny").to_lance().get_fragments()
    assert sum(f.count_rows() for f in fragments) == 40  # deleted rows are not counted
    assert writer.rows == 40 + 7  # only the new and edited rows were written again

    # Nothing changed: no commit.
    a, b = write(rows(now, edited=edited))
    assert a == b and b["commits"] == 0

    # Another schema: every row replaced in one Overwrite commit.
    a, b = write(rows(now), target_lean)
    assert a == b and b["version"] == 3 and "text" not in content(there, "tiny").schema.names

    # Past the deletes a condition may name, the store merges in this process instead.
    monkeypatch.setattr(store_mod, "_MAX_NAMED_DELETES", 2)
    before = writer.rows
    a, b = write(rows(now[4:]), target_lean)
    assert a == b and b["version"] == 4 and b["deleted"] == 4
    assert writer.rows == before


def test_a_failed_fragment_write_commits_nothing(
    tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    """Workers that fail mid-write (retries spent) leave the table at its version; the
    fragments they wrote are never part of one, and the next run commits normally."""
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d", "text": "x"}\n')
    target = embedpipe.load(write_spec(BASIC_SPEC)).dag.targets["index"]
    ws = Workspace(tmp_path / "ws")
    good = LanceStore(ws, Here())
    ids = [f"doc{d}#{c}" for d in range(10) for c in range(4)]
    assert good.write(target, lambda: iter(rows(ids)))["version"] == 1
    before = content(ws, "tiny")

    class Dies(Here):
        def __call__(self, *args: Any, **kwargs: Any) -> list[Any]:
            batches = args[1]

            def some() -> Iterator[pa.RecordBatch]:
                yield next(batches)
                raise ExecutorError("a Ray task writing its rows failed 4 time(s)")

            return super().__call__(args[0], some(), *args[2:], **kwargs)

    now = [*ids, *(f"doc{d}#0" for d in range(10, 30))]  # 20 new rows: 3 batches of 7
    with pytest.raises(ExecutorError):
        LanceStore(ws, Dies()).write(target, lambda: iter(rows(now)))
    assert ws.connect().open_table("tiny").version == 1
    assert content(ws, "tiny").equals(before)
    out = good.write(target, lambda: iter(rows(now)))
    assert out["version"] == 2 and out["new"] == 20 and len(content(ws, "tiny")) == 60


def test_fragments_this_process_cannot_see_are_not_committed(
    tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    """A worker on another machine writing to a folder that is not shared: its fragments'
    files are not where the table is, and committing them would make a version nobody can
    read. The store refuses, and the table keeps its version."""
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d", "text": "x"}\n')
    target = embedpipe.load(write_spec(BASIC_SPEC)).dag.targets["index"]
    ws = Workspace(tmp_path / "ws")
    ids = [f"doc{d}#{c}" for d in range(10) for c in range(4)]
    assert LanceStore(ws, Here()).write(target, lambda: iter(rows(ids)))["version"] == 1

    class OtherDisk(Here):
        def __call__(self, uri: str, *args: Any, **kwargs: Any) -> list[Any]:
            return super().__call__(str(tmp_path / "node2" / "tiny.lance"), *args, **kwargs)

    more = [*ids, "doc99#0"]
    with pytest.raises(ExecutorError, match="mount the tables' folder at the same path"):
        LanceStore(ws, OtherDisk()).write(target, lambda: iter(rows(more)))
    assert ws.connect().open_table("tiny").version == 1


def test_pieces_keep_to_rows_and_bytes() -> None:
    from embedpipe.engine.ray_executor import _pieces

    batches = rows([f"doc{i}#0" for i in range(100)])  # 7 rows a batch, ~1.6 KB a row
    pieces = [pa.ipc.open_stream(p).read_all() for p in _pieces(iter(batches), 30, 1 << 30)]
    assert [len(p) for p in pieces] == [30, 30, 30, 10]
    small = [pa.ipc.open_stream(p).read_all() for p in _pieces(iter(batches), 30, 8000)]
    per_row = batches[0].nbytes / batches[0].num_rows
    assert sum(len(p) for p in small) == 100 and len(small) > 10
    assert all(p.nbytes <= 8000 + per_row for p in small)  # over by less than a row
    ids = [i for p in small for i in p.column("chunk_id").to_pylist()]
    assert ids == [f"doc{i}#0" for i in range(100)]  # in order, each once
