"""filter: a relevance cutoff at query time, calibrated per query (the Cosine Adapter,
arXiv 2408.04887) or one raw-score threshold (the baseline). It writes nothing at index time.

The adapter maps a hit's score ``s`` to a relevance probability with a monotone function whose
parameters a small network predicts from the query's embedding:

    p = sigmoid(a(q) * g(s) + b(q)),   a(q) = softplus(.) > 0

``g`` is the family: linear ``s``, sqrt ``sign(s) sqrt(|s|)``, quadratic ``sign(s) s^2`` or
power ``sign(s) |s|^c(q)`` (``c(q) > 0`` predicted too). Every family is increasing in ``s``,
so within a query the filter never re-orders hits; one global threshold on ``p`` keeps or
drops them. `pipe fit` trains it (the encoder frozen) on the pipeline's own hits for judged
queries: a document its qrels mark relevant is a positive, every other retrieved one a
negative; binary cross-entropy, early stopping on held-out queries, then the threshold chosen
for ``target_precision`` or ``target_recall`` on those held-out queries.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from embedpipe import schemas
from embedpipe.artifacts import Artifact, key_of
from embedpipe.errors import ArtifactError
from embedpipe.results import Event, Hit
from embedpipe.steps import adapter
from embedpipe.steps.adapter import Adapter
from embedpipe.steps.base import (
    QUERY_TIME,
    FitContext,
    Link,
    QueryEncoder,
    QueryStage,
    Step,
    StepConfig,
    StepContext,
    identity,
)

Family = Literal["linear", "sqrt", "quadratic", "power"]

# The adapter reads the query's vector: something upstream must make query vectors.
NO_QUERY_ENCODER = (
    "method cosine_adapter reads each query's vector, but no step upstream encodes queries; "
    "put an encode step upstream of it (its 'vector' column), or use method: cosine_threshold"
)


class FilterConfig(StepConfig):
    method: Literal["cosine_adapter", "cosine_threshold"] = Field(
        "cosine_adapter",
        description="cosine_adapter: a per-query monotone map of the score to a relevance "
        "probability, fitted by `pipe fit`. cosine_threshold: one global threshold on the raw "
        "score (the baseline).",
    )
    family: Family = Field(
        "linear", description="cosine_adapter: g(s) in sigmoid(a(q) g(s) + b(q)): linear, "
        "sqrt, quadratic or power (an exponent per query).",
    )  # fmt: skip
    threshold: float | None = Field(
        None, description="Hits with relevance >= threshold are kept. Default: the one "
        "`pipe fit` chose for target_precision / target_recall (0.5 for an adapter fitted "
        "without a target). Query time only.", json_schema_extra=QUERY_TIME,
    )  # fmt: skip
    target_precision: float | None = Field(
        None, gt=0, le=1, description="`pipe fit` picks the lowest threshold whose precision "
        "on held-out queries reaches this (the most recall at that precision).",
    )  # fmt: skip
    target_recall: float | None = Field(
        None, gt=0, le=1, description="`pipe fit` picks the highest threshold whose recall on "
        "held-out queries reaches this.",
    )  # fmt: skip
    depth: int = Field(
        100, ge=10, le=1000, description="`pipe fit`: hits per training query (the negatives "
        "are the retrieved documents its qrels do not mark).",
    )  # fmt: skip
    features: list[Literal["embedding", "top_score"]] = Field(
        ["embedding", "top_score"], min_length=1, description="cosine_adapter: what the "
        "network reads of a query: its embedding, and/or its top hit's score (SciFact: "
        "PR-AUC 0.436 with both, 0.382 with the embedding alone, bench/RESULTS.md).",
    )  # fmt: skip
    hidden: int = Field(64, ge=4, le=4096, description="cosine_adapter: hidden units.")
    holdout: float = Field(
        0.2, gt=0, lt=1, description="`pipe fit`: the share of queries held out for early "
        "stopping and for choosing the threshold.",
    )  # fmt: skip
    seed: int = Field(0, description="`pipe fit`: the random seed (query split, weights).")


class Filter(Step):
    """A query-time relevance filter: each hit gets ``relevance`` and ``kept``.

    ```yaml
    relevance:
      type: filter
      input: index
      method: cosine_adapter     # or cosine_threshold (one raw-score threshold)
      family: linear             # sqrt | quadratic | power
      target_precision: 0.5      # pipe fit chooses the threshold for it
    ```
    Fit it with `pipe fit SPEC --step relevance --queries Q.jsonl --qrels QRELS.tsv`. Searches
    then drop the hits it does not keep (``pipe search --all`` keeps them, marked).
    """

    type = "filter"
    Config = FilterConfig
    config: FilterConfig
    reads = pa.schema([schemas.CHUNKS.field("chunk_id"), schemas.CHUNKS.field("doc_id")])
    # Not row-wise: it maps nothing (it acts at query time), so no executor ships its input
    # (the vectors) to workers only to get nothing back.
    trainable = True

    def output_schema(self, inputs: list[Link]) -> pa.Schema:
        return inputs[0].schema if inputs else pa.schema(list(self.reads or []))

    def check(self, inputs: list[Link]) -> list[tuple[tuple[str, ...], str]]:
        c = self.config
        problems: list[tuple[tuple[str, ...], str]] = []
        if self.downstream:
            names = ", ".join(s.name for s in self.downstream)
            problems.append((("input",), f"a filter writes nothing at index time, so step(s) "
                             f"{names} would read no rows; read its input instead"))  # fmt: skip
        if c.target_precision is not None and c.target_recall is not None:
            problems.append((("target_recall",), "set target_precision or target_recall, not "
                             "both: the fitted threshold serves one of them"))  # fmt: skip
        if c.method == "cosine_threshold" and c.family != "linear":
            problems.append((("family",), "cosine_threshold has no family (it thresholds the "
                             "raw score); drop family or use method: cosine_adapter"))  # fmt: skip
        return problems

    def run(self, inputs: list[Iterable[pa.RecordBatch]], ctx: StepContext) -> Iterator[Event]:
        for _ in inputs[0]:  # read, as before, and nothing written at index time
            pass
        yield from ()

    # -- the fitted state ---------------------------------------------------------------------
    def _made_by(self) -> list[dict[str, Any]]:
        """What decides the scores and query vectors it is fitted on: every step upstream,
        query-time settings included (a query prompt, rescoring, a fusion weight)."""
        return [
            {"step": s.type, "config": identity(s.config, query_time=True), **s.fingerprint()}
            for s in self.reachable("upstream")
        ]

    def state_key(self) -> str:
        """Where this config's fitted state lives: a new config, model or search upstream (the
        scores it calibrates) needs a new fit."""
        identity = {k: v for k, v in self.config.identity().items() if k != "threshold"}
        return key_of({"type": self.type, "version": self.version, "config": identity,
                       "upstream": self._made_by()})  # fmt: skip

    def fitted(self) -> Artifact | None:
        return self.artifacts().latest(self.state_key())

    def _fit_command(self) -> str:
        spec = self.spec_path or "SPEC"
        return f"pipe fit {spec} --step {self.name} --queries QUERIES.jsonl --qrels QRELS.tsv"

    def calibration(self) -> Calibration:
        """What the stage applies: the fitted state (or, for cosine_threshold with a threshold
        in the spec, none is needed)."""
        c = self.config
        found = self.fitted()
        if found is None:
            if c.method == "cosine_threshold" and c.threshold is not None:
                return Calibration(None, c.threshold, None)
            what = "adapter" if c.method == "cosine_adapter" else "threshold"
            raise ArtifactError(
                f"step '{self.name}' ({c.method}) has no fitted {what} in "
                f"{self.artifacts().root}; fit one first: {self._fit_command()}"
                + (" (or set its threshold in the spec)" if c.method == "cosine_threshold" else "")
            )
        state = found.arrays()
        net = Adapter.load(state) if c.method == "cosine_adapter" else None
        threshold = c.threshold if c.threshold is not None else float(state["threshold"])
        return Calibration(net, threshold, found)

    def query_stages(self) -> list[QueryStage]:
        return [Relevance(self, self.upstream_query_encoder("vector"))]

    def fit(self, ctx: FitContext) -> dict[str, Any]:
        if not ctx.queries or not ctx.qrels:
            raise ArtifactError(
                f"step '{self.name}' learns from judged queries: {self._fit_command()}"
            )
        if ctx.search is None:
            raise ArtifactError(
                f"step '{self.name}' is fitted on the index's own hits, and there is none yet; "
                "run the pipeline first"
            )
        encode = self.upstream_query_encoder("vector")
        if encode is None and self.config.method == "cosine_adapter":
            raise ArtifactError(f"step '{self.name}': {NO_QUERY_ENCODER}")
        data = adapter.training_data(ctx.queries, ctx.qrels, ctx.search, encode, self.config.depth)
        state, report = adapter.fit(self.config, data)
        digest = hashlib.sha256(
            json.dumps([data.qids, data.labels_digest()], sort_keys=True).encode()
        ).hexdigest()[:16]
        models = [m for s in self.reachable("upstream") for m in s.models()]
        lineage = {
            "method": self.config.method,
            "family": self.config.family,
            "config": self.config.identity(),
            "model": ", ".join(models) or None,
            "input": self._made_by(),
            "queries": len(data.qids),
            "pairs": int(data.labels.size),
            "positives": int(data.labels.sum()),
            "data_hash": digest,
            "metrics": report,
            "run_id": ctx.fit_id,
        }
        artifact = self.artifacts(ctx.workspace).save(self.state_key(), state, lineage)
        return {"artifact": artifact.id, "version": artifact.version, **report}


class Calibration:
    """A fitted filter, ready to score: the adapter (None: the raw score is the relevance)
    and the threshold."""

    def __init__(self, net: Adapter | None, threshold: float, artifact: Artifact | None) -> None:
        self.net, self.threshold, self.artifact = net, threshold, artifact

    def relevance(self, queries: np.ndarray | None, scores: list[np.ndarray]) -> list[np.ndarray]:
        if self.net is None:
            return [np.asarray(s, np.float64) for s in scores]
        assert queries is not None
        return [self.net.apply(q, s) for q, s in zip(queries, scores, strict=True)]


class Relevance:
    """The filter's query stage: each hit gets ``relevance`` (the calibrated score) and
    ``kept`` (relevance >= threshold); the order of hits is unchanged (the map is monotone per
    query). The searcher drops unkept hits unless asked for all."""

    name = "relevance"
    columns: tuple[str, ...] = ()
    depth = 1
    threshold: float | None = None  # the threshold applied (known once calibrated)

    def __init__(self, step: Filter, encode: QueryEncoder | None) -> None:
        self.step, self.encode = step, encode
        self._calibration: tuple[str | None, Calibration] | None = None

    def calibration(self) -> Calibration:
        """Read once, again after a `pipe fit` makes a newer version."""
        found = self.step.fitted()
        key = found.id if found else None
        if self._calibration is None or self._calibration[0] != key:
            self._calibration = (key, self.step.calibration())
        return self._calibration[1]

    def __call__(self, queries: Sequence[str], hits: list[list[Hit]]) -> list[list[Hit]]:
        cal = self.calibration()
        self.threshold = cal.threshold
        vectors = None
        if cal.net is not None:
            if self.encode is None:
                raise ArtifactError(f"step '{self.step.name}': {NO_QUERY_ENCODER}")
            vectors = np.asarray(self.encode(list(queries)), np.float64)
        scores = [np.asarray([float(h["score"]) for h in found], np.float64) for found in hits]
        for found, rel in zip(hits, cal.relevance(vectors, scores), strict=True):
            for hit, r in zip(found, rel.tolist(), strict=True):
                hit["relevance"] = r
                hit["kept"] = r >= cal.threshold
        return hits
