"""The Ray executor (issue 19): the same spec on a local Ray cluster started here gives the local
executor's rows, one Lance version per run, incremental re-runs, and survives a killed worker."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import lance
import numpy as np
import psutil
import pytest

import embedpipe
from embedpipe.engine.workspace import Workspace
from embedpipe.errors import SpecError, UsageError
from tests.conftest import CORPUS, eventually, write_jsonl

ray = pytest.importorskip("ray")

TOPICS = [
    "vitamin D and bone density in older adults",
    "honeybee foraging and the waggle dance",
    "volcanic aerosols and the global climate",
    "sourdough fermentation with wild yeast",
    "accretion discs around black holes",
    "opening theory in competitive chess",
    "tidal forces and the height of ocean tides",
    "photosynthesis in the leaves of desert plants",
]


def documents(n: int) -> list[dict[str, str]]:
    """``n`` documents of a few sentences each (two to three 32-token chunks apiece)."""
    docs = list(CORPUS)
    for i in range(len(docs), n):
        topic = TOPICS[i % len(TOPICS)]
        text = " ".join(
            f"Study {i}.{k} looked at {topic}, measuring effect number {k} over {i + k} weeks."
            for k in range(4)
        )
        docs.append({"_id": f"doc{i}", "title": f"Notes {i} on {topic}", "text": text})
    return docs


SPEC = """
name: scaled
workspace: ws
runner: {type: ray, num_workers: 2, batch_size: 8, fragment_rows: 16}
tables: {uri: shared/tables}
steps:
  docs: {type: ingest, source: corpus.jsonl, format: beir}
  chunks: {type: chunk, input: docs, strategy: tokens, max_tokens: 32, overlap: 4}
  vectors: {type: encode, input: chunks, batch_size: 8, backend: torch}
  index: {type: index, input: vectors, table: scaled}
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A local Ray cluster of 2 CPUs, started inside the test; the executor joins it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def rows(pipe: embedpipe.Pipeline) -> tuple[list[str], np.ndarray]:
    found = pipe.sql("select chunk_id, vector from scaled order by chunk_id")
    return [r["chunk_id"] for r in found], np.array([r["vector"] for r in found], np.float32)


def prefect_summary(flow_run_id: str | None) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    assert flow_run_id
    runs = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=runs)
    return "\n".join(str(a.data) for a in found)


def local_spec(spec: Path) -> Path:
    """The same pipeline on the local executor, in a workspace of its own."""
    lines = spec.read_text().splitlines(keepends=True)
    text = "".join(line for line in lines if not line.startswith(("runner:", "tables:")))
    path = spec.with_name("local.yaml")
    path.write_text(text.replace("workspace: ws", "workspace: ws-local"))
    return path


def test_ray_gives_the_local_rows_and_runs_incrementally(
    cluster: None, tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    docs = documents(40)
    write_jsonl(tmp_path / "corpus.jsonl", docs)
    spec = write_spec(SPEC)
    on_ray, local = embedpipe.load(spec), embedpipe.load(local_spec(spec))
    first, reference = on_ray.run(), local.run()
    assert first.status == "completed", first.error
    assert reference.status == "completed", reference.error
    assert first.lance_version == reference.lance_version == 1
    ids, vectors = rows(on_ray)
    want_ids, want = rows(local)
    assert ids == want_ids and len(set(ids)) == len(ids) > 40  # every chunk once
    np.testing.assert_allclose(vectors, want, atol=1e-6)
    assert first.steps["vectors"].computed == len(ids)
    # The index rows were written as fragments by Ray tasks, 16 rows each, one commit, into
    # the folder the spec keeps its tables in (one all workers share), not the workspace.
    assert not (tmp_path / "ws" / "lance").exists()
    table = lance.dataset(tmp_path / "shared" / "tables" / "scaled.lance")
    sizes = [f.count_rows() for f in table.get_fragments()]
    assert sizes == [16] * (len(ids) // 16) + ([len(ids) % 16] if len(ids) % 16 else [])
    # The run's summary in Prefect names the cluster and each worker's throughput.
    summary = prefect_summary(first.flow_run_id)
    assert "Ray cluster" in summary and "| vectors | " in summary and "rows/s" in summary
    assert "| write scaled | " in summary

    # An incremental run on Ray: one document edited, one added, one gone.
    docs[7] = {**docs[7], "text": "An entirely new abstract about coral reef bleaching."}
    docs.append({"_id": "late", "title": "Glaciers", "text": "Alpine glaciers lose mass."})
    del docs[3]
    write_jsonl(tmp_path / "corpus.jsonl", docs)
    second, reference = on_ray.run(), local.run()
    assert second.status == "completed", second.error
    assert second.lance_version == reference.lance_version == 2  # one commit per run
    assert second.steps["vectors"].computed == reference.steps["vectors"].computed == 2
    assert second.steps["index"].deleted == reference.steps["index"].deleted > 0
    ids, vectors = rows(on_ray)
    want_ids, want = rows(local)
    assert ids == want_ids and len(set(ids)) == len(ids)
    np.testing.assert_allclose(vectors, want, atol=1e-6)
    assert on_ray.search("coral reef bleaching", 1)[0]["doc_id"] == "doc7"
    # The new rows are new fragments; the old rows of the edited and deleted documents are
    # marked deleted in theirs; unchanged rows still name the run that wrote them.
    table = lance.dataset(tmp_path / "shared" / "tables" / "scaled.lance")
    assert table.count_rows() == len(ids) and len(table.get_fragments()) > len(sizes)
    runs = on_ray.sql("select run_id, count(*) as n from scaled group by run_id order by n")
    assert [r["run_id"] for r in runs] == [second.run_id, first.run_id]


def test_a_worker_killed_mid_encode_is_replaced(
    cluster: None, tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    write_jsonl(tmp_path / "corpus.jsonl", documents(60))
    spec = write_spec(SPEC.replace("batch_size: 8}", "batch_size: 4}", 1))
    killed: list[int] = []
    done = threading.Event()

    def kill_one_worker() -> None:
        """SIGKILL the first Ray worker seen encoding a window (its title is ray::_Worker.map)."""
        while not done.is_set() and not killed:
            for proc in psutil.process_iter(["cmdline"]):
                if (proc.info["cmdline"] or [""])[0].startswith("ray::_Worker.map"):
                    os.kill(proc.pid, signal.SIGKILL)
                    killed.append(proc.pid)
                    break
            done.wait(0.02)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    try:
        result = embedpipe.load(spec).run()
    finally:
        done.set()
        killer.join()
    assert killed, "no worker was seen encoding, so none was killed"
    assert result.status == "completed", result.error
    assert result.lance_version == 1
    pipe = embedpipe.load(spec)
    ids, vectors = rows(pipe)
    assert len(ids) == len(set(ids)) == result.steps["vectors"].rows_out  # every row once
    reference = embedpipe.load(local_spec(spec))
    assert reference.run().status == "completed"
    want_ids, want = rows(reference)
    assert ids == want_ids
    np.testing.assert_allclose(vectors, want, atol=1e-6)


def test_runner_settings_are_checked(
    tmp_path: Path, corpus: Path, write_spec: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = write_spec(SPEC)
    bad = embedpipe.load(spec, overrides=["runner.address=not an address"])
    with pytest.raises(UsageError, match=r"runner\.address: .*use auto, local, ray://HOST:PORT"):
        bad.run()
    assert not (tmp_path / "ws").exists()  # refused before the workspace was touched

    # Without Ray installed, `runner: ray` is a spec error that names the extra.
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    assert embedpipe.load(spec).sql("select 1 as one") == [{"one": 1}]  # loads; SQL works
    with pytest.raises(SpecError) as caught:
        embedpipe.load(spec).run()  # a run (and `pipe validate`) checks it first
    text = str(caught.value)
    assert "spec.yaml:3:" in text and "runner.type" in text, text
    assert "pip install 'embedpipe[ray]'" in text, text


@pytest.mark.slow  # CI stays under 20 minutes; `make test-slow` runs it
def test_pipe_run_runner_flag(cluster: None, basic_spec: Path) -> None:
    """`pipe run SPEC --runner ray`: a local spec runs on Ray (here: joins the test's cluster)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "embedpipe.cli",
            "run",
            str(basic_spec),
            "--runner",
            "ray",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == "completed" and out["steps"]["vectors"]["computed"] == 6
    rows = embedpipe.load(basic_spec).sql("select count(distinct chunk_id) as n from tiny")
    assert rows == [{"n": 6}]


@pytest.mark.slow  # CI stays under 20 minutes; `make test-slow` runs it
def test_ctrl_c_on_ray_commits_nothing_and_stops_the_workers(
    tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    """SIGINT to `pipe run` mid-encode on Ray: exit 130, no Lance version, the run recorded
    failed, and no worker left running."""
    write_jsonl(tmp_path / "corpus.jsonl", documents(300))
    spec = write_spec(SPEC.replace("batch_size: 8}", "batch_size: 8, address: local}", 1))
    proc = subprocess.Popen(
        [sys.executable, "-m", "embedpipe.cli", "run", str(spec)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen = ""
    for line in proc.stderr:  # no terminal: a plain line per step
        seen += line
        if line.startswith("vectors: running"):
            break

    def workers() -> list[psutil.Process]:
        procs = psutil.process_iter(["cmdline"])
        return [p for p in procs if (p.info["cmdline"] or [""])[0].startswith("ray::_Worker")]

    assert eventually(workers, timeout=60), seen
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert eventually(lambda: not workers(), timeout=30), "Ray workers outlived the run"
    pipe = embedpipe.load(spec)
    assert [r["status"] for r in pipe.sql("select status from runs")] == ["failed"]
    assert Workspace.of(pipe.dag.spec).tables() == []  # nothing committed
