"""encode: turn chunks into vectors with a sentence-transformers model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from embedpipe import models, schemas
from embedpipe.results import Event
from embedpipe.steps.base import (
    QUERY_TIME,
    SPEED_ONLY,
    Link,
    QueryEncoder,
    Step,
    StepConfig,
    StepContext,
)


class Prompts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    query: str = Field(
        "", description="Prefix for queries, e.g. 'query: ' for E5 models (query time only: "
        "changing it re-encodes no document).", json_schema_extra=QUERY_TIME,
    )  # fmt: skip
    document: str = Field("", description="Prefix for chunks, e.g. 'passage: '.")


class EncodeConfig(StepConfig):
    model: str = Field(
        models.DEFAULT_MODEL,
        description="A sentence-transformers model: the shipped default, a local folder "
        "(relative to the spec) or a hub id already in the local cache.",
    )
    batch_size: int = Field(
        32, gt=0, le=4096, description="Texts per forward pass (speed only: changing it "
        "re-encodes nothing).", json_schema_extra=SPEED_ONLY,
    )  # fmt: skip
    prompts: Prompts = Field(default_factory=Prompts)
    normalize: bool = Field(True, description="L2-normalise vectors (cosine = dot product).")
    include_title: bool = Field(
        True, description="Encode 'title\\n\\ntext' when the chunk has a title."
    )
    max_tokens: int | None = Field(
        None, gt=8, description="Truncate inputs to this many tokens (default: the model's)."
    )
    device: str | None = Field(
        None, description="cpu, cuda, mps; default: the best available (speed only).",
        json_schema_extra=SPEED_ONLY,
    )  # fmt: skip


class Encode(Step):
    """Encode chunks into normalised float32 vectors.

    ```yaml
    vectors:
      type: encode
      input: chunks
      model: all-MiniLM-L6-v2    # shipped offline; or a local path / cached hub id
      batch_size: 32
      prompts: {query: "", document: ""}
    ```
    """

    type = "encode"
    Config = EncodeConfig
    reads = pa.schema([schemas.CHUNKS.field("chunk_id"), schemas.CHUNKS.field("text")])
    progress = "output"  # one vector per chunk; inputs are consumed a window at a time
    plan_runs = False  # a plan counts the chunks to encode; it never loads the model
    # The vector depends on title and text only; content_hash and char_start are in the key so
    # that a reused row never carries stale lineage (an edited document is re-encoded whole).
    cache_key = ("chunk_id", "content_hash", "char_start", "title", "text")
    row_wise = True  # one vector per chunk, from that chunk alone
    config: EncodeConfig

    def __init__(self, name: str, config: StepConfig, *, base_dir: Path) -> None:
        super().__init__(name, config, base_dir=base_dir)
        self._model: Any = None
        self._dims: int | None = None

    @property
    def model_ref(self) -> models.ModelRef:
        return models.resolve(self.config.model, self.base_dir)

    @property
    def dims(self) -> int | None:
        return self._dims or self.model_ref.dims

    def output_schema(self, inputs: list[Link]) -> pa.Schema:
        upstream = inputs[0].schema if inputs else schemas.CHUNKS
        own = {f.name for f in schemas.embedding_fields(None)}
        kept = [f for f in upstream if f.name not in own]
        return pa.schema(
            kept + schemas.embedding_fields(self.dims), metadata={"embedpipe.kind": "embeddings"}
        )

    def models(self) -> list[str]:
        return [self.config.model]

    def fingerprint(self) -> dict[str, str]:
        ref = self.model_ref
        return {"model": f"{ref.name}@{ref.revision}"}

    def preflight(self) -> list[tuple[tuple[str, ...], str]]:
        problem = models.unavailable(self.model_ref)
        return [(("model",), problem)] if problem else []

    def setup(self, ctx: StepContext | None = None) -> None:
        if self._model is not None:
            return
        self._model = models.load(self.model_ref, self.config.device)
        if self.config.max_tokens:
            self._model.max_seq_length = self.config.max_tokens
        # renamed in sentence-transformers 6; keep working with 3.x-5.x
        dim_of = getattr(self._model, "get_embedding_dimension", None)
        dim_of = dim_of or self._model.get_sentence_embedding_dimension
        self._dims = int(dim_of())

    def _encode(self, texts: list[str], prompt: str) -> np.ndarray:
        out = self._model.encode(
            texts,
            batch_size=self.config.batch_size,
            normalize_embeddings=self.config.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
            prompt=prompt or None,
        )
        return np.asarray(out, dtype=np.float32)

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        """Query vectors from the same model, prompts and settings as the documents."""
        self.setup()
        return self._encode(queries, self.config.prompts.query)

    def query_encoder(self, column: str) -> QueryEncoder | None:
        return self.encode_queries if column == "vector" else None

    def window_rows(self) -> int:
        # sentence-transformers sorts each call's texts by length to cut padding; a window of
        # many batches gets nearly all of that gain while memory stays bounded.
        return self.config.batch_size * 64

    def map(self, rows: pa.Table, ctx: StepContext) -> Iterator[Event]:
        ref = self.model_ref
        dims = self._dims
        assert dims is not None, "setup() loads the model before map()"
        table = rows
        texts = table.column("text").to_pylist()
        if self.config.include_title and "title" in table.column_names:
            titles = table.column("title").to_pylist()
            texts = [f"{t}\n\n{x}" if t else x for t, x in zip(titles, texts, strict=True)]
        vectors = self._encode(texts, self.config.prompts.document)
        n = table.num_rows
        own = {f.name for f in schemas.embedding_fields(None)}
        table = table.drop_columns([c for c in table.column_names if c in own])
        columns = {
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dims),
            "model": pa.array([ref.name] * n, pa.string()),
            "model_revision": pa.array([ref.revision] * n, pa.string()),
            "dims": pa.array([dims] * n, pa.int32()),
            "normalized": pa.array([self.config.normalize] * n, pa.bool_()),
        }
        for name, column in columns.items():
            table = table.append_column(name, column)
        yield from table.to_batches()
