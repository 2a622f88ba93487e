"""The public CLI contract (DESIGN.md §9), through the real `pipe` command in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def pipe(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "embedpipe.cli", *args], capture_output=True, text=True, check=False
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from tests.conftest import BASIC_SPEC, CORPUS, write_jsonl

    root = tmp_path_factory.mktemp("cli")
    write_jsonl(root / "corpus.jsonl", CORPUS)
    spec = root / "spec.yaml"
    spec.write_text(BASIC_SPEC.lstrip())
    proc = pipe("run", str(spec), "--json")
    return spec, json.loads(proc.stdout.strip().splitlines()[-1])


def test_run_json(indexed: tuple[Path, dict]) -> None:
    _, out = indexed
    assert out["status"] == "completed" and out["pipeline"] == "tiny"
    assert isinstance(out["run_id"], str) and out["lance_version"] == 1
    assert list(out["steps"]) == ["docs", "chunks", "vectors", "index"]
    for step in out["steps"].values():
        assert set(step) == {
            "rows_in",
            "rows_out",
            "computed",
            "cached",
            "deleted",
            "skipped",
            "seconds",
        }
        assert step["computed"] + step["cached"] == step["rows_out"]


def test_search_json(indexed: tuple[Path, dict]) -> None:
    spec, _ = indexed
    hits = json.loads(
        pipe("search", str(spec), "sourdough starter yeast", "-k", "3", "--json").stdout
    )
    assert len(hits) == 3 and hits[0]["doc_id"] == "d4"
    assert all(set(h) == {"doc_id", "chunk_id", "score", "text"} for h in hits)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


def test_sql_and_runs_json(indexed: tuple[Path, dict]) -> None:
    spec, run = indexed
    rows = json.loads(
        pipe("sql", str(spec), "select count(distinct doc_id) as n from tiny", "--json").stdout
    )
    assert rows == [{"n": 6}]
    runs = json.loads(pipe("runs", str(spec), "--json").stdout)
    assert runs[0]["run_id"] == run["run_id"] and runs[0]["status"] == "completed"
    human = pipe("sql", str(spec), "select step, rows_out from step_runs").stdout
    assert "vectors" in human


def test_errors_are_one_line_with_exit_codes(indexed: tuple[Path, dict], tmp_path: Path) -> None:
    spec, _ = indexed
    bad_sql = pipe("sql", str(spec), "select * from nope", check=False)
    assert bad_sql.returncode == 1
    assert bad_sql.stderr.startswith("error: SQL error: Catalog Error: Table with name nope")
    assert "Tables: chunks" not in bad_sql.stderr and "tiny" in bad_sql.stderr
    missing = pipe("search", str(spec), "x", "--workspace", str(tmp_path / "empty"), check=False)
    assert missing.returncode == 1 and "run first: pipe run" in missing.stderr


def test_sql_before_any_run_sees_empty_catalog(indexed: tuple[Path, dict], tmp_path: Path) -> None:
    spec, _ = indexed
    proc = pipe(
        "sql",
        str(spec),
        "select count(*) as n from runs",
        "--workspace",
        str(tmp_path / "fresh"),
        "--json",
    )
    assert json.loads(proc.stdout) == [{"n": 0}]
    assert not (tmp_path / "fresh").exists()  # reading never creates a workspace


def test_broken_plugin_is_a_clean_error(basic_spec: Path, tmp_path: Path) -> None:
    dist = tmp_path / "plugins" / "broken_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[embedpipe.steps]\nbroken = no_such_module:Step\n")
    proc = subprocess.run(
        [sys.executable, "-m", "embedpipe.cli", "validate", str(basic_spec)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "plugins")},
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith(
        "error: step plugin 'broken' (no_such_module:Step) failed to "
        "import: No module named 'no_such_module'"
    )
    assert "Traceback" not in proc.stderr


def test_failed_run_exit_1_json_and_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "empty.md").write_text("")
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "name: notes\nworkspace: ws\nsteps:\n"
        "  docs: {type: ingest, source: empty.md}\n"
        "  chunks: {type: chunk, input: docs}\n"
        "  vectors: {type: encode, input: chunks}\n"
        "  index: {type: index, input: vectors}\n"
    )
    proc = pipe("run", str(spec), "--json", check=False)
    assert proc.returncode == 1
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == "failed" and out["lance_version"] == 0
    assert out["steps"]["docs"]["skipped"] == 1
    assert "error: step 'index' failed: no rows reached the index" in proc.stderr
    assert "Traceback" not in proc.stderr and "| ERROR" not in proc.stderr
