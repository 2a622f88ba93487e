"""SQL over everything runs wrote: every Lance table of the workspace and the run catalog."""

from __future__ import annotations

from typing import Any

import duckdb

from embedpipe.dag import Dag
from embedpipe.engine.catalog import DDL, TABLES, Catalog, retry_locked, wait_seconds
from embedpipe.engine.workspace import Workspace, damaged
from embedpipe.errors import SqlError


def connect(dag: Dag, *, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with every Lance table of the workspace and the catalog as views.

    Lance tables are read in place through their Arrow dataset (projection and filter
    pushdown); the catalog file is attached read-only. With ``read_only`` the connection then
    loses file-system access for good (no COPY TO, no ATTACH, no reading other files).
    """
    ws = Workspace.of(dag.spec)
    con = duckdb.connect()
    db = ws.connect() if ws.tables() else None
    lance_names = set()
    for name in ws.tables():
        with ws.reading(name):
            con.register(name, db.open_table(name).to_lance())
        lance_names.add(name)
    catalog = Catalog(ws.catalog_path, dag.spec.path)
    if ws.catalog_path.exists():
        catalog.replay(wait=0)  # a run's record a busy catalog refused, if it can go in now
        # The path is a literal, quoted as SQL quotes them: it may hold any character.
        attach = f"ATTACH {_literal(str(ws.catalog_path))} AS catalog (READ_ONLY)"
        retry_locked(lambda: con.execute(attach), ws.catalog_path, dag.spec.path, wait_seconds())
    else:  # no run yet: the same tables, empty, so queries work before the first run
        con.execute("ATTACH ':memory:' AS catalog")
        con.execute("USE catalog")
        con.execute(DDL)
        con.execute("USE memory")
    present = {r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'catalog'"
    ).fetchall()}  # fmt: skip
    for t in TABLES:
        if t in lance_names:
            continue
        if t in present:
            con.execute(f"CREATE VIEW {_ident(t)} AS SELECT * FROM catalog.{_ident(t)}")
        else:  # a catalog from an older embedpipe: the table, empty, until a write adds it
            con.execute(_create(t))
    if read_only:
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    return con


def _create(table: str) -> str:
    """The DDL statement that creates ``table`` (in the current schema)."""
    for statement in DDL.split(";"):
        if statement.strip().startswith(f"CREATE TABLE IF NOT EXISTS {table} ("):
            return statement
    raise KeyError(table)


def _literal(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def sql(dag: Dag, query: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    con = connect(dag)
    ws = Workspace.of(dag.spec)
    try:
        rel = con.execute(query)
        if rel.description is None:
            return [], []
        cols = [d[0] for d in rel.description]
        return cols, rel.fetchall()
    except duckdb.Error as exc:
        for table in ws.tables():  # reading a Lance table whose files are gone
            hurt = damaged(exc, table, ws.table_path(table), dag.spec.path)
            if hurt is not None:
                raise hurt from exc
        views = sorted(set(ws.tables()) | set(TABLES))
        raise SqlError(
            f"SQL error: {str(exc).splitlines()[0]}. Tables: {', '.join(views)}; fix the query "
            f'(pipe sql {dag.spec.path} "describe TABLE" lists a table\'s columns)'
        ) from exc


def runs(dag: Dag, limit: int = 20) -> list[dict[str, Any]]:
    return Catalog(Workspace(dag.spec.workspace).catalog_path, dag.spec.path).runs(limit)
