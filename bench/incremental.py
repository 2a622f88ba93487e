"""Incremental re-runs of `pipe run` on SciFact: full run, no-op re-run, 1%-changed re-run.

    .venv/bin/python bench/incremental.py [--limit N] [--write]

Every run is a whole `pipe run pipelines/scifact.yaml --json --workspace WS` process (the venv's
`pipe` console script under bench/_rusage.py, as in encode_overhead.py), all in the same fresh
temporary workspace WS, reading a temporary copy of the corpus that SCIFACT_CORPUS points at
from the first run on (so only the edits differ between runs):

1. full      the copy as is (with --limit: its first N documents), empty workspace
2. no-op     nothing changed
3. 1% edit   every 100th document's text gets one sentence appended
4. 1% delete every 100th document (others than those edited) removed, the edits kept

For each it records wall seconds, peak RSS, and from the JSON the per-step computed / cached /
deleted counts and lance_version, prints a table and, with --write, rewrites the
"## Incremental re-runs" section of bench/RESULTS.md. It exits 1 when a run does more (or
less) than it should: the no-op computes no vector and commits nothing, the 1% edit computes
the edited documents' chunks and no others, the 1% delete computes nothing and deletes exactly
the deleted documents' chunks. Timing targets (no-op ≤ 3%, 1% edit ≤ 5% of the full run's wall
time) are reported, not enforced.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from encode_overhead import (
    BenchError,
    Measured,
    command_line,
    index_table,
    last_json,
    load_average,
    machine,
    run_measured,
    write_section,
)
from rich.console import Console
from rich.table import Table

import embedpipe

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SPEC = ROOT / "pipelines" / "scifact.yaml"
RESULTS = BENCH / "RESULTS.md"
SECTION = "## Incremental re-runs"
ENV = "SCIFACT_CORPUS"
EVERY = 100  # 1%: the documents at positions EDIT, EDIT + 100, ... and DELETE, DELETE + 100, ...
EDIT, DELETE = 0, EVERY // 2
APPENDED = " This sentence was appended by bench/incremental.py to measure a 1% re-run."
TARGETS = {"no-op": 0.03, "1% edit": 0.05}

console = Console()
if not console.is_terminal:  # a log file: room for the table instead of 80 columns
    console.width = max(console.width, 140)


@dataclass(frozen=True)
class Run:
    label: str
    proc: Measured
    result: dict[str, Any]

    @property
    def steps(self) -> dict[str, dict[str, Any]]:
        return self.result.get("steps") or {}

    def count(self, step: str, what: str) -> int:
        """A step's computed / cached / deleted / rows_out; 0 when the run did not report it."""
        return int(self.steps.get(step, {}).get(what) or 0)

    @property
    def version(self) -> int | None:
        v = self.result.get("lance_version")
        return int(v) if v is not None else None

    @property
    def step_seconds(self) -> float:
        return sum(float(s.get("seconds") or 0) for s in self.steps.values())


@dataclass(frozen=True)
class Corpus:
    """The corpus copy: one JSON line per document, rewritten in place between runs."""

    path: Path
    lines: list[bytes]
    ids: list[str]
    edited: list[int]  # positions
    deleted: list[int]

    def write(self, *, edit: bool = False, delete: bool = False) -> None:
        edited, deleted = set(self.edited if edit else ()), set(self.deleted if delete else ())
        with self.path.open("wb") as out:
            for i, line in enumerate(self.lines):
                if i in deleted:
                    continue
                if i in edited:
                    doc = json.loads(line)
                    doc["text"] = (doc.get("text") or "").rstrip() + APPENDED
                    line = json.dumps(doc, ensure_ascii=False).encode() + b"\n"
                out.write(line if line.endswith(b"\n") else line + b"\n")


# -- setup --------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Wall time and peak RSS of full, no-op and 1%-changed `pipe run` (SciFact)."
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="only the corpus's first N documents (a quick check); default: the whole corpus",
    )
    parser.add_argument(
        "--write", action="store_true", help=f"rewrite the {SECTION!r} section of RESULTS.md"
    )
    parser.add_argument("--no-delete", action="store_true", help="skip the 1%%-deleted run")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the Markdown to update")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    return args


def ingest_step(pipeline: embedpipe.Pipeline) -> tuple[str, Path]:
    """The spec's one ingest step and the one file it reads."""
    steps = pipeline.dag.of_type("ingest")
    if len(steps) != 1:
        raise BenchError(f"{pipeline.dag.spec.path} must have exactly one ingest step")
    step = steps[0]
    sources = step.config.sources()  # type: ignore[attr-defined]
    source = Path(sources[0]).expanduser()
    source = source if source.is_absolute() else step.base_dir / source
    if len(sources) != 1 or not source.is_file():
        raise BenchError(f"the spec must read one corpus file; it reads {sources}")
    return step.name, source.resolve()


def step_of_type(pipeline: embedpipe.Pipeline, kind: str) -> str:
    steps = pipeline.dag.of_type(kind)
    if len(steps) != 1:
        raise BenchError(f"{pipeline.dag.spec.path} must have exactly one {kind} step")
    return steps[0].name


def copy_corpus(source: Path, limit: int | None, tmp: Path) -> Corpus:
    lines: list[bytes] = []
    with source.open("rb") as src:
        for line in src:
            if limit is not None and len(lines) == limit:
                break
            if line.strip():
                lines.append(line)
    ids = [str(json.loads(line)["_id"]) for line in lines]
    if len(set(ids)) != len(ids):
        raise BenchError(f"{source} has duplicate _id values")
    positions = range(len(lines))
    return Corpus(
        path=tmp / f"corpus-{source.name}",
        lines=lines,
        ids=ids,
        edited=[i for i in positions if i % EVERY == EDIT],
        deleted=[i for i in positions if i % EVERY == DELETE],
    )


# -- runs ---------------------------------------------------------------------------------------
def pipe_run(label: str, spec: Path, workspace: Path, tmp: Path) -> Run:
    pipe = Path(sys.executable).with_name("pipe")
    if not pipe.is_file():
        raise BenchError(f"{pipe} not found: run with the project's venv (.venv/bin/python)")
    args = ["run", str(spec), "--json", "--workspace", str(workspace)]
    name = "pipe-" + "".join(c if c.isalnum() else "-" for c in label)
    proc = run_measured(name, pipe, args, tmp)
    result = last_json(proc.stdout)
    if result.get("status") != "completed":
        raise BenchError(
            f"{label}: pipe run finished {result.get('status')}: {result.get('error')}"
        )
    run = Run(label, proc, result)
    console.print(
        f"  {label}: {proc.wall_s:.1f} s, peak RSS {proc.peak_kib / 1024:,.0f} MiB, "
        f"lance_version {run.version}"
    )
    return run


def chunks_per_doc(spec: Path, workspace: Path, table: str) -> dict[str, int]:
    pipeline = embedpipe.load(spec, workspace=workspace)
    got = pipeline.sql(f"select doc_id, count(*) as n from {table} group by doc_id")
    return {str(r["doc_id"]): int(r["n"]) for r in got}


# -- checks -------------------------------------------------------------------------------------
class Checks:
    """Expectations on what a run did; each failure says what was expected and what happened."""

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.passed: list[str] = []

    def expect(self, ok: bool, what: str) -> None:
        (self.passed if ok else self.failed).append(what)

    def equal(self, what: str, got: int | None, want: int | None) -> None:
        self.expect(got == want, f"{what}: {got} (expected {want})")

    def within(self, what: str, got: int, low: int, high: int) -> None:
        self.expect(low <= got <= high, f"{what}: {got} (expected {low} to {high})")


def check(
    runs: dict[str, Run],
    names: dict[str, str],
    corpus: Corpus,
    per_doc: dict[str, int],
) -> tuple[Checks, dict[str, str]]:
    """Sanity of what each run did; also the notes that say it. A step or lance_version missing
    from a run's JSON counts as 0 / is not compared (an engine may skip work on a no-op)."""
    c = Checks()
    vec, idx, chk = names["encode"], names["index"], names["chunk"]
    full, noop, edit = runs["full"], runs["no-op"], runs["1% edit"]
    total = full.count(vec, "rows_out")
    c.expect(total > 0, f"full: {vec} rows_out {total} (expected > 0)")
    c.equal(f"full: {vec} computed", full.count(vec, "computed"), total)
    c.expect(full.version is not None, f"full: lance_version {full.version} (expected one)")
    notes = {"full": f"empty workspace: {_counts(full, vec, 'vectors')}"}

    for step in (chk, vec, idx):
        c.equal(f"no-op: {step} computed", noop.count(step, "computed"), 0)
    c.equal(f"no-op: {idx} deleted", noop.count(idx, "deleted"), 0)
    if noop.version is not None and full.version is not None:
        c.equal("no-op: lance_version (no commit)", noop.version, full.version)
    commit = "unchanged: no commit" if noop.version == full.version else "a new commit"
    notes["no-op"] = (
        f"{_counts(noop, vec, 'vectors')}; {_counts(noop, chk, 'chunks')}; "
        f"index {_counts(noop, idx, '')}; lance_version {noop.version} ({commit})"
    )

    edited_ids = [corpus.ids[i] for i in corpus.edited]
    edited_chunks = sum(per_doc.get(d, 0) for d in edited_ids)
    # An appended sentence changes at least each edited doc's last chunk, at most all its chunks.
    for step in (chk, vec, idx):
        got = edit.count(step, "computed")
        c.within(f"1% edit: {step} computed", got, len(edited_ids), edited_chunks)
    c.equal(f"1% edit: {idx} deleted", edit.count(idx, "deleted"), 0)
    if edit.version is not None and full.version is not None:
        c.expect(
            edit.version > full.version,
            f"1% edit: lance_version {edit.version} (expected > {full.version})",
        )
    notes["1% edit"] = (
        f"{len(edited_ids)} docs edited (every {EVERY}th, a sentence appended), "
        f"{edited_chunks} chunks: {_counts(edit, vec, 'vectors')}; "
        f"{_counts(edit, chk, 'chunks')}; index {_counts(edit, idx, '')}; "
        f"lance_version {edit.version}"
    )

    if "1% delete" in runs:
        gone = runs["1% delete"]
        deleted_ids = [corpus.ids[i] for i in corpus.deleted]
        deleted_chunks = sum(per_doc.get(d, 0) for d in deleted_ids)
        for step in (chk, vec, idx):
            c.equal(f"1% delete: {step} computed", gone.count(step, "computed"), 0)
        c.equal(f"1% delete: {idx} deleted", gone.count(idx, "deleted"), deleted_chunks)
        if gone.version is not None and edit.version is not None:
            c.expect(
                gone.version > edit.version,
                f"1% delete: lance_version {gone.version} (expected > {edit.version})",
            )
        notes["1% delete"] = (
            f"{len(deleted_ids)} docs removed, {deleted_chunks} chunks: "
            f"{_counts(gone, vec, 'vectors')}; index {_counts(gone, idx, '')}; "
            f"lance_version {gone.version}"
        )
    return c, notes


def _counts(run: Run, step: str, label: str) -> str:
    if step not in run.steps:
        return f"{label} not run".strip()
    parts = [f"computed {run.count(step, 'computed'):,}", f"cached {run.count(step, 'cached'):,}"]
    if run.count(step, "deleted"):
        parts.append(f"deleted {run.count(step, 'deleted'):,}")
    return f"{label} {' / '.join(parts)}".strip()


# -- report -------------------------------------------------------------------------------------
def table_rows(runs: dict[str, Run], step_names: list[str]) -> list[list[str]]:
    full = runs["full"].proc.wall_s
    out = []
    for run in runs.values():
        p = run.proc
        cells = [
            run.label,
            f"{p.wall_s:.1f}",
            f"{p.wall_s / full:.1%}",
            f"{run.step_seconds:.1f}",
            f"{p.peak_kib / 1024:,.0f}",
            f"{p.children_peak_kib / 1024:,.0f}" if p.children_peak_kib else "none",
        ]
        for step in step_names:
            if step not in run.steps:
                cells.append("—")
                continue
            c, k, d = (run.count(step, w) for w in ("computed", "cached", "deleted"))
            cells.append(f"{c:,}/{k:,}/{d:,}")
        cells.append(str(run.version) if run.version is not None else "—")
        out.append(cells)
    return out


def headers(step_names: list[str]) -> list[str]:
    return [
        "run",
        "wall s",
        "of full",
        "in steps s",
        "peak RSS MiB",
        "children MiB",
        *(f"{s} c/k/d" for s in step_names),
        "lance v",
    ]


def ratio_lines(runs: dict[str, Run]) -> list[str]:
    full = runs["full"].proc.wall_s
    lines = []
    for label, target in TARGETS.items():
        ratio = runs[label].proc.wall_s / full
        verdict = "ok" if ratio <= target else "MISSED"
        lines.append(
            f"{label} / full wall time: {runs[label].proc.wall_s:.1f} / {full:.1f} s = "
            f"{ratio:.1%} (target ≤ {target:.0%}: {verdict})"
        )
    return lines


def print_report(
    heads: list[str], rows: list[list[str]], ratios: list[str], notes: dict[str, str], title: str
) -> None:
    table = Table(title=title)
    for i, h in enumerate(heads):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print("c/k/d: computed/cached/deleted rows", highlight=False)
    for line in ratios:
        console.print(line, highlight=False)
    for label, note in notes.items():
        console.print(f"{label}: {note}", highlight=False)


def section(
    args: argparse.Namespace,
    info: dict[str, str],
    loads: tuple[str, str],
    runs: dict[str, Run],
    heads: list[str],
    rows: list[list[str]],
    ratios: list[str],
    notes: dict[str, str],
    names: dict[str, str],
) -> str:
    full = runs["full"]
    docs, chunks = full.count(names["ingest"], "rows_out"), full.count(names["encode"], "rows_out")
    if args.limit is not None:
        scope = (
            f"**Quick check** (`--limit {args.limit}`: the corpus's first {docs:,} documents, "
            f"{chunks:,} chunks): fixed costs dominate such small runs, so the ratios are not "
            "the result. The full run is `make bench-incremental`."
        )
    else:
        scope = f"Full corpus: {docs:,} documents, {chunks:,} chunks."
    lines = [
        SECTION,
        "",
        scope,
        "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Command: `{command_line(__file__)}`",
        f"- Machine: {info['uname']}; {info['cpu']}; Python {info['python']}",
        f"- Versions: {info['versions']}",
        f"- Load average (1, 5, 15 min) at the start: {loads[0]}; at the end: {loads[1]}",
        "- Each run is a whole `pipe run pipelines/scifact.yaml --json --workspace WS` process, "
        f"all in one fresh temporary workspace, on a temporary corpus copy ({ENV}) that is the "
        f"source from the first run on; the 1% runs edit or delete every {EVERY}th document. "
        "One run each (single runs, expect ±15%).",
        "",
        "| " + " | ".join([*heads, "what the steps did"]) + " |",
        "|---|" + "---:|" * (len(heads) - 1) + "---|",
        *("| " + " | ".join([*r, notes.get(r[0], "")]) + " |" for r in rows),
        "",
        *(f"- {line}" for line in ratios),
        "",
        "Wall seconds are the whole process (Python start-up, imports, Prefect, the steps); "
        "*in steps s* is the sum of the steps' own `seconds` from `--json`. c/k/d are each "
        "step's computed/cached/deleted rows from `--json`. Peak RSS is the `pipe` "
        "process's own (`getrusage`, measured by bench/_rusage.py); *children* is the largest "
        "of its children's (Prefect's ephemeral server), *none* when it started none. "
        "Prefect keeps its database in a fresh PREFECT_HOME in the temporary directory, so "
        "the full run also pays its one-time migrations.",
        "",
    ]
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------
def bench(args: argparse.Namespace, tmp: Path) -> int:
    info, load_before = machine(), load_average()
    pipeline = embedpipe.load(SPEC)
    _, source = ingest_step(pipeline)
    corpus = copy_corpus(source, args.limit, tmp)
    os.environ[ENV] = str(corpus.path)  # the `pipe run` processes inherit it
    # Prefect's database of its own, as on a machine that re-indexes nightly: a developer's
    # ~/.prefect can hold thousands of test flow runs, which slow its server's start-up.
    os.environ["PREFECT_HOME"] = str(tmp / "prefect-home")
    corpus.write()
    pipeline = embedpipe.load(SPEC)
    ingest, now_reads = ingest_step(pipeline)
    if now_reads != corpus.path.resolve():
        raise BenchError(f"{SPEC} does not read ${ENV}: it reads {now_reads}")
    names = {kind: step_of_type(pipeline, kind) for kind in ("chunk", "encode", "index")}
    names["ingest"] = ingest
    table = index_table(pipeline)
    workspace = tmp / "workspace"
    delete = not args.no_delete and bool(corpus.deleted)
    total = 4 if delete else 3
    console.print(
        f"[bold]{len(corpus.lines):,} docs[/] from {source} → {corpus.path}; workspace {workspace}"
    )

    runs: dict[str, Run] = {}
    console.print(f"[bold]1/{total}[/] full run")
    runs["full"] = pipe_run("full", SPEC, workspace, tmp)
    console.print(f"[bold]2/{total}[/] no-op re-run")
    runs["no-op"] = pipe_run("no-op", SPEC, workspace, tmp)
    corpus.write(edit=True)
    console.print(f"[bold]3/{total}[/] 1% edit: {len(corpus.edited)} docs get a sentence")
    runs["1% edit"] = pipe_run("1% edit", SPEC, workspace, tmp)
    per_doc = chunks_per_doc(SPEC, workspace, table)
    if delete:
        corpus.write(edit=True, delete=True)
        console.print(f"[bold]4/{total}[/] 1% delete: {len(corpus.deleted)} docs removed")
        runs["1% delete"] = pipe_run("1% delete", SPEC, workspace, tmp)

    checks, notes = check(runs, names, corpus, per_doc)
    step_names = list(runs["full"].steps)
    heads, rows = headers(step_names), table_rows(runs, step_names)
    ratios = ratio_lines(runs)
    scope = f"first {args.limit} docs (quick check)" if args.limit else "full corpus"
    loads = (load_before, load_average())
    print_report(heads, rows, ratios, notes, f"incremental re-runs · {scope}")
    console.print(f"load average at the start: {loads[0]}; at the end: {loads[1]}")
    if args.write:
        body = section(args, info, loads, runs, heads, rows, ratios, notes, names)
        write_section(args.results, body, SECTION)
        console.print(f"wrote the {SECTION!r} section of {args.results}")
    for what in checks.failed:
        console.print(f"[red]FAILED[/] {what}", highlight=False)
    if checks.failed:
        return 1
    console.print(f"[green]all {len(checks.passed)} checks passed[/]")
    return 0


def main() -> None:
    args = parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="embedpipe-incremental-"))
    try:
        code = bench(args, tmp)
    except (BenchError, embedpipe.EmbedpipeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    finally:
        if args.keep:
            console.print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
