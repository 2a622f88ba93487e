"""Crash safety (issue 3): a real `pipe run`, killed with SIGKILL at exact points and at a random
moment, never damages the index. The previous Lance version stays readable, whole; the next run
completes; the table then holds every chunk exactly once, and every table version holds one
model's vectors. No mocks: real CLI processes, model, LanceDB, DuckDB and Prefect.

Exact points come from ``EMBEDPIPE_CRASH_AT`` (embedpipe/engine/crash.py): the process SIGKILLs
itself there, so its exit status is -9 and no timer decides where it stopped. Where no crash
point exists, the test watches the workspace with inotify and kills the process the moment the
file it is waiting for appears.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import lance
import lancedb
import pytest

from embedpipe import models
from tests.conftest import write_jsonl

SPEC = """
name: crash
workspace: ws
steps:
  docs: {{type: ingest, source: corpus.jsonl, format: beir}}
  chunks: {{type: chunk, input: docs, strategy: tokens, max_tokens: 16, overlap: 2}}
  vectors: {{type: encode, input: chunks, batch_size: 1, model: {model}}}
  index: {{type: index, input: vectors, table: {table}}}
"""
# encode works in windows of batch_size * 64 texts and caches each window's output once it is
# encoded: with batch_size 1, the ~130 chunks of 40 docs make three windows, so a run killed
# at the first cached batch has work left that its re-run must take partly from the cache.
N_DOCS = 40
TABLE = "crash"
CRASH_ENV = "EMBEDPIPE_CRASH_AT"
KILLED = -signal.SIGKILL
TIMEOUT = 300  # seconds a single `pipe run` may take before the test gives up on it
# The random-kill test's moment: reproducible, and movable with EMBEDPIPE_CRASH_SEED.
SEED = int(os.environ.get("EMBEDPIPE_CRASH_SEED", "20240611"))
MARKER = "zeppelin"  # appears only in the edited document's new text
IN_CREATE = 0x100  # inotify: an entry was created in the watched folder

WORDS = [
    *("river", "mountain", "forest", "ocean", "protein", "enzyme", "star", "planet", "bread"),
    *("yeast", "chess", "bishop", "volcano", "ash", "honey", "bee", "bone", "vitamin"),
    *("glacier", "desert", "copper", "magnet", "violin", "orbit", "lichen", "coral", "tundra"),
]


def corpus() -> list[dict[str, str]]:
    rng = random.Random(7)
    return [
        {
            "_id": f"d{i:02d}",
            "title": f"Note {i}",
            "text": " ".join(rng.choice(WORDS) for _ in range(30)),
        }
        for i in range(N_DOCS)
    ]


def edited() -> list[dict[str, str]]:
    """The corpus after an edit (d03), a deletion (d07) and an addition (d99)."""
    docs = [dict(d) for d in corpus() if d["_id"] != "d07"]
    docs[3]["text"] = f"The {MARKER} drifted over the glacier. " + docs[3]["text"]
    docs.append({"_id": "d99", "title": "Late note", "text": "A late note about copper wire."})
    return docs


def write_spec(root: Path, *, model: str = "all-MiniLM-L6-v2", table: str = TABLE) -> None:
    (root / "spec.yaml").write_text(textwrap.dedent(SPEC.format(model=model, table=table)))


# --- running the real CLI ------------------------------------------------------------------


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    killed_by_test: bool = False

    @property
    def result(self) -> dict[str, Any]:
        """`pipe run --json`'s result (the last stdout line)."""
        lines = self.stdout.strip().splitlines()
        assert lines, f"no JSON on stdout (exit {self.returncode}); stderr:\n{self.stderr}"
        return json.loads(lines[-1])

    def step(self, name: str) -> dict[str, int]:
        return self.result["steps"][name]


def pipe_run(
    root: Path,
    *,
    crash_at: str | None = None,
    kill_after: float | None = None,
    kill_on_create: Path | None = None,
) -> Run:
    """`pipe run spec.yaml --json -q` in ``root``, in its own process group. ``crash_at`` sets
    the crash point; ``kill_after`` SIGKILLs the process that many seconds after it started;
    ``kill_on_create`` SIGKILLs it the moment that path is created (its folder must exist)."""
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    if crash_at:
        env[CRASH_ENV] = crash_at
    n = len(list(root.glob("run-*.out")))
    out, err = root / f"run-{n}.out", root / f"run-{n}.err"
    cmd = [sys.executable, "-m", "embedpipe.cli", "run", "spec.yaml", "--json", "-q"]
    watch = _Watch(kill_on_create) if kill_on_create else None  # armed before the run starts
    with out.open("w") as fo, err.open("w") as fe:
        try:
            proc = subprocess.Popen(
                cmd, cwd=root, env=env, stdout=fo, stderr=fe, start_new_session=True
            )
        except BaseException:
            if watch is not None:
                watch.close()
            raise
        killed = False
        try:
            if watch is not None:
                killed = watch.kill_on_create(proc)
            try:
                rc = proc.wait(timeout=kill_after or TIMEOUT)
            except subprocess.TimeoutExpired:
                if kill_after is None:
                    raise
                os.kill(proc.pid, signal.SIGKILL)  # kill -9 of the `pipe` process only
                killed = True
                rc = proc.wait(timeout=60)
        finally:
            if watch is not None:
                watch.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
            # A SIGKILLed `pipe run` leaves its Prefect ephemeral server (a uvicorn child in its
            # process group) running as an orphan: end the group it started, and only that.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    return Run(rc, out.read_text(), err.read_text(), killed)


class _Watch:
    """inotify on a folder (Linux): SIGKILL a process as soon as a given entry appears there,
    with no polling interval for the process to slip through."""

    def __init__(self, path: Path) -> None:
        self.name = path.name.encode()
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, bytes(path.parent), IN_CREATE) < 0:
            raise OSError(ctypes.get_errno(), f"inotify on {path.parent}")

    def kill_on_create(self, proc: subprocess.Popen[bytes]) -> bool:
        while proc.poll() is None:
            if not select.select([self.fd], [], [], 0.1)[0]:
                continue
            data = os.read(self.fd, 65536)
            while data:
                _, _, _, size = struct.unpack_from("iIII", data)
                name = data[16 : 16 + size].rstrip(b"\0")
                data = data[16 + size :]
                if name == self.name:
                    os.kill(proc.pid, signal.SIGKILL)
                    return True
        return False

    def close(self) -> None:
        os.close(self.fd)


def pipe_sql(root: Path, query: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "embedpipe.cli", "sql", "spec.yaml", query, "--json"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# --- reading the workspace from the test process -------------------------------------------


def table_path(root: Path, table: str = TABLE) -> Path:
    return root / "ws" / "lance" / f"{table}.lance"


def rows(root: Path, version: int | None = None, table: str = TABLE) -> dict[str, dict[str, Any]]:
    """chunk_id -> row of the live (or given) table version, read with pylance; asserts the
    chunk_ids are distinct and that LanceDB reads the same number of rows."""
    ds = lance.dataset(str(table_path(root, table)), version=version)
    cols = ["chunk_id", "doc_id", "text", "model", "run_id", "vector"]
    data = ds.to_table(columns=cols).to_pylist()
    ids = [r["chunk_id"] for r in data]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    assert not dupes, f"version {ds.version}: duplicate chunk_ids {dupes[:5]}"
    if version is None:
        tbl = lancedb.connect(str(root / "ws" / "lance")).open_table(table)
        assert tbl.version == ds.version and tbl.count_rows() == len(data)
    return {r["chunk_id"]: r for r in data}


def live_version(root: Path, table: str = TABLE) -> int:
    return lance.dataset(str(table_path(root, table))).version


def assert_every_version_sound(root: Path, table: str = TABLE) -> None:
    """Every version of the table: distinct chunk_ids, one model, a vector on every row."""
    path = str(table_path(root, table))
    for v in lance.dataset(path).versions():
        t = lance.dataset(path, version=v["version"]).to_table(
            columns=["chunk_id", "model", "vector"]
        )
        ids = t.column("chunk_id").to_pylist()
        assert len(ids) == len(set(ids)), f"version {v['version']}: duplicate chunk_ids"
        models = set(t.column("model").to_pylist())
        assert len(models) == 1 and None not in models, f"version {v['version']}: {models}"
        assert t.column("vector").null_count == 0, f"version {v['version']}: null vectors"


def catalog(root: Path) -> dict[str, dict[str, Any]]:
    """run_id -> run row of the workspace's DuckDB catalog (read-only)."""
    path = root / "ws" / "catalog.duckdb"
    if not path.exists():
        return {}
    with duckdb.connect(str(path), read_only=True) as con:
        rel = con.execute("select run_id, status, error, lance_version from runs")
        cols = [d[0] for d in rel.description]
        return {r[0]: dict(zip(cols, r, strict=True)) for r in rel.fetchall()}


def new_runs(root: Path, before: set[str]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in catalog(root).items() if k not in before}


def cache_rows(root: Path, step: str) -> int:
    """Rows in a step's cache (its Lance datasets under ws/cache/<step>/)."""
    return sum(
        lance.dataset(str(p)).count_rows() for p in (root / "ws" / "cache" / step).glob("*.lance")
    )


def assert_recovered(
    root: Path,
    rerun: Run,
    docs: list[dict[str, str]],
    killed: set[str],
    table: str = TABLE,
) -> dict[str, dict[str, Any]]:
    """The run after a kill completed and left the index exactly right; ``killed`` are the
    catalog's run ids of the killed run(s). Returns the live rows."""
    assert rerun.returncode == 0, f"exit {rerun.returncode}:\n{rerun.stderr[-3000:]}"
    res = rerun.result
    assert res["status"] == "completed", res
    live = rows(root, table=table)
    # Every chunk the run made is in the table once, and nothing else is.
    assert len(live) == res["steps"]["chunks"]["rows_out"] == res["steps"]["index"]["rows_out"]
    assert {r["doc_id"] for r in live.values()} == {d["_id"] for d in docs}
    assert res["lance_version"] == live_version(root, table)
    assert_every_version_sound(root, table)
    # The catalog ends with no run left 'running': the killed one is marked failed, and says so.
    runs = catalog(root)
    assert runs[res["run_id"]]["status"] == "completed"
    assert [r for r in runs.values() if r["status"] == "running"] == []
    for run_id in killed:
        assert runs[run_id]["status"] == "failed", runs[run_id]
        error = (runs[run_id]["error"] or "").lower()
        assert "killed" in error or "interrupted" in error, runs[run_id]
    assert not any((root / "ws" / "staging").glob("*")), "a killed run's staging was left"
    return live


# --- fixtures --------------------------------------------------------------------------------


@dataclass
class FirstRuns:
    """A first run ever, killed at its first encoded batch, and the run after it."""

    root: Path
    killed: Run
    killed_runs: dict[str, dict[str, Any]]
    table_after_kill: bool
    cached_after_kill: int
    chunks_cached_after_kill: int
    rerun: Run


@pytest.fixture(scope="module")
def first_runs(tmp_path_factory: pytest.TempPathFactory) -> FirstRuns:
    """Scenario 1, run once: its end state is also the baseline the other tests copy (one run
    fewer than building a baseline of its own: each `pipe run` process costs seconds)."""
    root = tmp_path_factory.mktemp("first")
    write_jsonl(root / "corpus.jsonl", corpus())
    write_spec(root)
    killed = pipe_run(root, crash_at="encode")
    state = (
        new_runs(root, set()),
        table_path(root).exists(),
        cache_rows(root, "vectors"),
        cache_rows(root, "chunks"),
    )
    return FirstRuns(root, killed, *state, rerun=pipe_run(root))


@pytest.fixture
def baseline(first_runs: FirstRuns, tmp_path: Path) -> Iterator[Path]:
    """A copy of a workspace holding version 1 of the original corpus (and its caches)."""
    assert first_runs.rerun.returncode == 0, "the baseline run failed: see the first test"
    root = tmp_path / "pipe"
    shutil.copytree(first_runs.root, root, ignore=shutil.ignore_patterns("run-*"))
    assert live_version(root) == 1
    yield root


# --- the tests ------------------------------------------------------------------------------


def test_first_run_killed_during_encode_resumes_from_the_cache(first_runs: FirstRuns) -> None:
    killed, rerun = first_runs.killed, first_runs.rerun
    assert killed.returncode == KILLED, f"exit {killed.returncode}:\n{killed.stderr}"
    assert killed.stdout == ""  # it printed no result: it did not get that far
    # Killed before the index step: no table at all (nothing half-written).
    assert not first_runs.table_after_kill
    # It was mid-encode: one batch reached the encode cache, not all of them.
    chunks = rerun.step("chunks")["rows_out"]
    assert 0 < first_runs.cached_after_kill < chunks
    assert first_runs.chunks_cached_after_kill == chunks
    # The catalog recorded the killed run, still 'running' until the next run found it.
    assert [r["status"] for r in first_runs.killed_runs.values()] == ["running"]

    live = assert_recovered(first_runs.root, rerun, corpus(), set(first_runs.killed_runs))
    # The re-run took the batch the killed run had encoded from the cache, and encoded the rest.
    vectors = rerun.step("vectors")
    assert vectors["cached"] == first_runs.cached_after_kill
    assert vectors["computed"] == chunks - first_runs.cached_after_kill
    assert rerun.result["lance_version"] == 1 and len(live) == chunks
    assert {r["run_id"] for r in live.values()} == {rerun.result["run_id"]}


@pytest.mark.slow  # CI stays under 20 minutes; `make test-slow` runs it
def test_killed_during_index_write_keeps_the_previous_version(baseline: Path) -> None:
    old = rows(baseline)
    before = set(catalog(baseline))
    docs = edited()
    write_jsonl(baseline / "corpus.jsonl", docs)

    killed = pipe_run(baseline, crash_at="index-write")
    assert killed.returncode == KILLED, f"exit {killed.returncode}:\n{killed.stderr}"
    # Right after the kill: still version 1, readable, whole, with the old rows only.
    assert live_version(baseline) == 1
    now = rows(baseline)
    assert now.keys() == old.keys()
    assert {k: r["text"] for k, r in now.items()} == {k: r["text"] for k, r in old.items()}
    assert not any(MARKER in r["text"] for r in now.values())
    assert any(r["doc_id"] == "d07" for r in now.values())
    assert_every_version_sound(baseline)
    killed_runs = new_runs(baseline, before)
    assert [r["status"] for r in killed_runs.values()] == ["running"]

    rerun = pipe_run(baseline)
    live = assert_recovered(baseline, rerun, docs, set(killed_runs))
    assert rerun.result["lance_version"] == 2
    # The edit, the deletion and the addition, each exactly once.
    assert sum(MARKER in r["text"] for r in live.values()) == 1
    assert not any(r["doc_id"] == "d07" for r in live.values())
    assert any(r["doc_id"] == "d99" for r in live.values())
    # Untouched chunks kept their rows (vector and lineage) from version 1.
    untouched = [k for k in old if old[k]["doc_id"] not in ("d03", "d07")]
    assert untouched and all(live[k]["vector"] == old[k]["vector"] for k in untouched)
    assert all(live[k]["run_id"] == old[k]["run_id"] for k in untouched)
    # Version 1 is still there, whole, for anyone reading it.
    assert rows(baseline, version=1).keys() == old.keys()
    dupes = "select count(*) - count(distinct chunk_id) as dupes, count(*) as n from crash"
    assert pipe_sql(baseline, dupes) == [{"dupes": 0, "n": len(live)}]


@pytest.mark.slow
def test_killed_right_after_the_commit_is_finished_by_the_next_run(baseline: Path) -> None:
    """Edits and a new model (the same weights under another name), killed just after Lance
    committed them: the new version is live and wholly the new model's."""
    old = rows(baseline)
    before = set(catalog(baseline))
    docs = edited()
    write_jsonl(baseline / "corpus.jsonl", docs)
    (baseline / "my-model").mkdir()
    for f in Path(models.resolve(models.DEFAULT_MODEL).location).iterdir():
        (baseline / "my-model" / f.name).symlink_to(f)
    write_spec(baseline, model="my-model")

    killed = pipe_run(baseline, crash_at="index-commit")
    assert killed.returncode == KILLED, f"exit {killed.returncode}:\n{killed.stderr}"
    # The commit happened: version 2 is live and holds the edited corpus, each chunk once,
    # every vector from the new model; version 1 still holds the old model's, whole.
    assert live_version(baseline) == 2
    committed = rows(baseline)
    assert sum(MARKER in r["text"] for r in committed.values()) == 1
    assert {r["doc_id"] for r in committed.values()} == {d["_id"] for d in docs}
    assert {r["model"] for r in committed.values()} == {"my-model"}
    assert {r["model"] for r in rows(baseline, version=1).values()} == {"all-MiniLM-L6-v2"}
    assert rows(baseline, version=1).keys() == old.keys()
    assert_every_version_sound(baseline)
    killed_runs = new_runs(baseline, before)
    assert [r["status"] for r in killed_runs.values()] == ["running"]
    # The committed rows name the killed run, which the catalog knows.
    assert {r["run_id"] for r in committed.values()} == set(killed_runs)

    rerun = pipe_run(baseline)
    live = assert_recovered(baseline, rerun, docs, set(killed_runs))
    # Nothing was left to do: no new version, no row rewritten, nothing encoded again.
    assert live_version(baseline) == 2 and rerun.result["lance_version"] == 2
    assert rerun.step("index")["computed"] == 0 and rerun.step("vectors")["computed"] == 0
    assert {k: r["run_id"] for k, r in live.items()} == {
        k: r["run_id"] for k, r in committed.items()
    }


@pytest.mark.slow
def test_killed_while_writing_a_new_tables_first_version(baseline: Path) -> None:
    """No crash point covers this: Lance has started writing a table's first version (its
    folder exists) but not committed it. The kill comes the moment the table's folder appears
    (inotify); a new table name makes this run the table's first while encode is all cached."""
    write_spec(baseline, table="fresh")
    fresh = table_path(baseline, "fresh")
    before = set(catalog(baseline))

    killed = pipe_run(baseline, kill_on_create=fresh)
    assert killed.killed_by_test and killed.returncode == KILLED, killed.stderr
    left = sorted(str(p.relative_to(fresh)) for p in fresh.rglob("*"))
    if not (fresh / "_versions").exists():
        # The usual case: killed mid-write. The folder holds no version (at most data files);
        # nothing can read it, and it must not stop the next run.
        with pytest.raises(ValueError, match="not found"):
            lance.dataset(str(fresh))
    else:  # a loaded machine delivered the kill after Lance's commit (a few ms later)
        print(f"the kill landed after the first commit: {left}")
        assert_every_version_sound(baseline, "fresh")
    killed_runs = new_runs(baseline, before)
    assert [r["status"] for r in killed_runs.values()] == ["running"]
    assert live_version(baseline) == 1  # the other table is untouched

    rerun = pipe_run(baseline)
    live = assert_recovered(baseline, rerun, corpus(), set(killed_runs), table="fresh")
    assert rerun.result["lance_version"] == 1 and len(live) == len(rows(baseline))


@pytest.mark.slow  # CI stays under 20 minutes; `make test-slow` runs it
def test_killed_at_a_random_moment(baseline: Path) -> None:
    old = rows(baseline)
    before = set(catalog(baseline))
    docs = edited()
    write_jsonl(baseline / "corpus.jsonl", docs)
    delay = random.Random(SEED).uniform(1.0, 10.0)

    killed = pipe_run(baseline, kill_after=delay)
    # Wherever it landed, the live version is whole: the old rows, or the new ones.
    version = live_version(baseline)
    now = rows(baseline)
    where = (
        f"killed {delay:.1f} s after start (EMBEDPIPE_CRASH_SEED={SEED}): live version "
        f"{version}, encode cache {cache_rows(baseline, 'vectors')} rows"
    )
    print(where)
    if killed.killed_by_test:
        assert killed.returncode == KILLED, where
    else:  # a machine fast enough to finish first: the invariants below still hold
        assert killed.returncode == 0, killed.stderr
    assert version in (1, 2), where
    if version == 1:
        assert now.keys() == old.keys() and not any(MARKER in r["text"] for r in now.values())
    else:
        assert sum(MARKER in r["text"] for r in now.values()) == 1
        assert {r["doc_id"] for r in now.values()} == {d["_id"] for d in docs}
    assert_every_version_sound(baseline)
    killed_runs = new_runs(baseline, before)
    assert len(killed_runs) <= 1, killed_runs  # none if it died before recording its start
    # The killed run, if it got as far as recording its start (and not as far as its end).
    stopped = {k for k, r in killed_runs.items() if r["status"] == "running"}

    rerun = pipe_run(baseline)
    live = assert_recovered(baseline, rerun, docs, stopped)
    assert live_version(baseline) == 2, where
    assert sum(MARKER in r["text"] for r in live.values()) == 1
