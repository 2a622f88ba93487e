"""The Python API, mirroring the CLI: ``embedpipe.load("spec.yaml").run()``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedpipe import dag as dag_mod

if TYPE_CHECKING:
    from embedpipe.engine.flow import RunResult


class Pipeline:
    """A loaded, type-checked pipeline. Building it loads no model and opens no database."""

    def __init__(self, dag: dag_mod.Dag, overrides: list[str] | None = None) -> None:
        self.dag = dag
        self.overrides = overrides or []

    @property
    def name(self) -> str:
        return self.dag.spec.name

    @property
    def workspace(self) -> Path:
        return self.dag.spec.workspace

    def run(self, *, progress: bool = False) -> RunResult:
        """Run the pipeline as one Prefect flow run; check ``.status`` on the result."""
        from embedpipe.engine.flow import execute

        dag_mod.build(self.dag.spec, preflight=True)  # sources may have gone since loading
        return execute(self.dag, overrides=self.overrides, progress=progress)

    def search(self, query: str, k: int = 10, *, step: str | None = None) -> list[dict[str, Any]]:
        from embedpipe.engine.query import search

        return search(self.dag, query, k, step=step)

    def sql(self, query: str) -> list[dict[str, Any]]:
        from embedpipe.engine.query import sql

        cols, rows = sql(self.dag, query)
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def versions(self, *, step: str | None = None) -> list[dict[str, Any]]:
        """The index table's versions on disk, newest first."""
        from embedpipe.engine.versions import versions

        return versions(self.dag, step)

    def rollback(self, to_version: int, *, step: str | None = None) -> dict[str, Any]:
        """Make an older version of the index table live again (as a new version)."""
        from embedpipe.engine.versions import rollback

        return rollback(self.dag, to_version, step)

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        from embedpipe.engine.query import runs

        return runs(self.dag, limit)


def load(
    path: str | Path, *, overrides: list[str] | None = None, workspace: str | Path | None = None
) -> Pipeline:
    """Load and type-check a spec; raises ``SpecError`` listing every problem."""
    return Pipeline(dag_mod.load(path, overrides=overrides, workspace=workspace), overrides)
