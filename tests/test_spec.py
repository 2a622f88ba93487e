"""Spec loading and the DAG check: golden files for invalid specs, overrides, env, schema."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from embedpipe import dag as dag_mod
from embedpipe import registry
from embedpipe.errors import SpecError
from embedpipe.spec import load

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "tests" / "cases" / "invalid"
UPDATE = os.environ.get("EMBEDPIPE_UPDATE_GOLDEN") == "1"


def render_errors(case: Path) -> str:
    rel = case.relative_to(ROOT)
    try:
        dag_mod.load(rel, preflight=True)
    except SpecError as exc:
        return exc.render().replace(str(ROOT), "<repo>") + "\n"
    raise AssertionError(f"{rel} was accepted")


@pytest.mark.parametrize("case", sorted(CASES.glob("*.yaml")), ids=lambda p: p.stem)
def test_invalid_spec_golden(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every invalid spec reports all its errors at once, each at file:line:col."""
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("EMBEDPIPE_TEST_SURELY_UNSET", raising=False)
    # The goldens list the built-in step kinds; installed plugins (the example) would add theirs.
    monkeypatch.setattr(registry, "step_types", lambda: dict(registry.BUILTINS))
    got = render_errors(case)
    golden = case.with_suffix(".txt")
    if UPDATE or not golden.exists():
        golden.write_text(got)
    assert got == golden.read_text()
    for line in got.splitlines()[:-1]:
        assert line.startswith(f"tests/cases/invalid/{case.name}:"), line


@pytest.mark.parametrize("case", ["unknown_key", "unknown_type", "cycle", "dim_mismatch"])
@pytest.mark.parametrize("command", ["validate", "run", "search", "sql"])
def test_invalid_spec_exits_2_and_writes_nothing(case: str, command: str, tmp_path: Path) -> None:
    """Every command refuses an invalid spec with exit 2 and its golden errors, writing nothing."""
    extra = {"search": ["a query"], "sql": ["select 1"]}.get(command, [])
    ws = tmp_path / "ws"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "embedpipe.cli",
            command,
            f"tests/cases/invalid/{case}.yaml",
            *extra,
            "--workspace",
            str(ws),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr
    golden = (CASES / f"{case}.txt").read_text()
    assert _builtin_kinds_only(proc.stderr.replace(str(ROOT), "<repo>")) == golden
    assert not ws.exists()


def _builtin_kinds_only(text: str) -> str:
    """``text`` with the step kinds installed plugins add (the example's) taken out of its
    lists of valid types: the goldens list the built-in ones."""
    for name in sorted(set(registry.step_types()) - set(registry.BUILTINS)):
        text = re.sub(rf", {re.escape(name)}(?=[,\s]|$)", "", text)  # not ", pooling"
    return text


def test_valid_spec_loads_with_defaults(basic_spec: Path) -> None:
    dag = dag_mod.load(basic_spec, preflight=True)
    assert dag.order == ["docs", "chunks", "vectors", "index"]
    assert dag.spec.workspace == basic_spec.parent / "ws"
    vector = dag.schemas["vectors"].field("vector").type
    assert vector.list_size == 384  # known from the model's files, without loading it


def test_validate_imports_no_heavy_library(basic_spec: Path) -> None:
    """Loading and checking a spec must not import torch, Prefect, LanceDB or DuckDB."""
    code = (
        "import sys; from embedpipe import dag; dag.load(sys.argv[1], preflight=True); "
        "heavy = {'torch', 'prefect', 'lancedb', 'duckdb', 'sentence_transformers'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(basic_spec)], capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip() == "[]"


def test_spec_hash_is_stable_and_tracks_config(basic_spec: Path) -> None:
    a, b = load(basic_spec), load(basic_spec)
    assert a.hash == b.hash
    c = load(basic_spec, overrides=["steps.chunks.max_tokens=32"])
    assert c.hash != a.hash


def test_set_overrides_parse_yaml_values(basic_spec: Path) -> None:
    spec = load(
        basic_spec,
        overrides=[
            "steps.chunks.max_tokens=100",
            "steps.chunks.strategy=sentences",
            "steps.vectors.prompts.query=query: ",
        ],
    )
    chunk = spec.steps["chunks"].config
    assert chunk.max_tokens == 100 and chunk.strategy == "sentences"
    assert spec.steps["vectors"].config.prompts.query == "query: "


def test_set_errors_point_at_the_key(basic_spec: Path) -> None:
    with pytest.raises(SpecError) as info:
        load(basic_spec, overrides=["steps.chunks.max_tokens=many", "nonsense"])
    text = info.value.render()
    assert (
        f"{basic_spec}:5:68:" in text
        and "steps.chunks.max_tokens: input should be a valid integer" in text
    )
    assert "--set:1:1: 'nonsense': expected dotted.key=value" in text


def test_env_interpolation(
    write_spec: Callable[..., Path], corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TINY_CORPUS", str(corpus))
    spec = load(
        write_spec("""
        name: env
        steps:
          docs: {type: ingest, source: "${TINY_CORPUS}", format: beir}
          chunks: {type: chunk, input: docs, max_tokens: "${TINY_MAX:-96}"}
          literal: {type: chunk, input: docs, tokenizer: "$${NOT_EXPANDED}"}
    """)
    )
    assert spec.steps["docs"].config.source == str(corpus)
    assert spec.steps["chunks"].config.max_tokens == 96
    assert spec.steps["literal"].config.tokenizer == "${NOT_EXPANDED}"


def test_workspace_override(basic_spec: Path, tmp_path: Path) -> None:
    spec = load(basic_spec, workspace=tmp_path / "elsewhere")
    assert spec.workspace == tmp_path / "elsewhere"


def test_json_schema_covers_every_step_kind() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "embedpipe.cli", "schema"],
        capture_output=True,
        text=True,
        check=True,
    )
    schema = json.loads(proc.stdout)
    text = json.dumps(schema)
    for kind in ("ingest", "chunk", "encode", "index"):
        assert f'"const": "{kind}"' in text
    assert schema["additionalProperties"] is False


def test_unreadable_spec_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load(tmp_path / "nope.yaml")
    assert "cannot read spec" in info.value.render()
