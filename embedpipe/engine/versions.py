"""Index table versions: list them, roll back to one, and drop old ones (``retain``).

Every commit of an index table is a Lance version. A rollback does not rewrite history: it
commits a new version whose rows are those of the old one, so it can itself be undone.
"""

from __future__ import annotations

import time
from importlib import metadata
from typing import Any

from embedpipe.dag import Dag
from embedpipe.engine.catalog import Catalog, new_run_id, now
from embedpipe.engine.lance import retain
from embedpipe.engine.workspace import Workspace
from embedpipe.errors import NotIndexed, UsageError, WorkspaceNotWritable


def _table(dag: Dag, step: str | None) -> tuple[Workspace, str]:
    ws = Workspace.of(dag.spec)
    table = dag.index(step)[1].table
    if not ws.table_exists(table):
        raise NotIndexed(
            f"table '{table}' does not exist in {ws.root} yet; run first: pipe run {dag.spec.path}"
        )
    return ws, table


def versions(dag: Dag, step: str | None = None) -> list[dict[str, Any]]:
    """The table's versions still on disk, newest first, with the run that committed each."""
    ws, table = _table(dag, step)
    with ws.reading(table):
        tbl = ws.connect().open_table(table)
        live = tbl.version
        listed = tbl.list_versions()
    by_version = Catalog(ws.catalog_path, dag.spec.path).committers()
    out = []
    for v in sorted(listed, key=lambda v: v["version"], reverse=True):
        meta = v.get("metadata") or {}
        run = by_version.get(v["version"], {})
        out.append(
            {
                "version": v["version"],
                "timestamp": v["timestamp"],
                "rows": int(meta.get("total_rows", 0)) or None,
                "live": v["version"] == live,
                "run_id": run.get("run_id"),
                "note": run.get("note"),
            }
        )
    return out


def rollback(dag: Dag, to_version: int, step: str | None = None) -> dict[str, Any]:
    """Make version ``to_version`` the live one again, as a new version; recorded as a run."""
    ws, table = _table(dag, step)
    with ws.lock(dag.spec.name), ws.reading(table):
        tbl = ws.connect().open_table(table)
        have = sorted(v["version"] for v in tbl.list_versions())
        if to_version not in have:
            raise UsageError(
                f"--to-version {to_version}: table '{table}' has no such version; versions on "
                f"disk: {_ranges(have)} (older ones were removed by retain; see pipe runs)"
            )
        started, t0 = now(), time.perf_counter()
        run_id = f"{new_run_id(started)}-rollback"
        catalog = Catalog(ws.catalog_path, dag.spec.path)
        catalog.replay(stale=True)
        try:  # room for the record, before the index changes
            catalog.reserve(run_id)
        except OSError as exc:
            raise WorkspaceNotWritable(ws.root, f"{exc.strerror or exc}: {exc.filename}") from None
        before = tbl.version
        try:
            tbl.restore(to_version)
        except Exception:
            catalog.discard(run_id)
            raise
        row = {
            "run_id": run_id,
            "pipeline": dag.spec.name,
            "status": "completed",
            "started_at": started,
            "ended_at": now(),
            "seconds": time.perf_counter() - t0,
            "spec_path": str(dag.spec.path),
            "spec_hash": dag.spec.hash,
            "tables": [table],
            "lance_version": tbl.version,
            "rolled_back_to": to_version,
            "embedpipe_version": metadata.version("embedpipe"),
        }
        warnings = []
        try:  # the record first: the new version is live, whatever happens next
            warnings.append(catalog.write_or_keep(run_id, [{"op": "run", "row": row}]))
        except OSError as exc:
            warnings.append(f"{exc.strerror}; version {tbl.version} is live all the same")
        try:
            retain(tbl, dag.index(step)[1].retain)
        except Exception as exc:  # older versions stay on disk until the next commit
            warnings.append(f"old versions were not removed ({exc}); the next run retries")
        done = {
            "run_id": run_id,
            "table": table,
            "from_version": before,
            "to_version": to_version,
            "lance_version": tbl.version,
            "rows": tbl.count_rows(),
        }
        warning = "; ".join(w for w in warnings if w)
        return {**done, **({"warning": warning} if warning else {})}


def _ranges(values: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``1-3, 7``."""
    parts: list[str] = []
    for v in values:
        if parts and v == int(parts[-1].split("-")[-1]) + 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{v}"
        else:
            parts.append(str(v))
    return ", ".join(parts)
