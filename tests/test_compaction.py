"""Compaction (index ``compact``): nightly incremental runs add a fragment each, and search
opens every fragment; once more than ``compact`` of them are small or deletion-heavy, a run
that changed rows merges them in one more commit. The rows stay exactly what a table never
compacted holds, and rollback to a version from before still works."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import embedpipe
from embedpipe.engine.lance import LanceStore, compaction_due
from embedpipe.engine.workspace import Workspace
from tests.conftest import BASIC_SPEC
from tests.test_fragments import Here, content, rows


def fragments(ws: Workspace, table: str = "tiny") -> int:
    return len(ws.connect().open_table(table).to_lance().get_fragments())


@pytest.mark.parametrize("fragmented", [False, True], ids=["lancedb", "fragment-writer"])
def test_compaction_keeps_rows_and_bounds_fragments(
    tmp_path: Path, write_spec: Callable[..., Path], fragmented: bool
) -> None:
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d", "text": "x"}\n')
    spec = write_spec(BASIC_SPEC)
    never = embedpipe.load(spec, overrides=["steps.index.compact=null"]).dag.targets["index"]
    often = embedpipe.load(spec, overrides=["steps.index.compact=3"]).dag.targets["index"]
    assert never.compact is None and often.compact == 3
    # compact is speed only: the same spec hash (so no row is rewritten when it changes).
    assert (
        embedpipe.load(spec, overrides=["steps.index.compact=3"]).dag.spec.hash
        == embedpipe.load(spec).dag.spec.hash
    )
    here, there = Workspace(tmp_path / "here"), Workspace(tmp_path / "there")
    plain = LanceStore(here)
    compacting = LanceStore(there, Here() if fragmented else None)

    ids = [f"doc{d}#{c}" for d in range(10) for c in range(4)]
    plain.write(never, lambda: iter(rows(ids)))
    first = compacting.write(often, lambda: iter(rows(ids)))
    # A table written whole stays as its writer cut it (6 pieces of 7 rows by the executor's
    # writer): compaction is for what incremental runs add.
    assert first["version"] == 1 and fragments(there) == (6 if fragmented else 1)
    versions = {}
    for night in range(1, 9):  # each night: one chunk edited, one document added
        ids = [*ids, *(f"doc{10 + night}#{c}" for c in range(2))]
        batches = rows(ids, edited=frozenset(ids[night : night + 1]))
        plain.write(never, lambda b=batches: iter(b))
        out = compacting.write(often, lambda b=batches: iter(b))
        versions[night] = out["version"]
        assert content(here, "tiny").equals(content(there, "tiny"))
        assert fragments(there) <= 3 + 1  # merged once past the limit
    assert fragments(here) > 8  # never compacted: a fragment (or more) a night
    assert compaction_due(there.connect().open_table("tiny"), 3) == 0

    # A night that changes nothing commits nothing, compaction included.
    before = there.connect().open_table("tiny").version
    assert compacting.write(often, lambda: iter(batches))["commits"] == 0
    assert there.connect().open_table("tiny").version == before

    # A compaction is one more version; the versions kept from before it are still whole.
    tbl = there.connect().open_table("tiny")
    before_compaction = 0
    for v in tbl.list_versions():
        tbl.checkout(v["version"])
        data = tbl.to_arrow()
        assert data.num_rows == tbl.count_rows() >= 40
        before_compaction += len(tbl.to_lance().get_fragments()) > 3
    assert before_compaction
