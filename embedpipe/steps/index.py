"""index: write vectors and their chunks into a LanceDB table, with lineage columns."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from embedpipe import schemas
from embedpipe.steps.base import Link, Step, StepConfig, StepContext


class AnnConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["none", "ivf_pq", "ivf_hnsw_sq"] = Field(
        "none", description="none: exact search. ivf_pq / ivf_hnsw_sq: approximate, faster."
    )
    partitions: int | Literal["auto"] = Field("auto", description="IVF partitions (auto: ~√rows).")
    sub_vectors: int | Literal["auto"] = Field(
        "auto", description="PQ sub-vectors (auto: the largest divisor of d up to d/8)."
    )
    min_rows: int = Field(
        5000, ge=256, description="Build the ANN index only once the table has this many rows."
    )
    nprobes: int = Field(20, gt=0, description="Partitions probed per query.")
    refine_factor: int | None = Field(
        None, gt=0, description="Re-rank k * this many candidates with exact distances."
    )


class IndexConfig(StepConfig):
    table: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Lance table name (default: the pipeline name); also its view name in "
        "`pipe sql`, so not runs, step_runs, skipped, a DuckDB reserved word or another index "
        "step's table.",
    )
    metric: Literal["cosine", "dot", "l2"] = Field("cosine", description="Vector distance.")
    dims: int | None = Field(
        None, gt=0, description="Expected vector dimension; checked against the input."
    )
    ann: AnnConfig = Field(default_factory=AnnConfig)
    retain: int | None = Field(
        10,
        ge=1,
        description="Table versions to keep for `pipe rollback`; older ones and their files "
        "are removed after each commit. null keeps every version.",
    )


class Index(Step):
    """Write a LanceDB table: one row per chunk, with its vector, text and lineage.

    ```yaml
    index:
      type: index
      input: vectors
      table: scifact             # default: the pipeline name
      metric: cosine
      ann: {type: ivf_pq}        # or none (exact search, the default)
      retain: 10                 # table versions kept for pipe rollback
    ```
    A run commits one new table version, or none when no row changed: rows are upserted by
    chunk_id, and rows of chunks that no longer exist are deleted in the same commit.
    """

    type = "index"
    Config = IndexConfig
    config: IndexConfig

    def requires(self) -> pa.Schema:
        own = schemas.index(self.config.dims)
        return pa.schema([own.field(n) for n in ("chunk_id", "doc_id", "text", "vector")])

    def table_name(self, pipeline: str) -> str:
        return self.config.table or pipeline.replace("-", "_")

    def output_schema(self, inputs: list[Link]) -> pa.Schema:
        dims = None
        if inputs:
            i = inputs[0].schema.get_field_index("vector")
            dims = schemas.dims_of(inputs[0].schema.field(i).type) if i >= 0 else None
        return schemas.index(dims or self.config.dims)

    def run(
        self, inputs: list[Iterable[pa.RecordBatch]], ctx: StepContext
    ) -> Iterator[pa.RecordBatch]:
        assert ctx.store is not None, "the engine lends the index step a store"

        def rows() -> Iterator[pa.RecordBatch]:
            """The table's rows; the store may call this twice (diff, then write)."""
            for batch in inputs[0]:
                # Plans pass rows not yet encoded with a null vector of unknown size.
                schema = schemas.index(schemas.dims_of(batch.schema.field("vector").type))
                n = batch.num_rows
                given = {"spec_hash": ctx.spec_hash, "run_id": ctx.run_id}
                cols = [
                    pa.array([given[f.name]] * n, f.type)
                    if f.name in given
                    else pc.cast(batch.column(f.name), f.type)
                    if f.name in batch.schema.names
                    else pa.nulls(n, f.type)
                    for f in schema
                ]
                out = pa.RecordBatch.from_arrays(cols, schema=schema)
                decides = tuple(n for n in schema.names if n not in schemas.ROW_HASH_SKIP)
                row_hash = schemas.hash_rows(out, decides)
                yield out.set_column(schema.get_field_index("row_hash"), "row_hash", row_hash)

        result = ctx.store.write(self.table_name(ctx.pipeline), rows, self)
        ctx.stats.update(result)
        yield from ()
