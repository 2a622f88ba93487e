"""Hardening of the engine and the CLI (issue 13), through the real `pipe` command.

Each test breaks a workspace the way a user, another program or the machine would (a folder of
the user's where the tool keeps its own, a path that is SQL, a server that stopped answering, a
DuckDB reader holding the catalog, a full disk, a corrupt or deleted file, a read-only folder)
and asserts two things: the command ends with one clear sentence (and, with --json, one JSON
object) that names what is wrong and what to do, and nothing already indexed changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import lancedb
import pytest

from tests.conftest import BASIC_SPEC, CORPUS, write_jsonl

TIMEOUT = 240  # seconds: a regression that hangs fails the test instead of the suite
TABLE = "tiny"


def pipe(
    root: Path, *args: str, env: dict[str, str] | None = None, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "embedpipe.cli", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


def one_json(proc: subprocess.CompletedProcess[str]) -> Any:
    """stdout must be exactly one JSON value."""
    assert proc.stdout.strip(), f"nothing on stdout (exit {proc.returncode}): {proc.stderr}"
    return json.loads(proc.stdout)


def index_state(root: Path) -> tuple[int, list[tuple[str, str]]]:
    """The live version of the index table and its (chunk_id, row_hash) rows."""
    tbl = lancedb.connect(str(root / "ws" / "lance")).open_table(TABLE)
    rows = tbl.to_lance().to_table(columns=["chunk_id", "row_hash"]).to_pylist()
    return tbl.version, sorted((r["chunk_id"], r["row_hash"]) for r in rows)


def catalog_runs(root: Path) -> list[dict[str, Any]]:
    with duckdb.connect(str(root / "ws" / "catalog.duckdb"), read_only=True) as con:
        rel = con.execute("select run_id, status, lance_version, error from runs order by 1")
        cols = [d[0] for d in rel.description]
        return [dict(zip(cols, r, strict=True)) for r in rel.fetchall()]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pipeline, run once: corpus.jsonl, spec.yaml and its workspace ws/."""
    root = tmp_path_factory.mktemp("indexed")
    write_jsonl(root / "corpus.jsonl", CORPUS)
    (root / "spec.yaml").write_text(BASIC_SPEC.lstrip())
    proc = pipe(root, "run", "spec.yaml", "--json", "-q")
    assert proc.returncode == 0, proc.stderr
    return root


@pytest.fixture
def site(indexed: Path, tmp_path: Path) -> Path:
    """A private copy of the indexed pipeline, for a test to break."""
    root = tmp_path / "site"
    shutil.copytree(indexed, root)
    return root


def edit_corpus(root: Path) -> None:
    docs = [dict(d) for d in CORPUS]
    docs[0]["text"] += " A second trial found the same effect in younger adults."
    write_jsonl(root / "corpus.jsonl", docs)


# --- 1. the tool owns only what it created in a workspace -----------------------------------


@pytest.mark.slow
def test_user_files_in_a_shared_workspace_survive_runs(tmp_path: Path) -> None:
    """Workspace `.` beside the sources: the user's own `staging/` folder (and everything else
    of theirs) is left alone; only the run's marked staging folders are the tool's."""
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("Honeybees dance to share where flowers are.")
    staging = tmp_path / "staging"
    (staging / "drafts").mkdir(parents=True)
    (staging / "important.txt").write_text("Sourdough starters are wild yeast cultures.")
    (staging / "drafts" / "b.txt").write_text("Volcanic aerosols cool the planet for a year.")
    (tmp_path / "spec.yaml").write_text(
        textwrap.dedent("""
        name: shared
        workspace: .
        steps:
          docs: {type: ingest, source: "**/*.txt", format: text}
          chunks: {type: chunk, input: docs, strategy: none}
          vectors: {type: encode, input: chunks}
          index: {type: index, input: vectors}
        """).lstrip()
    )
    # A killed run's staging folder (marked as ours) is what the next run may remove.
    killed = staging / "20260101T000000-abcdef"
    killed.mkdir()
    (killed / ".embedpipe-run").write_text("staged step outputs")
    (killed / "docs.arrow").write_bytes(b"")
    plan = pipe(tmp_path, "plan", "spec.yaml", "--json", "-q")
    assert plan.returncode == 0, plan.stderr
    planned = one_json(plan)["steps"]["docs"]["rows_out"]
    run = pipe(tmp_path, "run", "spec.yaml", "--json", "-q")
    assert run.returncode == 0, run.stderr
    assert one_json(run)["steps"]["docs"]["rows_out"] == planned == 3
    assert (staging / "important.txt").read_text().startswith("Sourdough")
    assert (staging / "drafts" / "b.txt").exists() and (tmp_path / "notes" / "a.txt").exists()
    assert not killed.exists()
    again = pipe(tmp_path, "run", "spec.yaml", "--json", "-q")  # a no-op: same documents
    assert again.returncode == 0 and one_json(again)["steps"]["index"]["computed"] == 0
    assert (staging / "important.txt").exists()


@pytest.mark.slow
def test_the_tools_own_files_are_never_documents(tmp_path: Path) -> None:
    """A workspace inside a source folder: its tables, catalog, caches and fitted artifacts
    are not read as documents, so a second run finds nothing new, nothing skipped, nothing to
    do."""
    for i, doc in enumerate(CORPUS[:3]):
        (tmp_path / f"{doc['_id']}.md").write_text(f"# {doc['title']}\n\n{doc['text']}\n")
        (tmp_path / f"note{i}.txt").write_text(doc["text"])
    (tmp_path / "spec.yaml").write_text(
        textwrap.dedent("""
        name: inside
        workspace: .
        steps:
          docs: {type: ingest, source: ., exclude: ["*.yaml"]}
          chunks: {type: chunk, input: docs, strategy: none}
          vectors: {type: encode, input: chunks}
          codes: {type: compress, input: vectors, method: int8}
          index: {type: index, input: codes, column: code}
        """).lstrip()
    )
    first = pipe(tmp_path, "run", "spec.yaml", "--json", "-q")
    assert first.returncode == 0, first.stderr
    assert one_json(first)["steps"]["docs"]["rows_out"] == 6
    assert (tmp_path / "catalog.duckdb").exists() and (tmp_path / "lance").is_dir()
    assert any((tmp_path / "artifacts").rglob("lineage.json"))
    second = pipe(tmp_path, "run", "spec.yaml", "--json", "-q")
    assert second.returncode == 0, second.stderr  # 3 would mean skipped inputs
    steps = one_json(second)["steps"]
    assert steps["docs"]["rows_out"] == 6 and steps["docs"]["skipped"] == 0
    assert steps["index"]["computed"] == 0 and steps["index"]["deleted"] == 0


# --- 2. nothing a spec says reaches SQL as SQL ------------------------------------------------


def test_workspace_path_cannot_inject_sql(tmp_path: Path) -> None:
    pwned = tmp_path / "pwned.csv"
    evil = f"ws' AS catalog; COPY (SELECT 42 AS x) TO '{pwned}'; --"
    write_jsonl(tmp_path / "corpus.jsonl", CORPUS)
    (tmp_path / "spec.yaml").write_text(BASIC_SPEC.replace("workspace: ws", f'workspace: "{evil}"'))
    ws = tmp_path / evil
    ws.mkdir(parents=True)
    con = duckdb.connect(str(ws / "catalog.duckdb"))  # a real catalog for `pipe sql` to attach
    from embedpipe.engine.catalog import DDL

    con.execute(DDL)
    con.close()
    proc = pipe(tmp_path, "sql", "spec.yaml", "select count(*) as n from runs", "--json")
    assert proc.returncode == 0, proc.stderr
    assert one_json(proc) == [{"n": 0}]
    assert not pwned.exists()


# --- 3. every network wait has a timeout -------------------------------------------------------


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """A TCP port that accepts connections and never answers: what a Prefect server stopped
    with SIGSTOP (or hung) looks like to a client."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/api"
    finally:
        sock.close()


def test_a_server_that_does_not_answer_fails_the_run_fast(site: Path) -> None:
    edit_corpus(site)  # work to do: the run would start a flow
    before = index_state(site)
    with silent_server() as url:
        env = {"PREFECT_API_URL": url, "EMBEDPIPE_PREFECT_TIMEOUT": "2"}
        proc = pipe(site, "run", "spec.yaml", "--json", "-q", env=env, timeout=90)
    assert proc.returncode == 1
    out = one_json(proc)
    assert out["status"] == "failed" and out["error_type"] == "PrefectUnreachable"
    assert url in out["error"] and "PREFECT_API_URL" in out["error"]
    assert proc.stderr.startswith("error: the Prefect server at")
    assert index_state(site) == before


# --- 4. a run's outcome reaches the catalog ----------------------------------------------------


@contextlib.contextmanager
def reader(catalog: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process with a read-only DuckDB connection open on the catalog."""
    code = (
        "import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=True); "
        "print('open', flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(catalog)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_a_catalog_held_by_a_reader_fails_the_run_before_it_starts(site: Path) -> None:
    edit_corpus(site)
    before, runs_before = index_state(site), catalog_runs(site)
    with reader(site / "ws" / "catalog.duckdb") as holder:
        env = {"EMBEDPIPE_CATALOG_WAIT": "1"}
        proc = pipe(site, "run", "spec.yaml", "--json", "-q", env=env)
        sql = pipe(site, "runs", "spec.yaml", "--json")  # readers may share it
    assert proc.returncode == 1
    out = one_json(proc)
    assert out["error_type"] == "CatalogBusy" and f"PID {holder.pid}" in out["error"]
    assert "pipe sql" in out["error"]
    assert sql.returncode == 0, sql.stderr
    assert index_state(site) == before and catalog_runs(site) == runs_before


@contextlib.contextmanager
def paused_run(
    site: Path, env: dict[str, str], at: str = "index-commit"
) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """`pipe run` started, and paused at a point of embedpipe/engine/crash.py; killed with
    its process group (its Prefect server) if the test fails while it runs."""
    flag = Path(tempfile.mkdtemp()) / "paused"  # not on the workspace's disk: it may be full
    run = subprocess.Popen(
        [sys.executable, "-m", "embedpipe.cli", "run", "spec.yaml", "--json", "-q"],
        cwd=site,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "EMBEDPIPE_PAUSE_AT": at,
            "EMBEDPIPE_PAUSE_FILE": str(flag),
            **env,
        },
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not flag.exists():
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, f"the run never reached {at}"
            time.sleep(0.1)
        yield run, flag
    finally:
        flag.unlink(missing_ok=True)
        if run.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                run.communicate(timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, 9)


@pytest.mark.slow
def test_a_briefly_held_catalog_is_waited_for(site: Path) -> None:
    edit_corpus(site)
    with paused_run(site, {"EMBEDPIPE_CATALOG_WAIT": "120"}, at="record") as (run, flag):
        with reader(site / "ws" / "catalog.duckdb") as holder:
            flag.unlink()  # the run goes on to write its record, and waits for the reader
            time.sleep(2)  # (so that it surely waits; nothing here depends on how long)
            holder.kill()
        stdout, stderr = run.communicate(timeout=TIMEOUT)
    assert run.returncode == 0, stderr
    out = json.loads(stdout)
    assert out["status"] == "completed" and "warning" not in out
    row = next(r for r in catalog_runs(site) if r["run_id"] == out["run_id"])
    assert row["status"] == "completed" and row["lance_version"] == out["lance_version"]


@pytest.mark.slow
def test_a_catalog_locked_mid_run_keeps_the_record_for_later(site: Path) -> None:
    edit_corpus(site)
    version = index_state(site)[0]
    with (
        paused_run(site, {"EMBEDPIPE_CATALOG_WAIT": "1"}) as (run, flag),
        reader(site / "ws" / "catalog.duckdb"),
    ):
        flag.unlink()  # the run goes on, to a catalog it cannot write
        stdout, stderr = run.communicate(timeout=TIMEOUT)
    assert run.returncode == 0, stderr
    out = json.loads(stdout)
    assert out["status"] == "completed" and out["lance_version"] == version + 1
    assert "kept in" in out["warning"] and "warning: the record" in stderr
    # The reader is gone: `pipe runs` writes the kept record, and says how the run ended.
    runs = one_json(pipe(site, "runs", "spec.yaml", "--json"))
    assert runs[0]["run_id"] == out["run_id"] and runs[0]["status"] == "completed"
    row = next(r for r in catalog_runs(site) if r["run_id"] == out["run_id"])
    assert row["status"] == "completed" and row["lance_version"] == version + 1
    assert not list((site / "ws" / ".catalog-pending").glob("*.json"))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 MB tmpfs (needs CAP_SYS_ADMIN: skipped where mounting is not allowed): room for a
    copy of the indexed workspace, whose OpenVINO export alone is about 90 MB."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here to fill up")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last block."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as fh:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * size)
    return filler


@pytest.mark.slow
def test_a_full_disk_at_the_end_of_a_run_loses_no_record(indexed: Path, small_disk: Path) -> None:
    site = small_disk / "site"
    shutil.copytree(indexed, site)
    edit_corpus(site)
    version = index_state(site)[0]
    with paused_run(site, {}, at="record") as (run, flag):
        filler = fill(small_disk)
        flag.unlink()
        stdout, stderr = run.communicate(timeout=TIMEOUT)
    assert run.returncode == 0, stderr
    out = json.loads(stdout)
    assert out["lance_version"] == version + 1 and "kept in" in out["warning"]
    assert index_state(site)[0] == version + 1
    filler.unlink()
    again = pipe(site, "run", "spec.yaml", "--json", "-q")  # writes the kept record first
    assert again.returncode == 0, again.stderr
    row = next(r for r in catalog_runs(site) if r["run_id"] == out["run_id"])
    assert row["status"] == "completed" and row["lance_version"] == version + 1


# --- 5. damaged workspaces: one sentence, and the command that recovers -----------------------


@pytest.mark.slow
def test_a_corrupt_catalog(site: Path) -> None:
    before = index_state(site)
    catalog = site / "ws" / "catalog.duckdb"
    catalog.write_bytes(b"this is not a DuckDB file" * 4096)
    for args in (
        ("run", "spec.yaml", "--json", "-q"),
        ("sql", "spec.yaml", "select 1", "--json"),
        ("runs", "spec.yaml", "--json"),
    ):
        proc = pipe(site, *args)
        assert proc.returncode == 1, (args, proc.stderr)
        out = one_json(proc)
        assert out["error_type"] == "CatalogDamaged", args
        assert f"mv {catalog} {catalog}.damaged" in out["error"]
        assert proc.stderr.startswith(f"error: the run catalog {catalog} is damaged")
    assert index_state(site) == before
    # The recovery it names works, and keeps the index: nothing to do but record the run.
    catalog.rename(catalog.with_name("catalog.duckdb.damaged"))
    proc = pipe(site, "run", "spec.yaml", "--json", "-q")
    assert proc.returncode == 0, proc.stderr
    assert one_json(proc)["steps"]["vectors"]["computed"] == 0
    assert index_state(site) == before


@pytest.mark.slow
def test_deleted_lance_files(site: Path) -> None:
    data = site / "ws" / "lance" / f"{TABLE}.lance" / "data"
    for f in data.iterdir():
        f.unlink()
    table = site / "ws" / "lance" / f"{TABLE}.lance"
    for args in (
        ("run", "spec.yaml", "--json", "-q"),
        ("search", "spec.yaml", "yeast", "--json"),
        ("sql", "spec.yaml", f"select count(*) from {TABLE} where text like '%a%'", "--json"),
    ):
        proc = pipe(site, *args)
        assert proc.returncode == 1, (args, proc.stderr)
        out = one_json(proc)
        assert f"index table '{TABLE}' is damaged: its file" in out["error"], out
        assert f"mv {table} {table}.damaged && pipe run" in out["error"], args
        assert "Traceback" not in proc.stderr
    # The recovery it names: rebuild from the step caches, without encoding anything again.
    table.rename(table.with_name(f"{TABLE}.lance.damaged"))
    proc = pipe(site, "run", "spec.yaml", "--json", "-q")
    assert proc.returncode == 0, proc.stderr
    steps = one_json(proc)["steps"]
    assert steps["vectors"]["computed"] == 0 and steps["index"]["rows_out"] == len(CORPUS)
    hits = one_json(pipe(site, "search", "spec.yaml", "sourdough starter yeast", "--json"))
    assert hits[0]["doc_id"] == "d4"


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make ``path`` and everything under it unwritable, even for root (immutable files)."""
    if os.geteuid() == 0:
        done = subprocess.run(["chattr", "-R", "+i", str(path)], capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"chattr +i is not supported here: {done.stderr.decode().strip()}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-R", "-i", str(path)], check=False)
    else:
        modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]}
        for p in modes:
            p.chmod(modes[p] & ~0o222)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)


def test_a_read_only_workspace(site: Path) -> None:
    edit_corpus(site)
    before = index_state(site)
    with read_only(site / "ws"):
        for args in (
            ("run", "spec.yaml", "--json", "-q"),
            ("rollback", "spec.yaml", "--to-version", "1", "--json"),
        ):
            proc = pipe(site, *args)
            assert proc.returncode == 1, (args, proc.stderr)
            out = one_json(proc)
            assert out["error_type"] == "WorkspaceNotWritable", out
            assert "is not writable" in out["error"] and "--workspace" in out["error"]
            assert "Traceback" not in proc.stderr
        assert pipe(site, "search", "spec.yaml", "yeast", "--json").returncode == 0
    assert index_state(site) == before


def test_bad_run_count(site: Path) -> None:
    for n in ("-1", "0"):
        proc = pipe(site, "runs", "spec.yaml", "-n", n, "--json")
        assert proc.returncode == 2
        out = one_json(proc)
        assert out["exit_code"] == 2 and "-n" in out["error"] and "Traceback" not in proc.stderr


# --- 7. --json prints one JSON object on every exit -------------------------------------------


def test_json_on_a_spec_error(site: Path) -> None:
    (site / "bad.yaml").write_text(BASIC_SPEC.lstrip().replace("max_tokens: 64", "max_tokenz: 64"))
    proc = pipe(site, "run", "bad.yaml", "--json")
    assert proc.returncode == 2
    out = one_json(proc)
    assert out["status"] == "failed" and out["error_type"] == "SpecError"
    assert out["exit_code"] == 2 and "invalid spec" in out["meaning"]
    assert out["errors"][0]["file"].endswith("bad.yaml") and out["errors"][0]["line"] == 5


def test_json_on_a_locked_workspace(site: Path) -> None:
    before = index_state(site)
    with (site / "ws" / ".lock").open("a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = pipe(site, "run", "spec.yaml", "--json", "-q")
    assert proc.returncode == 1
    out = one_json(proc)
    assert out["error_type"] == "WorkspaceBusy" and "already running" in out["error"]
    assert index_state(site) == before


def test_json_on_a_step_failure(site: Path) -> None:
    before = index_state(site)
    with (site / "corpus.jsonl").open("a") as fh:
        fh.write('{"_id": "d7", "title": "no text"}\n')  # skipped: no text; --strict fails
    proc = pipe(site, "run", "spec.yaml", "--json", "-q", "--strict")
    assert proc.returncode == 1
    out = one_json(proc)
    assert out["status"] == "failed" and "--strict" in out["error"]
    assert out["exit_code"] == 1 and out["meaning"].startswith("failed")
    assert index_state(site) == before


# --- kept records: applied once, as data, never as SQL ------------------------------------------


def test_a_kept_record_naming_unknown_columns_is_never_applied(tmp_path: Path) -> None:
    """A `.catalog-pending` file is data from disk: keys that are not catalog columns (here,
    SQL) make the whole record be left alone, not executed."""
    from embedpipe.engine.catalog import Catalog, new_run_id

    catalog = Catalog(tmp_path / "catalog.duckdb")
    run_id = new_run_id()
    catalog.start_run(run_id=run_id, pipeline="p", status="running")
    pwned = tmp_path / "pwned.csv"
    evil = f"status = 'x' WHERE 1=0; COPY (SELECT 42) TO '{pwned}'; UPDATE runs SET status"
    catalog.pending_dir.mkdir()
    kept = catalog.pending_dir / f"{run_id}.json"
    kept.write_text(json.dumps([{"op": "finish", "run_id": run_id, "values": {evil: "done"}}]))
    assert catalog.replay() == [] and catalog.runs()[0]["status"] == "running"
    assert not pwned.exists() and kept.exists()
    # Someone else's run id in the file is refused too.
    kept.write_text(json.dumps([{"op": "finish", "run_id": "other", "values": {"status": "x"}}]))
    assert catalog.replay() == []


def test_a_kept_record_with_many_skips_fits_its_reservation(tmp_path: Path) -> None:
    from embedpipe.engine.catalog import RESERVE, Catalog, new_run_id, now

    catalog = Catalog(tmp_path / "catalog.duckdb")
    run_id = new_run_id()
    catalog.start_run(run_id=run_id, pipeline="p", status="running", started_at=now())
    catalog.reserve(run_id)
    skips = [(f"docs/file-{i:05d}.txt", "empty file: no text to index") for i in range(5000)]
    row = {"run_id": run_id, "step": "docs", "status": "completed", "skipped": len(skips)}
    ops = catalog.ops(run_id, [(row, skips)], {"status": "completed", "ended_at": now()})
    path = catalog.keep(run_id, ops)
    assert path.stat().st_size <= RESERVE
    assert catalog.replay(stale=True) == [run_id] and not path.exists()
    assert catalog.runs()[0]["status"] == "completed"


def test_damage_is_blamed_on_the_table_whose_file_is_missing(tmp_path: Path) -> None:
    from embedpipe.engine.workspace import damaged

    missing = f"External error: Not found: {tmp_path}/lance/mydocs.lance/data/x.lance, at y"
    exc = ValueError(missing)
    assert damaged(exc, "docs", tmp_path / "lance/docs.lance", "spec.yaml") is None
    hurt = damaged(exc, "mydocs", tmp_path / "lance/mydocs.lance", "spec.yaml")
    assert hurt is not None and "mydocs.lance.damaged" in str(hurt)
