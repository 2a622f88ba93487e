"""The built-in steps pass the same contract a plugin's tests subclass (embedpipe.testing)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa

from embedpipe import schemas
from embedpipe.testing import FakeStore, StepContract, make_context, make_step, run_step

ROOT = Path(__file__).resolve().parent.parent


def _documents() -> pa.Table:
    texts = [
        "Vitamin D supplementation in older adults reduced hip fractures. It was a trial.",
        "Honeybees share flower locations with a waggle dance.",
        "Sulfur aerosols from eruptions cool the planet for a year or two.",
    ]
    rows = [
        {"doc_id": f"d{i}", "text": t, "title": f"T{i}", "source": "x", "meta": "{}",
         "content_hash": f"h{i}", "ingested_at": None}
        for i, t in enumerate(texts)
    ]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=schemas.DOCUMENTS)


def _chunks() -> pa.Table:
    docs = _documents()
    rows = [
        {"chunk_id": f"{d}#0", "doc_id": d, "ordinal": 0, "text": t, "title": "", "n_tokens": 9,
         "char_start": 0, "char_end": len(t), "content_hash": h}
        for d, t, h in zip(docs["doc_id"].to_pylist(), docs["text"].to_pylist(),
                           docs["content_hash"].to_pylist(), strict=True)
    ]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=schemas.CHUNKS)


def _embeddings(dims: int = 8) -> pa.Table:
    chunks = _chunks()
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(chunks), dims)).astype(np.float32)
    schema = schemas.embeddings(dims)
    cols = {
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dims),
        "model": pa.array(["m"] * len(chunks)),
        "model_revision": pa.array(["r"] * len(chunks)),
        "dims": pa.array([dims] * len(chunks), pa.int32()),
        "normalized": pa.array([False] * len(chunks)),
    }
    for name, col in cols.items():
        chunks = chunks.append_column(name, col)
    return chunks.cast(schema)


class TestIngestContract(StepContract):
    step_type = "ingest"
    config: ClassVar = {"source": str(ROOT / "docs"), "format": "markdown"}
    volatile = ("ingested_at",)


class TestChunkContract(StepContract):
    step_type = "chunk"
    config: ClassVar = {"input": "docs", "max_tokens": 16, "overlap": 4}

    def sample(self) -> pa.Table:
        return _documents()


class TestEncodeContract(StepContract):
    step_type = "encode"
    config: ClassVar = {"input": "chunks"}  # backend auto: openvino, bf16 on a CPU with it
    tolerance = 2e-3

    def sample(self) -> pa.Table:
        return _chunks()


class TestTorchEncodeContract(TestEncodeContract):
    config: ClassVar = {"input": "chunks", "backend": "torch"}
    tolerance = 1e-5


class TestIndexContract(StepContract):
    step_type = "index"
    config: ClassVar = {"input": "vectors", "table": "t"}

    def sample(self) -> pa.Table:
        return _embeddings()


class TestCompressContract(StepContract):
    step_type = "compress"
    config: ClassVar = {"input": "vectors", "method": "binary"}

    def sample(self) -> pa.Table:
        return _embeddings()


class TestFittedCompressContract(StepContract):
    step_type = "compress"
    config: ClassVar = {"input": "vectors", "method": "pca", "dims": 4, "fit_rows": 256}

    def sample(self) -> pa.Table:
        return _embeddings()


class TestPoolContract(StepContract):
    step_type = "pool"
    config: ClassVar = {"input": "vectors"}

    def sample(self) -> pa.Table:
        return _embeddings()


class TestFusedPoolContract(StepContract):
    step_type = "pool"
    config: ClassVar = {"input": "vectors", "output": "column", "weight": 0.5}

    def sample(self) -> pa.Table:
        return _embeddings()


class TestFilterContract(StepContract):
    step_type = "filter"
    config: ClassVar = {"input": "index", "method": "cosine_threshold", "threshold": 0.3}

    def sample(self) -> pa.Table:
        return _embeddings()


def test_index_writes_every_column_and_diffs_by_row_hash() -> None:
    """Unknown upstream columns pass through to the table; a second write of the same rows
    commits nothing; a changed row is the only one computed."""
    rows = _embeddings().append_column("extra", pa.array(["a", "b", "c"]))
    step = make_step("index", {"input": "vectors", "table": "t"})
    store = FakeStore()
    first = run_step(step, [rows], make_context(store=store))
    assert first.stats["computed"] == 3 and first.stats["commits"] == 1
    table = store.tables["t"]
    assert "extra" in table.column_names and "n_tokens" in table.column_names
    assert table.column_names[-3:] == ["spec_hash", "run_id", "row_hash"]
    same = run_step(step, [rows], make_context(store=store))
    assert same.stats["computed"] == 0 and same.stats["commits"] == 0
    changed = rows.set_column(
        rows.schema.get_field_index("extra"), "extra", pa.array(["a", "b", "z"])
    )
    third = run_step(step, [changed], make_context(store=store))
    assert (third.stats["computed"], third.stats["changed"], third.stats["cached"]) == (1, 1, 2)
