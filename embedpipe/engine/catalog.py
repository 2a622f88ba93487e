"""The run catalog: runs, step runs and skipped inputs, in a DuckDB file in the workspace.

Connections are short-lived so that `pipe sql` (read-only) can open the file between writes.
Columns are only ever appended, never reordered.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

DDL = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, pipeline VARCHAR, status VARCHAR,
    started_at TIMESTAMPTZ, ended_at TIMESTAMPTZ, seconds DOUBLE,
    spec_path VARCHAR, spec_hash VARCHAR, overrides VARCHAR[], flow_run_id VARCHAR,
    lance_version BIGINT, tables VARCHAR[], models VARCHAR[], error VARCHAR,
    embedpipe_version VARCHAR
);
CREATE TABLE IF NOT EXISTS step_runs (
    run_id VARCHAR, step VARCHAR, type VARCHAR, status VARCHAR,
    rows_in BIGINT, rows_out BIGINT, computed BIGINT, cached BIGINT, deleted BIGINT,
    skipped BIGINT, seconds DOUBLE, started_at TIMESTAMPTZ, ended_at TIMESTAMPTZ,
    error VARCHAR, PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS skipped (
    run_id VARCHAR, step VARCHAR, item VARCHAR, reason VARCHAR, skipped_at TIMESTAMPTZ
);
ALTER TABLE runs ADD COLUMN IF NOT EXISTS noop BOOLEAN;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS prefect VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS rolled_back_to BIGINT;
ALTER TABLE step_runs ADD COLUMN IF NOT EXISTS new BIGINT;
ALTER TABLE step_runs ADD COLUMN IF NOT EXISTS changed BIGINT;
"""
# runs.noop: the run found nothing to do and committed nothing. runs.prefect: 'recorded' (a flow
# run exists), 'deferred' (a no-op that did not start Prefect; the next run that starts it
# records it), or NULL while running.
TABLES = ("runs", "step_runs", "skipped")
STALE = (
    "the process running it stopped (killed or crashed) before it finished; the index kept "
    "its last committed version"
)
STALE_COMMITTED = (
    "the process running it stopped (killed or crashed) after it committed version {v}, which "
    "stayed live, before it could record the end of the run"
)


def now() -> datetime:
    return datetime.now(UTC)


def new_run_id(at: datetime | None = None) -> str:
    """``20261123T221137-21b1b1``: when it started (UTC), then random, so ids sort by time."""
    return f"{at or now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


class Catalog:
    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def _connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        # Another process may hold the file for a moment (a `pipe sql` read); retry briefly.
        for attempt in range(50):
            try:
                con = duckdb.connect(str(self.path))
                break
            except duckdb.IOException:
                if attempt == 49:
                    raise
                time.sleep(0.1)
        try:
            con.execute(DDL)
            yield con
        finally:
            con.close()

    def start_run(self, **row: Any) -> None:
        self._insert("runs", row)

    def finish_run(self, run_id: str, **values: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in values)
        with self._connect() as con:
            con.execute(f"UPDATE runs SET {sets} WHERE run_id = ?", [*values.values(), run_id])

    def record_step(self, row: dict[str, Any], skipped: list[tuple[str, str]]) -> None:
        with self._connect() as con:
            con.execute("BEGIN")
            self._insert_con(con, "step_runs", row)
            if skipped:
                at = now()
                con.executemany(
                    "INSERT INTO skipped VALUES (?, ?, ?, ?, ?)",
                    [(row["run_id"], row["step"], item, reason, at) for item, reason in skipped],
                )
            con.execute("COMMIT")

    def fail_stale(self) -> list[tuple[str, datetime]]:
        """Mark runs still 'running' as failed: called under the workspace lock, so the process
        that ran them is gone (killed or crashed). Returns (run_id, started_at) of each."""
        if not self.path.exists():
            return []
        with self._connect() as con:
            stale = con.execute(
                "SELECT run_id, started_at FROM runs WHERE status = 'running'"
            ).fetchall()
            if stale:
                con.execute(
                    "UPDATE runs SET status = 'failed', error = ? WHERE status = 'running'",
                    [STALE],
                )
                con.execute(
                    "UPDATE step_runs SET status = 'failed', error = ? WHERE status = 'running'",
                    [STALE],
                )
        return stale

    def throughput(self, step: str) -> float | None:
        """Rows per second a step computed in its recent completed runs; None when unknown."""
        if not self.path.exists():
            return None
        with duckdb.connect(str(self.path), read_only=True) as con:
            row = con.execute(
                "SELECT sum(computed) / nullif(sum(seconds), 0) FROM (SELECT computed, seconds "
                "FROM step_runs WHERE step = ? AND status = 'completed' AND computed > 0 "
                "ORDER BY started_at DESC LIMIT 5)",
                [step],
            ).fetchone()
        return float(row[0]) if row and row[0] else None

    def deferred(self) -> list[dict[str, Any]]:
        """No-op runs not yet recorded in Prefect, oldest first."""
        if not self.path.exists():
            return []
        with self._connect() as con:
            rel = con.execute(
                "SELECT run_id, pipeline, spec_hash, started_at, seconds FROM runs "
                "WHERE prefect = 'deferred' ORDER BY started_at"
            )
            cols = [d[0] for d in rel.description]
            return [dict(zip(cols, r, strict=True)) for r in rel.fetchall()]

    def committers(self) -> dict[int, dict[str, Any]]:
        """Lance version -> the run (or rollback) that committed it."""
        if not self.path.exists():
            return {}
        with duckdb.connect(str(self.path), read_only=True) as con:
            cols = {d[0] for d in con.execute("SELECT * FROM runs LIMIT 0").description}
            back = "rolled_back_to" if "rolled_back_to" in cols else "NULL"
            rows = con.execute(
                f"SELECT lance_version, run_id, {back} FROM runs WHERE lance_version IS NOT NULL"
            ).fetchall()
        return {
            v: {"run_id": r, "note": f"rollback to v{back}" if back is not None else None}
            for v, r, back in rows
        }

    def _insert(self, table: str, row: dict[str, Any]) -> None:
        with self._connect() as con:
            self._insert_con(con, table, row)

    @staticmethod
    def _insert_con(con: duckdb.DuckDBPyConnection, table: str, row: dict[str, Any]) -> None:
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        con.execute(f"INSERT OR REPLACE INTO {table} ({cols}) VALUES ({marks})", list(row.values()))

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        # SELECT *: a catalog written by an older embedpipe lacks the newer columns until the
        # next run adds them, and this connection is read-only.
        with duckdb.connect(str(self.path), read_only=True) as con:
            rel = con.execute("SELECT * FROM runs ORDER BY started_at DESC LIMIT ?", [limit])
            cols = [d[0] for d in rel.description]
            rows = [dict(zip(cols, r, strict=True)) for r in rel.fetchall()]
        keep = ("run_id", "pipeline", "status", "started_at", "seconds", "lance_version")
        keep += ("spec_hash", "flow_run_id", "error", "noop", "prefect", "rolled_back_to")
        return [{k: r.get(k) for k in keep} for r in rows]
