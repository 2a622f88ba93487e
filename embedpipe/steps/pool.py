"""pool: document-level vectors from chunk vectors (the mean of a document's chunks), as rows
of their own or as a column fused with chunk scores at query time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from embedpipe import schemas
from embedpipe.results import Event, Hit
from embedpipe.steps.base import (
    QUERY_TIME,
    Link,
    QueryEncoder,
    QueryStage,
    Step,
    StepConfig,
    StepContext,
    rebatch_documents,
)


class PoolConfig(StepConfig):
    output: Literal["documents", "column"] = Field(
        "documents",
        description="documents: one row per document (chunk_id 'DOC#doc', its first chunk's "
        "text), its vector the re-normalised mean of its chunks' vectors. column: every chunk "
        "row kept, with its document's mean vector added as `column`, and searches fuse a "
        "chunk's score with its document's: (1 - weight) * chunk + weight * document.",
    )
    column: str = Field("doc_vector", description="The document vector's column (output: column).")
    weight: float = Field(
        0.2, ge=0, le=1, description="The document score's share in the fused score "
        "(output: column; query time only).", json_schema_extra=QUERY_TIME,
    )  # fmt: skip


class Fuse:
    """The query stage of ``output: column``: each hit's score becomes (1 - w) * its score +
    w * the query's cosine with its document's vector, then hits are re-sorted; a hit carries
    ``doc_score``."""

    name = "fuse_document"
    depth = 5  # a hit may rise from below the top k

    def __init__(self, column: str, weight: float, encode: QueryEncoder | None) -> None:
        self.column, self.weight, self.encode = column, weight, encode
        self.columns = (column,)

    def __call__(self, queries: Sequence[str], hits: list[list[Hit]]) -> list[list[Hit]]:
        if self.encode is None or not self.weight:
            return hits
        vectors = np.asarray(self.encode(list(queries)), np.float32)
        out = []
        for q, found in zip(vectors, hits, strict=True):
            if not found:
                out.append(found)
                continue
            # one matrix product per query; a hit without its document's vector scores 0
            docs = np.zeros((len(found), len(q)), np.float32)
            for i, hit in enumerate(found):
                doc = hit.get(self.column)
                if doc is not None and len(doc) == len(q):
                    docs[i] = doc
            doc_scores = docs @ q
            for hit, doc_score in zip(found, doc_scores.tolist(), strict=True):
                hit["doc_score"] = doc_score
                hit["score"] = (1 - self.weight) * float(hit["score"]) + self.weight * doc_score
            out.append(sorted(found, key=lambda h: h["score"], reverse=True))
        return out


class Pool(Step):
    """Document vectors: the re-normalised mean of each document's chunk vectors.

    ```yaml
    docvecs:
      type: pool
      input: vectors
      output: documents      # one row per document; or column: fused with chunk scores
      weight: 0.2            # output: column, query time: the document score's share
    ```
    Windows hold whole documents (a document's chunks arrive together, as the chunk step
    writes them), so the step maps windows independently. It keeps no cache: a mean is cheap.
    """

    type = "pool"
    Config = PoolConfig
    config: PoolConfig
    reads = pa.schema([schemas.CHUNKS.field("chunk_id"), schemas.CHUNKS.field("doc_id")])
    row_wise = True  # per window of whole documents (see windows())

    def requires(self) -> pa.Schema:
        return pa.schema([*self.reads, schemas.any_vector("vector")])

    def output_schema(self, inputs: list[Link]) -> pa.Schema:
        upstream = inputs[0].schema if inputs else schemas.embeddings(None)
        if self.config.output == "documents":
            return upstream
        vector = upstream.field("vector")
        kept = [f for f in upstream if f.name != self.config.column]
        field = schemas.vector_field(self.config.column, vector.type, "cosine")
        return pa.schema([*kept, field], metadata=upstream.metadata)

    def check(self, inputs: list[Link]) -> list[tuple[tuple[str, ...], str]]:
        if not inputs or self.config.output != "column":
            return []
        if self.config.column in ("vector", *schemas.CHUNKS.names):
            return [(("column",), f"'{self.config.column}' is a column of the input; name the "
                     "document vector otherwise (e.g. doc_vector)")]  # fmt: skip
        return []

    def windows(self, rows: Iterable[pa.RecordBatch]) -> Iterator[pa.Table]:
        return rebatch_documents(rows, self.rows_per_window())

    def map(self, rows: pa.Table | pa.RecordBatch, ctx: StepContext) -> Iterator[Event]:
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_batches([rows])
        if not table.num_rows:
            return
        docs = table.column("doc_id").to_numpy(zero_copy_only=False)
        _, first, inverse = np.unique(docs, return_index=True, return_inverse=True)
        col = table.column("vector").combine_chunks()
        x = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), -1).astype(np.float32)
        sums = np.zeros((len(first), x.shape[1]), np.float32)
        np.add.at(sums, inverse, x)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        means = sums / np.where(norms == 0, 1.0, norms)
        if self.config.output == "documents":
            out = table.take(pa.array(np.sort(first)))
            order = np.argsort(first)  # documents in input order
            ids = [f"{d}#doc" for d in out.column("doc_id").to_pylist()]
            out = out.set_column(out.schema.get_field_index("chunk_id"), "chunk_id", pa.array(ids))
            vectors = means[order]
            i = out.schema.get_field_index("vector")
            flat = pa.array(vectors.reshape(-1), pa.float32())
            out = out.set_column(i, out.schema.field(i), pa.FixedSizeListArray.from_arrays(
                flat, vectors.shape[1]))  # fmt: skip
        else:
            out = table
            if self.config.column in out.column_names:
                out = out.drop_columns([self.config.column])
            per_row = means[inverse]
            flat = pa.array(per_row.reshape(-1), pa.float32())
            out = out.append_column(
                self.config.column, pa.FixedSizeListArray.from_arrays(flat, per_row.shape[1])
            )
        yield from out.to_batches()

    def query_stages(self) -> list[QueryStage]:
        if self.config.output != "column":
            return []
        return [Fuse(self.config.column, self.config.weight, self.upstream_query_encoder("vector"))]

    def query_encoder(self, column: str, state: str | None = None) -> QueryEncoder | None:
        # document vectors live in the chunk vectors' space: queries encode the same way
        if self.config.output == "column" and column == self.config.column:
            return self.upstream_query_encoder("vector")
        return None
