"""Hardening of the spec layer (issue 13, classes 3, 6 and 8): bounded parsing, --set before
${VAR} expansion, and table names that collide in `pipe sql`.

Hostile specs go through the real CLI (``pipe validate``) with a timeout, so a regression fails
here instead of hanging the suite or exhausting memory.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from embedpipe import dag as dag_mod
from embedpipe.errors import SpecError
from embedpipe.schemas import CATALOG_VIEWS, SQL_RESERVED
from embedpipe.spec import load
from embedpipe.spec.yamlpos import MAX_DEPTH, MAX_SPEC_BYTES, MAX_VALUES, SpecLimit
from embedpipe.spec.yamlpos import load as load_yaml

ROOT = Path(__file__).resolve().parent.parent
PIPE = Path(sys.executable).parent / "pipe"
SECONDS = 20  # each hostile spec: a healthy `pipe validate` takes ~1 s even on a busy machine
HEAD = "name: hostile\nsteps:\n  docs: {type: ingest, source: corpus.jsonl, format: beir}\n"
ISSUE = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<message>.*)$")


def validate(spec: Path, *args: str) -> tuple[int, list[tuple[int, int, str]], float]:
    """Run ``pipe validate``; return its exit code, the ``(line, col, message)`` of each
    ``PATH:LINE:COL: message`` it printed for ``spec``, and how long it took."""
    start = time.monotonic()
    proc = subprocess.run(
        [str(PIPE), "validate", str(spec), *args],
        capture_output=True,
        text=True,
        timeout=SECONDS,
        cwd=spec.parent,
        check=False,
    )
    took = time.monotonic() - start
    issues = []
    for line in proc.stderr.splitlines():
        m = ISSUE.match(line)
        if m and m["file"] in (str(spec), "--set"):
            issues.append((int(m["line"]), int(m["col"]), m["message"]))
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, issues, took


def one_issue(spec: Path, *, cli: bool = True) -> tuple[int, int, str]:
    """The one issue ``pipe validate`` reports for ``spec`` (exit 2). ``cli=False`` checks the
    same in this process, which is faster, for inputs that fail fast even if the bounds broke
    (deep nesting would raise RecursionError at once; an alias bomb would not: always the CLI)."""
    if not cli:
        with pytest.raises(SpecError) as info:
            dag_mod.load(spec, preflight=True)
        (issue,) = info.value.issues
        return issue.line, issue.col, issue.message
    code, issues, took = validate(spec)
    assert code == 2, issues
    assert len(issues) == 1, issues
    assert took < SECONDS / 2
    return issues[0]


@pytest.fixture
def hostile(tmp_path: Path, corpus: Path) -> Callable[[str], Path]:
    """Write a spec (a valid head, then ``body``) beside a tiny corpus; return its path."""

    def write(body: str) -> Path:
        path = tmp_path / "spec.yaml"
        path.write_text(HEAD + body)
        return path

    return write


# -- alias expansion ("billion laughs") --------------------------------------------------------


def list_bomb(levels: int, width: int) -> str:
    rows = ["lol:", f"  l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        rows.append(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(rows) + "\n"


def mapping_bomb(levels: int, width: int) -> str:
    rows = ["lol:", "  m0: &m0 {" + ", ".join(f"k{j}: lol" for j in range(width)) + "}"]
    for i in range(1, levels):
        rows.append(f"  m{i}: &m{i} {{" + ", ".join(f"k{j}: *m{i - 1}" for j in range(width)) + "}")
    return "\n".join(rows) + "\n"


def block_bomb(levels: int, width: int) -> str:
    """Block style: each level a block sequence of aliases of the one before."""
    rows = ["lol:", "  l0: &l0"] + ["    - lol"] * width
    for i in range(1, levels):
        rows += [f"  l{i}: &l{i}"] + [f"    - *l{i - 1}"] * width
    return "\n".join(rows) + "\n"


def in_a_step(bomb: str) -> str:
    """The same bomb, inside a step's body (where unknown keys are only found later)."""
    body = bomb.removeprefix("lol:\n").replace("\n  ", "\n      ")
    return "  x:\n    type: chunk\n    input: docs\n    lol:\n      " + body.lstrip()


# The issue's instance is 9 levels of 9; a 2-level, 150-wide bomb is small text too.
BOMBS = {
    "nested lists": list_bomb(9, 9),
    "nested mappings": mapping_bomb(9, 9),
    "block sequences": block_bomb(12, 4),
    "wide and shallow": list_bomb(2, 150),
    "in a step body": in_a_step(list_bomb(8, 8)),
}


@pytest.mark.parametrize("body", BOMBS.values(), ids=BOMBS.keys())
def test_alias_bomb_is_a_spec_error_at_the_alias(body: str, hostile: Callable[[str], Path]) -> None:
    """However the aliases nest, expansion stops at MAX_VALUES with exit 2 at an alias."""
    spec = hostile(body)
    assert spec.stat().st_size < 2000
    line, col, message = one_issue(spec)
    assert spec.read_text().splitlines()[line - 1][col - 1] == "*", (line, col)
    assert "spec too large" in message and f"at most {MAX_VALUES:,}" in message


@pytest.mark.parametrize(
    "body",
    ["loop: &a [1, *a]\n", "loop: &m {self: *m}\n", "loop: &a [[[{x: [*a]}]]]\n"],
    ids=["list", "mapping", "deeper"],
)
def test_alias_inside_its_own_value_is_a_spec_error(
    body: str, hostile: Callable[[str], Path]
) -> None:
    spec = hostile(body)
    with pytest.raises(SpecError) as info:
        load(spec)
    (issue,) = info.value.issues
    assert spec.read_text().splitlines()[issue.line - 1][issue.col - 1] == "*"
    assert "repeat forever" in issue.message


def test_values_up_to_the_cap_parse_and_one_more_does_not() -> None:
    items = MAX_VALUES - 3  # and the root mapping, its one key and the list itself
    ok = "x: [" + ", ".join(["0"] * items) + "]\n"
    data, _ = load_yaml(ok, "ok.yaml")
    assert len(data["x"]) == items
    with pytest.raises(SpecLimit):
        load_yaml(ok.replace("[0", "[0, 0"), "over.yaml")
    # Aliases count each time they are used, anchors or not.
    uses = MAX_VALUES // 10
    text = "a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9]\nb: [" + ", ".join(["*a"] * uses) + "]\n"
    with pytest.raises(SpecLimit) as info:
        load_yaml(text, "aliases.yaml")
    assert info.value.problem_mark.line == 1  # the line of the alias that crossed the cap


def test_aliases_within_the_cap_build_what_they_always_did() -> None:
    """A spec that uses aliases modestly loads exactly as PyYAML reads it."""
    text = (
        "name: aliased\n"
        "defaults: &chunking {type: chunk, input: docs, max_tokens: 64}\n"
        "steps:\n"
        "  docs: {type: ingest, source: [a.jsonl, &b b.jsonl, *b]}\n"
        "  chunks: *chunking\n"
        "  more: {type: chunk, input: [*b]}\n"
    )
    data, pos = load_yaml(text, "a.yaml")
    assert data == yaml.safe_load(text)
    assert data["steps"]["chunks"] is not data["defaults"]  # copied, not shared
    # Positions of repeated values are those of the anchored value, as before.
    lines = text.splitlines()
    assert pos.values[("steps", "chunks", "max_tokens")] == (2, lines[1].index("64") + 1)
    assert pos.values[("steps", "docs", "source", 2)] == (4, lines[3].index("&b b.jsonl") + 1)


# -- nesting depth -------------------------------------------------------------------------------


def block_mappings(depth: int) -> str:
    return "".join(f"{'  ' * i}k{i}:\n" for i in range(depth)) + f"{'  ' * depth}leaf\n"


DEEP = {
    "flow lists, 20,000 deep": "deep: " + "[" * 20_000 + "]" * 20_000 + "\n",
    "flow mappings": "deep: " + "{a: " * 2000 + "1" + "}" * 2000 + "\n",
    "block mappings": block_mappings(200),
    "block lists": "deep:\n" + "- " * 500 + "x\n",
    "mixed": "deep: " + "[{a: " * 300 + "1" + "}]" * 300 + "\n",
}


@pytest.mark.parametrize("body", DEEP.values(), ids=DEEP.keys())
def test_deep_nesting_is_a_spec_error_at_the_deep_node(
    body: str, hostile: Callable[[str], Path]
) -> None:
    spec = hostile(body)
    line, col, message = one_issue(spec, cli=body is DEEP["flow lists, 20,000 deep"])
    assert (line, col) != (1, 1)
    assert line > HEAD.count("\n")  # in the nested part, not at the top of the file
    assert f"at most {MAX_DEPTH} levels" in message


def test_depth_up_to_the_cap_parses() -> None:
    ok = "x: " + "[" * (MAX_DEPTH - 1) + "1" + "]" * (MAX_DEPTH - 1) + "\n"
    _, pos = load_yaml(ok, "ok.yaml")
    assert max(len(p) for p in pos.values) == MAX_DEPTH
    with pytest.raises(SpecLimit):
        load_yaml(ok.replace("[", "[[", 1).replace("]", "]]", 1), "over.yaml")
    # Through an alias: a shallow use of a deep anchored value nests as deep as it expands to.
    deep = "[" * (MAX_DEPTH - 2) + "1" + "]" * (MAX_DEPTH - 2)
    with pytest.raises(SpecLimit) as info:
        load_yaml(f"a: &a {deep}\nb: [[*a]]\n", "alias.yaml")
    assert (info.value.problem_mark.line, info.value.problem_mark.column) == (1, 5)  # *a


def test_recursion_error_anywhere_in_parsing_is_a_spec_error() -> None:
    """Even if the depth cap were not enough (a deeper caller's stack), no traceback."""
    text = "x: " + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "\n"
    limit = sys.getrecursionlimit()
    depth = len(inspect.stack(0))
    sys.setrecursionlimit(depth + 40)
    try:
        with pytest.raises(SpecLimit) as info:
            load_yaml(text, "x.yaml")
    finally:
        sys.setrecursionlimit(limit)
    assert "nested too deeply" in info.value.problem


# -- file size -----------------------------------------------------------------------------------


def test_oversize_spec_is_a_spec_error_and_only_its_head_is_read(
    hostile: Callable[[str], Path],
) -> None:
    """A spec past MAX_SPEC_BYTES is refused at 1:1 without reading it all: a 4 GiB (sparse)
    file is refused as fast as one byte over."""
    spec = hostile("")
    with spec.open("r+b") as f:
        f.truncate(4 << 30)
    line, col, message = one_issue(spec)
    assert (line, col) == (1, 1)
    assert f"larger than {MAX_SPEC_BYTES // 1024} KiB" in message


def test_spec_at_the_size_cap_parses_quickly_and_one_byte_more_is_refused(
    hostile: Callable[[str], Path],
) -> None:
    """The cap is where parsing is still fast: the shapes slowest per byte, at the caps."""
    room = MAX_SPEC_BYTES - len(HEAD)
    worst = {
        "blank lines": "\n" * room,
        "comments": ("# " + "c" * 77 + "\n") * (room // 80),
        "values up to the cap": "x: [" + ", ".join(["0"] * (MAX_VALUES - 20)) + "]\n",
        "a long string": "x: " + "y" * (room - 4) + "\n",
    }
    for shape, body in worst.items():
        text = HEAD + body
        assert len(text.encode()) <= MAX_SPEC_BYTES, shape
        start = time.process_time()
        load_yaml(text, "spec.yaml")
        assert time.process_time() - start < 2.0, shape  # 0.05-0.2 s measured on 2 busy cores
    spec = hostile("#" * (room - 1) + "\n")
    assert spec.stat().st_size == MAX_SPEC_BYTES
    assert load(spec).name == "hostile"
    spec.write_text(HEAD + "#" * room + "\n")
    with pytest.raises(SpecError, match=r"larger than 128 KiB \(131,072 bytes\)") as info:
        load(spec)
    assert (info.value.issues[0].line, info.value.issues[0].col) == (1, 1)


def test_real_specs_parse_as_pyyaml_reads_them() -> None:
    """The bounds change nothing for the project's own specs."""
    paths = sorted((ROOT / "pipelines").glob("*.yaml"))
    assert paths
    for path in paths:
        text = path.read_text()
        data, pos = load_yaml(text, str(path))
        assert data == yaml.safe_load(text)
        line = next(i for i, t in enumerate(text.splitlines(), 1) if t.startswith("name: "))
        assert pos.values[("name",)] == (line, 7)


# -- --set before ${VAR} -------------------------------------------------------------------------


def test_set_supplies_a_value_for_an_unset_variable(
    hostile: Callable[[str], Path], tmp_path: Path
) -> None:
    spec = hostile("workspace: ${EMBEDPIPE_TEST_SURELY_UNSET}\n")
    line, col, message = one_issue(spec, cli=False)
    assert (line, col) == (4, 12) and "EMBEDPIPE_TEST_SURELY_UNSET is not set" in message
    code, issues, _ = validate(spec, "--set", f"workspace={tmp_path / 'ws'}")
    assert code == 0 and issues == []


def test_overridden_values_are_literal_and_the_rest_still_expand(
    hostile: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EMBEDPIPE_TEST_SURELY_UNSET", raising=False)
    monkeypatch.setenv("EMBEDPIPE_TEST_SET", "from-env")
    spec = hostile(
        "workspace: ${EMBEDPIPE_TEST_SURELY_UNSET}\ndescription: ${EMBEDPIPE_TEST_SURELY_UNSET}/x\n"
    )
    with pytest.raises(SpecError) as info:  # overriding one leaves the other an error
        load(spec, overrides=["workspace=ws"])
    (issue,) = info.value.issues
    assert (issue.line, issue.col) == (5, 14) and issue.message.startswith("description:")
    got = load(
        spec,
        overrides=["workspace=ws", "description=${EMBEDPIPE_TEST_SET}"],
    )
    assert got.spec.description == "${EMBEDPIPE_TEST_SET}"  # taken literally
    whole = load(spec, overrides=["workspace=ws", "description=${EMBEDPIPE_TEST_SURELY_UNSET}"])
    assert whole.spec.workspace == "ws"
    # --workspace replaces the spec's workspace too, so its ${VAR} need not be set.
    assert load(spec, workspace="elsewhere", overrides=["description=d"]).spec.description == "d"


def test_set_values_have_the_same_bounds(hostile: Callable[[str], Path]) -> None:
    spec = hostile("")
    values = {
        "deep": "[" * 20_000 + "]" * 20_000,
        "bomb": "[&a [" + ", ".join(["x"] * 20) + "], " + ", ".join(["[*a, *a, *a]"] * 100) + "]",
    }
    for what, value in values.items():
        with pytest.raises(SpecError) as info:
            load(spec, overrides=[f"description={value}"])
        (issue,) = info.value.issues
        assert (issue.file, issue.line, issue.col) == ("--set", 1, 1), what
        assert issue.message.startswith("--set description: spec "), what


# -- table names in SQL --------------------------------------------------------------------------

INDEXED = HEAD + (
    "  chunks: {type: chunk, input: docs}\n"
    "  vectors: {type: encode, input: chunks}\n"
    "  index: {type: index, input: vectors%s}\n"
)


def sql_issue(spec: Path) -> tuple[int, int, str]:
    with pytest.raises(SpecError) as info:
        dag_mod.load(spec, preflight=True)
    (issue,) = info.value.issues
    return issue.line, issue.col, issue.message


@pytest.mark.parametrize("table", [*CATALOG_VIEWS, "Runs", "SKIPPED"])
def test_table_named_like_a_catalog_view_is_a_spec_error(
    table: str, tmp_path: Path, corpus: Path
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(INDEXED % f", table: {table}")
    line, col, message = sql_issue(spec)
    assert (line, col) == (6, 47)  # the `table:` value
    assert message.startswith("steps.index.table: ")
    assert "catalog view" in message and "set `table:` to another name" in message


@pytest.mark.parametrize("table", ["full", "select", "Left", "JOIN", "from", "table"])
def test_table_named_by_a_reserved_word_is_a_spec_error(
    table: str, tmp_path: Path, corpus: Path
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(INDEXED % f", table: {table}")
    line, col, message = sql_issue(spec)
    assert (line, col) == (6, 47)
    assert "reserved word" in message and "set `table:` to another name" in message


@pytest.mark.parametrize("name", ["full", "step-runs", "Order"])
def test_pipeline_name_that_gives_a_bad_default_table_is_a_spec_error(
    name: str, tmp_path: Path, corpus: Path
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text((INDEXED % "").replace("name: hostile", f"name: {name}"))
    line, col, message = sql_issue(spec)
    assert (line, col) == (1, 7)  # `name:`, where the table name came from
    assert message.startswith("name: step 'index' (index) takes its table name from `name`")
    assert "set `table:` on step 'index' to another name" in message


def test_pipeline_named_full_through_the_cli(tmp_path: Path, corpus: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text((INDEXED % "").replace("name: hostile", "name: full"))
    line, col, message = one_issue(spec)
    assert (line, col) == (1, 7) and "'full' is a reserved word" in message
    spec.write_text((INDEXED % ", table: full_text").replace("name: hostile", "name: full"))
    assert dag_mod.load(spec, preflight=True).steps["index"].table_name("full") == "full_text"


def test_names_that_only_contain_a_keyword_or_view_are_fine(tmp_path: Path, corpus: Path) -> None:
    spec = tmp_path / "spec.yaml"
    for name, table in [("full", "full_text"), ("runs-index", None), ("x", "my_runs")]:
        extra = f", table: {table}" if table else ""
        spec.write_text((INDEXED % extra).replace("name: hostile", f"name: {name}"))
        dag = dag_mod.load(spec, preflight=True)
        assert dag.steps["index"].table_name(name) == (table or name.replace("-", "_"))


@pytest.mark.parametrize(
    ("first", "second", "where"),
    [(", table: t1", ", table: T1", (7, 47)), ("", "", (1, 7)), ("", ", table: HOSTILE", (7, 47))],
    ids=["both set", "both default", "set to the default"],
)
def test_two_steps_writing_one_table_is_a_spec_error(
    first: str, second: str, where: tuple[int, int], tmp_path: Path, corpus: Path
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(INDEXED % first + f"  again: {{type: index, input: vectors{second}}}\n")
    line, col, message = sql_issue(spec)
    assert (line, col) == where
    assert "already written by step 'index'" in message


def test_reserved_words_match_the_installed_duckdb() -> None:
    """SQL_RESERVED is written out (only the engine imports duckdb): it must still be what
    DuckDB reports, and every word in it must really fail as a table name."""
    duckdb = pytest.importorskip("duckdb")
    rows = duckdb.sql(
        "select keyword_name from duckdb_keywords() "
        "where keyword_category in ('reserved', 'type_function')"
    ).fetchall()
    assert {r[0] for r in rows} == SQL_RESERVED
    assert "full" in SQL_RESERVED and not {"runs", "step_runs", "skipped"} & SQL_RESERVED
    con = duckdb.connect()
    for view in CATALOG_VIEWS:  # the views `pipe sql` makes are still these
        con.execute(f"create view {view} as select 1 as x")
    with pytest.raises(duckdb.ParserException):
        con.execute("create view full as select 1 as x")
    from embedpipe.engine.catalog import TABLES

    assert set(TABLES) == set(CATALOG_VIEWS)  # the catalog's own tables, which `pipe sql` shows
