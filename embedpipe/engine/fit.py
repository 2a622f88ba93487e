"""`pipe fit`: fit a trainable step's state (a codec, a relevance adapter) as a new artifact
version, from what the last run computed; nothing else is written. The next run uses it (a
step whose output depends on it re-computes, since its cache fingerprint names the version)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from embedpipe.dag import Dag
from embedpipe.engine.cache import KEY, StepCache
from embedpipe.engine.catalog import new_run_id
from embedpipe.engine.search import Searcher
from embedpipe.engine.workspace import Workspace
from embedpipe.errors import NoIndex, NotIndexed, UsageError
from embedpipe.steps.base import FitContext


class _CachedRows:
    """A step's cached output rows, readable again and again (batch by batch)."""

    def __init__(self, cache: StepCache) -> None:
        self.cache = cache

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        ds = self.cache._dataset()
        if ds is None:
            return
        columns = [n for n in ds.schema.names if n != KEY]
        yield from ds.to_batches(columns=columns, batch_size=8192)


def fit(
    dag: Dag,
    step: str,
    *,
    queries: dict[str, str] | None = None,
    qrels: dict[str, dict[str, int]] | None = None,
) -> dict[str, Any]:
    """Fit ``step`` (holding the workspace lock, so no run sees half of it)."""
    if step not in dag.steps:
        raise UsageError(f"--step {step}: no such step; steps: {', '.join(dag.order)}")
    target = dag.steps[step]
    trainable = [n for n in dag.order if dag.steps[n].trainable]
    if not target.trainable:
        raise UsageError(
            f"step '{step}' ({target.type}) has nothing to fit; trainable steps in this spec: "
            f"{', '.join(trainable) or 'none'}"
        )
    ws = Workspace.of(dag.spec)
    rows = None
    ups = target.config.inputs()
    if len(ups) == 1:
        cache = StepCache(ws.root, dag.steps[ups[0]], writable=False)
        if cache._dataset() is not None:
            rows = _CachedRows(cache)
    search = None
    try:
        near = [s.name for s in (*dag.ancestors(step), *dag.descendants(step))]
        index = next((n for n in near if n in dag.targets), None)  # the index it acts on
        searcher = Searcher(dag, index, without=[step])  # the hits as they reach the step
        search = lambda texts, k: searcher.search_many(texts, k, keep_all=True)  # noqa: E731
    except (NoIndex, NotIndexed, UsageError):
        pass
    fit_id = new_run_id()
    with ws.lock(dag.spec.name):
        ctx = FitContext(ws.root, fit_id, rows, queries, qrels, search)
        report = target.fit(ctx)
    return {"step": step, "fit_id": fit_id, **report}
