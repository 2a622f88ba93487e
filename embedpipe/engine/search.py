"""Search as a pipeline of stages, none of them named by the engine.

1. **Encode** the queries with the encoder the step that made the searched column supplies
   (``Step.query_encoder``), in batches.
2. **Candidates**: nearest rows on the index's search column, with its metric and ANN knobs;
   or, for a column the store cannot search (int8 codes) and for ``asymmetric`` search, every
   row scored in process by the scorer of the step that made the column (``Step.query_scorer``:
   a float query against the stored codes).
3. **Re-score** (when the index declares one): a shortlist of ``k * shortlist`` candidates
   scored exactly on another vector column, with that column's own query encoder.
4. **Stages** that steps contribute (``Step.query_stages``): those of the index step, of the
   steps it reads from and of the steps that read it, in DAG order (a relevance filter, a
   re-ranker). Each may re-order, annotate or cut the hits; the first ``k`` are returned.

A ``Searcher`` opens the table once: a batch of queries (``search_many``, for evaluation) costs
one open and one encoder call per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedpipe.dag import Dag
from embedpipe.engine.workspace import Workspace
from embedpipe.errors import NoQueryEncoder, NotIndexed
from embedpipe.results import Hit
from embedpipe.schemas import type_name
from embedpipe.steps.base import QueryEncoder, QueryStage, Scorer, VectorColumn

SHOWN = ("doc_id", "chunk_id", "text", "title")  # what every hit carries, where the table has it


def score(metric: str, distance: np.ndarray | float) -> Any:
    """Higher is better: similarity for cosine and dot (Lance returns 1 - similarity), the
    negated distance otherwise."""
    return 1.0 - distance if metric in ("cosine", "dot") else -distance


def store_searchable(column: VectorColumn) -> bool:
    """Whether LanceDB searches ``column`` itself: float vectors, or bit-packed codes by
    Hamming distance (not int8 codes)."""
    value = getattr(column.type, "value_type", None)
    if value is None:
        return False
    return pa.types.is_floating(value) or (
        column.metric == "hamming" and pa.types.is_unsigned_integer(value)
    )


def similarity(metric: str, docs: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Exact scores of ``docs`` (one row each) for ``query``, on the scale ``score`` gives
    Lance's distances: cosine and dot similarity, negated squared L2 (as Lance measures it),
    negated Hamming distance between bit-packed codes."""
    if metric == "hamming":
        diff = np.bitwise_xor(docs.astype(np.uint8), query.astype(np.uint8))
        return -np.unpackbits(diff, axis=1).sum(axis=1).astype(np.float64)
    d, q = docs.astype(np.float32), query.astype(np.float32)
    if metric == "cosine":
        norms = np.linalg.norm(d, axis=1) * (np.linalg.norm(q) or 1.0)
        return d @ q / np.where(norms == 0, 1.0, norms)
    if metric == "dot":
        return d @ q
    return -((d - q) ** 2).sum(axis=1)


def matrix(col: pa.ChunkedArray) -> np.ndarray:
    """A fixed-size-list column as a (rows, width) array."""
    col = col.combine_chunks()
    flat = col.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(col), -1) if len(col) else flat.reshape(0, 1)


def in_memory(scan: str, column: VectorColumn) -> bool:
    """Whether exact search on ``column`` scores rows in process (``scan``: memory, lance, or
    auto: Hamming codes without an ANN index, which a popcount over codes held in memory
    scores ~10x faster than LanceDB's flat scan)."""
    if scan != "auto":
        return scan == "memory"
    return column.metric == "hamming" and column.ann is None


class Held(Protocol):
    """A column scored in process: ``hold`` prepares it once per table version."""

    def hold(self, codes: np.ndarray) -> Any: ...
    def score(self, query: np.ndarray, held: Any) -> np.ndarray: ...


class ByScorer:
    """Codes scored by the scorer of the step that made them (a float query against codes)."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer

    def hold(self, codes: np.ndarray) -> Any:
        return codes

    def score(self, query: np.ndarray, held: Any) -> np.ndarray:
        return np.asarray(self.scorer.score(query, held))


class ByMetric:
    """A column scored by its metric on the scale of ``score``: float vectors as a matrix,
    bit-packed codes by Hamming distance as column-major 64-bit words (a popcount per word
    over contiguous memory: ~15 ms a query for 1M codes of 48 bytes on one core)."""

    def __init__(self, metric: str) -> None:
        self.metric = metric

    def hold(self, codes: np.ndarray) -> Any:
        if self.metric != "hamming":
            return np.ascontiguousarray(codes, dtype=np.float32)
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        word = np.uint64 if codes.shape[1] % 8 == 0 else np.uint8
        return np.ascontiguousarray(codes.view(word).T)

    def score(self, query: np.ndarray, held: Any) -> np.ndarray:
        if self.metric != "hamming":
            return similarity(self.metric, held, query)
        q = np.ascontiguousarray(query, dtype=np.uint8).view(held.dtype)
        distance = np.zeros(held.shape[1], np.int32)
        for j in range(held.shape[0]):
            distance += np.bitwise_count(np.bitwise_xor(held[j], q[j]))
        return -distance


class Searcher:
    """Searches one index step's table; built once, used for any number of queries."""

    def __init__(self, dag: Dag, step: str | None = None, *, without: Sequence[str] = ()) -> None:
        """``without``: steps whose query stages are left out (`pipe fit` fits a step on the
        hits it would otherwise act on; a sweep's scratch workspaces hold no fitted state)."""
        self.dag, self.without = dag, set(without)
        self.step, self.target = dag.index(step)
        self.ws = Workspace.of(dag.spec)
        table = self.target.table
        if not self.ws.table_exists(table):
            raise NotIndexed(
                f"table '{table}' does not exist in {self.ws.root} yet; run first: "
                f"pipe run {dag.spec.path}"
            )
        self.column = self.target.vector(self.target.search)
        self.rescore: VectorColumn | None = None
        if self.target.rescore:
            self.rescore = self.target.vector(self.target.rescore)
        self.stages = self._stages()
        self._scanned: tuple[int, np.ndarray, Any] | None = None  # version, row ids, held codes
        self._ds: Any = None  # the Lance dataset of the version searched (in-process scans)
        with self.ws.reading(table):
            self.tbl = self.ws.connect().open_table(table)
            have = set(self.tbl.schema.names)
            stored = self.tbl.schema.field(self.column.name) if self.column.name in have else None
            self._bind()
        declared = self.column.type
        if stored is None or (
            pa.types.is_fixed_size_list(declared) and not stored.type.equals(declared)
        ):
            name = self.column.name
            held = f"no column '{name}'" if stored is None else (
                f"'{name}' as {type_name(stored.type)}")  # fmt: skip
            raise NotIndexed(
                f"table '{table}' holds {held}, but the spec makes it {type_name(declared)}: "
                f"the spec changed since the table was written; run it first: "
                f"pipe run {dag.spec.path}"
            )
        wanted = [*SHOWN, self.target.key] + [c for s in self.stages for c in s.columns]
        self.columns = list(dict.fromkeys(c for c in wanted if c in have))

    def _bind(self) -> None:
        """(Re)build the query encoders and scorer for the table version open now: a column
        made with fitted state gets the state the table's rows name (read once per version)."""
        self.version = int(self.tbl.version)
        self._ds = None
        self.states = {c.name: self._state(c) for c in self.target.vectors if c.made_with}
        # Scan in process (every row scored by the producing step's scorer) when asked to
        # (asymmetric) or when the store cannot compare the column itself; by the column's own
        # metric when the index says so (``scan``: Hamming codes by default, held in memory).
        self.held: Held | None = None
        if self.target.asymmetric or not store_searchable(self.column):
            scorer = self._scorer(self.column.name)
            self.held = ByScorer(scorer)
            self.encode = scorer.encode
        else:
            self.encode = self._encoder(self.column.name)
            if in_memory(self.target.scan, self.column):
                self.held = ByMetric(self.column.metric)
        self.encode_rescore: QueryEncoder | None = None
        if self.rescore is not None:
            self.encode_rescore = self._encoder(self.rescore.name)

    def _state(self, column: VectorColumn) -> str | None:
        """The one fitted state the table's rows name for ``column`` (None for no rows)."""
        name = column.made_with
        assert name is not None
        if name not in self.tbl.schema.names:
            return None
        values = pc.unique(self.tbl.to_lance().to_table(columns=[name]).column(name))
        named = [v for v in values.to_pylist() if v]
        if len(named) > 1:
            raise NotIndexed(
                f"table '{self.target.table}' holds rows of '{column.name}' made with "
                f"{len(named)} different states ({', '.join(sorted(named)[:3])}): a run was "
                f"cut short; run again to re-code them: pipe run {self.dag.spec.path}"
            )
        return named[0] if named else None

    def _kwargs(self, column: str) -> dict[str, Any]:
        return {"state": self.states.get(column)} if column in self.states else {}

    def _encoder(self, column: str) -> QueryEncoder:
        """The query encoder of the step nearest the index that supplies one for ``column``."""
        for step in [self.dag.steps[self.step], *self.dag.ancestors(self.step)]:
            encoder = step.query_encoder(column, **self._kwargs(column))
            if encoder is not None:
                return encoder
        raise NoQueryEncoder(
            f"no step upstream of index step '{self.step}' can encode a query for its vector "
            f"column '{column}'; the step that writes '{column}' must implement query_encoder()"
        )

    def _scorer(self, column: str) -> Scorer:
        for step in [self.dag.steps[self.step], *self.dag.ancestors(self.step)]:
            scorer = step.query_scorer(column, **self._kwargs(column))
            if scorer is not None:
                return scorer
        why = (
            "asymmetric: true"
            if self.target.asymmetric
            else (f"LanceDB cannot search its type ({self.column.type})")
        )
        raise NoQueryEncoder(
            f"index step '{self.step}' searches '{column}' in process ({why}), but no step "
            f"upstream scores queries against it; the step that writes '{column}' must "
            "implement query_scorer()"
        )  # fmt: skip

    def _stages(self) -> list[QueryStage]:
        related = {self.step}
        related |= {s.name for s in self.dag.ancestors(self.step)}
        related |= {s.name for s in self.dag.descendants(self.step)}
        related -= self.without
        return [
            st for n in self.dag.order if n in related for st in self.dag.steps[n].query_stages()
        ]

    def search(self, query: str, k: int = 10, *, keep_all: bool = False) -> list[Hit]:
        """Top-``k`` hits for ``query``, best first."""
        return self.search_many([query], k, keep_all=keep_all)[0]

    def search_many(
        self,
        queries: Sequence[str],
        k: int = 10,
        *,
        batch: int = 64,
        exact: bool = False,
        refresh: bool = True,
        keep_all: bool = False,
    ) -> list[list[Hit]]:
        """Top-``k`` hits for each query, best first; queries are encoded ``batch`` at a time.
        ``exact``: ignore the ANN index (what `pipe eval` measures its recall against);
        ``refresh=False``: search the table version already open (timing loops);
        ``keep_all``: keep the hits a stage marked ``kept: false`` (dropped otherwise)."""
        out: list[list[Hit]] = []
        if refresh:
            with self.ws.reading(self.target.table):
                self.tbl.checkout_latest()  # a run in another process may have committed
                if int(self.tbl.version) != self.version:
                    self._bind()
        depth = max([1, *(s.depth for s in self.stages)])
        for i in range(0, len(queries), batch):
            part = list(queries[i : i + batch])
            vectors = self.encode(part)
            rescore = self.encode_rescore(part) if self.encode_rescore else None
            hits = []
            for j, vector in enumerate(vectors):
                ids, scores = self._candidates(vector, k * max(depth, self.target.shortlist), exact)
                if rescore is not None:
                    ids, scores = self._rescored(ids, rescore[j], k * depth)
                hits.append(self._hits(ids, scores))
            for stage in self.stages:
                hits = stage(part, hits)
            # Columns fetched only for stages are theirs; a hit keeps what they added.
            internal = set(self.columns) - {*SHOWN, self.target.key}
            out.extend([{c: v for c, v in h.items() if c not in internal} for h in found[:k]
                        if keep_all or h.get("kept", True)] for found in hits)  # fmt: skip
        return out

    # Candidates are row ids and scores, best first; a hit's columns are read only for the rows
    # that survive re-scoring (a k * N shortlist never reads text).
    def _dataset(self) -> Any:
        if self._ds is None:
            self._ds = self.tbl.to_lance()
        return self._ds

    def _take(self, ids: np.ndarray, columns: list[str]) -> pa.Table:
        """Rows ``ids`` in that order (read in row id order: fewer, longer reads)."""
        order = np.argsort(ids, kind="stable")
        with self.ws.reading(self.target.table):
            rows = self._dataset()._take_rows(ids[order].tolist(), columns=columns)
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return rows.take(pa.array(back))

    def _candidates(
        self, vector: np.ndarray, n: int, exact: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.held is not None:
            return self._scan(vector, n)
        column = self.column
        ann = None if exact else column.ann
        q = (
            self.tbl.search(vector, vector_column_name=column.name)
            .distance_type(column.metric)
            .limit(n)
            .select([self.target.key, "_distance"])  # named: Lance warns on every query else
            .with_row_id(True)
        )
        if ann is None:
            q = q.bypass_vector_index()  # exact, as declared, even if an old index is left
        else:
            q = q.nprobes(ann.nprobes)
            if ann.refine_factor:
                q = q.refine_factor(ann.refine_factor)
        with self.ws.reading(self.target.table):
            found = q.to_arrow()
        ids = found.column("_rowid").to_numpy()
        scores = np.asarray(score(column.metric, found.column("_distance").to_numpy()), float)
        order = np.argsort(-scores, kind="stable")
        return ids[order], scores[order]

    def _scan(self, query: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` best rows, every row of the table scored in process: by the producing
        step's scorer, or by the column's metric (the column is read once per table version
        and held)."""
        ds = self._dataset()
        if self._scanned is None or self._scanned[0] != ds.version:
            with self.ws.reading(self.target.table):
                t = ds.to_table(columns=[self.column.name], with_row_id=True)
            assert self.held is not None
            codes = self.held.hold(matrix(t.column(self.column.name)))
            self._scanned = (ds.version, t.column("_rowid").to_numpy(), codes)
        _, ids, held = self._scanned
        if not len(ids):
            return ids, np.zeros(0)
        assert self.held is not None
        scores = np.asarray(self.held.score(np.asarray(query), held), np.float64)
        n = min(n, len(scores))
        best = np.argpartition(-scores, n - 1)[:n]
        best = best[np.argsort(-scores[best], kind="stable")]
        return ids[best], scores[best]

    def _rescored(
        self, ids: np.ndarray, query: np.ndarray, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The best ``n`` of ``ids`` re-scored exactly on the re-score column."""
        assert self.rescore is not None
        if not len(ids):
            return ids, np.zeros(0)
        name, metric = self.rescore.name, self.rescore.metric
        docs = matrix(self._take(ids, [name]).column(name))
        sims = np.asarray(similarity(metric, docs, np.asarray(query)), np.float64)
        order = np.argsort(-sims, kind="stable")[:n]
        return ids[order], sims[order]

    def _hits(self, ids: np.ndarray, scores: np.ndarray) -> list[Hit]:
        if not len(ids):
            return []
        table = self._take(ids, self.columns)
        # Vector columns (read only for stages) stay arrays: one numpy row per hit, not a
        # Python list of floats (a stage over thousands of 384-d vectors per query).
        vectors = {c: matrix(table.column(c)) for c in table.column_names
                   if pa.types.is_fixed_size_list(table.schema.field(c).type)}  # fmt: skip
        rows = table.drop_columns(list(vectors)).to_pylist()
        for name, values in vectors.items():
            for row, value in zip(rows, values, strict=True):
                row[name] = value
        hits = []
        for row, s in zip(rows, scores, strict=True):
            row["score"] = float(s)
            for shown in ("text", "title"):  # "" where absent (a table without its text)
                row[shown] = row.get(shown) or ""
            hits.append(row)
        return hits
