"""The Python API, mirroring the CLI: ``embedpipe.load("spec.yaml").run()``.

The CLI is a thin layer over this module: every command it runs goes through a ``Pipeline``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedpipe import dag as dag_mod

if TYPE_CHECKING:
    from rich.console import Console

    from embedpipe.engine.search import Searcher
    from embedpipe.results import EvalResult, Hit, Plan, RunResult


class Pipeline:
    """A loaded, type-checked pipeline. Building it loads no model and opens no database."""

    def __init__(self, dag: dag_mod.Dag, overrides: list[str] | None = None) -> None:
        self.dag = dag
        self.overrides = overrides or []
        self._searchers: dict[str | None, Searcher] = {}

    @property
    def name(self) -> str:
        return self.dag.spec.name

    @property
    def workspace(self) -> Path:
        return self.dag.spec.workspace

    def run(
        self,
        *,
        progress: bool = False,
        strict: bool = False,
        console: Console | None = None,
        prefect_logs: bool = False,
    ) -> RunResult:
        """Run the pipeline as one Prefect flow run; check ``.status`` on the result.

        ``strict``: a skipped input fails the run (nothing is committed)."""
        from embedpipe.engine.flow import execute

        dag_mod.build(self.dag.spec, preflight=True)  # sources may have gone since loading
        self._searchers.clear()  # a run makes a new table version
        return execute(
            self.dag,
            overrides=self.overrides,
            console=console,
            progress=progress,
            prefect_logs=prefect_logs,
            strict=strict,
        )

    def plan(self, *, progress: bool = False, console: Console | None = None) -> Plan:
        """What a run would do, per step, writing nothing (no table, cache or catalog row)."""
        from embedpipe.engine.flow import plan

        dag_mod.build(self.dag.spec, preflight=True)
        return plan(self.dag, console=console, progress=progress)

    def searcher(self, step: str | None = None) -> Searcher:
        """The search pipeline of an index step (default: the last), opened once and kept."""
        if step not in self._searchers:
            from embedpipe.engine.search import Searcher

            self._searchers[step] = Searcher(self.dag, step)
        return self._searchers[step]

    def search(
        self, query: str, k: int = 10, *, step: str | None = None, keep_all: bool = False
    ) -> list[Hit]:
        """Top-``k`` chunks for ``query``, best first, after every query stage; hits a filter
        step does not keep are dropped unless ``keep_all`` (then they carry ``kept: False``)."""
        return self.searcher(step).search(query, k, keep_all=keep_all)

    def search_many(
        self,
        queries: Sequence[str],
        k: int = 10,
        *,
        step: str | None = None,
        batch: int = 64,
        keep_all: bool = False,
    ) -> list[list[Hit]]:
        """Top-``k`` chunks for each query; the table is opened once, queries encoded in
        batches."""
        return self.searcher(step).search_many(queries, k, batch=batch, keep_all=keep_all)

    def eval(
        self,
        queries: str | Path,
        qrels: str | Path,
        *,
        k: int = 100,
        step: str | None = None,
        record: bool = True,
    ) -> EvalResult:
        """nDCG@10, recall@10/100, MRR@10 (document level), bytes and latency of the index on
        BEIR-format ``queries`` (jsonl) and ``qrels`` (tsv); recorded in the catalog's
        ``evals`` table unless ``record`` is false."""
        from embedpipe.engine.evaluate import EvalInput, evaluate

        data = EvalInput.read(Path(queries), Path(qrels), k)
        return evaluate(self.dag, data, step=step, record=record)

    def sweep(
        self,
        queries: str | Path,
        qrels: str | Path,
        *,
        k: int = 100,
        step: str | None = None,
        on_result: Callable[[EvalResult], None] | None = None,
    ) -> list[EvalResult]:
        """``eval`` for each compression setting (float, int8, binary with and without
        re-scoring, asymmetric binary, Matryoshka and PCA dims), re-using the index's vectors:
        run ``run()`` first."""
        from embedpipe.engine.evaluate import EvalInput, sweep

        data = EvalInput.read(Path(queries), Path(qrels), k)
        return sweep(self.dag, data, step=step, overrides=self.overrides, on_result=on_result)

    def fit(
        self,
        step: str,
        *,
        queries: str | Path | None = None,
        qrels: str | Path | None = None,
    ) -> dict[str, Any]:
        """Fit a trainable step (a codec, a relevance adapter) as a new artifact version, from
        what the last run computed; the next run uses it. Returns the artifact id and what the
        step reports (rows fitted on, metrics)."""
        from embedpipe.engine.evaluate import read_qrels, read_queries
        from embedpipe.engine.fit import fit

        q = read_queries(Path(queries)) if queries else None
        rels = read_qrels(Path(qrels)) if qrels else None
        self._searchers.clear()  # queries are coded with the new version from now on
        return fit(self.dag, step, queries=q, qrels=rels)

    def plot(self, results: Sequence[EvalResult], path: str | Path) -> Path:
        """A PNG of ``results``: for a sweep, nDCG@10 against bytes per vector and against p50
        latency, with their Pareto fronts; for one eval of a spec with a filter step, the
        filter's precision-recall curve against the raw score's."""
        from embedpipe.engine.evaluate import plot, plot_filter

        n = results[0].queries if results else 0
        title = f"{self.name}: {n} queries"
        if len(results) == 1 and results[0].curves:  # one eval with a filter: its PR curve
            return plot_filter(results[0], Path(path), title=title)
        return plot(results, Path(path), title=title)

    def filters(self, step: str | None = None) -> bool:
        """Whether a step marks the hits of index ``step`` relevant (a query stage with a
        ``threshold``: a filter step)."""
        name, _ = self.dag.index(step)
        related = [self.dag.steps[name], *self.dag.ancestors(name), *self.dag.descendants(name)]
        return any(hasattr(st, "threshold") for s in related for st in s.query_stages())

    def sql(self, query: str) -> list[dict[str, Any]]:
        cols, rows = self.sql_rows(query)
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def sql_rows(self, query: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Column names and rows of a read-only DuckDB query over tables and catalog."""
        from embedpipe.engine.query import sql

        return sql(self.dag, query)

    def versions(self, *, step: str | None = None) -> list[dict[str, Any]]:
        """The index table's versions on disk, newest first."""
        from embedpipe.engine.versions import versions

        return versions(self.dag, step)

    def rollback(self, to_version: int, *, step: str | None = None) -> dict[str, Any]:
        """Make an older version of the index table live again (as a new version)."""
        from embedpipe.engine.versions import rollback

        self._searchers.clear()
        return rollback(self.dag, to_version, step)

    def artifacts(self) -> list[dict[str, Any]]:
        """Every fitted artifact in the workspace (codecs, adapters), newest first: its id,
        step, version, when it was fitted, on what model, and what its fit reported."""
        from embedpipe.artifacts import all_artifacts

        out = []
        for a in all_artifacts(self.workspace):
            lineage = a.lineage()
            out.append({"artifact": a.id, "step": a.step, "version": a.version,
                        "fitted_at": lineage.get("fitted_at"), "model": lineage.get("model"),
                        "run_id": lineage.get("run_id"), "metrics": lineage.get("metrics"),
                        "data_hash": lineage.get("data_hash")})  # fmt: skip
        return sorted(out, key=lambda r: str(r["fitted_at"] or ""), reverse=True)

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        from embedpipe.engine.query import runs

        return runs(self.dag, limit)


def load(
    path: str | Path, *, overrides: list[str] | None = None, workspace: str | Path | None = None
) -> Pipeline:
    """Load and type-check a spec; raises ``SpecError`` listing every problem."""
    return Pipeline(dag_mod.load(path, overrides=overrides, workspace=workspace), overrides)
