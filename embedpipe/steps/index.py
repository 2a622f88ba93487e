"""index: write vectors and their chunks into a LanceDB table, with lineage columns."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from embedpipe import schemas
from embedpipe.results import Event, Stats
from embedpipe.steps.base import (
    ADDED,
    QUERY_TIME,
    SPEED_ONLY,
    Ann,
    IndexTarget,
    Link,
    Step,
    StepConfig,
    StepContext,
    VectorColumn,
)


class AnnConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["none", "ivf_pq", "ivf_hnsw_sq", "ivf_flat"] = Field(
        "none",
        description="none: exact search. ivf_pq / ivf_hnsw_sq / ivf_flat: approximate, faster "
        "(ivf_flat also for hamming codes).",
    )
    partitions: int | Literal["auto"] = Field("auto", description="IVF partitions (auto: ~√rows).")
    sub_vectors: int | Literal["auto"] = Field(
        "auto", description="PQ sub-vectors (auto: the largest divisor of d up to d/8)."
    )
    min_rows: int = Field(
        5000, ge=256, description="Build the ANN index only once the table has this many rows."
    )
    nprobes: int = Field(
        20, gt=0, description="Partitions probed per query (query time only).",
        json_schema_extra=SPEED_ONLY,
    )  # fmt: skip
    refine_factor: int | None = Field(
        None, gt=0, description="Re-rank k * this many candidates with exact distances "
        "(query time only).", json_schema_extra=SPEED_ONLY,
    )  # fmt: skip
    rebuild: float = Field(
        0.2, ge=0, le=1, description="A run that changed rows adds them to the index as a "
        "delta (seconds; the partitions stay as trained) until more than this share of the "
        "table's rows came after the index was trained; then it trains the index again. 0: "
        "train it again on every change. Speed only.", json_schema_extra=SPEED_ONLY,
    )  # fmt: skip

    def declared(self) -> Ann | None:
        if self.type == "none":
            return None
        return Ann(
            kind=self.type,
            partitions=None if self.partitions == "auto" else self.partitions,
            sub_vectors=None if self.sub_vectors == "auto" else self.sub_vectors,
            min_rows=self.min_rows,
            nprobes=self.nprobes,
            refine_factor=self.refine_factor,
            rebuild=self.rebuild,
        )


class IndexConfig(StepConfig):
    table: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Lance table name (default: the pipeline name); also its view name in "
        "`pipe sql`, so not runs, step_runs, skipped, evals, a DuckDB reserved word or another "
        "index step's table.",
    )
    column: str = Field(
        "vector", description="The vector column searched (one an upstream step marked)."
    )
    metric: Literal["cosine", "dot", "l2", "hamming"] | None = Field(
        None, description="Distance on `column` (default: the one its step marked it with)."
    )
    dims: int | None = Field(
        None, gt=0, description="Expected vector dimension; checked against the input."
    )
    ann: AnnConfig = Field(default_factory=AnnConfig)
    rescore: int | None = Field(
        None, ge=1, description="Re-score a shortlist of k * this many candidates on "
        "`rescore_column` (exact distances on another vector column; query time only).",
        json_schema_extra=QUERY_TIME,
    )  # fmt: skip
    rescore_column: str = Field(
        "vector", description="The vector column that re-scores (query time only).",
        json_schema_extra=QUERY_TIME,
    )  # fmt: skip
    asymmetric: bool = Field(
        False, description="Score a float query against the codes in `column` in process "
        "(no float vector read; e.g. a float query against binary codes) instead of the "
        "store's search (query time only).", json_schema_extra=QUERY_TIME,
    )  # fmt: skip
    store_vectors: bool = Field(
        True, description="Keep the input's other vector columns (the float vectors beside "
        "codes) in the table; false keeps only `column`, e.g. a binary-only index 32x smaller "
        "(then `rescore` has nothing to read).",
    )  # fmt: skip
    store_columns: Literal["all"] | list[str] = Field(
        "all", description="The input's other columns the table keeps: all, or a list "
        "(e.g. [] or [title] when the text lives in another store: hits then carry no "
        "text). Always kept: chunk_id, doc_id, content_hash, the vector columns and what "
        "made them (the `codec` column of codes).", json_schema_extra=ADDED,
    )  # fmt: skip
    scan: Literal["auto", "lance", "memory"] = Field(
        "auto", description="Where exact search (no ANN index) compares rows. lance: "
        "LanceDB's flat scan, from disk. memory: `column` read once per table version, held "
        "in memory and scored in process (1M binary codes of 384 bits: 46 MiB, ~20 ms a "
        "query vs ~120 ms in LanceDB). auto: memory for Hamming codes without an ANN index, "
        "lance otherwise "
        "(query time only).", json_schema_extra=QUERY_TIME,
    )  # fmt: skip
    retain: int | None = Field(
        10,
        ge=1,
        description="Table versions to keep for `pipe rollback`; older ones and their files "
        "are removed after each commit. null keeps every version.",
    )
    compact: int | None = Field(
        16, ge=1, description="Once more than this many of the table's fragments are small "
        "(under 100,000 rows) or have 10% of their rows deleted, an incremental run that "
        "changed rows merges them, dropping deleted rows, right after its commit: search "
        "slows with every fragment that incremental runs add. null never compacts. Speed "
        "only.",
        json_schema_extra=SPEED_ONLY,
    )  # fmt: skip


class Index(Step):
    """Write a LanceDB table: one row per chunk, with its vectors, text and lineage.

    ```yaml
    index:
      type: index
      input: vectors
      table: scifact             # default: the pipeline name
      metric: cosine
      ann: {type: ivf_pq}        # or none (exact search, the default)
      retain: 10                 # table versions kept for pipe rollback
      compact: 16                # merge small fragments past this many
    ```
    Every column the input writes lands in the table (and so in `pipe sql`); columns upstream
    steps marked as vectors are searchable. A run commits one new table version, or none when
    no row changed: rows are upserted by chunk_id, and rows of chunks that no longer exist are
    deleted in the same commit.
    """

    type = "index"
    Config = IndexConfig
    config: IndexConfig
    key = "chunk_id"

    def requires(self) -> pa.Schema:
        fields = [schemas.CHUNKS.field(n) for n in ("chunk_id", "doc_id", "text")]
        # float vectors or integer codes; check() matches the metric to the kind
        fields.append(schemas.any_vector(self.config.column, self.config.dims))
        return pa.schema(fields)

    def table_name(self, pipeline: str) -> str:
        return self.config.table or pipeline.replace("-", "_")

    def _stored(self, inputs: list[Link]) -> pa.Schema:
        """The input's columns the table keeps: all but, with ``store_vectors: false``, the
        vector columns other than the searched one, and what ``store_columns`` leaves out."""
        upstream = inputs[0].schema if inputs else schemas.embeddings(self.config.dims)
        dropped = set()
        if not self.config.store_vectors:
            dropped |= {
                f.name for f in upstream if schemas.metric_of(f) and f.name != self.config.column
            }
        if self.config.store_columns != "all":
            always = self._always_kept(upstream)
            dropped |= {f.name for f in upstream if f.name not in always} - set(
                self.config.store_columns
            )
        keep = [i for i, f in enumerate(upstream) if f.name not in dropped]
        return pa.schema([upstream.field(i) for i in keep], metadata=upstream.metadata)

    def _always_kept(self, upstream: pa.Schema) -> set[str]:
        """Columns ``store_columns`` cannot leave out: keys the engine diffs by (chunk_id,
        doc_id, content_hash), vector columns and the columns naming what made them."""
        vectors = [f for f in upstream if schemas.metric_of(f)]
        made = {schemas.made_with_of(f) for f in vectors} - {None}
        return {self.key, "doc_id", "content_hash", *(f.name for f in vectors), *made}

    def output_schema(self, inputs: list[Link]) -> pa.Schema:
        return schemas.index_table(self._stored(inputs))

    def check(self, inputs: list[Link]) -> list[tuple[tuple[str, ...], str]]:
        if not inputs:
            return []
        marked = {f.name: schemas.metric_of(f) for f in inputs[0].schema if schemas.metric_of(f)}
        problems: list[tuple[tuple[str, ...], str]] = []
        for key in ("column", "rescore_column"):
            name = getattr(self.config, key)
            if key == "rescore_column" and not self.config.rescore:
                continue
            if name not in marked and (
                key == "rescore_column" or inputs[0].schema.get_field_index(name) >= 0
            ):
                problems.append(((key,), f"'{name}' is not a vector column; vector columns: "
                                 f"{', '.join(marked) or 'none'}"))  # fmt: skip
            elif key == "rescore_column" and not self.config.store_vectors:
                problems.append((("store_vectors",), f"rescore reads '{name}', which "
                                 "store_vectors: false leaves out of the table; keep it (true) "
                                 "or drop rescore"))  # fmt: skip
        col = inputs[0].schema.get_field_index(self.config.column)
        metric = self.config.metric or marked.get(self.config.column)
        if col >= 0 and metric:
            value = getattr(inputs[0].schema.field(col).type, "value_type", None)
            codes = value is not None and pa.types.is_integer(value)
            kind = schemas.type_name(inputs[0].schema.field(col).type)
            if metric == "hamming" and not codes:
                problems.append((("metric",), f"hamming needs an integer code column; "
                                 f"'{self.config.column}' is {kind}"))  # fmt: skip
            elif codes and metric != "hamming" and self.config.ann.type != "none":
                problems.append((("ann", "type"), f"'{self.config.column}' is {kind}, scored "
                                 f"by {metric} in process: no ANN index takes it; use "
                                 "none"))  # fmt: skip
        if col >= 0 and self.config.asymmetric and not codes:
            kind = schemas.type_name(inputs[0].schema.field(col).type)
            problems.append((("asymmetric",), f"asymmetric scores a float query against codes; "
                             f"'{self.config.column}' is {kind} (search it directly)"))  # fmt: skip
        if metric == "hamming" and self.config.ann.type not in ("none", "ivf_flat"):
            problems.append(
                (("ann", "type"), f"{self.config.ann.type} cannot index hamming codes; use "
                 "ivf_flat (or none: exact search)")
            )  # fmt: skip
        if self.config.store_columns != "all":
            upstream = inputs[0].schema
            always = self._always_kept(upstream)
            optional = [f.name for f in upstream if f.name not in always]
            for i, name in enumerate(self.config.store_columns):
                if name not in optional:
                    why = "is always kept" if name in always else "is not an input column"
                    problems.append((("store_columns", str(i)), f"'{name}' {why}; columns it "
                                     f"can keep: {', '.join(optional) or 'none'}"))  # fmt: skip
        if self.config.scan == "memory" and self.config.ann.type != "none":
            problems.append((("scan",), "memory scans every row exactly; it cannot use the "
                             f"{self.config.ann.type} index: set ann: {{type: none}} or scan: "
                             "lance"))  # fmt: skip
        if self.config.rescore and self.config.rescore_column == self.config.column:
            problems.append(
                (("rescore_column",), "must differ from `column` (it re-scores its shortlist)")
            )
        return problems

    def index_target(self, pipeline: str, inputs: list[Link]) -> IndexTarget:
        schema = self.output_schema(inputs)
        upstream = self._stored(inputs)
        vectors = []
        for f in upstream:
            metric = schemas.metric_of(f)
            if metric is None:
                continue
            searched = f.name == self.config.column
            vectors.append(
                VectorColumn(
                    name=f.name,
                    type=f.type,
                    metric=(self.config.metric or metric) if searched else metric,
                    ann=self.config.ann.declared() if searched else None,
                    made_with=schemas.made_with_of(f),
                )
            )
        return IndexTarget(
            table=self.table_name(pipeline),
            key=self.key,
            schema=schema,
            vectors=tuple(vectors),
            search=self.config.column,
            rescore=self.config.rescore_column if self.config.rescore else None,
            shortlist=self.config.rescore or 1,
            asymmetric=self.config.asymmetric,
            scan=self.config.scan,
            retain=self.config.retain,
            compact=self.config.compact,
            lineage=schemas.LINEAGE,
            row_hash=schemas.ROW_HASH,
        )

    def run(self, inputs: list[Iterable[pa.RecordBatch]], ctx: StepContext) -> Iterator[Event]:
        assert ctx.store is not None and ctx.target is not None, "the engine lends a store"
        given = {"spec_hash": ctx.spec_hash, "run_id": ctx.run_id}

        def rows() -> Iterator[pa.RecordBatch]:
            """The table's rows; the store may call this twice (diff, then write)."""
            for batch in inputs[0]:
                n = batch.num_rows
                for name, value in given.items():
                    if name in batch.schema.names:
                        batch = batch.drop_columns([name])
                    batch = batch.append_column(name, pa.array([value] * n, pa.string()))
                yield batch

        yield Stats(ctx.store.write(ctx.target, rows))
