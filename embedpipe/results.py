"""What steps, runs, plans and searches produce: every result type, in one place.

Steps stream *events*: Arrow record batches, plus ``Skipped`` inputs and ``Stats`` as data (an
executor running a step elsewhere sends them back the same way). The engine folds them into a
``StepResult`` per step and a ``RunResult`` (or ``Plan``) per command.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import pyarrow as pa


@dataclass(frozen=True)
class Skipped:
    """An input a step refused, with a one-sentence reason; the run goes on."""

    item: str
    reason: str


@dataclass(frozen=True)
class Stats:
    """Counts a step reports about its output beyond the rows it yields (an index step's
    write: ``computed``, ``cached``, ``deleted``, ``new``, ``changed``, ``rows_out``,
    ``version``, ``commits``); later values win."""

    values: dict[str, int]


Event: TypeAlias = pa.RecordBatch | Skipped | Stats

# One search hit: at least doc_id, chunk_id, score and text; stages may add keys
# (a relevance filter adds relevance and kept).
Hit: TypeAlias = dict[str, Any]


def best_per_document(hits: Iterable[Hit]) -> dict[str, Hit]:
    """A query's chunk hits folded to their documents: each document's best-scoring hit, best
    document first (a hit without a doc_id stands for itself, by chunk_id)."""
    best: dict[str, Hit] = {}
    for h in hits:
        doc = str(h.get("doc_id") or h.get("chunk_id"))
        if doc not in best or float(h["score"]) > float(best[doc]["score"]):
            best[doc] = h
    return dict(sorted(best.items(), key=lambda kv: float(kv[1]["score"]), reverse=True))


@dataclass
class StepResult:
    rows_in: int = 0
    rows_out: int = 0
    computed: int = 0
    cached: int = 0
    deleted: int = 0
    skipped: int = 0
    seconds: float = 0.0
    status: str = "pending"
    error: str | None = None
    # Relative to the live index: documents (source steps) or rows (index steps).
    new: int = 0
    changed: int = 0
    # Plans only: rows left to a run (a step that was not run to count), and its estimated time.
    estimated: bool = False
    estimated_seconds: float | None = None
    commits: bool = False  # an index step's write would commit (rows or ANN index changed)
    started_at: Any = None
    skips: list[tuple[str, str]] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)  # what the step reported (Stats)

    def absorb(self, stats: dict[str, int]) -> None:
        """Take the counts a step reported as ``Stats`` (they win over the engine's own)."""
        self.rows_out = stats.get("rows_out", self.rows_out)
        self.cached = stats.get("cached", self.cached)
        self.computed = stats.get("computed", self.rows_out - self.cached)
        self.deleted = stats.get("deleted", self.deleted)
        self.new = stats.get("new", self.new)
        self.changed = stats.get("changed", self.changed)
        self.commits = bool(stats.get("commits", 0))


@dataclass
class RunResult:
    run_id: str
    pipeline: str
    status: str = "running"
    lance_version: int | None = None  # the version this run committed, if any
    live_version: int = 0  # the index table's version after the run (the previous one on failure)
    steps: dict[str, StepResult] = field(default_factory=dict)
    flow_run_id: str | None = None
    error: str | None = None
    seconds: float = 0.0
    noop: bool = False  # nothing to do: nothing was computed or committed, Prefect not started
    # The catalog refused the run's record (busy, damaged, full disk): where it went instead.
    warning: str | None = None
    record_lost: bool = False  # ... and it could not be kept for later either

    @property
    def skipped(self) -> int:
        return sum(s.skipped for s in self.steps.values())

    def to_json(self) -> dict[str, Any]:
        """The §9 shape of `pipe run --json`."""
        keys = ("rows_in", "rows_out", "computed", "cached", "deleted", "skipped", "seconds")
        return {
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "status": self.status,
            "lance_version": self.lance_version or self.live_version,
            "steps": {n: {k: getattr(s, k) for k in keys} for n, s in self.steps.items()},
            **({"error": self.error} if self.error else {}),
            **({"warning": self.warning} if self.warning else {}),
        }


@dataclass
class Plan:
    """What a run would do, per step (`pipe plan`)."""

    pipeline: str
    steps: dict[str, StepResult]
    noop: bool

    def to_json(self) -> dict[str, Any]:
        keys = ("rows_in", "rows_out", "new", "changed", "deleted", "cached", "computed")
        keys += ("skipped", "estimated", "estimated_seconds")
        return {
            "pipeline": self.pipeline,
            "noop": self.noop,
            "steps": {n: {k: getattr(s, k) for k in keys} for n, s in self.steps.items()},
        }


@dataclass
class EvalResult:
    """What `pipe eval` measured for one configuration (DESIGN.md §9): document-level IR
    metrics, the searched column's bytes per vector, the table's bytes on disk and single-query
    latency through the search pipeline; ``ann_recall`` (recall@10 of the ANN index against
    exact search on the same queries) when an ANN index answered."""

    config: str
    ndcg_10: float
    recall_10: float
    recall_100: float
    mrr_10: float
    queries: int
    bytes_per_vector: float
    index_bytes: int
    latency_ms_p50: float
    latency_ms_p95: float
    ann_recall_10: float | None = None
    lance_version: int | None = None
    seconds: float = 0.0
    eval_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # what query stages add (a filter)
    # a filter's precision-recall curves, for `pipe eval --plot` (not part of the JSON)
    curves: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "config": self.config,
            "ndcg@10": self.ndcg_10,
            "recall@10": self.recall_10,
            "recall@100": self.recall_100,
            "mrr@10": self.mrr_10,
            "queries": self.queries,
            "bytes_per_vector": self.bytes_per_vector,
            "index_bytes": self.index_bytes,
            "latency_ms_p50": self.latency_ms_p50,
            "latency_ms_p95": self.latency_ms_p95,
        }
        if self.ann_recall_10 is not None:
            out["ann_recall@10"] = self.ann_recall_10
        return {**out, **self.extra}
