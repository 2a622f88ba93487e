"""ANN index upkeep across incremental runs (index ``ann.rebuild``): a run that changes a few
rows adds them to the index as a delta segment instead of training it again (a full build
takes minutes at 1M rows; a delta, the run's rows only), and once more than ``rebuild`` of the
table came after the training, the run trains it again. Searches see every live row either
way: new rows through the delta, deleted and replaced ones never."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import embedpipe
from embedpipe.engine import lance as store_mod
from embedpipe.engine.lance import MAX_DELTAS, LanceStore, untrained_share
from embedpipe.engine.workspace import Workspace
from tests.conftest import BASIC_SPEC
from tests.test_fragments import Here

ANN = ["steps.index.ann.type=ivf_flat", "steps.index.ann.min_rows=256",
       "steps.index.ann.partitions=4"]  # fmt: skip


def rows(ids: list[str], edited: frozenset[str] = frozenset()) -> list[pa.RecordBatch]:
    """Chunks whose vectors depend on their id (and edit) only, in batches of 50."""
    vectors = np.stack([
        np.random.default_rng([zlib.crc32(i.encode()), i in edited]).standard_normal(384)
        for i in ids
    ]).astype(np.float32)  # fmt: skip
    table = pa.table(
        {
            "chunk_id": ids,
            "doc_id": [i.split("#")[0] for i in ids],
            "text": [f"text of {i}" for i in ids],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 384),
            "run_id": ["r"] * len(ids),
        }
    )
    return table.to_batches(max_chunksize=50)


def segments(ws: Workspace) -> int:
    tbl = ws.connect().open_table("tiny")
    return len([i for i in tbl.to_lance().list_indices() if i["fields"] == ["vector"]])


def nearest(ws: Workspace, batches: list[pa.RecordBatch], key: str) -> str:
    """The chunk the ANN index finds nearest to ``key``'s own vector (all partitions probed)."""
    table = pa.Table.from_batches(batches)
    i = table.column("chunk_id").to_pylist().index(key)
    vector = np.asarray(table.column("vector")[i].as_py(), np.float32)
    tbl = ws.connect().open_table("tiny")
    return tbl.search(vector).nprobes(4).limit(1).to_list()[0]["chunk_id"]


@pytest.mark.parametrize("fragmented", [False, True], ids=["lancedb", "fragment-writer"])
def test_small_changes_join_the_index_as_deltas_and_big_ones_retrain_it(
    tmp_path: Path, write_spec: Callable[..., Path], fragmented: bool
) -> None:
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d", "text": "x"}\n')
    target = embedpipe.load(write_spec(BASIC_SPEC), overrides=ANN).dag.targets["index"]
    assert target.vector("vector").ann.rebuild == 0.2
    ws = Workspace(tmp_path / "ws")
    store = LanceStore(ws, Here() if fragmented else None)
    ids = [f"doc{d}#{c}" for d in range(100) for c in range(3)]  # 300 rows: indexed
    store.write(target, lambda: iter(rows(ids)))
    assert segments(ws) == 1

    # 2 rows edited, 3 added, 3 gone (doc0): a delta segment, trained on nothing new.
    now = [*ids[3:], *(f"doc100#{c}" for c in range(3))]
    batches = rows(now, edited=frozenset(now[:2]))
    out = store.write(target, lambda: iter(batches))
    assert out["commits"] == 1 and segments(ws) == 2
    tbl = ws.connect().open_table("tiny")
    stats = tbl.index_stats(tbl.list_indices()[0].name)
    assert stats.num_unindexed_rows == 0 and stats.num_indexed_rows == len(now)
    assert 0 < untrained_share(tbl, "vector") <= 0.2
    assert nearest(ws, batches, "doc100#1") == "doc100#1"  # a new row, found by the index
    hits = tbl.search(np.zeros(384, np.float32) + 1).nprobes(4).limit(400).to_list()
    assert {h["chunk_id"] for h in hits} == set(now)  # no deleted or replaced row

    # More small nights: at most MAX_DELTAS deltas beside the trained segment (then merged),
    # which still tells how much came after the training.
    seen = []
    for night in range(101, 106):
        now = [*now, f"doc{night}#0"]
        store.write(target, lambda n=now: iter(rows(n)))
        seen.append(segments(ws))
        tbl = ws.connect().open_table("tiny")
        share = untrained_share(tbl, "vector")
        assert abs(share - (night - 95) / len(now)) < 1e-9, (night, share)
        stats = tbl.index_stats(tbl.list_indices()[0].name)
        assert (stats.num_unindexed_rows, stats.num_indexed_rows) == (0, len(now))
    assert MAX_DELTAS == 3 and seen == [3, 4, 2, 3, 4]  # a 4th delta: all merged into one
    assert nearest(ws, rows(now), "doc105#0") == "doc105#0"

    # A change past 20% of the rows trains the index again: one segment.
    later = [*now, *(f"doc{d}#{c}" for d in range(106, 140) for c in range(3))]
    store.write(target, lambda: iter(rows(later)))
    assert segments(ws) == 1
    tbl = ws.connect().open_table("tiny")
    assert untrained_share(tbl, "vector") == 0
    # trained over fragments without deletion files (10x faster), every live row indexed
    assert not any(f.metadata.num_deletions for f in tbl.to_lance().get_fragments())
    stats = tbl.index_stats(tbl.list_indices()[0].name)
    assert (stats.num_unindexed_rows, stats.num_indexed_rows) == (0, len(later))

    # rebuild: 0 trains it again on every change.
    always = embedpipe.load(write_spec(BASIC_SPEC), overrides=[*ANN, "steps.index.ann.rebuild=0"])
    store.write(always.dag.targets["index"], lambda: iter(rows(later[3:])))
    assert segments(ws) == 1


def test_deltas_and_compaction_together_keep_every_row_indexed(
    tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    """Night after night of small changes, compacted every few nights: the index always
    covers every live row, and searches through it see no deleted one."""
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d", "text": "x"}\n')
    sets = [*ANN, "steps.index.compact=3"]
    target = embedpipe.load(write_spec(BASIC_SPEC), overrides=sets).dag.targets["index"]
    ws = Workspace(tmp_path / "ws")
    store = LanceStore(ws)
    ids = [f"doc{d}#{c}" for d in range(100) for c in range(3)]
    store.write(target, lambda: iter(rows(ids)))
    for night in range(1, 9):
        ids = [*ids[3:], *(f"doc{100 + night}#{c}" for c in range(3))]
        batches = rows(ids, edited=frozenset(ids[night : night + 2]))
        store.write(target, lambda b=batches: iter(b))
        tbl = ws.connect().open_table("tiny")
        stats = tbl.index_stats(tbl.list_indices()[0].name)
        assert (stats.num_unindexed_rows, stats.num_indexed_rows) == (0, len(ids)), night
        assert len(tbl.to_lance().get_fragments()) <= 4
        hits = tbl.search(np.ones(384, np.float32)).nprobes(4).limit(400).to_list()
        assert sorted(h["chunk_id"] for h in hits) == sorted(ids), night
        assert nearest(ws, batches, ids[-1]) == ids[-1]


def test_the_trained_segment_is_the_oldest_even_when_deltas_outgrow_it(
    tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d", "text": "x"}\n')
    sets = [*ANN, "steps.index.ann.rebuild=0.9"]
    target = embedpipe.load(write_spec(BASIC_SPEC), overrides=sets).dag.targets["index"]
    ws = Workspace(tmp_path / "ws")
    store = LanceStore(ws)
    ids = [f"doc{d}#{c}" for d in range(100) for c in range(3)]
    store.write(target, lambda: iter(rows(ids)))
    for night in range(6):  # 6 x 100 new rows: the merged deltas cover more than the 300
        ids = [*ids, *(f"new{night}#{c}" for c in range(100))]
        store.write(target, lambda n=ids: iter(rows(n)))
    tbl = ws.connect().open_table("tiny")
    assert untrained_share(tbl, "vector") == pytest.approx(600 / 900)
    assert segments(ws) > 1  # not trained again: 2/3 is under 0.9


def test_compaction_counts_only_what_lance_would_merge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone small fragment between big ones is never rewritten by Lance: it must not make
    every run compact (and so train the ANN index again)."""
    import lance

    monkeypatch.setattr(store_mod, "COMPACT_ROWS", 50)
    uri = str(tmp_path / "t.lance")

    def add(n: int) -> None:
        data = pa.table({"k": [f"{n}-{i}" for i in range(n)]})
        lance.write_dataset(data, uri, mode="append" if Path(uri).exists() else "create")

    for n in (60, 5, 60, 5, 60, 5, 60):  # three lone small fragments
        add(n)

    class Table:  # what compaction_due reads of a LanceDB table
        def to_lance(self) -> lance.LanceDataset:
            return lance.dataset(uri)

    assert store_mod.compaction_due(Table(), 1) == 0
    assert not store_mod.compact(Table(), 1)
    add(5)
    add(5)  # two small fragments side by side: Lance merges them
    assert store_mod.compaction_due(Table(), 1) == 2
    assert store_mod.compact(Table(), 1)
    assert len(lance.dataset(uri).get_fragments()) == 8
    assert store_mod.compaction_due(Table(), 1) == 0


def test_a_failed_index_upkeep_keeps_the_committed_rows(
    tmp_path: Path,
    write_spec: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d", "text": "x"}\n')
    target = embedpipe.load(write_spec(BASIC_SPEC), overrides=ANN).dag.targets["index"]
    ws = Workspace(tmp_path / "ws")
    store = LanceStore(ws)
    ids = [f"doc{d}#{c}" for d in range(100) for c in range(3)]
    store.write(target, lambda: iter(rows(ids)))

    def broken(*args: object, **kwargs: object) -> bool:
        raise OSError("no space left on device")

    monkeypatch.setattr(LanceStore, "_ann", broken)
    more = [*ids, "doc100#0"]
    out = store.write(target, lambda: iter(rows(more)))
    assert out["commits"] == 1 and out["rows_out"] == 301
    assert ws.connect().open_table("tiny").version == out["version"]
    err = capsys.readouterr().err
    assert "warning: table 'tiny': its rows are committed" in err and "no space left" in err
    monkeypatch.undo()
    # the next run that changes rows brings the index up to date
    store.write(target, lambda: iter(rows([*more, "doc101#0"])))
    tbl = ws.connect().open_table("tiny")
    stats = tbl.index_stats(tbl.list_indices()[0].name)
    assert (stats.num_unindexed_rows, stats.num_indexed_rows) == (0, 302)
