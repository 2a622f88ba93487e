# ruff: noqa: RUF001, RUF002 -- the multiplication sign in "x10" is meant
"""Engine memory as the corpus grows: full, no-op and 1%-edit `pipe run` on SciFact ×1 and ×10.

    .venv/bin/python bench/scale_engine.py [--scales 1,10] [--pipe PATH] [--out DIR] [--write]

Encode cost is taken out: the spec encodes with a random-weight 1-layer BERT (hidden 64, the
tokenizer of the default all-MiniLM-L6-v2, fixed seed; a random Dense layer maps its mean-pooled
output to 384 dimensions, the default model's, so rows and vectors have their real size) saved
as a local sentence-transformers folder under OUT/model, and `pipe` runs with one torch thread
(OMP_NUM_THREADS=1, --torch-threads), which encodes it fastest on a busy 2-core machine.

For each scale ×k the SciFact corpus is written k times over to OUT/x{k}/corpus.jsonl, each
copy with new ids (``{_id}-r{i}``), so ×k has k times the documents and chunks. The spec is
ingest (beir) → chunk (tokens, 128) → encode (that model) → index. Per scale, each run is a
whole `pipe run SPEC --json --workspace WS` process under bench/_rusage.py (as in
incremental.py), in one fresh workspace OUT/x{k}/workspace with a fresh PREFECT_HOME:

1. full      empty workspace
2. no-op     nothing changed
3. 1% edit   every 100th document's text gets one sentence appended

It prints peak RSS and wall seconds per scale and run, the ratios of the largest scale over the
smallest, and checks them against the targets: peak RSS ratio ≤ 1.2× for all three runs, and
the wall time of a no-op and a 1% edit growing no faster than the corpus. Targets are reported,
not enforced; the run exits 1 only when a run does more (or less) than it should (the no-op
computes nothing, the 1% edit recomputes only the edited documents' chunks) or the chunk counts
do not scale with the corpus. With --write it rewrites the "## Engine scale (memory vs corpus
size)" section of bench/RESULTS.md.

Peak RSS is the `pipe` process's own (getrusage); its children's (Prefect's ephemeral server)
are shown apart. `/usr/bin/time -v` would report the larger of the two. The corpora, model and
workspaces live under --out (default /tmp/embedpipe-scale), never in the repository; the
workspaces are removed at the end unless --keep. PYTHONPATH passes through to `pipe`, so a
checkout of embedpipe other than the venv's can be measured (the engine line says which).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from encode_overhead import (
    BenchError,
    command_line,
    last_json,
    load_average,
    machine,
    run_measured,
    write_section,
)
from incremental import Checks, Run, chunks_per_doc
from rich.console import Console
from rich.table import Table

import embedpipe
from embedpipe import models

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "RESULTS.md"
SECTION = "## Engine scale (memory vs corpus size)"
SCIFACT = Path("/work/shared/data/scifact/corpus.jsonl")
OUT = Path("/tmp/embedpipe-scale")
EVERY = 100  # 1%: the documents at positions 0, 100, 200, ... of the replicated corpus
APPENDED = " This sentence was appended by bench/scale_engine.py to measure a 1% re-run."
RSS_TARGET = 1.2
RUNS = ("full", "no-op", "1% edit")
WALL_TARGETS = ("no-op", "1% edit")  # wall time growing no faster than the corpus
# The model: one small BERT layer with random weights; a Dense layer gives real-size vectors.
MODEL = {
    "hidden_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "intermediate_size": 256,
    "max_seq_length": 256,
    "dims": 384,
    "seed": 0,
}
TABLE = "scale"

console = Console()
if not console.is_terminal:  # a log file: room for the tables instead of 80 columns
    console.width = max(console.width, 180)


@dataclass
class Scale:
    """One corpus size: its runs, what the runs did and the checks on them."""

    k: int
    docs: int
    edited: list[str]  # doc ids edited by the 1% run
    runs: dict[str, Run] = field(default_factory=dict)
    per_doc: dict[str, int] = field(default_factory=dict)  # chunks of each document, after edit

    @property
    def chunks(self) -> int:
        return self.runs["full"].count("vectors", "rows_out")

    def rss_mib(self, run: str) -> float:
        return self.runs[run].proc.peak_kib / 1024

    def wall(self, run: str) -> float:
        return self.runs[run].proc.wall_s


# -- setup --------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Peak RSS and wall time of full, no-op and 1%-edit `pipe run` as SciFact "
        "is replicated ×1, ×10 (encode cost taken out by a random 1-layer model)."
    )
    parser.add_argument(
        "--scales",
        default="1,10",
        help="replication factors, comma-separated; ratios are largest over smallest "
        "(default: 1,10)",
    )
    parser.add_argument(
        "--pipe",
        type=Path,
        default=Path(sys.executable).with_name("pipe"),
        help="the pipe console script to measure (default: the one beside this Python)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=OUT,
        help=f"where the model, corpora and workspaces go (default: {OUT})",
    )
    parser.add_argument("--corpus", type=Path, default=SCIFACT, help="the BEIR corpus.jsonl")
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="only the corpus's first N documents (a quick check of the benchmark itself)",
    )
    parser.add_argument("--max-tokens", type=int, default=128, help="chunk size (default 128)")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="OMP_NUM_THREADS of the `pipe` processes (default 1)",
    )
    parser.add_argument(
        "--write", action="store_true", help=f"rewrite the {SECTION!r} section of RESULTS.md"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="the Markdown to update")
    parser.add_argument("--keep", action="store_true", help="keep the workspaces under --out")
    args = parser.parse_args()
    try:
        args.scales = sorted({int(s) for s in args.scales.split(",") if s.strip()})
    except ValueError:
        parser.error(f"--scales must be integers separated by commas, not {args.scales!r}")
    if len(args.scales) < 2 or args.scales[0] < 1:
        parser.error("--scales needs at least two factors, each at least 1")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    if not args.pipe.is_file():
        parser.error(f"--pipe {args.pipe} not found (run with the project's venv Python)")
    if not args.corpus.is_file():
        parser.error(f"--corpus {args.corpus} not found")
    args.out = args.out.resolve()
    return args


def engine(pipe: Path, cwd: Path) -> tuple[str, str]:
    """Where the `pipe` processes import embedpipe from (with this environment), and the git
    commit of that checkout (``+dirty`` when its embedpipe/ has uncommitted changes)."""
    first = pipe.read_text(errors="replace").splitlines()[0]
    python = first[2:].strip() if first.startswith("#!") else sys.executable
    code = "import embedpipe; print(embedpipe.__file__)"
    got = subprocess.run([python, "-c", code], cwd=cwd, capture_output=True, text=True, check=False)
    if got.returncode != 0:
        raise BenchError(f"{python} cannot import embedpipe:\n{got.stderr[-2000:]}")
    package = Path(got.stdout.strip().splitlines()[-1]).parent
    if package != Path(embedpipe.__file__).parent:
        raise BenchError(
            f"`pipe` imports {package}, this script {Path(embedpipe.__file__).parent}: "
            "run both with the same PYTHONPATH"
        )
    git = ["git", "-C", str(package.parent)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return str(package), "not a git checkout"
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "embedpipe"], capture_output=True, text=True
    ).stdout.strip()
    return str(package), head.stdout.strip() + ("+dirty" if dirty else "")


def build_model(folder: Path) -> None:
    """The random-weight 1-layer BERT as a sentence-transformers folder; kept across runs of
    this script while MODEL is unchanged (a rebuild changes its revision, so every cache)."""
    stamp = folder / "embedpipe-bench.json"
    want = {**MODEL, "tokenizer": models.DEFAULT_MODEL}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    source = models.resolve(models.DEFAULT_MODEL).location
    tokenizer = AutoTokenizer.from_pretrained(source)
    torch.manual_seed(MODEL["seed"])
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=MODEL["hidden_size"],
        num_hidden_layers=MODEL["num_hidden_layers"],
        num_attention_heads=MODEL["num_attention_heads"],
        intermediate_size=MODEL["intermediate_size"],
    )
    shutil.rmtree(folder, ignore_errors=True)
    hf = folder.with_name(folder.name + "-hf")
    shutil.rmtree(hf, ignore_errors=True)
    BertModel(config).save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    transformer = Transformer(str(hf), max_seq_length=MODEL["max_seq_length"])
    pooling = Pooling(MODEL["hidden_size"], pooling_mode="mean")
    dense = Dense(MODEL["hidden_size"], MODEL["dims"], activation_function=torch.nn.Identity())
    SentenceTransformer(modules=[transformer, pooling, dense], device="cpu").save(str(folder))
    shutil.rmtree(hf, ignore_errors=True)
    if not (folder / "tokenizer.json").is_file():
        raise BenchError(f"{folder} has no tokenizer.json")
    stamp.write_text(json.dumps(want))


def read_corpus(path: Path, limit: int | None) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    with path.open("rb") as src:
        for line in src:
            if limit is not None and len(docs) == limit:
                break
            if line.strip():
                docs.append(json.loads(line))
    ids = [str(d["_id"]) for d in docs]
    if len(set(ids)) != len(ids):
        raise BenchError(f"{path} has duplicate _id values")
    return docs


def write_corpus(docs: list[dict[str, Any]], k: int, path: Path, *, edit: bool) -> list[str]:
    """``docs`` k times over, copy i with ids ``{_id}-r{i}``; with ``edit``, the documents at
    positions 0, EVERY, 2 * EVERY, ... get APPENDED. Returns the ids of those documents."""
    edited = []
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        pos = 0
        for i in range(k):
            for doc in docs:
                row = {**doc, "_id": f"{doc['_id']}-r{i}"}
                if pos % EVERY == 0:
                    edited.append(row["_id"])
                    if edit:
                        row["text"] = (row.get("text") or "").rstrip() + APPENDED
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                pos += 1
    return edited


def write_spec(path: Path, corpus: Path, model: Path, max_tokens: int) -> None:
    spec = f"""\
# Written by bench/scale_engine.py: SciFact replicated, encoded by a random 1-layer BERT.
name: {TABLE}
steps:
  docs:
    type: ingest
    source: {json.dumps(str(corpus))}
    format: beir
  chunks:
    type: chunk
    input: docs
    strategy: tokens
    max_tokens: {max_tokens}
  vectors:
    type: encode
    input: chunks
    model: {json.dumps(str(model))}
    batch_size: 32
    device: cpu
  index:
    type: index
    input: vectors
    table: {TABLE}
    metric: cosine
"""
    path.write_text(spec)
    pipeline = embedpipe.load(path)  # fails here, not in the first run, if the spec is wrong
    kinds = [pipeline.dag.steps[n].type for n in pipeline.dag.order]
    if kinds != ["ingest", "chunk", "encode", "index"]:
        raise BenchError(f"{path}: unexpected steps {kinds}")


# -- runs ---------------------------------------------------------------------------------------
def pipe_run(pipe: Path, label: str, spec: Path, workspace: Path, logs: Path) -> Run:
    args = ["run", str(spec), "--json", "--workspace", str(workspace)]
    name = "pipe-" + "".join(c if c.isalnum() else "-" for c in label)
    proc = run_measured(name, pipe, args, logs)
    result = last_json(proc.stdout)
    if result.get("status") != "completed":
        raise BenchError(
            f"{label}: pipe run finished {result.get('status')}: {result.get('error')}"
        )
    run = Run(label, proc, result)
    children = f", children {proc.children_peak_kib / 1024:,.0f} MiB" * bool(proc.children_peak_kib)
    console.print(
        f"  {label}: {proc.wall_s:.1f} s, peak RSS {proc.peak_kib / 1024:,.0f} MiB{children}, "
        f"vectors computed {run.count('vectors', 'computed'):,} / "
        f"cached {run.count('vectors', 'cached'):,}, lance_version {run.version}"
    )
    return run


def measure(args: argparse.Namespace, docs: list[dict[str, Any]], model: Path, k: int) -> Scale:
    where = args.out / f"x{k}"
    corpus, spec, workspace = where / "corpus.jsonl", where / "spec.yaml", where / "workspace"
    logs = where / "logs"
    shutil.rmtree(workspace, ignore_errors=True)
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    # Prefect's database of its own per scale, so that each full run pays the same migrations.
    home = where / "prefect-home"
    shutil.rmtree(home, ignore_errors=True)
    os.environ["PREFECT_HOME"] = str(home)
    edited = write_corpus(docs, k, corpus, edit=False)
    write_spec(spec, corpus, model, args.max_tokens)
    scale = Scale(k=k, docs=len(docs) * k, edited=edited)
    console.print(f"[bold]×{k}[/]: {scale.docs:,} docs → {corpus}; workspace {workspace}")
    scale.runs["full"] = pipe_run(args.pipe, "full", spec, workspace, logs)
    scale.runs["no-op"] = pipe_run(args.pipe, "no-op", spec, workspace, logs)
    write_corpus(docs, k, corpus, edit=True)
    scale.runs["1% edit"] = pipe_run(args.pipe, "1% edit", spec, workspace, logs)
    scale.per_doc = chunks_per_doc(spec, workspace, TABLE)
    if not args.keep:
        shutil.rmtree(workspace, ignore_errors=True)
    return scale


# -- checks -------------------------------------------------------------------------------------
def check(scales: list[Scale]) -> Checks:
    """Sanity of what each run did (not the targets)."""
    c = Checks()
    for s in scales:
        full, noop, edit = (s.runs[r] for r in RUNS)
        x = f"×{s.k}"
        c.equal(f"{x} full: docs computed", full.count("docs", "computed"), s.docs)
        c.expect(s.chunks > 0, f"{x} full: vectors rows_out {s.chunks} (expected > 0)")
        for step in ("chunks", "vectors", "index"):
            c.equal(f"{x} full: {step} computed", full.count(step, "computed"), s.chunks)
            c.equal(f"{x} no-op: {step} computed", noop.count(step, "computed"), 0)
        c.equal(f"{x} no-op: docs computed", noop.count("docs", "computed"), 0)
        c.equal(f"{x} no-op: index deleted", noop.count("index", "deleted"), 0)
        c.equal(f"{x} no-op: lance_version (no commit)", noop.version, full.version)
        edited_chunks = sum(s.per_doc.get(d, 0) for d in s.edited)
        c.equal(f"{x} 1% edit: docs computed", edit.count("docs", "computed"), len(s.edited))
        # An appended sentence changes at least each edited doc's last chunk, at most all.
        for step in ("chunks", "vectors", "index"):
            got = edit.count(step, "computed")
            c.within(f"{x} 1% edit: {step} computed", got, len(s.edited), edited_chunks)
        c.equal(f"{x} 1% edit: index deleted", edit.count("index", "deleted"), 0)
        if edit.version is not None and full.version is not None:
            c.expect(
                edit.version > full.version,
                f"{x} 1% edit: lance_version {edit.version} (expected > {full.version})",
            )
    base = scales[0]
    for s in scales[1:]:
        factor = s.k // base.k if s.k % base.k == 0 else None
        if factor is not None:
            c.equal(f"×{s.k} chunks = {factor} × ×{base.k}'s", s.chunks, factor * base.chunks)
    return c


# -- report -------------------------------------------------------------------------------------
def headers() -> list[str]:
    cells = ["scale", "docs", "chunks"]
    for run in RUNS:
        cells += [f"{run} MiB", f"{run} s"]
    return cells


def table_rows(scales: list[Scale]) -> list[list[str]]:
    rows = []
    for s in scales:
        cells = [f"×{s.k}", f"{s.docs:,}", f"{s.chunks:,}"]
        for run in RUNS:
            cells += [f"{s.rss_mib(run):,.0f}", f"{s.wall(run):.1f}"]
        rows.append(cells)
    lo, hi = scales[0], scales[-1]
    cells = [f"×{hi.k} / ×{lo.k}", f"{hi.docs / lo.docs:.2f}×", f"{hi.chunks / lo.chunks:.2f}×"]
    for run in RUNS:
        cells += [
            f"**{hi.rss_mib(run) / lo.rss_mib(run):.2f}×**",
            f"{hi.wall(run) / lo.wall(run):.2f}×",
        ]
    rows.append(cells)
    return rows


def target_lines(scales: list[Scale]) -> tuple[list[str], bool]:
    """One line per run: its peak RSS ratio, and for WALL_TARGETS its wall time ratio, each
    against its target."""
    lo, hi = scales[0], scales[-1]
    growth = hi.chunks / lo.chunks
    lines, met = [], True
    for run in RUNS:
        checks = [
            ratio_check(
                "peak RSS", hi.rss_mib(run), lo.rss_mib(run), "{:,.0f}", "MiB", RSS_TARGET,
                f"{RSS_TARGET}×", (hi.k, lo.k),
            )
        ]  # fmt: skip
        if run in WALL_TARGETS:
            checks.append(
                ratio_check(
                    "wall", hi.wall(run), lo.wall(run), "{:.1f}", "s", growth,
                    f"the corpus's {growth:.2f}×", (hi.k, lo.k),
                )
            )  # fmt: skip
        met &= all(ok for _, ok in checks)
        lines.append(f"{run}: " + "; ".join(text for text, _ in checks))
    return lines, met


def ratio_check(
    what: str,
    hi: float,
    lo: float,
    fmt: str,
    unit: str,
    limit: float,
    named: str,
    ks: tuple[int, int],
) -> tuple[str, bool]:
    """``what`` at the largest scale (``hi``) over the smallest (``lo``) against ``limit``
    (``named`` in the text): the report's line and whether the target is met."""
    ratio = hi / lo
    ok = ratio <= limit
    values = f"{fmt.format(hi)} / {fmt.format(lo)} {unit}"
    text = (
        f"{what} ×{ks[0]} / ×{ks[1]} = {values} = {ratio:.2f}× "
        f"(target ≤ {named}: {'ok' if ok else 'MISSED'})"
    )
    return text, ok


def detail_headers() -> list[str]:
    return [
        "scale",
        "run",
        "wall s",
        "in steps s",
        "peak RSS MiB",
        "children MiB",
        *(f"{s} c/k/d" for s in ("docs", "chunks", "vectors", "index")),
        "lance v",
    ]


def detail_rows(scales: list[Scale]) -> list[list[str]]:
    rows = []
    for s in scales:
        for run in s.runs.values():
            p = run.proc
            cells = [
                f"×{s.k}",
                run.label,
                f"{p.wall_s:.1f}",
                f"{run.step_seconds:.1f}",
                f"{p.peak_kib / 1024:,.0f}",
                f"{p.children_peak_kib / 1024:,.0f}" if p.children_peak_kib else "none",
            ]
            for step in ("docs", "chunks", "vectors", "index"):
                counts = (run.count(step, w) for w in ("computed", "cached", "deleted"))
                cells.append("/".join(f"{n:,}" for n in counts) if step in run.steps else "—")
            cells.append(str(run.version) if run.version is not None else "—")
            rows.append(cells)
    return rows


def markdown(heads: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    return [
        "| " + " | ".join(heads) + " |",
        "|" + "---|" * left + "---:|" * (len(heads) - left),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def print_table(heads: list[str], rows: list[list[str]], title: str, left: int = 1) -> None:
    table = Table(title=title)
    for i, h in enumerate(heads):
        table.add_column(h, justify="left" if i < left else "right")
    for row in rows:
        table.add_row(*(cell.replace("**", "") for cell in row))
    console.print(table)


def ram() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 2**20:.0f} GiB RAM"
    return "RAM unknown"


def section(
    args: argparse.Namespace,
    info: dict[str, str],
    where: tuple[str, str],
    loads: tuple[str, str],
    scales: list[Scale],
    targets: list[str],
) -> str:
    lo = scales[0]
    limit = f" (`--limit {args.limit}`: a quick check, not the result)" if args.limit else ""
    scale_list = ", ".join(f"×{s.k} {s.chunks:,} chunks" for s in scales)
    lines = [
        SECTION,
        "",
        f"SciFact ({lo.docs // lo.k:,} documents{limit}) replicated with new ids: {scale_list}. "
        f"Encode cost taken out: a random-weight {MODEL['num_hidden_layers']}-layer BERT "
        f"(hidden {MODEL['hidden_size']}, all-MiniLM-L6-v2's tokenizer, seed {MODEL['seed']}, "
        f"a random Dense layer to {MODEL['dims']} dimensions) as a local "
        f"sentence-transformers folder, {args.torch_threads} torch thread(s) "
        f"(OMP_NUM_THREADS); token chunks of at most {args.max_tokens} tokens.",
        "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Command: `{command_line(__file__)}`",
        f"- Machine: {info['uname']}; {info['cpu']}; {ram()}; Python {info['python']}",
        f"- Versions: {info['versions']}",
        f"- Engine: embedpipe at commit {where[1]} ({where[0]})",
        f"- Load average (1, 5, 15 min) at the start: {loads[0]}; at the end: {loads[1]}",
        "- Each run is a whole `pipe run SPEC --json --workspace WS` process; per scale, all "
        "three in one fresh workspace, with a fresh PREFECT_HOME. The 1% edit appends a "
        f"sentence to every {EVERY}th document. One run each (single runs, expect ±15% on "
        "wall times).",
        "",
        *markdown(headers(), table_rows(scales)),
        "",
        *(f"- {line}" for line in targets),
        "",
        *markdown(detail_headers(), detail_rows(scales), left=2),
        "",
        "Peak RSS is the `pipe` process's own (`getrusage`, measured by bench/_rusage.py); "
        "*children* is the largest of its children's (Prefect's ephemeral server), *none* when "
        "it started none. Wall seconds are the whole process; *in steps s* is the sum of the "
        "steps' own `seconds` from `--json`; c/k/d are each step's computed/cached/deleted "
        "rows from `--json`.",
        "",
    ]
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------
def bench(args: argparse.Namespace) -> int:
    info, load_before = machine(), load_average()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ["HF_HUB_OFFLINE"] = "1"  # the `pipe run` processes inherit these
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)
    where = engine(args.pipe, args.out)
    console.print(f"engine: {where[0]} (commit {where[1]}); pipe: {args.pipe}")
    model = args.out / "model"
    build_model(model)
    docs = read_corpus(args.corpus, args.limit)
    scales = [measure(args, docs, model, k) for k in args.scales]
    loads = (load_before, load_average())

    checks = check(scales)
    targets, met = target_lines(scales)
    print_table(headers(), table_rows(scales), "engine scale · peak RSS MiB and wall s")
    for line in targets:
        console.print(line, highlight=False)
    print_table(detail_headers(), detail_rows(scales), "what each run did", left=2)
    console.print("c/k/d: computed/cached/deleted rows", highlight=False)
    console.print(f"load average at the start: {loads[0]}; at the end: {loads[1]}")
    body = section(args, info, where, loads, scales, targets)
    (args.out / "section.md").write_text(body)
    console.print(f"the section is in {args.out / 'section.md'}")
    if args.write:
        write_section(args.results, body, SECTION)
        console.print(f"wrote the {SECTION!r} section of {args.results}")
    console.print(
        "targets " + ("[green]met[/]" if met else "[yellow]missed[/] (reported, not enforced)")
    )
    for what in checks.failed:
        console.print(f"[red]FAILED[/] {what}", highlight=False)
    if checks.failed:
        return 1
    console.print(f"[green]all {len(checks.passed)} checks passed[/]")
    return 0


def main() -> None:
    args = parse_args()
    try:
        code = bench(args)
    except (BenchError, embedpipe.EmbedpipeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
