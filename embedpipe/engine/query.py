"""Reading what runs wrote: vector search over an index step's table, SQL over everything."""

from __future__ import annotations

from typing import Any

import duckdb

from embedpipe.dag import Dag
from embedpipe.engine.catalog import DDL, TABLES, Catalog
from embedpipe.engine.workspace import Workspace
from embedpipe.errors import EmbedpipeError, NotIndexed
from embedpipe.steps.encode import Encode
from embedpipe.steps.index import Index


def index_step(dag: Dag, name: str | None = None) -> Index:
    indexes = dag.of_type("index")
    if name is not None:
        found = [s for s in indexes if s.name == name]
        if not found:
            raise EmbedpipeError(
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
    ws = Workspace(dag.spec.workspace)
    table = index.table_name(dag.spec.name)
    if not ws.table_exists(table):
        raise NotIndexed(
            f"table '{table}' does not exist in {ws.root} yet; run first: pipe run {dag.spec.path}"
        )
    tbl = ws.connect().open_table(table)
    vector = encoder.encode_queries([query])[0]
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
    ws = Workspace(dag.spec.workspace)
    con = duckdb.connect()
    db = ws.connect() if ws.tables() else None
    lance_names = set()
    for name in ws.tables():
        con.register(name, db.open_table(name).to_lance())
        lance_names.add(name)
    if ws.catalog_path.exists():
        con.execute(f"ATTACH '{ws.catalog_path}' AS catalog (READ_ONLY)")
    else:  # no run yet: the same tables, empty, so queries work before the first run
        con.execute("ATTACH ':memory:' AS catalog")
        con.execute("USE catalog")
        con.execute(DDL)
        con.execute("USE memory")
    for t in TABLES:
        if t not in lance_names:
            con.execute(f"CREATE VIEW {t} AS SELECT * FROM catalog.{t}")
    if read_only:
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    return con


def sql(dag: Dag, query: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    con = connect(dag)
    try:
        rel = con.execute(query)
    except duckdb.Error as exc:
        views = sorted(set(Workspace(dag.spec.workspace).tables()) | set(TABLES))
        raise EmbedpipeError(
            f"SQL error: {str(exc).splitlines()[0]}. Tables: {', '.join(views)}"
        ) from exc
    if rel.description is None:
        return [], []
    cols = [d[0] for d in rel.description]
    return cols, rel.fetchall()


def runs(dag: Dag, limit: int = 20) -> list[dict[str, Any]]:
    return Catalog(Workspace(dag.spec.workspace).catalog_path).runs(limit)
