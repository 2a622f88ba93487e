"""A pipeline's workspace on disk, the Lance store lent to index steps, and the run lock.

<workspace>/lance/<table>.lance     LanceDB tables (every run is a new table version)
<workspace>/catalog.duckdb          runs, step runs, skipped inputs
<workspace>/staging/<run_id>/       step outputs of a run in progress (Arrow IPC)
<workspace>/.lock                   held by the run in progress
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import shutil
from collections.abc import Iterator
from itertools import chain
from pathlib import Path
from typing import Any

import lancedb
import pyarrow as pa
from lancedb.index import HnswSq, IvfPq

from embedpipe.errors import EmbedpipeError
from embedpipe.steps.base import Step


class Workspace:
    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def lance_dir(self) -> Path:
        return self.root / "lance"

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.duckdb"

    def staging(self, run_id: str) -> Path:
        return self.root / "staging" / run_id

    def table_exists(self, table: str) -> bool:
        return (self.lance_dir / f"{table}.lance").is_dir()

    def tables(self) -> list[str]:
        if not self.lance_dir.is_dir():
            return []
        return sorted(p.stem for p in self.lance_dir.glob("*.lance") if p.is_dir())

    def table_version(self, table: str) -> int:
        """The live version of ``table``; 0 when it does not exist."""
        return self.connect().open_table(table).version if self.table_exists(table) else 0

    def connect(self) -> Any:
        return lancedb.connect(str(self.lance_dir))

    @contextlib.contextmanager
    def lock(self, pipeline: str) -> Iterator[None]:
        """One run per workspace at a time: a second run fails at once with a clear message."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / ".lock"
        with path.open("a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                raise EmbedpipeError(
                    f"pipeline '{pipeline}' is already running in {self.root} ({holder}); "
                    "wait for it to finish, then run again"
                ) from None
            fh.truncate(0)
            fh.write(f"pid {os.getpid()}")
            fh.flush()
            try:
                yield
            finally:
                fh.truncate(0)
                fcntl.flock(fh, fcntl.LOCK_UN)

    def clear_staging(self) -> None:
        """Remove every run's staged step outputs; called under the lock, so none is live."""
        shutil.rmtree(self.root / "staging", ignore_errors=True)


class LanceStore:
    """Writes index steps' rows: one commit per run (upsert by chunk_id + delete vanished)."""

    key = "chunk_id"
    # Rows whose content, text, model or spec are unchanged are left as they are, so their
    # run_id keeps naming the run that wrote them. (Lance's SQL has no IS DISTINCT FROM; these
    # columns are never null in rows embedpipe writes.)
    changed = " OR ".join(
        f"target.{c} != source.{c}"
        for c in ("content_hash", "text", "title", "model_revision", "spec_hash")
    )

    def __init__(self, workspace: Workspace) -> None:
        self.ws = workspace
        self.db = workspace.connect()

    def write(self, table: str, batches: Iterator[pa.RecordBatch], step: Step) -> dict[str, int]:
        it = iter(batches)
        first = next(it, None)
        if first is None:
            raise EmbedpipeError(
                "no rows reached the index (every input was skipped or empty), so table "
                f"'{table}' was left as it was"
            )
        reader = pa.RecordBatchReader.from_batches(first.schema, chain([first], it))
        if not self.ws.table_exists(table):
            tbl = self.db.create_table(table, reader)
            n = tbl.count_rows()
            stats = {"computed": n, "deleted": 0}
        else:
            tbl = self.db.open_table(table)
            before = tbl.count_rows()
            if not tbl.schema.remove_metadata().equals(first.schema.remove_metadata()):
                # A new model or dimension: replace the rows in one commit; old versions stay.
                tbl = self.db.create_table(table, reader, mode="overwrite")
                n = tbl.count_rows()
                stats = {"computed": n, "deleted": before}
            else:
                res = (
                    tbl.merge_insert(self.key)
                    .when_matched_update_all(where=self.changed)
                    .when_not_matched_insert_all()
                    .when_not_matched_by_source_delete()
                    .execute(reader)
                )
                stats = {
                    "computed": res.num_inserted_rows + res.num_updated_rows,
                    "deleted": res.num_deleted_rows,
                }
        rows = tbl.count_rows()
        self._ann(tbl, step, rows)
        # Rows left as they were count as cached: computed + cached = rows_out.
        cached = rows - stats["computed"]
        return {**stats, "rows_out": rows, "cached": cached, "version": tbl.version}

    def _ann(self, tbl: Any, step: Step, rows: int) -> None:
        ann = step.config.ann  # type: ignore[attr-defined]
        if ann.type == "none" or rows < ann.min_rows:
            return
        metric = step.config.metric  # type: ignore[attr-defined]
        partitions = ann.partitions if ann.partitions != "auto" else max(1, int(math.sqrt(rows)))
        if ann.type == "ivf_pq":
            dims = tbl.schema.field("vector").type.list_size
            sub = ann.sub_vectors if ann.sub_vectors != "auto" else _sub_vectors(dims)
            config: Any = IvfPq(
                distance_type=metric, num_partitions=partitions, num_sub_vectors=sub
            )
        else:
            config = HnswSq(distance_type=metric, num_partitions=partitions)
        tbl.create_index("vector", config=config, replace=True)


def _sub_vectors(dims: int) -> int:
    """The largest divisor of ``dims`` up to dims/8 (PQ needs dims % sub_vectors == 0)."""
    for sub in range(max(1, dims // 8), 0, -1):
        if dims % sub == 0:
            return sub
    return 1
