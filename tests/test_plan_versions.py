"""`pipe plan`, no-op runs (and their deferred Prefect records), spec edits that change no row,
index versions: rollback and retain. Real model, LanceDB, DuckDB and Prefect; no mocks.

Runs go through the Python API (in-process, cheap) unless the CLI contract itself is tested.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lance
import pytest

import embedpipe
from embedpipe.engine.flow import RunResult, plan
from tests.conftest import CORPUS, write_jsonl

TABLE = "tiny"


def pipe(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    """The real `pipe` command in a subprocess; asserts its exit status."""
    proc = subprocess.run(
        [sys.executable, "-m", "embedpipe.cli", *args], capture_output=True, text=True, check=False
    )
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    return proc


def last_json(proc: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def listing(root: Path) -> dict[str, tuple[bool, int, int]]:
    """Every path under ``root``, directories included: (is_dir, size, mtime_ns)."""
    out = {".": (True, 0, root.stat().st_mtime_ns)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.stat()
            out[str(p.relative_to(root))] = (
                p.is_dir(),
                0 if p.is_dir() else st.st_size,
                st.st_mtime_ns,
            )
    return out


def table_path(pipeline: embedpipe.api.Pipeline) -> str:
    return str(pipeline.workspace / "lance" / f"{TABLE}.lance")


def rows_of(path: str, version: int | None = None) -> set[tuple[str, str]]:
    ds = lance.dataset(path, version=version) if version else lance.dataset(path)
    t = ds.to_table(columns=["chunk_id", "text"]).to_pydict()
    return set(zip(t["chunk_id"], t["text"], strict=True))


def corpus_rows(docs: list[dict[str, str]]) -> set[tuple[str, str]]:
    """The rows of the index for ``docs``: each tiny document is one chunk."""
    return {(f"{d['_id']}#0", d["text"]) for d in docs}


def edited(docs: list[dict[str, str]], doc_id: str, text: str) -> list[dict[str, str]]:
    return [{**d, "text": text} if d["_id"] == doc_id else dict(d) for d in docs]


def diff(step: dict[str, Any]) -> tuple[int, int, int]:
    """A plan step's (new, changed, deleted)."""
    return step["new"], step["changed"], step["deleted"]


def computed(result: RunResult) -> dict[str, int]:
    return {n: s.computed for n, s in result.steps.items()}


# 1 + 6. Plan: what a run would do, writing nothing; then the run does exactly that.


def test_plan_counts_writes_nothing_and_the_run_follows_it(basic_spec: Path, corpus: Path) -> None:
    pipeline = embedpipe.load(basic_spec)
    ws = pipeline.workspace

    first = plan(pipeline.dag, progress=False).to_json()
    steps = first["steps"]
    assert first["pipeline"] == TABLE and first["noop"] is False
    assert diff(steps["docs"]) == (6, 0, 0) and diff(steps["index"]) == (6, 0, 0)
    assert steps["index"]["computed"] == 6
    assert steps["vectors"]["estimated"] is True and steps["vectors"]["computed"] == 6
    assert steps["chunks"]["estimated"] is False and steps["chunks"]["computed"] == 6
    assert pipeline.dag.steps["vectors"]._model is None  # type: ignore[attr-defined]
    assert not ws.exists()  # a plan before any run creates no workspace

    assert pipeline.run().status == "completed"
    before_rows = rows_of(table_path(pipeline))

    # Edit d3, delete d6, add d7.
    docs = edited(CORPUS, "d3", "Ash clouds from eruptions grounded flights across Europe.")
    docs = [d for d in docs if d["_id"] != "d6"]
    docs.append({"_id": "d7", "title": "Tides", "text": "The moon's gravity raises ocean tides."})
    write_jsonl(corpus, docs)
    want_rows = corpus_rows(docs)
    before_ids, want_ids = {c for c, _ in before_rows}, {c for c, _ in want_rows}

    runs_before = pipeline.sql("select count(*) as n from runs")
    files_before = listing(ws)
    out = last_json(pipe("plan", str(basic_spec), "--json"))
    files_after = listing(ws)
    # No file is created, removed or written (checked here); no directory is touched either
    # (checked at the end, so that the checks in between still run if only that fails).
    assert {k: v for k, v in files_after.items() if not v[0]} == {
        k: v for k, v in files_before.items() if not v[0]
    }
    touched = sorted(k for k, v in files_after.items() if files_before.get(k) != v)
    assert pipeline.sql("select count(*) as n from runs") == runs_before

    s = out["steps"]
    assert out["noop"] is False
    assert diff(s["docs"]) == (1, 1, 1)
    assert s["docs"]["computed"] == 2 and s["docs"]["rows_out"] == 6
    assert (s["chunks"]["computed"], s["chunks"]["cached"], s["chunks"]["rows_out"]) == (2, 4, 6)
    assert s["vectors"]["estimated"] is True
    assert (s["vectors"]["computed"], s["vectors"]["cached"]) == (2, 4)
    assert s["index"]["new"] == len(want_ids - before_ids) == 1
    assert s["index"]["deleted"] == len(before_ids - want_ids) == 1
    assert s["index"]["changed"] == len((want_rows - before_rows) - {("d7#0", docs[-1]["text"])})
    assert s["index"]["changed"] == 1
    assert s["index"]["computed"] == s["index"]["new"] + s["index"]["changed"] == 2
    assert s["index"]["rows_out"] == 6
    # The Python API's plan says the same, without loading the model.
    dag = embedpipe.load(basic_spec).dag
    assert plan(dag, progress=False).to_json() == out
    assert dag.steps["vectors"]._model is None  # type: ignore[attr-defined]

    # The run does what the plan said.
    done = pipeline.run()
    assert done.status == "completed" and done.lance_version == 2 and done.skipped == 0
    for name, step in done.steps.items():
        assert step.computed == s[name]["computed"], name
        assert step.cached == s[name]["cached"], name
        assert step.deleted == s[name]["deleted"], name
        assert (step.new, step.changed) == (s[name]["new"], s[name]["changed"]), name
    assert rows_of(table_path(pipeline)) == want_rows
    # Now there is nothing left to do.
    assert plan(embedpipe.load(basic_spec).dag, progress=False).noop is True

    # 6. `pipe run`: completed with nothing skipped exits 0 (here a no-op: no Prefect start).
    proc = pipe("run", str(basic_spec), "--json", "--quiet")
    again = last_json(proc)
    assert again["status"] == "completed" and again["lance_version"] == 2
    assert all(step["skipped"] == 0 for step in again["steps"].values())

    assert touched == [], f"pipe plan touched {touched} in the workspace"


# 2. A no-op run skips Prefect; the next run that starts Prefect records it there.


def test_noop_is_deferred_then_recorded_in_prefect(basic_spec: Path, corpus: Path) -> None:
    from prefect import get_client

    pipeline = embedpipe.load(basic_spec)
    first = pipeline.run()
    assert first.status == "completed" and first.lance_version == 1

    noop = pipeline.run()
    assert noop.status == "completed", noop.error
    assert noop.noop is True and noop.flow_run_id is None
    assert noop.lance_version is None and noop.live_version == 1
    assert noop.to_json()["lance_version"] == 1
    assert lance.dataset(table_path(pipeline)).version == 1
    assert computed(noop) == {"docs": 0, "chunks": 0, "vectors": 0, "index": 0}
    row = pipeline.sql(
        f"select noop, prefect, flow_run_id from runs where run_id = '{noop.run_id}'"
    )
    assert row == [{"noop": True, "prefect": "deferred", "flow_run_id": None}]

    write_jsonl(corpus, edited(CORPUS, "d1", "Calcium and vitamin D lowered fracture risk."))
    third = pipeline.run()
    assert third.status == "completed" and third.noop is False and third.lance_version == 2

    rows = pipeline.sql("select run_id, noop, prefect, flow_run_id from runs order by started_at")
    assert [(r["run_id"], r["noop"], r["prefect"]) for r in rows] == [
        (first.run_id, False, "recorded"),
        (noop.run_id, True, "recorded"),
        (third.run_id, False, "recorded"),
    ]
    noop_flow_run = rows[1]["flow_run_id"]
    assert noop_flow_run and noop_flow_run not in (first.flow_run_id, third.flow_run_id)
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(noop_flow_run)
        assert flow_run.state.is_completed()
        assert flow_run.name == f"tiny-{noop.run_id}"
        assert "noop" in flow_run.tags and "pipeline:tiny" in flow_run.tags
    # Recorded once: a further run has nothing deferred left to record.
    assert pipeline.sql("select count(*) as n from runs where prefect = 'deferred'") == [{"n": 0}]


# 3. Spec edits: one that changes no row is a no-op; one that changes vectors rewrites all rows.


def test_spec_edit_that_changes_no_row_is_a_noop(basic_spec: Path) -> None:
    first = embedpipe.load(basic_spec).run()
    assert first.lance_version == 1

    retain = embedpipe.load(basic_spec, overrides=["steps.index.retain=5"])
    assert retain.dag.spec.hash != embedpipe.load(basic_spec).dag.spec.hash
    same = retain.run()
    assert same.status == "completed", same.error
    assert same.noop is True and same.lance_version is None and same.live_version == 1
    assert computed(same) == {"docs": 0, "chunks": 0, "vectors": 0, "index": 0}
    path = table_path(retain)
    assert [v["version"] for v in lance.dataset(path).versions()] == [1]
    before = lance.dataset(path).to_table(columns=["chunk_id", "vector"]).to_pydict()
    old_vectors = dict(zip(before["chunk_id"], before["vector"], strict=True))

    no_title = embedpipe.load(basic_spec, overrides=["steps.vectors.include_title=false"])
    result = no_title.run()
    assert result.status == "completed", result.error
    assert result.noop is False and result.lance_version == 2
    assert result.steps["vectors"].computed == 6 and result.steps["vectors"].cached == 0
    assert result.steps["index"].computed == 6 and result.steps["index"].changed == 6
    after = lance.dataset(path).to_table(columns=["chunk_id", "vector", "run_id"]).to_pydict()
    assert set(after["run_id"]) == {result.run_id}  # every row rewritten
    new_vectors = dict(zip(after["chunk_id"], after["vector"], strict=True))
    assert new_vectors.keys() == old_vectors.keys()
    assert all(new_vectors[c] != old_vectors[c] for c in old_vectors)


# 4. Rollback: a new version with an old version's rows; the next run catches up from the caches.


@pytest.mark.slow  # CI stays under 20 minutes; `make test-slow` runs it
def test_rollback_then_run_catches_up(basic_spec: Path, corpus: Path) -> None:
    pipeline = embedpipe.load(basic_spec)
    path = table_path(pipeline)
    assert pipeline.run().lance_version == 1
    v2 = edited(CORPUS, "d1", "Calcium and vitamin D lowered fracture risk in trials.")
    write_jsonl(corpus, v2)
    assert pipeline.run().lance_version == 2
    v3 = edited(v2, "d2", "Bumblebees learn flower colours faster than honeybees.")
    write_jsonl(corpus, v3)
    assert pipeline.run().lance_version == 3
    assert rows_of(path, 1) == corpus_rows(CORPUS) != rows_of(path) == corpus_rows(v3)

    done = last_json(pipe("rollback", str(basic_spec), "--to-version", "1", "--json"))
    assert done["to_version"] == 1 and done["from_version"] == 3
    assert done["lance_version"] == 4 and done["rows"] == 6 and done["table"] == TABLE
    assert done["run_id"].endswith("-rollback")
    assert lance.dataset(path).version == 4
    assert rows_of(path) == rows_of(path, 1)

    runs = json.loads(pipe("runs", str(basic_spec), "--json").stdout)
    back = [r for r in runs if r["run_id"].endswith("-rollback")]
    assert len(back) == 1 and back[0]["rolled_back_to"] == 1 and back[0]["lance_version"] == 4
    assert back[0]["run_id"] == done["run_id"] and back[0]["status"] == "completed"
    versions = json.loads(pipe("runs", str(basic_spec), "--versions", "--json").stdout)
    assert [v["version"] for v in versions] == [4, 3, 2, 1]
    assert versions[0]["live"] is True and versions[0]["note"] == "rollback to v1"
    assert versions[0]["run_id"] == done["run_id"]
    assert not any(v["live"] for v in versions[1:])

    # The lock file aside (a rollback takes the workspace lock before it reads the versions).
    files_before = listing(pipeline.workspace)
    files_before.pop(".lock")
    bad = pipe("rollback", str(basic_spec), "--to-version", "99", code=2)
    assert "--to-version 99" in bad.stderr and "versions on disk: 1-4" in bad.stderr
    assert "Traceback" not in bad.stderr
    files_after = listing(pipeline.workspace)
    files_after.pop(".lock")
    assert files_after == files_before
    assert pipeline.sql("select count(*) as n from runs") == [{"n": 4}]

    again = pipeline.run()
    assert again.status == "completed", again.error
    assert again.lance_version == 5
    assert rows_of(path) == corpus_rows(v3)
    assert again.steps["vectors"].computed == 0 and again.steps["vectors"].cached == 6
    assert again.steps["chunks"].computed == 0
    # v1 differs from the sources in d1 and d2: those two rows are rewritten, nothing else.
    assert again.steps["index"].computed == 2 and again.steps["index"].changed == 2


# 5. retain: only the newest N versions stay on disk.


@pytest.mark.slow  # CI stays under 20 minutes; `make test-slow` runs it
def test_retain_keeps_the_newest_versions(basic_spec: Path, corpus: Path) -> None:
    pipeline = embedpipe.load(basic_spec, overrides=["steps.index.retain=2"])
    path = table_path(pipeline)
    docs = [dict(d) for d in CORPUS]
    for version in range(1, 5):
        if version > 1:
            docs = edited(docs, "d4", f"A sourdough starter, fed {version} times a day.")
            write_jsonl(corpus, docs)
        result = pipeline.run()
        assert result.status == "completed", result.error
        assert result.lance_version == version
    assert [v["version"] for v in lance.dataset(path).versions()] == [3, 4]
    assert rows_of(path, 3) and rows_of(path) == corpus_rows(docs)
    for gone in (1, 2):
        with pytest.raises(ValueError, match=f"{gone}.manifest was not found"):
            lance.dataset(path, version=gone)
    assert [v["version"] for v in pipeline.versions()] == [4, 3]

    bad = pipe(
        "rollback", str(pipeline.dag.spec.path), "--set", "steps.index.retain=2",
        "--to-version", "1", code=2,
    )  # fmt: skip
    assert "versions on disk: 3-4" in bad.stderr
    assert lance.dataset(path).version == 4
