"""The run catalog: runs, step runs and skipped inputs, in a DuckDB file in the workspace.

Connections are short-lived so that `pipe sql` (read-only) can open the file between writes.
Columns are only ever appended, never reordered.

Another process holding the file (a DuckDB shell or notebook with it open) makes every open
wait, up to ``$EMBEDPIPE_CATALOG_WAIT`` seconds (default 30), then fail with `CatalogBusy`
naming that process. A run's outcome is never lost to a busy or unwritable catalog: the run
reserves room for its record in ``<workspace>/.catalog-pending/<run_id>.json`` before it
starts, writes the record there when the catalog refuses it, and the next command that opens
the catalog for writing (a run; `pipe runs` and `pipe sql` try too) copies it in.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from embedpipe.errors import CatalogBusy, CatalogDamaged, EmbedpipeError, WorkspaceNotWritable
from embedpipe.schemas import CATALOG_VIEWS

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
CREATE TABLE IF NOT EXISTS evals (
    eval_id VARCHAR PRIMARY KEY, run_id VARCHAR, pipeline VARCHAR, spec_hash VARCHAR,
    step VARCHAR, index_table VARCHAR, lance_version BIGINT, config VARCHAR,
    queries_path VARCHAR, qrels_path VARCHAR, k BIGINT, evaluated_at TIMESTAMPTZ,
    seconds DOUBLE, ndcg_10 DOUBLE, recall_10 DOUBLE, recall_100 DOUBLE, mrr_10 DOUBLE,
    queries BIGINT, bytes_per_vector DOUBLE, index_bytes BIGINT, latency_ms_p50 DOUBLE,
    latency_ms_p95 DOUBLE, ann_recall_10 DOUBLE, metrics VARCHAR
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
TABLES = CATALOG_VIEWS  # the catalog's tables, also its views in `pipe sql`
STALE = (
    "the process running it stopped (killed or crashed) before it finished; the index kept "
    "its last committed version"
)
STALE_COMMITTED = (
    "the process running it stopped (killed or crashed) after it committed version {v}, which "
    "stayed live, before it could record the end of the run"
)


WAIT_ENV = "EMBEDPIPE_CATALOG_WAIT"
RESERVE = 64 * 1024  # bytes set aside per run for its record, written even on a full disk
_HOLDER = re.compile(r"Conflicting lock is held in (.+?) \(PID (\d+)\)")
_UNWRITABLE = ("Permission denied", "Read-only file system", "No space left", "quota exceeded")


def wait_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get(WAIT_ENV, "30")))
    except ValueError:
        return 30.0


def now() -> datetime:
    return datetime.now(UTC)


def new_run_id(at: datetime | None = None) -> str:
    """``20261123T221137-21b1b1``: when it started (UTC), then random, so ids sort by time."""
    return f"{at or now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


class Catalog:
    def __init__(self, path: Path, spec: object = "SPEC") -> None:
        self.path = path
        self.spec = spec  # named in the commands errors suggest
        self.pending_dir = path.parent / ".catalog-pending"

    def open(self, *, read_only: bool = False, wait: float | None = None) -> Any:
        """A DuckDB connection to the catalog file, waiting out another process's lock."""
        return retry_locked(
            lambda: duckdb.connect(str(self.path), read_only=read_only),
            self.path,
            self.spec,
            wait_seconds() if wait is None else wait,
        )

    @contextlib.contextmanager
    def _connect(self, wait: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        con = self.open(wait=wait)
        try:
            con.execute(DDL)
            yield con
        except duckdb.Error as exc:
            ours = _classify(exc, self.path)
            if ours is exc:
                raise
            raise ours from exc
        finally:
            con.close()

    def start_run(self, **row: Any) -> None:
        self._insert("runs", row)

    def finish_run(self, run_id: str, **values: Any) -> None:
        with self._connect() as con:
            self._apply(con, [{"op": "finish", "run_id": run_id, "values": values}])

    def fail_stale(self) -> list[tuple[str, datetime]]:
        """Mark runs still 'running' as failed: called under the workspace lock, so the process
        that ran them is gone (killed or crashed). Returns (run_id, started_at) of each."""
        self.replay(stale=True)  # records kept for later, first (a new catalog too)
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
        try:
            con = self.open(read_only=True, wait=1.0)
        except (EmbedpipeError, duckdb.Error):
            return None  # only an estimate: never worth a wait or a failure
        with con:
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
        with self.open(read_only=True) as con:
            cols = {d[0] for d in con.execute("SELECT * FROM runs LIMIT 0").description}
            back = "rolled_back_to" if "rolled_back_to" in cols else "NULL"
            rows = con.execute(
                f"SELECT lance_version, run_id, {back} FROM runs WHERE lance_version IS NOT NULL"
            ).fetchall()
        return {
            v: {"run_id": r, "note": f"rollback to v{back}" if back is not None else None}
            for v, r, back in rows
        }

    def record_eval(self, **row: Any) -> None:
        """One `pipe eval` result (a row of ``evals``: metrics over time, in `pipe sql`)."""
        self._insert("evals", row)

    def last_completed(self) -> dict[str, Any] | None:
        """The newest completed run that committed a version (what an eval measures)."""
        if not self.path.exists():
            return None
        with self.open(read_only=True) as con:
            rel = con.execute(
                "SELECT run_id, spec_hash, lance_version FROM runs WHERE status = 'completed' "
                "ORDER BY started_at DESC LIMIT 1"
            )
            row = rel.fetchone()
        return (
            dict(zip(("run_id", "spec_hash", "lance_version"), row, strict=True)) if row else None
        )

    def _insert(self, table: str, row: dict[str, Any]) -> None:
        with self._connect() as con:
            self._insert_con(con, table, row)

    @staticmethod
    def _insert_con(con: duckdb.DuckDBPyConnection, table: str, row: dict[str, Any]) -> None:
        cols = ", ".join(_column(table, c) for c in row)
        marks = ", ".join("?" for _ in row)
        con.execute(f"INSERT OR REPLACE INTO {table} ({cols}) VALUES ({marks})", list(row.values()))

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        # SELECT *: a catalog written by an older embedpipe lacks the newer columns until the
        # next run adds them, and this connection is read-only.
        self.replay(wait=0)  # a record a busy catalog refused earlier, if it can go in now
        with self.open(read_only=True) as con:
            rel = con.execute("SELECT * FROM runs ORDER BY started_at DESC LIMIT ?", [limit])
            cols = [d[0] for d in rel.description]
            rows = [dict(zip(cols, r, strict=True)) for r in rel.fetchall()]
        kept = self.pending()
        for row in rows:  # a record still waiting to go in is the truth about its run
            for op in kept.get(row["run_id"], []):
                if op["op"] == "finish":
                    row.update(op["values"])
        keep = ("run_id", "pipeline", "status", "started_at", "seconds", "lance_version")
        keep += ("spec_hash", "flow_run_id", "error", "noop", "prefect", "rolled_back_to")
        return [{k: r.get(k) for k in keep} for r in rows]

    # -- the end of a run: written at once, or kept for later ---------------------------------

    def reserve(self, run_id: str) -> None:
        """Set aside room for the run's record before it starts (raises OSError when the
        workspace cannot be written: then nothing has started)."""
        self.pending_dir.mkdir(exist_ok=True)
        path = self.pending_dir / f"{run_id}.json"
        with path.open("wb") as fh:
            fh.write(b" " * RESERVE)
            fh.flush()
            os.fsync(fh.fileno())

    @staticmethod
    def ops(
        run_id: str,
        steps: list[tuple[dict[str, Any], list[tuple[str, str]]]],
        values: dict[str, Any],
    ) -> list[dict[str, Any]]:
        """A run's end as catalog operations: its step rows (with skips), then its outcome."""
        ops = [{"op": "step", "row": row, "skipped": skips} for row, skips in steps]
        return [*ops, {"op": "finish", "run_id": run_id, "values": values}]

    def write(self, run_id: str, ops: list[dict[str, Any]]) -> None:
        """Apply ``ops`` in one transaction, then drop the run's reservation. Raises
        (CatalogBusy, CatalogDamaged, WorkspaceNotWritable, duckdb.Error) when it cannot."""
        with self._connect() as con:
            self._apply(con, ops)
        self.discard(run_id)

    def keep(self, run_id: str, ops: list[dict[str, Any]]) -> Path:
        """Write the operations the catalog refused into the run's reservation (raises OSError
        when even that fails)."""
        data = json.dumps(ops, default=_iso).encode()
        if len(data) > RESERVE:  # many skips: keep their count, so it fits the room set aside
            for op in ops:
                if op["op"] == "step" and op["skipped"]:
                    n = len(op["skipped"])
                    op["skipped"] = [["(record)", f"{n} inputs skipped; their reasons were lost"]]
            data = json.dumps(ops, default=_iso).encode()
        path = self.pending_dir / f"{run_id}.json"
        mode = "r+b" if path.exists() else "wb"
        with path.open(mode) as fh:
            fh.write(data)  # into blocks set aside at the start: no new space needed
            fh.truncate(len(data))
            fh.flush()
            os.fsync(fh.fileno())
        return path

    def write_or_keep(self, run_id: str, ops: list[dict[str, Any]]) -> str | None:
        """``write``, or when the catalog refuses, ``keep``; None when written, else a warning
        that says where the record went. Raises OSError when it could not even be kept."""
        stopped: BaseException | None = None
        try:
            self.write(run_id, ops)
            return None
        except Exception as exc:  # whatever it is, the record must survive it
            cause = exc.__cause__ if isinstance(exc.__cause__, duckdb.Error) else exc
            why = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        except BaseException as exc:  # Ctrl-C while waiting for a busy catalog: keep, then stop
            stopped, why = exc, "interrupted while waiting for the catalog"
        try:
            kept = self.keep(run_id, ops)
            if stopped is not None:
                raise stopped
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"the record could not be written to the catalog ({why}), nor kept in "
                f"{self.pending_dir} ({exc.strerror or exc})",
            ) from exc
        return (
            f"the record could not be written to the catalog ({why}); it was kept in {kept}, "
            "and the next pipe run (or pipe runs, once the catalog is free) writes it"
        )

    def discard(self, run_id: str) -> None:
        with contextlib.suppress(OSError):
            (self.pending_dir / f"{run_id}.json").unlink()

    def pending(self) -> dict[str, list[dict[str, Any]]]:
        """Records kept for a later write, by run id (reservations of live runs are blank).
        A file that is not a well-formed record of its own run is left where it is and never
        applied: its content would otherwise reach SQL."""
        out: dict[str, list[dict[str, Any]]] = {}
        if not self.pending_dir.is_dir():
            return out
        for path in sorted(self.pending_dir.glob("*.json")):
            try:
                text = path.read_text().strip()
                ops = json.loads(text) if text else None
            except (OSError, ValueError):
                continue
            if ops is not None and _well_formed(path.stem, ops):
                out[path.stem] = ops
        return out

    def replay(self, *, wait: float | None = None, stale: bool = False) -> list[str]:
        """Copy kept records into the catalog. ``stale`` (under the workspace lock, so no run
        is live): blank reservations of killed runs are dropped too. Never raises: a record
        that cannot go in yet waits for the next try."""
        if stale and self.pending_dir.is_dir():
            for path in self.pending_dir.glob("*.json"):
                with contextlib.suppress(OSError):
                    if not path.read_bytes().strip():  # blank: a reservation, never written
                        path.unlink()
        kept = self.pending()
        if not kept:
            return []
        try:
            with self._connect(wait=wait) as con:
                for run_id, ops in kept.items():
                    self._apply(con, ops)
                    self.discard(run_id)
        except (EmbedpipeError, duckdb.Error, OSError):
            return []
        return list(kept)

    def _apply(self, con: duckdb.DuckDBPyConnection, ops: list[dict[str, Any]]) -> None:
        con.execute("BEGIN")
        for op in ops:
            if op["op"] == "run":
                self._insert_con(con, "runs", _typed(op["row"]))
            elif op["op"] == "step":
                row = _typed(op["row"])
                self._insert_con(con, "step_runs", row)
                con.execute(
                    "DELETE FROM skipped WHERE run_id = ? AND step = ?",
                    [row["run_id"], row["step"]],
                )
                if op["skipped"]:
                    at = now()
                    con.executemany(
                        "INSERT INTO skipped VALUES (?, ?, ?, ?, ?)",
                        [(row["run_id"], row["step"], i, r, at) for i, r in op["skipped"]],
                    )
            else:
                values = _typed(op["values"])
                sets = ", ".join(f"{_column('runs', k)} = ?" for k in values)
                con.execute(
                    f"UPDATE runs SET {sets} WHERE run_id = ?", [*values.values(), op["run_id"]]
                )
        con.execute("COMMIT")


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$ts": value.isoformat()}
    return str(value)


def _columns() -> dict[str, frozenset[str]]:
    """The columns each catalog table has (from the DDL): the only ones a record may name."""
    with duckdb.connect() as con:
        con.execute(DDL)
        rows = con.execute("SELECT table_name, column_name FROM information_schema.columns")
        out: dict[str, set[str]] = {}
        for table, column in rows.fetchall():
            out.setdefault(table, set()).add(column)
    return {t: frozenset(c) for t, c in out.items()}


_COLUMNS = _columns()


def _column(table: str, name: str) -> str:
    """``name`` as a quoted column of ``table``; anything else is refused, never SQL."""
    if name not in _COLUMNS[table]:
        raise ValueError(f"{table} has no column {name!r}")
    return f'"{name}"'


def _well_formed(run_id: str, ops: Any) -> bool:
    """A kept record of run ``run_id``: known operations on known columns, of that run only."""
    if not isinstance(ops, list):
        return False
    for op in ops:
        if not isinstance(op, dict) or op.get("op") not in ("run", "step", "finish"):
            return False
        row = op.get("row") if op["op"] != "finish" else op.get("values")
        table = {"run": "runs", "step": "step_runs", "finish": "runs"}[op["op"]]
        if not isinstance(row, dict) or not set(row) <= _COLUMNS[table]:
            return False
        owner = op.get("run_id") if op["op"] == "finish" else row.get("run_id")
        if owner != run_id and not (op["op"] == "run" and str(owner).startswith(run_id)):
            return False
        skipped = op.get("skipped", [])
        if op["op"] == "step" and not (
            isinstance(skipped, list) and all(isinstance(x, list) and len(x) == 2 for x in skipped)
        ):
            return False
    return True


def _typed(row: dict[str, Any]) -> dict[str, Any]:
    """A kept record's values as they were: timestamps back from their JSON form."""
    return {
        k: datetime.fromisoformat(v["$ts"]) if isinstance(v, dict) and "$ts" in v else v
        for k, v in row.items()
    }


def retry_locked(connect: Any, path: Path, spec: object, wait: float) -> Any:
    """Call ``connect`` until no other process holds ``path``'s lock, for up to ``wait`` s."""
    deadline = time.monotonic() + wait
    delay = 0.05
    while True:
        try:
            return connect()
        except duckdb.Error as exc:
            if not _locked(exc):
                raise _classify(exc, path) from exc
            if time.monotonic() >= deadline:
                raise busy(exc, path, spec, wait) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def _locked(exc: BaseException) -> bool:
    return "Could not set lock" in str(exc) or "Conflicting lock" in str(exc)


def busy(exc: BaseException, path: Path, spec: object, wait: float) -> CatalogBusy:
    m = _HOLDER.search(str(exc))
    holder = f"{Path(m.group(1)).name}, PID {m.group(2)}" if m else "another process"
    return CatalogBusy(
        f"the run catalog {path} is held open by another process ({holder}) and stayed "
        f"locked for {wait:.0f} s; nothing was changed. Close that connection (a DuckDB shell "
        f"or notebook with the file open), then run again; to read the catalog while runs "
        f'may write, use pipe sql {spec} "select * from runs", which holds it only for a '
        f"moment (or raise {WAIT_ENV}, in seconds)"
    )


def _classify(exc: BaseException, path: Path) -> Exception:
    """A DuckDB error on the catalog file as one of ours: unwritable, damaged, or as it was."""
    text = str(exc)
    first = text.splitlines()[0] if text else type(exc).__name__
    if any(s in text for s in _UNWRITABLE):
        return WorkspaceNotWritable(path.parent, f"{path.name}: {first}")
    damaged = ("not a valid DuckDB database", "Failure while replaying WAL", "Corrupt", "corrupt")
    if isinstance(exc, duckdb.SerializationException) or any(s in text for s in damaged):
        return CatalogDamaged(path, first)
    return exc if isinstance(exc, Exception) else RuntimeError(first)
