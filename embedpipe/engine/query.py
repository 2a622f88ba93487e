"""Reading what runs wrote: vector search over an index step's table, SQL over everything."""

from __future__ import annotations

from typing import Any

import duckdb

from embedpipe.dag import Dag
from embedpipe.engine.catalog import DDL, TABLES, Catalog, retry_locked, wait_seconds
from embedpipe.engine.workspace import Workspace, damaged
from embedpipe.errors import EmbedpipeError, NotIndexed, UsageError
from embedpipe.steps.encode import Encode
from embedpipe.steps.index import Index


def index_step(dag: Dag, name: str | None = None) -> Index:
    indexes = dag.of_type("index")
    if name is not None:
        found = [s for s in indexes if s.name == name]
        if not found:
            raise UsageError(
                f"--step {name}: not an index step of '{dag.spec.name}'; "
                f"index steps: {', '.join(s.name for s in indexes) or 'none'}"
            )
        return found[0]  # type: ignore[return-value]
    if not indexes:
        raise EmbedpipeError(f"pipeline '{dag.spec.name}' has no index step to search")
    return indexes[-1]  # type: ignore[return-value]


def search(dag: Dag, query: str, k: int = 10, *, step: str | None = None) -> list[dict[str, Any]]:
    """Top-``k`` chunks for ``query``, best first, encoded exactly as the documents were."""
    index = index_step(dag, step)
    encoder = next((s for s in dag.ancestors(index.name) if isinstance(s, Encode)), None)
    if encoder is None:
        raise EmbedpipeError(f"index step '{index.name}' has no encode step upstream")
    ws = Workspace(dag.spec.workspace, dag.spec.path)
    table = index.table_name(dag.spec.name)
    if not ws.table_exists(table):
        raise NotIndexed(
            f"table '{table}' does not exist in {ws.root} yet; run first: pipe run {dag.spec.path}"
        )
    vector = encoder.encode_queries([query])[0]
    with ws.reading(table):
        return _search(ws.connect().open_table(table), index, vector, k)


def _search(tbl: Any, index: Index, vector: Any, k: int) -> list[dict[str, Any]]:
    metric = index.config.metric
    q = (
        tbl.search(vector, vector_column_name="vector")
        .distance_type(metric)
        .limit(k)
        .select(["chunk_id", "doc_id", "text", "title", "_distance"])
    )
    if index.config.ann.type != "none":
        q = q.nprobes(index.config.ann.nprobes)
        if index.config.ann.refine_factor:
            q = q.refine_factor(index.config.ann.refine_factor)
    hits = []
    for row in q.to_list():
        d = float(row.pop("_distance"))
        score = 1.0 - d if metric in ("cosine", "dot") else -d
        hits.append(
            {
                "doc_id": row["doc_id"],
                "chunk_id": row["chunk_id"],
                "score": score,
                "text": row["text"],
                "title": row.get("title") or "",
            }
        )
    hits.sort(key=lambda h: h["score"], reverse=True)
    return hits


def connect(dag: Dag, *, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with every Lance table of the workspace and the catalog as views.

    Lance tables are read in place through their Arrow dataset (projection and filter
    pushdown); the catalog file is attached read-only. With ``read_only`` the connection then
    loses file-system access for good (no COPY TO, no ATTACH, no reading other files).
    """
    ws = Workspace(dag.spec.workspace, dag.spec.path)
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
    for t in TABLES:
        if t not in lance_names:
            con.execute(f"CREATE VIEW {_ident(t)} AS SELECT * FROM catalog.{_ident(t)}")
    if read_only:
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    return con


def _literal(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def sql(dag: Dag, query: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    con = connect(dag)
    ws = Workspace(dag.spec.workspace, dag.spec.path)
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
        raise EmbedpipeError(
            f"SQL error: {str(exc).splitlines()[0]}. Tables: {', '.join(views)}"
        ) from exc


def runs(dag: Dag, limit: int = 20) -> list[dict[str, Any]]:
    return Catalog(Workspace(dag.spec.workspace).catalog_path, dag.spec.path).runs(limit)
