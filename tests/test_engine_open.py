"""The engine names no step kind: declared index targets, several index steps, re-scoring,
query stages from steps, speed-only settings (issue 14)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pytest
from pydantic import Field

import embedpipe
from embedpipe import registry, schemas
from embedpipe.engine.executors import Executor, ExecutorConfig
from embedpipe.engine.workspace import Workspace
from embedpipe.errors import SpecError, UsageError
from embedpipe.results import Event
from embedpipe.steps import SPEED_ONLY, Link, QueryEncoder, Step, StepConfig, StepContext
from tests.conftest import CORPUS, write_jsonl

PIPE = str(Path(sys.executable).with_name("pipe"))
QUERY = "do vitamin supplements prevent hip fractures in the elderly?"

TWO_INDEXES = """
name: two
workspace: ws
steps:
  docs: {type: ingest, source: corpus.jsonl, format: beir}
  chunks: {type: chunk, input: docs, strategy: tokens, max_tokens: 64, overlap: 8}
  vectors: {type: encode, input: chunks, batch_size: 8}
  by_cosine: {type: index, input: vectors, table: two_cosine}
  by_l2: {type: index, input: vectors, table: two_l2, metric: l2}
"""


def test_two_index_steps_and_speed_only_settings(
    tmp_path: Path, corpus: Path, write_spec: Callable[..., Path]
) -> None:
    spec = write_spec(TWO_INDEXES)
    pipe = embedpipe.load(spec)
    assert pipe.dag.default_index == "by_l2"  # the last index step in the spec file
    result = pipe.run()
    assert result.status == "completed", result.error
    for step in ("by_cosine", "by_l2"):
        assert result.steps[step].computed == 6 and result.steps[step].rows_out == 6
    ws = Workspace(pipe.workspace)
    assert ws.tables() == ["two_cosine", "two_l2"]
    assert result.live_version == ws.table_version("two_l2")

    cosine = pipe.search(QUERY, 3, step="by_cosine")
    l2 = pipe.search(QUERY, 3, step="by_l2")
    assert cosine[0]["doc_id"] == l2[0]["doc_id"] == "d1"
    assert 0 < cosine[0]["score"] <= 1.0 and l2[0]["score"] < 0  # similarity; -distance
    assert pipe.search(QUERY, 3) == l2  # the default index, as every command takes it
    assert [v["live"] for v in pipe.versions()] == [True]

    # Speed-only settings: same spec hash, nothing to compute, nothing encoded or committed.
    fast = ["steps.vectors.batch_size=64", "steps.by_l2.ann.nprobes=5"]
    faster = embedpipe.load(spec, overrides=fast)
    assert faster.dag.spec.hash == pipe.dag.spec.hash
    slower = embedpipe.load(spec, overrides=["steps.vectors.normalize=false"])
    assert slower.dag.spec.hash != pipe.dag.spec.hash  # this one changes the vectors
    plan = faster.plan()
    assert plan.noop and plan.steps["vectors"].computed == 0
    again = faster.run()
    assert again.status == "completed", again.error
    assert again.steps["vectors"].computed == 0 and again.steps["vectors"].cached == 6
    assert again.lance_version is None and again.noop

    # A deleted document: both tables are diffed and lose its rows in their own commit; the
    # source step counts it against the default table.
    write_jsonl(corpus, CORPUS[:-1])
    edited = embedpipe.load(spec).run()
    assert edited.status == "completed", edited.error
    assert edited.steps["docs"].deleted == 1
    assert edited.steps["by_cosine"].deleted == edited.steps["by_l2"].deleted == 1
    assert ws.table_version("two_cosine") == ws.table_version("two_l2") == 2

    out = subprocess.run(
        [PIPE, "search", str(spec), QUERY, "-k", "2", "--step", "by_cosine", "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    hits = json.loads(out.stdout)
    api = embedpipe.load(spec).search(QUERY, 2, step="by_cosine")  # the CLI goes through it
    assert [h["chunk_id"] for h in hits] == [h["chunk_id"] for h in api]
    assert "d6" not in {h["doc_id"] for h in api}
    bad = subprocess.run(
        [PIPE, "search", str(spec), QUERY, "--step", "nope", "--json"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "index steps: by_cosine, by_l2" in json.loads(bad.stdout)["error"]


# -- a step defined here, registered as a plugin would be: a short copy of each vector ---------
class HalfConfig(StepConfig):
    note: str = Field("", description="Speed-only, for the test.", json_schema_extra=SPEED_ONLY)


class Half(Step):
    """Add ``vector_half``: the first half of each vector, re-normalised.

    ```yaml
    half: {type: half, input: vectors}
    ```
    """

    type = "half"
    Config = HalfConfig
    reads = pa.schema(
        [pa.field("chunk_id", pa.string()), pa.field("vector", schemas.vector_type(None))]
    )
    row_wise = True

    def output_schema(self, inputs: list[Link]) -> pa.Schema:
        up = inputs[0].schema
        dims = schemas.dims_of(up.field("vector").type)
        half = schemas.vector_field(
            "vector_half", schemas.vector_type(dims and dims // 2), "cosine"
        )
        return pa.schema([*up, half], metadata=up.metadata)

    @staticmethod
    def _half(vectors: np.ndarray) -> np.ndarray:
        short = vectors[:, : vectors.shape[1] // 2]
        return (short / np.linalg.norm(short, axis=1, keepdims=True)).astype(np.float32)

    def map(self, rows: pa.Table, ctx: StepContext) -> Iterator[Event]:
        col = rows.column("vector").combine_chunks()
        flat = col.flatten().to_numpy().reshape(len(col), col.type.list_size)
        short = self._half(flat)
        arr = pa.FixedSizeListArray.from_arrays(pa.array(short.reshape(-1)), short.shape[1])
        yield from rows.append_column("vector_half", arr).to_batches()

    def query_encoder(self, column: str) -> QueryEncoder | None:
        if column != "vector_half":
            return None
        full = self.upstream[0].query_encoder("vector")
        assert full is not None
        return lambda queries: self._half(full(queries))


class ThreadsConfig(ExecutorConfig):
    workers: int = Field(2, ge=1)


class Threads(Executor):
    """Row-wise windows on a thread pool, their events returned in input order."""

    name = "threads"
    Config = ThreadsConfig
    windows_seen: ClassVar[list[str]] = []

    def map_windows(self, step: Step, windows: Iterator[Any], ctx: StepContext) -> Iterator[Event]:
        Threads.windows_seen.append(step.name)
        with ThreadPoolExecutor(self.config.workers) as pool:
            done = [pool.submit(lambda w: list(step.map(w, ctx)), w) for w in windows]
            for future in done:
                yield from future.result()


RESCORED = """
name: rescored
workspace: ws
runner: {type: threads, workers: 2}
steps:
  docs: {type: ingest, source: corpus.jsonl, format: beir}
  chunks: {type: chunk, input: docs, strategy: tokens, max_tokens: 64, overlap: 8}
  vectors: {type: encode, input: chunks, batch_size: 8}
  half: {type: half, input: vectors}
  short:
    {type: index, input: half, table: short_codes, column: vector_half, rescore: 10,
     rescore_column: vector}
  full: {type: index, input: vectors, table: full_vectors}
"""


def test_search_on_a_plugin_column_rescored_on_floats(
    tmp_path: Path, corpus: Path, write_spec: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(registry.step_types(), "half", Half)
    monkeypatch.setitem(registry._EXECUTORS, "threads", Threads)
    pipe = embedpipe.load(write_spec(RESCORED))
    target = pipe.dag.targets["short"]
    assert [(v.name, v.metric) for v in target.vectors] == [
        ("vector", "cosine"),
        ("vector_half", "cosine"),
    ]
    assert (target.search, target.rescore, target.shortlist) == ("vector_half", "vector", 10)
    result = pipe.run()
    assert result.status == "completed", result.error
    # Row-wise steps with work go to the executor (chunk was computed by the plan, in this
    # process, and the run took its output); ingest and index run whole.
    assert set(Threads.windows_seen) == {"vectors", "half"}
    rows = pipe.sql("select chunk_id, len(vector_half) as d from short_codes order by chunk_id")
    assert len(rows) == 6 and {r["d"] for r in rows} == {192}  # the plugin's column, in SQL

    # The shortlist (k * 10) covers the corpus: re-scored on full vectors, the ranking and the
    # scores are those of a search on the full vectors.
    short = pipe.search(QUERY, 4, step="short")
    full = pipe.search(QUERY, 4, step="full")
    assert [h["chunk_id"] for h in short] == [h["chunk_id"] for h in full]
    assert np.allclose([h["score"] for h in short], [h["score"] for h in full], atol=1e-5)
    assert "vector" not in short[0]  # columns fetched for re-scoring stay internal

    many = pipe.search_many([QUERY, "honeybee dances"], 2, step="short", batch=1)
    assert [h["chunk_id"] for h in many[0]] == [h["chunk_id"] for h in short[:2]]
    assert many[1][0]["doc_id"] == "d2"


def test_runner_names_a_registered_executor_with_its_own_keys(
    tmp_path: Path, corpus: Path, write_spec: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = write_spec(
        TWO_INDEXES.replace("workspace: ws", "workspace: ws\nrunner: {type: threads}")
    )
    with pytest.raises(SpecError, match=r"unknown executor 'threads'.*valid executors: local"):
        embedpipe.load(spec)
    monkeypatch.setitem(registry._EXECUTORS, "threads", Threads)
    bad = embedpipe.load(spec, overrides=["runner.wrokers=2"])
    with pytest.raises(UsageError, match=r"runner\.wrokers: Extra inputs are not permitted"):
        bad.run()
    assert not (tmp_path / "ws").exists()  # refused before the workspace was touched
