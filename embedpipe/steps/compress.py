"""compress: add a compact code of each vector (binary, int8, Matryoshka or PCA dims)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from embedpipe import schemas
from embedpipe.artifacts import Artifact, key_of
from embedpipe.errors import ArtifactError
from embedpipe.results import Event
from embedpipe.steps.base import (
    FitContext,
    Link,
    QueryEncoder,
    Scorer,
    Step,
    StepConfig,
    StepContext,
    rebatch,
)
from embedpipe.steps.codecs import CODECS, Codec

CODEC_COLUMN = "codec"  # which fitted codec (artifact id) made a row's code: its lineage


class CompressConfig(StepConfig):
    method: Literal["binary", "int8", "matryoshka", "pca"] = Field(
        "binary",
        description="binary: sign bits packed to uint8, searched by Hamming distance (d/8 "
        "bytes). int8: per-dimension ranges calibrated on the corpus (d bytes). matryoshka: "
        "the first `dims`, re-normalised. pca: a rotation fitted on the corpus, then the first "
        "`dims`.",
    )
    dims: int | None = Field(
        None, gt=0, description="matryoshka, pca: dimensions kept (required for those)."
    )
    column: str = Field("vector", description="The float vector column compressed.")
    output: str = Field(
        "code", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="The code column written."
    )
    fit_rows: int = Field(
        100_000, ge=256, description="int8, pca: corpus vectors (an even sample) the codec is "
        "fitted on, once; later runs reuse it (`pipe fit` re-fits).",
    )  # fmt: skip


class Compress(Step):
    """Add a code column beside the float vectors: binary, int8, Matryoshka or PCA.

    ```yaml
    codes:
      type: compress
      input: vectors
      method: binary            # binary | int8 | matryoshka | pca
      dims: 128                 # matryoshka, pca: dimensions kept
    index:
      type: index
      input: codes
      column: code              # search the codes ...
      rescore: 4                # ... and re-score k * 4 of them with the float vectors
    ```
    Fitted codecs (int8 ranges, the PCA rotation) are fitted once, on the first run, and kept
    in the workspace as a versioned artifact with lineage; incremental runs reuse it, and
    queries are coded with the same one.
    """

    type = "compress"
    Config = CompressConfig
    config: CompressConfig
    row_wise = True  # one code per row, from that row's vector alone (once the codec exists)
    trainable = True  # int8 and pca: `pipe fit` fits a new codec version
    plan_runs = False  # a plan must not fit (and so write) a codec

    def __init__(self, name: str, config: StepConfig, *, base_dir: Path) -> None:
        super().__init__(name, config, base_dir=base_dir)
        self.reads = pa.schema([schemas.any_vector(self.config.column)])
        self._codec: Codec | None = None
        self._artifact: Artifact | None = None
        self._run_id = ""

    # -- the DAG check ------------------------------------------------------------------------
    def _input_dims(self, inputs: list[Link]) -> int | None:
        if not inputs:
            return None
        i = inputs[0].schema.get_field_index(self.config.column)
        return schemas.dims_of(inputs[0].schema.field(i).type) if i >= 0 else None

    def make_codec(self, dims: int) -> Codec:
        return CODECS[self.config.method](dims, self.config.dims)

    def output_schema(self, inputs: list[Link]) -> pa.Schema:
        upstream = inputs[0].schema if inputs else pa.schema([])
        own = {self.config.output, CODEC_COLUMN}
        kept = [f for f in upstream if f.name not in own]
        # A code is a function of its whole input row: the cache keys by all of it (a reused
        # row never carries stale pass-through columns).
        self.cache_key = tuple(f.name for f in kept)
        dims = self._input_dims(inputs)
        cls = CODECS[self.config.method]
        if dims:
            code_type = self.make_codec(dims).code_type()
        else:  # the model's dimension is not known until it loads
            value = {"binary": pa.uint8(), "int8": pa.int8()}.get(cls.method, pa.float32())
            code_type = pa.list_(value)
        return pa.schema(
            [
                *kept,
                schemas.vector_field(
                    self.config.output, code_type, cls.metric, made_with=CODEC_COLUMN
                ),
                pa.field(CODEC_COLUMN, pa.string()),
            ],
            metadata={"embedpipe.kind": "codes"},
        )

    def check(self, inputs: list[Link]) -> list[tuple[tuple[str, ...], str]]:
        problems: list[tuple[tuple[str, ...], str]] = []
        method, keep = self.config.method, self.config.dims
        if method in ("matryoshka", "pca") and keep is None:
            problems.append((("dims",), f"method {method} needs `dims` (the dimensions kept)"))
        if method in ("binary", "int8") and keep is not None:
            problems.append((("dims",), f"method {method} keeps every dimension; remove `dims` "
                             "(or use matryoshka / pca)"))  # fmt: skip
        if not inputs:
            return problems
        schema = inputs[0].schema
        i = schema.get_field_index(self.config.column)
        if i >= 0:
            t = schema.field(i).type
            value = getattr(t, "value_type", None)
            if value is None or not pa.types.is_floating(value):
                kind = schemas.type_name(t)
                problems.append(
                    (("column",), f"'{self.config.column}' is {kind}; compress needs floats")
                )
            dims = schemas.dims_of(t)
            if dims and method == "binary" and dims % 8:
                problems.append((("method",), f"binary packs 8 dimensions a byte; "
                                 f"'{self.config.column}' has {dims}"))  # fmt: skip
            if dims and keep and keep > dims:
                problems.append((("dims",), f"{keep} > the {dims} dimensions of "
                                 f"'{self.config.column}'"))  # fmt: skip
        if self.config.output == CODEC_COLUMN:
            problems.append((("output",), f"'{CODEC_COLUMN}' names each row's codec; choose "
                             "another name for the code column"))  # fmt: skip
        elif self.config.output in schema.names:
            name = self.config.output
            problems.append(
                (("output",), f"the input already has a column '{name}'; choose another name")
            )
        return problems

    # -- the fitted codec ---------------------------------------------------------------------
    def _made_by(self) -> list[dict[str, Any]]:
        """What made the input vectors (the steps upstream that run models)."""
        return [
            {"step": s.type, "config": s.config.identity(), **s.fingerprint()}
            for s in self.reachable("upstream")
            if s.models()
        ]

    def codec_key(self) -> str:
        """Where this config's codec lives: a new config (or model) fits a new one."""
        return key_of(
            {"type": self.type, "version": self.version, "config": self.config.identity(),
             "input": self._made_by()}
        )  # fmt: skip

    def codec(self, workspace: Path | None = None, *, state: str | None = None) -> Codec:
        """The fitted codec: the version ``state`` names (the artifact id the table's rows
        carry in their ``codec`` column, for queries), else the newest (for a run)."""
        store = self.artifacts(workspace)
        key = self.codec_key()
        found = store.latest(key)
        if state and state.startswith(f"{self.name}/"):
            found = next((a for a in store.versions(key) if a.id == state), None)
            if found is None:
                raise ArtifactError(
                    f"the table's rows were coded with {state}, which is not in {store.root} "
                    f"(another config, or removed); run the pipeline to re-code them"
                )
        if found is None:
            raise ArtifactError(
                f"step '{self.name}' has no fitted {self.config.method} codec in {store.root}; "
                f"`pipe run` fits one on its first run"
            )
        return self._load(found)

    def _load(self, artifact: Artifact) -> Codec:
        state = artifact.arrays()
        dims = int(state.pop("dims"))
        codec = self.make_codec(dims)
        codec.load(state)
        self._codec, self._artifact = codec, artifact
        return codec

    def fit(self, ctx: FitContext) -> dict[str, Any]:
        """`pipe fit`: a new codec version from the vectors the last run computed; the next
        run re-codes every row with it, and queries are coded with it from then on."""
        if not CODECS[self.config.method].fitted:
            raise ArtifactError(
                f"step '{self.name}': method {self.config.method} has nothing to fit (only "
                "int8 and pca do)"
            )
        if ctx.rows is None:
            raise ArtifactError(
                f"step '{self.name}': no input vectors to fit on; run the pipeline first"
            )
        artifact = self.fit_codec(ctx.rows, ctx.workspace, ctx.fit_id)
        lineage = artifact.lineage()
        keys = ("fit_rows", "input_rows")
        return {"artifact": artifact.id, "version": artifact.version,
                **{k: lineage.get(k) for k in keys}}  # fmt: skip

    def fit_codec(
        self, rows: Iterable[pa.RecordBatch], workspace: Path, run_id: str = ""
    ) -> Artifact:
        """Fit a new codec version on (an even sample of) the vectors in ``rows``."""
        total = sum(b.num_rows for b in rows)
        if total == 0:
            raise ArtifactError(f"step '{self.name}': no vectors to fit a codec on")
        stride = max(1, -(-total // self.config.fit_rows))
        parts, seen = [], 0
        for batch in rows:
            n = batch.num_rows
            take = np.arange((-seen) % stride, n, stride)
            seen += n
            if take.size:
                parts.append(_matrix(batch.column(self.config.column).take(pa.array(take))))
        sample = np.concatenate(parts)
        codec = self.make_codec(sample.shape[1])
        codec.fit(sample)
        made_by = self._made_by()
        lineage = {
            "method": self.config.method,
            "dims": int(sample.shape[1]),
            "keep": codec.keep,
            "config": self.config.identity(),
            "model": ", ".join(m.get("model", "") for m in made_by) or None,
            "input": made_by,
            "fit_rows": int(sample.shape[0]),
            "input_rows": int(total),
            "data_hash": hashlib.sha256(np.ascontiguousarray(sample).tobytes()).hexdigest()[:16],
            "run_id": run_id,
        }
        state = {**codec.state, "dims": np.asarray(sample.shape[1])}
        return self.artifacts(workspace).save(self.codec_key(), state, lineage)

    def fingerprint(self) -> dict[str, str]:
        # A re-fit (`pipe fit`: version 2 on) changes every code, so cached codes of an
        # earlier version are not reused; the first fit, made by the first run, is the default.
        if not CODECS[self.config.method].fitted or self.workspace is None:
            return {}
        found = self.artifacts().latest(self.codec_key())
        return {"codec": f"v{found.version}"} if found and found.version > 1 else {}

    def setup(self, ctx: StepContext) -> None:
        self.workspace = self.workspace or ctx.workspace
        self._run_id = ctx.run_id

    def windows(self, rows: Iterable[pa.RecordBatch]) -> Iterator[pa.Table | pa.RecordBatch]:
        # A fitted codec is fitted once, on the whole input of the first run, before any row
        # is coded; later runs (which see only new rows) load it.
        if CODECS[self.config.method].fitted:
            store, key = self.artifacts(), self.codec_key()
            found = store.latest(key)
            if found is not None:
                self._load(found)
            else:
                assert self.workspace is not None, "setup() runs before windows()"
                found = self.fit_codec(rows, self.workspace, self._run_id)
                self._load(found)
        return rebatch(iter(rows), self.rows_per_window())

    def map(self, rows: pa.Table | pa.RecordBatch, ctx: StepContext) -> Iterator[Event]:
        vectors = _matrix(rows.column(self.config.column))
        codec = self._codec
        if codec is None:
            if CODECS[self.config.method].fitted:  # a worker that did not fit it loads it
                codec = self.codec(ctx.workspace)
            else:
                codec = self._codec = self.make_codec(vectors.shape[1])
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_batches([rows])
        table = table.drop_columns(
            [c for c in (self.config.output, CODEC_COLUMN) if c in table.column_names]
        )
        table = table.append_column(self.config.output, codec.arrow(codec.encode(vectors)))
        lineage = self._artifact.id if self._artifact else f"{self.config.method}"
        table = table.append_column(CODEC_COLUMN, pa.array([lineage] * table.num_rows))
        yield from table.to_batches()

    # -- search -------------------------------------------------------------------------------
    def _float_encoder(self) -> QueryEncoder:
        encoder = self.upstream_query_encoder(self.config.column)
        if encoder is None:
            raise ArtifactError(
                f"no step upstream of '{self.name}' encodes queries for '{self.config.column}'"
            )
        return encoder

    def _query_codec(self, state: str | None) -> Callable[[int], Codec]:
        """The codec queries are coded with: the version the table's rows were coded with
        (``state``), loaded on the first query."""
        loaded: list[Codec] = []

        def get(dims: int) -> Codec:
            if not loaded:
                fitted = CODECS[self.config.method].fitted
                loaded.append(self.codec(state=state) if fitted else self.make_codec(dims))
            return loaded[0]

        return get

    def query_encoder(self, column: str, state: str | None = None) -> QueryEncoder | None:
        if column != self.config.output:
            return None
        encode, codec = self._float_encoder(), self._query_codec(state)

        def coded(queries: list[str]) -> np.ndarray:
            q = encode(queries)
            return codec(q.shape[1]).query(q)

        return coded

    def query_scorer(self, column: str, state: str | None = None) -> Scorer | None:
        if column != self.config.output:
            return None
        encode, codec = self._float_encoder(), self._query_codec(state)

        def score(query: np.ndarray, stored: np.ndarray) -> np.ndarray:
            return codec(query.shape[-1]).score(query, stored)

        return Scorer(encode=encode, score=score)


def _matrix(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A fixed-size list column of floats as an (n, d) float32 matrix."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    width = column.type.list_size if pa.types.is_fixed_size_list(column.type) else None
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if width is None:
        width = flat.size // max(1, len(column))
    return flat.reshape(len(column), width)
