"""The Lance store: writes the tables index steps declare, and the plan's dry run of it.

An index step hands the store an ``IndexTarget`` (key, columns, vector columns with metric and
ANN settings, lineage, retention) and its rows; everything here follows from that declaration.
A write makes the table hold exactly those rows in one commit (upsert by key, delete rows whose
key vanished), or in none when no row changed; the diff compares each row's ``row_hash``, a
digest of every column but the lineage ones.

Where the run's executor writes fragments on its workers (``Executor.fragment_writer()``,
e.g. Ray), a new or replaced table and the rows an incremental run adds are written there as
Lance fragments, and this process commits them with the deletions in one version (Lance's
distributed write: fragments written anywhere, one ``Overwrite`` or ``Update`` commit).

Keys and hashes are compared as Arrow arrays (no Python set or string per row), so memory
grows with the bytes of the keys, never with Python object overhead.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import Any

import lance
import pyarrow as pa
import pyarrow.compute as pc
from lancedb.index import HnswSq, IvfFlat, IvfPq

from embedpipe.engine.crash import crash_point
from embedpipe.engine.executors import FragmentWriter
from embedpipe.engine.workspace import LEAN_SCAN, Workspace
from embedpipe.errors import ExecutorError, NoRows
from embedpipe.schemas import hash_rows
from embedpipe.steps.base import IndexTarget, VectorColumn

Rows = Callable[[], Iterator[pa.RecordBatch]]


def conform(batch: pa.RecordBatch, target: IndexTarget) -> pa.RecordBatch:
    """``batch`` as a row of ``target``'s table: its declared columns in order (cast where a
    step wrote another type; absent ones null), and ``row_hash`` computed."""
    n = batch.num_rows
    names = batch.schema.names
    cols, fields = [], []
    for f in target.schema:
        if f.name == target.row_hash:
            continue
        if f.name not in names:
            cols.append(pa.nulls(n, f.type))
            fields.append(f)
            continue
        col = batch.column(f.name)
        have = col.type
        # A vector column declared before its dimension was known takes the batch's own size.
        if pa.types.is_list(f.type) and pa.types.is_fixed_size_list(have):
            f = f.with_type(have)
        elif not have.equals(f.type):
            col = pc.cast(col, f.type)
        cols.append(col)
        fields.append(f)
    out = pa.RecordBatch.from_arrays(cols, schema=pa.schema(fields))
    decides = tuple(n for n in out.schema.names if n not in target.lineage)
    return out.append_column(pa.field(target.row_hash, pa.string()), hash_rows(out, decides))


class LanceStore:
    """Writes index steps' rows: one commit per run (upsert by key + delete vanished)."""

    def __init__(self, workspace: Workspace, fragments: FragmentWriter | None = None) -> None:
        self.ws = workspace
        self.db = workspace.connect()
        self.fragments = fragments  # the executor's workers write fragments; None: here

    def write(self, target: IndexTarget, batches: Rows) -> dict[str, int]:
        with self.ws.reading(target.table):
            return self._write(target, lambda: (conform(b, target) for b in batches()))

    def _write(self, target: IndexTarget, batches: Rows) -> dict[str, Any]:
        """Make the table hold exactly ``batches()``, in one commit, or in none when it already
        does. ``batches`` is called once more than the commits it makes: first to diff."""
        table = target.table
        it = batches()
        first = next((b for b in it if b.num_rows), None)  # as the plan counts: rows, not batches
        if first is None:
            raise NoRows(table, self.ws.spec)
        changed = fresh = True  # fresh: every row written anew (no compaction is due)
        if not self.ws.table_exists(table):
            if self.fragments is not None:
                tbl = self._replace(table, first, it, read_version=None)
            else:
                tbl = self.db.create_table(table, _reader(first, it))
            n = tbl.count_rows()
            stats = {"computed": n, "new": n, "changed": 0, "deleted": 0}
        else:
            tbl = self.db.open_table(table)
            same_schema = tbl.schema.remove_metadata().equals(first.schema.remove_metadata())
            stats = diff(tbl, chain([first], it), target)
            if not same_schema:
                # A new model, dimension or row layout: replace the rows in one commit.
                again = batches()
                head = next(again)
                if self.fragments is not None:
                    tbl = self._replace(table, head, again, read_version=tbl.version)
                else:
                    tbl = self.db.create_table(table, _reader(head, again), mode="overwrite")
            else:
                changed, fresh = bool(stats["computed"] or stats["deleted"]), False
                named = stats["changed"] + stats["deleted"] <= _MAX_NAMED_DELETES
                if changed and self.fragments is not None and named:
                    tbl = self._update(tbl, target, batches, stats)
                elif changed:
                    self._merge(tbl, target, batches, stats)
        if changed:
            crash_point("index-commit")
        rows = tbl.count_rows()
        try:
            built = self._upkeep(tbl, target, rows, changed=changed, fresh=fresh)
        except Exception as exc:  # the rows are committed: a slower index is no failed run
            built = False
            sys.stderr.write(
                f"warning: table '{table}': its rows are committed, but keeping its ANN index "
                f"and fragments in shape failed ({type(exc).__name__}: {exc}); searches stay "
                "exact for rows the index lacks, and the next run that changes rows tries "
                "again\n"
            )
        if changed or built:
            tbl = self.db.open_table(table)
            retain(tbl, target.retain)
        for extra in ("incoming", "todo", "gone"):
            stats.pop(extra, None)
        # Rows left as they were count as cached: computed + cached = rows_out.
        out = {**stats, "rows_out": rows, "cached": rows - stats["computed"]}
        if changed or built:
            return {**out, "version": tbl.version, "commits": 1}
        return {**out, "commits": 0}

    def _replace(
        self,
        table: str,
        first: pa.RecordBatch,
        rest: Iterator[pa.RecordBatch],
        *,
        read_version: int | None,
    ) -> Any:
        """A new table, or every row of one replaced: the executor's workers write the rows as
        fragments, and one ``Overwrite`` commit makes them the table's next version."""
        mode = "create" if read_version is None else "overwrite"  # fresh field ids, both
        new = self._written(table, first, rest, mode=mode, storage_version=None)
        return self._commit(table, lance.LanceOperation.Overwrite(first.schema, new), read_version)

    def _update(self, tbl: Any, target: IndexTarget, batches: Rows, stats: dict[str, Any]) -> Any:
        """``_merge`` with the new and changed rows written as fragments by the executor's
        workers: the rows of changed and vanished keys get deletion files here, and one
        ``Update`` commit swaps them for the new fragments."""
        key, table = target.key, target.table
        ds = tbl.to_lance()
        todo, gone = stats.pop("todo"), stats.pop("gone")
        rows = (b.filter(pc.is_in(b.column(key), value_set=todo)) for b in batches())
        head = next((b for b in rows if b.num_rows), None)
        new: list[Any] = []
        if head is not None:
            rest = (b for b in rows if b.num_rows)
            version = ds.data_storage_version
            new = self._written(table, head, rest, mode="append", storage_version=version)
        removed, updated = [], []
        doomed = pa.concat_arrays([todo.slice(stats["new"]), gone])  # changed keys, then gone
        if len(doomed):
            where = _in_list(key, doomed)
            for fragment in ds.get_fragments():
                after = fragment.delete(where)  # a deletion file, not yet part of any version
                if after is None:
                    removed.append(fragment.fragment_id)
                elif after != fragment.metadata:
                    updated.append(after)
        operation = lance.LanceOperation.Update(
            removed_fragment_ids=removed, updated_fragments=updated, new_fragments=new
        )
        return self._commit(table, operation, ds.version)

    def _written(
        self,
        table: str,
        first: pa.RecordBatch,
        rest: Iterator[pa.RecordBatch],
        *,
        mode: str,
        storage_version: str | None,
    ) -> list[Any]:
        """The rows written as fragments of ``table`` by the executor's writer, uncommitted,
        and checked visible here."""
        assert self.fragments is not None
        new = self.fragments(
            self.ws.table_uri(table),
            _crashing(chain([first], rest)),
            first.schema,
            mode=mode,
            storage_version=storage_version,
            storage_options=self.ws.storage_options,
            label=table,
        )
        self._visible(table, new)
        return new

    def _commit(self, table: str, operation: Any, read_version: int | None) -> Any:
        """One Lance commit of ``operation`` on ``table``; the table as LanceDB opens it."""
        options = self.ws.storage_options or None
        uri = self.ws.table_uri(table)
        lance.LanceDataset.commit(
            uri, operation, read_version=read_version, storage_options=options
        )
        return self.db.open_table(table)

    def _visible(self, table: str, fragments: list[Any]) -> None:
        """Refuse to commit fragments whose files this process cannot see: a worker on another
        machine wrote them to a folder only it has (the tables' folder is not shared)."""
        if self.ws.store_uri is not None:
            return  # an object store: every node writes to the same place
        data = Path(self.ws.table_uri(table)) / "data"
        for fragment in fragments:
            for file in fragment.files:
                if not (data / file.path).is_file():
                    raise ExecutorError(
                        f"table '{table}': a worker wrote its rows to {data / file.path}, which "
                        "this process does not see, so nothing was committed: mount the tables' "
                        "folder at the same path on every node, or keep the tables in an object "
                        "store (tables: {uri: s3://BUCKET/PREFIX})"
                    )

    def _merge(self, tbl: Any, target: IndexTarget, batches: Rows, stats: dict[str, Any]) -> None:
        """Upsert the new and changed rows and delete the vanished ones, in one commit. Only
        the rows that changed are handed to Lance (a 1% edit sends 1% of the rows), and the
        vanished keys are named in the delete condition; when very many vanished, every row is
        sent and whatever the source lacks is deleted."""
        key = target.key
        todo, gone = stats.pop("todo"), stats.pop("gone")
        merge = (
            tbl.merge_insert(key)
            .when_matched_update_all(where=f"target.{target.row_hash} != source.{target.row_hash}")
            .when_not_matched_insert_all()
        )
        if len(gone) > _MAX_NAMED_DELETES:
            rows: Iterator[pa.RecordBatch] = batches()
            merge = merge.when_not_matched_by_source_delete()
        else:
            rows = (b.filter(pc.is_in(b.column(key), value_set=todo)) for b in batches())
            if len(gone):
                merge = merge.when_not_matched_by_source_delete(_in_list(key, gone))
        head = next((b for b in rows if b.num_rows), None)
        if head is None:  # nothing to upsert: only deletes
            tbl.delete(_in_list(key, gone))
            return
        merge.execute(_reader(head, (b for b in rows if b.num_rows)))

    def _upkeep(
        self, tbl: Any, target: IndexTarget, rows: int, *, changed: bool, fresh: bool
    ) -> bool:
        """After the rows' commit: the ANN indexes (``_ann``) and, when due, compaction of
        what incremental runs added (a table just written whole is left as its writer cut it,
        e.g. into a Ray executor's fragments). Lance merges only fragments one index segment
        covers, so a table due for compaction has each index trained again first (one segment
        over every row). True when it committed."""
        due = changed and not fresh and bool(compaction_due(tbl, target.compact))
        built = self._ann(tbl, target, rows, stale=changed, retrain=due)
        if due:
            built = compact(self.db.open_table(target.table), target.compact) or built
        return built

    def _ann(
        self, tbl: Any, target: IndexTarget, rows: int, *, stale: bool, retrain: bool = False
    ) -> bool:
        """Keep the ANN index of each vector column that declares one, once the table is big
        enough: build it when missing or declared otherwise; when rows changed, add them as a
        delta, or train it again once more than ``ann.rebuild`` of the rows came after its
        training (or when ``retrain``). True when one was built or updated (a commit)."""
        built = cleaned = False
        for column in target.vectors:
            if ann_due(tbl, column, rows):
                again = True
            elif stale and column.ann is not None and rows >= column.ann.min_rows:
                again = retrain or untrained_share(tbl, column.name) > column.ann.rebuild
            else:
                continue
            if again:
                if not cleaned and target.compact is not None and drop_deleted(tbl):
                    tbl.checkout_latest()
                cleaned = True
                dims = tbl.schema.field(column.name).type.list_size  # as written, not declared
                tbl.create_index(column.name, config=_ann_config(column, rows, dims), replace=True)
            else:
                # a new delta segment; past MAX_DELTAS, the deltas and the new rows as one
                ds = tbl.to_lance()
                name = _index_of(tbl, column.name)
                deltas = len(_segments(ds, name)) - 1
                merge = deltas if deltas >= MAX_DELTAS else 0
                ds.optimize.optimize_indices(index_names=[name], num_indices_to_merge=merge)
                tbl.checkout_latest()
            built = True
        return built


# Delta segments an ANN index keeps beside its trained one: a search looks in each (about
# 0.6 ms apiece at 100,000 rows), so past this many the next run merges them into one.
MAX_DELTAS = 3
_MAX_NAMED_DELETES = 20_000  # vanished keys named in one delete condition, at most


def _in_list(column: str, keys: pa.Array) -> str:
    """``column IN ('a', 'b', ...)`` as Lance's SQL reads it (quotes doubled)."""
    quoted = ", ".join("'" + k.replace("'", "''") + "'" for k in keys.to_pylist())
    return f"{column} IN ({quoted})"


def _ann_config(column: VectorColumn, rows: int, dims: int) -> Any:
    ann = column.ann
    assert ann is not None
    partitions = ann.partitions or max(1, int(math.sqrt(rows)))
    metric = column.metric
    if ann.kind == "ivf_pq":
        sub = ann.sub_vectors or _sub_vectors(dims)
        return IvfPq(distance_type=metric, num_partitions=partitions, num_sub_vectors=sub)
    if ann.kind == "ivf_flat":
        return IvfFlat(distance_type=metric, num_partitions=partitions)
    return HnswSq(distance_type=metric, num_partitions=partitions)


class PlanStore:
    """What a plan lends index steps: it diffs the rows against the table and writes nothing."""

    def __init__(self, workspace: Workspace) -> None:
        self.ws = workspace

    def write(self, target: IndexTarget, batches: Rows) -> dict[str, int]:
        with self.ws.reading(target.table):
            return self._write(target, lambda: (conform(b, target) for b in batches()))

    def _write(self, target: IndexTarget, batches: Rows) -> dict[str, int]:
        table = target.table
        if not self.ws.table_exists(table):
            n = sum(b.num_rows for b in batches())
            if not n:
                raise NoRows(table, self.ws.spec)
            stats = {"computed": n, "new": n, "changed": 0, "deleted": 0, "rows_out": n}
            return {**stats, "cached": 0, "commits": 1}
        tbl = self.ws.connect().open_table(table)
        stats = diff(tbl, batches(), target)
        stats.pop("todo"), stats.pop("gone")
        if not stats.pop("incoming"):
            raise NoRows(table, self.ws.spec)
        rows = tbl.count_rows() + stats["new"] - stats["deleted"]
        changed = bool(stats["computed"] or stats["deleted"])
        due = any(ann_due(tbl, c, rows) for c in target.vectors)
        commits = changed or due
        return {**stats, "rows_out": rows, "cached": rows - stats["computed"], "commits": commits}


# What compaction rewrites: fragments under this many rows (merged into ones of up to this
# many), or with this share of their rows deleted. A fragment this big costs a search little
# beside its rows; it is also the Ray executor's default fragment size (pieces it cuts
# smaller, by its 256 MiB cap or a smaller fragment_rows, count as small).
COMPACT_ROWS = 100_000
COMPACT_DELETED = 0.1


def compaction_due(tbl: Any, limit: int | None) -> int:
    """How many of the table's fragments compaction would rewrite, when more than ``limit``;
    else 0. As Lance plans it: a fragment with over ``COMPACT_DELETED`` of its rows deleted,
    and a small one (under ``COMPACT_ROWS``) next to another of either kind; a lone small
    fragment between big ones stays as it is."""
    if limit is None:
        return 0
    kinds = []  # in the table's order: "deleted", "small" or None
    for fragment in tbl.to_lance().get_fragments():
        meta = fragment.metadata
        deleted = meta.num_deletions or 0
        physical = (meta.num_rows or 0) + deleted
        if deleted > COMPACT_DELETED * max(physical, 1):
            kinds.append("deleted")
        else:
            kinds.append("small" if physical < COMPACT_ROWS else None)
    due = 0
    for i, kind in enumerate(kinds):
        beside = (i and kinds[i - 1]) or (i + 1 < len(kinds) and kinds[i + 1])
        due += kind == "deleted" or (kind == "small" and bool(beside))
    return due if due > limit else 0


def compact(tbl: Any, limit: int | None) -> bool:
    """Merge small fragments and drop deleted rows once more than ``limit`` fragments need
    it: every fragment a run adds is one more a search opens. True when Lance committed it (as
    versions of its own). The rows and any ANN index (remapped) stay as they were, though
    merged fragments move to the end of the scan order; fragments covered by different
    segments of an index are not merged together."""
    if not compaction_due(tbl, limit):
        return False
    return _rewrite(tbl.to_lance(), COMPACT_DELETED)


def drop_deleted(tbl: Any) -> bool:
    """Rewrite the fragments that have deleted rows without them, before an ANN index is
    trained: over fragments with deletion files, training took eight times as long
    (bench/ann_upkeep.py: ivf_hnsw_sq, 100,000 rows, 1% deleted). Small fragments one index
    segment covers are merged on the way. True when it committed."""
    ds = tbl.to_lance()
    if not any(f.metadata.num_deletions for f in ds.get_fragments()):
        return False
    return _rewrite(ds, 0.0)


def _rewrite(ds: Any, deleted: float) -> bool:
    """Lance's compaction: small fragments merged (up to ``COMPACT_ROWS`` rows), and those
    with more than ``deleted`` of their rows deleted rewritten without them. True when it
    committed."""
    metrics = ds.optimize.compact_files(
        target_rows_per_fragment=COMPACT_ROWS,
        materialize_deletions=True,
        materialize_deletions_threshold=deleted,
    )
    return bool(metrics.fragments_removed)


def retain(tbl: Any, versions: int | None) -> None:
    """Remove all but the newest ``versions`` versions, with the files only they use. Files a
    killed writer left behind are kept (Lance removes those only when a week old)."""
    if versions is not None:
        tbl.to_lance().cleanup_old_versions(
            retain_versions=versions, error_if_tagged_old_versions=False
        )


def _index_of(tbl: Any, column: str) -> str | None:
    return next((i.name for i in tbl.list_indices() if i.columns == [column]), None)


def _segments(ds: Any, name: str | None) -> list[dict[str, Any]]:
    """The segments of the index ``name`` (the trained one and its deltas), as Lance lists them."""
    return [i for i in ds.list_indices() if i["name"] == name] if name else []


def untrained_share(tbl: Any, column: str) -> float:
    """The share of the table's rows that came after ``column``'s ANN index was trained: those
    outside the fragments its trained segment covers (later rows join it as delta segments,
    assigned to the partitions as trained)."""
    ds = tbl.to_lance()
    segments = _segments(ds, _index_of(tbl, column))
    live = {f.fragment_id: f.metadata.num_rows for f in ds.get_fragments()}
    total = sum(live.values())
    if not segments or not total:
        return 1.0
    # the trained segment is the oldest: deltas, merged or not, and compaction's remapping
    # keep their versions
    trained = min(segments, key=lambda s: s["version"])
    return 1 - sum(live.get(f, 0) for f in trained["fragment_ids"]) / total


def ann_due(tbl: Any, column: VectorColumn, rows: int) -> bool:
    """Whether ``column``'s ANN index must be built whole: declared, enough rows, and missing
    or built for another declaration. (Changed rows: see ``LanceStore._ann``.)"""
    if column.ann is None or rows < column.ann.min_rows:
        return False
    name = _index_of(tbl, column.name)
    if name is None:
        return True
    # Built for another declaration (metric or kind changed, rows did not): rebuild it.
    stats = tbl.index_stats(name)
    kind = {"ivf_pq": "IVF_PQ", "ivf_hnsw_sq": "IVF_HNSW_SQ", "ivf_flat": "IVF_FLAT"}
    have_metric = str(getattr(stats, "distance_type", column.metric) or column.metric).lower()
    have_kind = str(getattr(stats, "index_type", "") or "").upper()
    return have_metric != column.metric or (
        bool(have_kind) and have_kind != kind.get(column.ann.kind, have_kind)
    )


def _reader(first: pa.RecordBatch, rest: Iterator[pa.RecordBatch]) -> pa.RecordBatchReader:
    return pa.RecordBatchReader.from_batches(first.schema, _crashing(chain([first], rest)))


def _crashing(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        yield batch
        crash_point("index-write")  # Lance took a batch and asks for more: it is mid-write


def diff(tbl: Any, incoming: Iterator[pa.RecordBatch], target: IndexTarget) -> dict[str, Any]:
    """Rows to insert or update (``computed``) and to delete, by key and row hash.

    Unchanged rows are left alone, so their run_id keeps naming the run that wrote them, and a
    run that changes nothing commits nothing.
    """
    key, row_hash = target.key, target.row_hash
    ds = tbl.to_lance()
    come = columns(incoming, [key, row_hash])  # first: the rows' hashing is what takes time
    if row_hash in ds.schema.names:
        have = ds.to_table(columns=[key, row_hash], **LEAN_SCAN)
    else:  # a table from before row hashes: every row counts as changed
        keys = ds.to_table(columns=[key], **LEAN_SCAN).column(key)
        have = pa.table({key: keys, row_hash: pa.nulls(len(keys), pa.string())})
    del ds
    return compare(have, come, key, row_hash)


def columns(batches: Iterable[pa.RecordBatch], names: list[str]) -> pa.Table:
    """Just ``names`` (string columns) of ``batches``, as one table, in buffers of its own: a
    column read from a staged file shares its batch's buffer, so keeping it as it is would keep
    every batch whole (vectors and all) in memory."""
    parts: dict[str, list[pa.Array]] = {n: [] for n in names}
    for batch in batches:
        for n in names:
            parts[n].append(pa.concat_arrays([batch.column(n), _EMPTY]))  # a copy
    return pa.table({n: pa.chunked_array(parts[n], pa.string()) for n in names})


_EMPTY = pa.array([], pa.string())


def compare(have: pa.Table, come: pa.Table, key: str, value: str) -> dict[str, Any]:
    """``come`` against ``have`` (both key -> value): counts of new, changed and deleted keys,
    plus ``todo`` (the keys of new and changed rows) and ``gone`` (deleted keys), as arrays.

    Each incoming key is looked up once among ``have``'s keys and its value compared with the
    value found there (a null value never equals anything), so memory holds the two tables,
    a hash table of keys and a few booleans per row, never a join of the tables."""
    have_keys, come_keys = have.column(key), come.column(key)
    if pc.count_distinct(have_keys, mode="all").as_py() != len(have_keys):
        return _compare_joined(have, come, key, value)  # a key held twice: compare every pair
    at = pc.index_in(come_keys, value_set=have_keys)
    known = pc.is_valid(at)
    old = have.column(value).take(at)
    del at
    same = pc.fill_null(pc.equal(come.column(value), old), False)
    del old
    new_keys = come_keys.filter(pc.invert(known))
    changed_keys = come_keys.filter(pc.and_(known, pc.invert(same)))
    del known, same
    gone = have_keys.filter(pc.invert(pc.is_in(have_keys, value_set=come_keys)))
    return _counts(new_keys, changed_keys, gone, len(come))


def _compare_joined(have: pa.Table, come: pa.Table, key: str, value: str) -> dict[str, Any]:
    """``compare`` where ``have`` holds a key more than once: an incoming row is unchanged
    only if every held row of its key has its value."""
    come = come.combine_chunks()
    have = have.combine_chunks()
    known = pc.is_in(come.column(key), value_set=have.column(key))
    new_keys = pc.filter(come.column(key), pc.invert(known))
    both = come.filter(known).join(
        have.rename_columns([key, "_old"]), key, join_type="inner", use_threads=False
    )
    same = pc.fill_null(pc.equal(both.column(value), both.column("_old")), False)
    changed_keys = pc.filter(both.column(key), pc.invert(same))
    stay = pc.is_in(have.column(key), value_set=come.column(key))
    gone = pc.filter(have.column(key), pc.invert(stay))
    return _counts(new_keys, changed_keys, gone, len(come))


def _counts(new_keys: Any, changed_keys: Any, gone: Any, incoming: int) -> dict[str, Any]:
    new, changed = len(new_keys), len(changed_keys)
    return {
        "computed": new + changed,
        "new": new,
        "changed": changed,
        "deleted": len(gone),
        "incoming": incoming,
        "todo": pa.concat_arrays([_array(new_keys), _array(changed_keys)]),
        "gone": _array(gone),
    }


def _array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _sub_vectors(dims: int) -> int:
    """The largest divisor of ``dims`` up to dims/8 (PQ needs dims % sub_vectors == 0)."""
    for sub in range(max(1, dims // 8), 0, -1):
        if dims % sub == 0:
            return sub
    return 1
