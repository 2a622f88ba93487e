"""The engine's lean paths give the answers the plain ones did: the index diff by key lookup
(against a join), cached rows by scan or by take, memory handed back between steps."""

from __future__ import annotations

from pathlib import Path

import lance
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from embedpipe.engine import cache as cache_mod
from embedpipe.engine.cache import KEY, Snapshot
from embedpipe.engine.lance import _compare_joined, compare
from embedpipe.engine.runner import release_memory


def _table(pairs: list[tuple[str, str | None]]) -> pa.Table:
    return pa.table(
        {"k": pa.array([k for k, _ in pairs], pa.string()), "v": pa.array([v for _, v in pairs])}
    )


def _sorted(values: pa.Array) -> list[str]:
    return sorted(values.to_pylist())


CASES = {
    "no change": ([("a", "1"), ("b", "2")], [("b", "2"), ("a", "1")]),
    "new, changed, gone": (
        [("a", "1"), ("b", "2"), ("c", "3")],
        [("a", "1"), ("b", "X"), ("d", "4")],
    ),
    "null values never equal": ([("a", None), ("b", "2")], [("a", None), ("b", "2")]),
    "empty have": ([], [("a", "1")]),
    "empty come": ([("a", "1")], []),
    "a key held twice": ([("a", "1"), ("a", "2"), ("b", "3")], [("a", "1"), ("b", "3")]),
    "a key coming twice": ([("a", "1")], [("a", "1"), ("a", "1"), ("c", "5"), ("c", "5")]),
}  # fmt: skip


@pytest.mark.parametrize("have, come", CASES.values(), ids=CASES.keys())
def test_compare_counts_as_the_join_did(have: list, come: list) -> None:
    h = _table(have).cast(pa.schema([("k", pa.string()), ("v", pa.string())]))
    c = _table(come).cast(pa.schema([("k", pa.string()), ("v", pa.string())]))
    got, want = compare(h, c, "k", "v"), _compare_joined(h, c, "k", "v")
    for count in ("computed", "new", "changed", "deleted", "incoming"):
        assert got[count] == want[count], count
    assert _sorted(got["todo"]) == _sorted(want["todo"])
    assert _sorted(got["gone"]) == _sorted(want["gone"])


def test_compare_takes_chunked_columns() -> None:
    have = pa.Table.from_batches(
        [
            pa.record_batch({"k": ["a", "b"], "v": ["1", "2"]}),
            pa.record_batch({"k": ["c"], "v": ["3"]}),
        ]
    )
    come = pa.Table.from_batches(
        [
            pa.record_batch({"k": ["c"], "v": ["9"]}),
            pa.record_batch({"k": ["a", "e"], "v": ["1", "5"]}),
        ]
    )
    got = compare(have, come, "k", "v")
    assert (got["new"], got["changed"], got["deleted"]) == (1, 1, 1)
    assert _sorted(got["todo"]) == ["c", "e"] and got["gone"].to_pylist() == ["b"]


def _cache(tmp_path: Path, batches: int = 5, rows: int = 7) -> Path:
    path = tmp_path / "c.lance"
    for i in range(batches):  # one fragment per append, as StepCache.tee writes them
        n = range(i * rows, (i + 1) * rows)
        part = pa.table(
            {
                "x": pa.array(list(n), pa.int64()),
                "vec": pa.array([[float(j)] * 3 for j in n], pa.list_(pa.float32(), 3)),
                KEY: pa.array([f"k{j}" for j in n], pa.string()),
            }
        )
        lance.write_dataset(part, str(path), mode="append" if i else "create")
    return path


def test_snapshot_rows_by_scan_and_by_take_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snap = Snapshot(lance.dataset(str(_cache(tmp_path))))
    assert snap.keys.to_pylist() == [f"k{j}" for j in range(35)]
    for wanted_keys in (["k3"], ["k0", "k8", "k34", "k20"], [f"k{j}" for j in range(35)], []):
        wanted = pc.is_in(snap.keys, value_set=pa.array(wanted_keys, pa.string()))
        for scan_share in (0.0, 1.01):  # always scan, never scan
            monkeypatch.setattr(cache_mod, "SCAN_SHARE", scan_share)
            got = pa.Table.from_batches(
                list(snap.rows(wanted, per_take=3)), snap.ds.schema.remove(2)
            )
            assert KEY not in got.schema.names
            # cache order, each wanted row once
            assert got.column("x").to_pylist() == sorted(int(k[1:]) for k in wanted_keys)
            assert got.column("vec").to_pylist() == [
                [float(int(k[1:]))] * 3 for k in sorted(wanted_keys, key=lambda k: int(k[1:]))
            ]


def test_snapshot_of_no_cache_is_empty() -> None:
    snap = Snapshot(None)
    assert len(snap.keys) == 0
    assert list(snap.rows(pa.array([], pa.bool_()))) == []


def test_release_memory_is_safe_to_call() -> None:
    keep = pa.array(range(1000))
    release_memory()
    release_memory()
    assert keep.to_pylist()[-1] == 999
