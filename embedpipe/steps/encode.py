"""encode: turn chunks into vectors with a sentence-transformers model."""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from embedpipe import models, schemas
from embedpipe.artifacts import Artifact, Artifacts, key_of
from embedpipe.errors import ArtifactError
from embedpipe.results import Event
from embedpipe.steps import backends
from embedpipe.steps.base import (
    ADDED,
    QUERY_TIME,
    SPEED_ONLY,
    Link,
    QueryEncoder,
    Step,
    StepConfig,
    StepContext,
    rebatch_documents,
)


class Prompts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    query: str = Field(
        "", description="Prefix for queries, e.g. 'query: ' for E5 models (query time only: "
        "changing it re-encodes no document).", json_schema_extra=QUERY_TIME,
    )  # fmt: skip
    document: str = Field("", description="Prefix for chunks, e.g. 'passage: '.")


# LongEmbed's NTK factors lambda for a context s times the trained one (s = 2, 4, 8); between
# and beyond them, interpolated / extrapolated in log2(s).
NTK_LAMBDA = {1: 1.0, 2: 3.0, 4: 5.0, 8: 10.0}


def ntk_factor(s: float) -> float:
    """LongEmbed's lambda for a context ``s`` times the trained one, linear in log2(s) between
    its points and past the last."""
    x = [math.log2(k) for k in NTK_LAMBDA]
    y = list(NTK_LAMBDA.values())
    at = math.log2(max(s, 1.0))
    if at <= x[-1]:
        return float(np.interp(at, x, y))
    return y[-1] + (y[-1] - y[-2]) / (x[-1] - x[-2]) * (at - x[-1])


def auto_temperature(max_tokens: int, trained: int) -> float:
    """``temperature: auto``: 1 up to the trained window, then 0.05 lower per doubling of the
    window, at least 0.8 (2,048 tokens on a 512-position model: 0.9, where the issue's
    reference sweep measured PI-2048 nDCG@10 0.218 at tau 0.9 vs 0.207 at 1.0)."""
    if max_tokens <= trained:
        return 1.0
    return max(0.8, 1.0 - 0.05 * math.log2(max_tokens / trained))


class LongContext(BaseModel):
    """Encoding past the model's trained window (LongEmbed, TempScale; PAPERS.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    position_interpolation: Literal["none", "linear", "grouped", "recurrent"] = Field(
        "none", description="Extend an absolute-position model's learned positions to "
        "`max_tokens` without training: linear (PI: positions p/s, interpolated), grouped "
        "(p // s) or recurrent (p mod the trained length), s = max_tokens / trained length.",
    )  # fmt: skip
    attention_scaling: bool = Field(
        False, description="LongEmbed's inference attention scaling: each text's attention "
        "queries times max(1, log n / log trained length), n its tokens.",
    )  # fmt: skip
    rope_scaling: Literal["none", "ntk"] = Field(
        "none", description="NTK-aware base scaling for RoPE models (lambda 3 / 5 / 10 for "
        "2 / 4 / 8 times the trained length).",
    )  # fmt: skip
    temperature: float | Literal["auto"] = Field(
        1.0, description="TempScale: one attention-softmax temperature in every layer; < 1 "
        "sharpens attention (1: off). auto: 1 up to the trained window, 0.05 lower per "
        "doubling of max_tokens beyond it (0.9 at 2,048 tokens on a 512-position model).",
    )  # fmt: skip

    @model_validator(mode="after")
    def _positive(self) -> LongContext:
        if self.temperature != "auto" and not 0 < float(self.temperature) <= 4:
            raise ValueError(f"temperature must be in (0, 4] or auto, not {self.temperature}")
        return self


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
    long_context: LongContext = Field(
        default_factory=LongContext, description="Encoding past the model's trained window: "
        "position interpolation, RoPE scaling, attention temperature.",
        json_schema_extra=ADDED,
    )  # fmt: skip
    late_context: int | None = Field(
        None, ge=0, le=100_000, description="With pooling: late_chunks, the tokens of its "
        "document each chunk reads on each side (its own window per chunk, the title in "
        "front); default: the whole document (in windows of max_tokens).",
        json_schema_extra=ADDED,
    )  # fmt: skip
    backend: Literal["auto", "torch", "openvino", "onnx"] = Field(
        "auto", description="What runs the model: torch (sentence-transformers), openvino or "
        "onnx (ONNX Runtime): the model exported once into the workspace's artifacts and "
        "reused by later runs and by queries; auto: openvino on a CPU where it is installed, "
        "else torch. Vectors differ a little between backends, so changing it re-encodes.",
        json_schema_extra=ADDED,
    )  # fmt: skip
    quantize: Literal["none", "int8"] = Field(
        "none", description="int8: quantize the exported model (openvino: NNCF post-training "
        "quantization calibrated on the corpus; onnx: dynamic, MatMul weights per channel). "
        "Checked against torch when built: see min_cosine.", json_schema_extra=ADDED,
    )  # fmt: skip
    precision: Literal["auto", "fp32"] = Field(
        "auto", description="openvino's inference precision: auto is the CPU's default (bf16 "
        "where the CPU has it, else fp32); fp32 always. torch and onnx run in fp32.",
        json_schema_extra=ADDED,
    )  # fmt: skip
    min_cosine: float = Field(
        0.99, ge=0, le=1, description="Quality gate of an exported model: when it is built, it "
        "and torch encode a sample of the corpus; a mean cosine between their vectors below "
        "this refuses the model and nothing is indexed with it (a check: changes no vector).",
        json_schema_extra=SPEED_ONLY,
    )  # fmt: skip
    pooling: Literal["model", "late_chunks"] = Field(
        "model", description="model: each chunk encoded alone, pooled as the model does. "
        "late_chunks: late chunking, each document encoded whole (in windows of max_tokens, "
        "overlapping, past it) and each chunk's vector the mean of its tokens there, so "
        "chunks carry their document's context; one row per chunk, as before.",
        json_schema_extra=ADDED,
    )  # fmt: skip

    @model_validator(mode="after")
    def _late_context_needs_late_chunks(self) -> EncodeConfig:
        if self.late_context is not None and self.pooling != "late_chunks":
            raise ValueError(
                "late_context bounds late chunking's context: set pooling: late_chunks, or "
                "drop late_context"
            )
        return self

    @model_validator(mode="after")
    def _quantize_needs_export(self) -> EncodeConfig:
        if self.quantize != "none" and self.backend == "torch":
            raise ValueError(
                f"quantize: {self.quantize} quantizes an exported model: set backend: openvino "
                "(or onnx, or auto), or quantize: none"
            )
        return self


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
        self._last_queries: tuple[tuple[str, ...], np.ndarray] | None = None
        self._run: backends.Runner | None = None  # the exported model, when not on torch
        self.export: Artifact | None = None  # its artifact
        self._run_id = ""
        self._building = threading.Lock()
        if self.config.pooling == "late_chunks":
            self.cache_whole = "doc_id"  # a chunk's vector depends on its whole document

    def __getstate__(self) -> dict[str, Any]:
        # An executor may send the step to another process: the loaded model and export (an
        # inference request, a lock) do not travel; the worker loads them in setup() and from
        # the workspace.
        state = dict(self.__dict__)
        state.update(_model=None, _run=None, _building=None, _last_queries=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._building = threading.Lock()

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
        out = {"model": f"{ref.name}@{ref.revision}"}
        made_by = self.made_by()
        if made_by != "torch":  # torch's vectors keep the fingerprint they always had
            out["backend"] = made_by
        if self.config.pooling == "late_chunks" and self.config.include_title:
            out["late_chunks"] = "title pooled"  # since 2026-11-30: earlier caches re-encode
        return out

    # -- backends -----------------------------------------------------------------------------
    def backend(self) -> str:
        """What runs the model: ``backend``, with auto resolved (openvino on a CPU where it is
        installed and the settings are ones an export honours, else torch)."""
        chosen = self.config.backend
        if chosen != "auto":
            return chosen
        plain = self.config.pooling == "model" and self.config.long_context == LongContext()
        if not plain or (self.config.device or "cpu") != "cpu" or backends.missing("openvino"):
            return "torch"
        # Not "is there a GPU here?": a run and its searches may be on different hosts, and
        # must agree on what made the vectors. A GPU is named with device (or backend: torch).
        return "openvino"

    def made_by(self) -> str:
        """``torch``, ``openvino``, ``openvino/fp32``, ``onnx/int8``, ...: what makes this
        step's vectors (from the settings, the same on every host)."""
        backend = self.backend()
        if backend == "torch":
            return "torch"
        return backends.label(backend, self.config.precision, self.config.quantize)

    def _backend_problems(self) -> list[tuple[tuple[str, ...], str]]:
        backend = self.config.backend
        if backend == "auto" and self.config.quantize != "none" and self.backend() == "torch":
            why = "a GPU, late chunking, long_context, or no openvino installed"
            return [(("quantize",), f"{self.config.quantize} quantizes an exported model, but "
                     f"backend auto runs torch here ({why}): set backend: openvino or onnx, "
                     "or quantize: none")]  # fmt: skip
        if backend not in backends.FAST:
            return []
        absent = backends.missing(backend)
        if absent:
            return [(("backend",), absent)]
        why = "the exported model runs the model's own positions and attention"
        if self.config.pooling != "model":
            return [(("pooling",), f"late chunking needs token vectors, which backend "
                     f"{backend} does not return: use backend: torch for late_chunks")]  # fmt: skip
        if self.config.long_context != LongContext():
            return [(("long_context",), f"backend {backend}: {why}; use backend: torch for "
                     "position interpolation, rope scaling or temperature")]  # fmt: skip
        if (self.config.device or "cpu") != "cpu":
            return [(("device",), f"backend {backend} runs on the CPU; device: "
                     f"{self.config.device} needs backend: torch")]  # fmt: skip
        return []

    def export_key(self) -> str:
        """Where this model's export lives: model revision, backend, precision, quantization
        and window (a change to any of them builds another)."""
        ref = self.model_ref
        return key_of({"export": self.made_by(), "model": f"{ref.name}@{ref.revision}",
                       "max_tokens": self.config.max_tokens})  # fmt: skip

    def _prepare(
        self, sample: list[str] | None, run_id: str = "", *, queries: bool = False
    ) -> None:
        """Load the exported model, building it first (checked against torch on ``sample``)
        when the workspace has none. Queries may build a plain export (checked on them), never
        an int8 one: that is calibrated and checked on the corpus, by a run."""
        with self._building:
            if self._run is not None:  # another thread loaded it meanwhile
                return
            self._load_export(sample, run_id, queries)

    def _load_export(self, sample: list[str] | None, run_id: str, queries: bool) -> None:
        store, key, made_by = self.artifacts(), self.export_key(), self.made_by()
        found = store.latest(key)
        if found is None:
            if not sample or (queries and self.config.quantize != "none"):
                raise ArtifactError(
                    f"step '{self.name}': no {made_by} model is built in {store.root}; "
                    "`pipe run` builds it on its first run"
                )
            try:
                found = self._build(store, key, sample, run_id)
            except OSError:  # another process published the same version first: use it
                found = store.latest(key)
                if found is None:
                    raise
        figures = found.lineage().get("metrics") or {}
        if "cosine_mean" not in figures:
            raise ArtifactError(
                f"exported model {found.path} has no quality figures in its lineage; remove "
                "the folder and run the pipeline to build it again"
            )
        backends.gate(made_by, figures["cosine_mean"], figures["cosine_min"],
                      self.config.min_cosine, figures["sample"], f"steps.{self.name}",
                      kept=True)  # fmt: skip
        backend = self.backend()
        precision = backends.precision_of(backend, self.config.precision)
        self._run = backends.load(found.path, backend, precision)
        self.export = found

    def _build(self, store: Artifacts, key: str, sample: list[str], run_id: str) -> Artifact:
        backend, ref, made_by = self.backend(), self.model_ref, self.made_by()
        precision = backends.precision_of(backend, self.config.precision)
        prompt = self.config.prompts.document or None
        print(f"{self.name}: building the {made_by} model of {ref.name} ({precision} on this "
              f"CPU) once, into {store.root / key}", file=sys.stderr)  # fmt: skip
        calibration = [f"{prompt}{t}" for t in sample] if prompt else sample

        def write(folder: Path) -> dict[str, Any]:
            start = time.perf_counter()
            backends.export(self._model, backend, self.config.quantize, folder, calibration,
                            key)  # fmt: skip
            run = backends.load(folder, backend, precision)
            built = time.perf_counter()
            ours = backends.encode(self._model, run, sample, batch_size=self.config.batch_size,
                                   prompt=prompt)  # fmt: skip
            theirs = self._model.encode(sample, batch_size=self.config.batch_size,
                                        normalize_embeddings=True, convert_to_numpy=True,
                                        show_progress_bar=False, prompt=prompt)  # fmt: skip
            mean, low = backends.agreement(np.asarray(theirs, np.float32), ours)
            backends.gate(made_by, mean, low, self.config.min_cosine, len(sample),
                          f"steps.{self.name}")  # fmt: skip
            seconds = {"build_s": round(built - start, 2),
                       "check_s": round(time.perf_counter() - built, 2)}  # fmt: skip
            return {"metrics": {"cosine_mean": round(mean, 6), "cosine_min": round(low, 6),
                                "sample": len(sample)}, **seconds}  # fmt: skip

        lineage = {
            "model": f"{ref.name}@{ref.revision}",
            "backend": backend,
            "precision": precision,
            "quantize": self.config.quantize,
            "made_by": made_by,
            "max_tokens": int(self._model.max_seq_length),
            "packages": backends.versions(backend),
            "run_id": run_id,
        }
        return store.save(key, {}, lineage, write)

    def requires(self) -> pa.Schema:
        if self.config.pooling != "late_chunks":
            return self.reads
        # late chunking re-assembles each document from its chunks' character spans
        extra = [schemas.CHUNKS.field(n) for n in ("doc_id", "char_start", "char_end")]
        return pa.schema([*self.reads, *extra])

    def preflight(self) -> list[tuple[tuple[str, ...], str]]:
        problem = models.unavailable(self.model_ref)
        if problem:
            return [(("model",), problem)]
        positions, rope, _ = models.window(self.model_ref)
        problems = long_context_problems(self.config, self.model_ref.name, positions, rope)
        return problems + self._backend_problems() + self._chunk_problems()

    def _chunk_problems(self) -> list[tuple[tuple[str, ...], str]]:
        """Chunks longer than the encoder reads would lose their tails silently (late
        chunking reads whole documents, so any chunk size works there)."""
        if self.config.pooling == "late_chunks":
            return []
        window = self.config.max_tokens or models.window(self.model_ref)[2]
        for up in self.upstream:
            budget = getattr(up, "token_budget", lambda: None)()
            if window and budget and budget > window:
                return [(("max_tokens",), f"steps.{up.name} makes chunks of up to {budget} "
                         f"tokens, but this encoder reads {window} ({self.model_ref.name}'s "
                         f"window{'' if self.config.max_tokens else ' by default'}): their "
                         f"tails would be cut; set max_tokens: {budget} here, or at most "
                         f"{window} there")]  # fmt: skip
        return []

    def setup(self, ctx: StepContext | None = None) -> None:
        if ctx is not None:
            self.workspace = self.workspace or ctx.workspace
            self._run_id = ctx.run_id
        if self._model is not None:
            return
        changed = self.config.max_tokens or self.config.long_context != LongContext()
        # A model with another window or attention is an instance of its own (per setting):
        # the shared plain one, which other steps and specs in this process use, stays as is.
        variant = None
        if changed:
            variant = json.dumps(
                [self.config.max_tokens, self.config.long_context.model_dump(mode="json")]
            )
        # An exported model runs on the CPU; it is traced from a CPU instance of the model.
        device = self.config.device if self.backend() == "torch" else "cpu"
        self._model = models.load(self.model_ref, device, variant)
        if changed:
            _apply_long_context(self._model, self.config, self.model_ref.name, self.name)
        # renamed in sentence-transformers 6; keep working with 3.x-5.x
        dim_of = getattr(self._model, "get_embedding_dimension", None)
        dim_of = dim_of or self._model.get_sentence_embedding_dimension
        self._dims = int(dim_of())

    def per_pass(self, tokens: int) -> int:
        """Texts per forward pass for inputs of up to ``tokens``: ``batch_size`` up to the
        tokens the model reads by default; past that, as many as hold ``batch_size`` times
        those tokens (at least one). Activations grow with the tokens in a pass, so peak memory
        at 8k tokens stays near what ``batch_size`` costs at the model's own length."""
        default = models.window(self.model_ref)[2] or 512
        size = self.config.batch_size
        return size if tokens <= default else max(1, size * default // tokens)

    def _encode(self, texts: list[str], prompt: str) -> np.ndarray:
        limit = int(self._model.max_seq_length)
        if self.per_pass(limit) == self.config.batch_size or len(texts) <= 1:
            return self._encode_batch(texts, prompt, self.config.batch_size)
        # Past the model's own length: texts grouped by their token count (the model's own
        # length, then powers of two up to max_tokens), each group run with as many texts per
        # pass as its length allows.
        default = models.window(self.model_ref)[2] or 512
        ids = self._model.tokenizer(texts, truncation=True, max_length=limit,
                                    return_attention_mask=False)["input_ids"]  # fmt: skip
        groups: dict[int, list[int]] = {}
        for i, tokens in enumerate(ids):
            size = max(default, 1 << max(0, len(tokens) - 1).bit_length())
            groups.setdefault(min(size, limit), []).append(i)
        out = np.zeros((len(texts), self._dims or 0), np.float32)
        for size, rows in sorted(groups.items()):
            part = [texts[i] for i in rows]
            out[rows] = self._encode_batch(part, prompt, self.per_pass(size))
        return out

    def _encode_batch(self, texts: list[str], prompt: str, batch_size: int) -> np.ndarray:
        if self._run is not None:
            return backends.encode(
                self._model,
                self._run,
                texts,
                batch_size=batch_size,
                prompt=prompt or None,
                normalize=self.config.normalize,
            )
        out = self._model.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=self.config.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
            prompt=prompt or None,
        )
        return np.asarray(out, dtype=np.float32)

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        """Query vectors from the same model, prompts and settings as the documents. The last
        batch is remembered: a search's query stages (fusion, a relevance filter) ask for the
        vectors of the queries the search has just encoded."""
        self.setup()
        if self._run is None and self.backend() != "torch":
            self._prepare(list(queries), queries=True)
        key = tuple(queries)
        last = self._last_queries
        if last is not None and last[0] == key:
            return last[1].copy()
        vectors = self._encode(queries, self.config.prompts.query)
        self._last_queries = (key, vectors)
        return vectors.copy()

    def query_encoder(self, column: str) -> QueryEncoder | None:
        return self.encode_queries if column == "vector" else None

    def window_rows(self) -> int:
        # sentence-transformers sorts each call's texts by length to cut padding; a window of
        # many batches gets nearly all of that gain while memory stays bounded.
        return self.config.batch_size * 64

    def windows(self, rows: Iterable[pa.RecordBatch]) -> Iterator[pa.Table | pa.RecordBatch]:
        source = self._windows(rows)
        if self._run is None and self.backend() != "torch":
            return self._export_first(source)
        return source

    def _export_first(
        self, source: Iterator[pa.Table | pa.RecordBatch]
    ) -> Iterator[pa.Table | pa.RecordBatch]:
        """The exported model is loaded (or built, and checked on the first window's texts)
        before any window is handed out: a refused model indexes nothing."""
        held: list[pa.Table | pa.RecordBatch] = []
        texts: list[str] = []
        for window in source:  # the sample is the same however small the windows are
            held.append(window)
            texts += self._texts(window)
            if len(texts) >= backends.GATE_SAMPLE:
                break
        if not held:
            return
        self._prepare(texts[: backends.GATE_SAMPLE], self._run_id)
        yield from held
        yield from source

    def _windows(self, rows: Iterable[pa.RecordBatch]) -> Iterator[pa.Table | pa.RecordBatch]:
        if self.config.pooling != "late_chunks":
            return super().windows(rows)
        # Late chunking: a window holds whole documents (a chunk's vector depends on its
        # document's other chunks), so windows still map independently, anywhere.
        return rebatch_documents(rows, self.rows_per_window())

    def _titles(self, table: pa.Table | pa.RecordBatch) -> list[str | None]:
        if self.config.include_title and "title" in table.schema.names:
            return table.column("title").to_pylist()
        return [None] * table.num_rows

    def _texts(self, table: pa.Table | pa.RecordBatch) -> list[str]:
        """What the model reads of each row: 'title\n\ntext' (or the text alone)."""
        texts = table.column("text").to_pylist()
        titles = self._titles(table)
        return [f"{t}\n\n{x}" if t else x for t, x in zip(titles, texts, strict=True)]

    def _vectors(self, table: pa.Table | pa.RecordBatch) -> np.ndarray:
        if self.config.pooling != "late_chunks":
            return self._encode(self._texts(table), self.config.prompts.document)
        texts = table.column("text").to_pylist()
        titles = self._titles(table)
        from embedpipe.steps import longctx

        docs, rows, heads = _documents(
            table.column("doc_id").to_pylist(),
            texts,
            titles,
            table.column("char_start").to_pylist(),
            table.column("char_end").to_pylist(),
        )
        window = self.config.max_tokens or int(self._model.max_seq_length)
        if self.config.late_context is not None:
            found = longctx.late_chunk_local(
                self._model,
                docs,
                window,
                self.config.late_context,
                normalize=self.config.normalize,
                batch_size=self.per_pass(window),
                prompt=self.config.prompts.document or None,
                shared=heads,
            )
        else:
            found = longctx.late_chunk_many(
                self._model,
                docs,
                window,
                normalize=self.config.normalize,
                batch_size=self.per_pass(window),
                prompt=self.config.prompts.document or None,
                shared=heads,
            )
        out = np.zeros((len(texts), self._dims or 0), np.float32)
        for vectors, indices in zip(found, rows, strict=True):
            out[indices] = vectors
        return out

    def map(self, rows: pa.Table, ctx: StepContext) -> Iterator[Event]:
        ref = self.model_ref
        dims = self._dims
        assert dims is not None, "setup() loads the model before map()"
        if self._run is None and self.backend() != "torch":
            self._prepare(None)  # a worker that did not build the model loads it
        table = rows
        vectors = self._vectors(table)
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


# -- long context -------------------------------------------------------------------------------
def long_context_problems(
    config: EncodeConfig, model: str, positions: int | None, rope: bool
) -> list[tuple[tuple[str, ...], str]]:
    """What the spec asks of the model's window that it cannot do: ``[(key path, message)]``."""
    lc, n = config.long_context, config.max_tokens
    pi, ntk = lc.position_interpolation != "none", lc.rope_scaling == "ntk"
    problems: list[tuple[tuple[str, ...], str]] = []
    if rope and pi:
        problems.append((("long_context", "position_interpolation"), f"{model} uses rotary "
                         "positions (RoPE): use rope_scaling: ntk instead"))  # fmt: skip
    if ntk and not rope and positions is not None:
        problems.append((("long_context", "rope_scaling"), f"ntk scales rotary positions; "
                         f"{model} has {positions} learned absolute positions: use "
                         "position_interpolation: linear | grouped | recurrent"))  # fmt: skip
    if positions is None:
        return problems
    if (pi or ntk) and (n is None or n <= positions):
        key = "position_interpolation" if pi else "rope_scaling"
        problems.append((("long_context", key), f"extends {model} past its {positions} "
                         f"positions, but max_tokens is {n or 'unset'}: set max_tokens above "
                         f"{positions} (e.g. 2048) or drop it"))  # fmt: skip
    if n is not None and n > positions and not (pi or ntk):
        fix = "rope_scaling: ntk" if rope else "position_interpolation: linear (or grouped, "
        fix += "" if rope else "recurrent)"
        problems.append((("max_tokens",), f"{n} is beyond {model}'s {positions} positions; "
                         f"extend them with long_context: {{{fix}}}, or set max_tokens ≤ "
                         f"{positions}"))  # fmt: skip
    return problems


def _apply_long_context(model: Any, config: EncodeConfig, name: str, step: str) -> None:
    """Set the model's window to ``max_tokens`` and apply the long-context options (a model
    from a hub id is checked here, as preflight checks a local one)."""
    from embedpipe.errors import UsageError
    from embedpipe.steps import longctx

    lc, n = config.long_context, config.max_tokens
    hf = model[0].auto_model
    positions = getattr(hf.config, "max_position_embeddings", None)
    problems = long_context_problems(config, name, positions, longctx.uses_rope(model))
    if problems:
        path, message = problems[0]
        raise UsageError(f"steps.{step}.{'.'.join(path)}: {message}")
    window = n or int(model.max_seq_length)
    trained = positions or window
    if n is not None:
        if lc.position_interpolation != "none":
            longctx.extend_positions(model, n, lc.position_interpolation)
        elif lc.rope_scaling == "ntk":
            longctx.apply_ntk(model, ntk_factor(n / trained))
        model.max_seq_length = n
    auto = lc.temperature == "auto"
    tau = auto_temperature(window, trained) if auto else float(lc.temperature)
    if tau != 1.0:
        longctx.set_temperature(model, tau)
    if lc.attention_scaling:
        longctx.attention_scaling(model, True, trained_len=trained)


def _documents(
    doc_ids: list[str],
    texts: list[str],
    titles: list[str | None],
    starts: list[int],
    ends: list[int],
) -> tuple[list[tuple[str, list[tuple[int, int]]]], list[list[int]], list[tuple[int, int] | None]]:
    """Each document re-assembled from its chunks (each chunk's text at its character span;
    what no chunk covers becomes spaces), with its title in front as the encoder prepends it,
    and the chunks' spans in that text; each document's row positions; and each document's
    title span (pooled into every chunk, as plain chunking has the title in every chunk)."""
    order: dict[str, list[int]] = {}
    for i, doc in enumerate(doc_ids):
        order.setdefault(doc, []).append(i)
    docs, rows, heads = [], [], []
    for indices in order.values():
        base = min(starts[i] for i in indices)
        length = max(ends[i] for i in indices) - base
        chars = [" "] * length
        for i in indices:
            a = starts[i] - base
            chars[a : a + len(texts[i])] = texts[i]
        title = titles[indices[0]]
        head = f"{title}\n\n" if title else ""
        body = "".join(chars[:length])
        spans = [(len(head) + starts[i] - base, len(head) + ends[i] - base) for i in indices]
        docs.append((head + body, spans))
        rows.append(indices)
        heads.append((0, len(title)) if title else None)
    return docs, rows, heads
