"""Encode overhead of `pipe run` against plain sentence-transformers, on the same chunks.

    .venv/bin/python bench/encode_overhead.py [--limit N] [--batch-size 32]

1. Runs pipelines/scifact.yaml with the real CLI (`pipe run SPEC --workspace TMP --json`) in a
   fresh temporary workspace (with --limit: on a temporary copy of the corpus's first N
   documents) and reads the encode step's `seconds` and `rows_out` from its JSON.
2. Reads the chunks back from the Lance table that run wrote, builds the same input strings as
   the encode step ("title\\n\\ntext" when include_title) and encodes them with
   `SentenceTransformer(...).encode(texts, batch_size=..., normalize_embeddings=...)` in a
   separate process, timing the encode call alone.
3. Compares throughput, peak RSS of both processes, and the vectors (cosine by chunk_id), and
   rewrites the "## encode_overhead" section of bench/RESULTS.md.
4. With --backends (default: every one): runs the same spec again per fast backend
   (`--set steps.vectors.backend=... quantize=...`, each in a fresh workspace, so the first run
   builds the exported model: its one-time build is shown apart), and judges every index with
   `pipe eval` on SciFact's test queries: a column per backend, all measured in one sitting.

Both measured programs run under bench/_rusage.py, which reports each one's own peak RSS and
CPU time (and, separately, those of its own children, e.g. Prefect's ephemeral server).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

import embedpipe
from embedpipe import models

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SPEC = ROOT / "pipelines" / "scifact.yaml"
RESULTS = BENCH / "RESULTS.md"
SECTION = "## encode_overhead"
TARGET_RATIO = 0.95
DATA = ROOT.parent / "shared" / "data" / "scifact"
# name -> (backend, quantize); torch is the pipeline of step 1
BACKENDS = {"torch": ("torch", "none"), "openvino": ("openvino", "none"),
            "openvino-int8": ("openvino", "int8"), "onnx": ("onnx", "none"),
            "onnx-int8": ("onnx", "int8")}  # fmt: skip
# issue 18's bars: (throughput vs raw torch, nDCG@10 vs the torch index)
BARS = {"none": (3.5, 0.999), "int8": (5.0, 0.995)}

console = Console()


class BenchError(Exception):
    """The benchmark could not run or its inputs disagree; the message says why."""


@dataclass(frozen=True)
class Measured:
    """One measured subprocess: its stdout, wall time, peak RSS and CPU seconds."""

    stdout: str
    wall_s: float
    peak_kib: int
    cpu_s: float
    children_peak_kib: int
    children_cpu_s: float


@dataclass(frozen=True)
class EncodeSettings:
    """What the spec's encode step does, so the baseline can do exactly the same."""

    step: str
    model_dir: str
    include_title: bool
    normalize: bool
    prompt: str
    max_tokens: int | None


@dataclass(frozen=True)
class PipeRun:
    docs: int
    chunks: int
    encode_s: float
    step_seconds: dict[str, float]
    proc: Measured


@dataclass(frozen=True)
class RawRun:
    chunks: int
    encode_s: float
    import_s: float
    load_s: float
    torch_threads: int
    proc: Measured


@dataclass(frozen=True)
class Agreement:
    mean: float
    min: float


# -- setup --------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Encode throughput of `pipe run` vs raw sentence-transformers (SciFact)."
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="only the corpus's first N documents (a smoke run); default: the whole corpus",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="for both encoders")
    parser.add_argument("--spec", type=Path, default=SPEC, help="the pipeline spec")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the Markdown to update")
    parser.add_argument("--no-write", action="store_true", help="do not update the results file")
    parser.add_argument("--note", default="", help="a line to add to the results section")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"comma-separated, of {', '.join(BACKENDS)} ('' for torch vs raw only)",
    )
    parser.add_argument("--queries", type=Path, default=DATA / "queries.jsonl")
    parser.add_argument("--qrels", type=Path, default=DATA / "qrels" / "test.tsv")
    parser.add_argument("--no-eval", action="store_true", help="skip `pipe eval` (nDCG@10)")
    args = parser.parse_args()
    args.backends = [b for b in args.backends.split(",") if b]
    unknown = [b for b in args.backends if b not in BACKENDS]
    if unknown:
        parser.error(f"unknown backends {unknown}; choose from {', '.join(BACKENDS)}")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return args


def encode_settings(pipeline: embedpipe.Pipeline) -> EncodeSettings:
    steps = pipeline.dag.of_type("encode")
    if len(steps) != 1:
        raise BenchError(f"{pipeline.dag.spec.path} must have exactly one encode step")
    step = steps[0]
    cfg: Any = step.config
    return EncodeSettings(
        step=step.name,
        model_dir=models.resolve(cfg.model, step.base_dir).location,
        include_title=cfg.include_title,
        normalize=cfg.normalize,
        prompt=cfg.prompts.document,
        max_tokens=cfg.max_tokens,
    )


def index_table(pipeline: embedpipe.Pipeline) -> str:
    steps = pipeline.dag.of_type("index")
    if len(steps) != 1:
        raise BenchError(f"{pipeline.dag.spec.path} must have exactly one index step")
    return steps[0].table_name(pipeline.name)  # type: ignore[attr-defined]


def limited_corpus(pipeline: embedpipe.Pipeline, limit: int, tmp: Path) -> tuple[str, Path]:
    """A temporary corpus of the spec's source's first ``limit`` documents: (step, path)."""
    steps = pipeline.dag.of_type("ingest")
    if len(steps) != 1:
        raise BenchError("--limit needs a spec with exactly one ingest step")
    step = steps[0]
    sources = step.config.sources()  # type: ignore[attr-defined]
    source = Path(sources[0]).expanduser()
    source = source if source.is_absolute() else step.base_dir / source
    if len(sources) != 1 or not source.is_file():
        raise BenchError(f"--limit needs a single source file; the spec reads {sources}")
    out = tmp / f"first-{limit}-{source.name}"
    kept = 0
    with source.open("rb") as src, out.open("wb") as dst:
        for line in src:
            if kept == limit:
                break
            if line.strip():
                dst.write(line)
                kept += 1
    return step.name, out


# -- measured subprocesses ----------------------------------------------------------------------
def run_measured(name: str, script: Path, args: list[str], tmp: Path) -> Measured:
    """Run ``script`` under bench/_rusage.py; stderr goes to TMP/NAME.stderr.log."""
    rss_file = tmp / f"{name}.rusage.json"
    log = tmp / f"{name}.stderr.log"
    cmd = [sys.executable, str(BENCH / "_rusage.py"), str(rss_file), str(script), *args]
    t0 = time.perf_counter()
    with log.open("w") as err:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        raise BenchError(f"{name} exited with {proc.returncode}:\n  {shlex.join(cmd)}\n{tail}")
    use = json.loads(rss_file.read_text())
    return Measured(
        stdout=proc.stdout,
        wall_s=wall,
        peak_kib=int(use["self_kib"]),
        cpu_s=float(use["self_cpu_s"]),
        children_peak_kib=int(use["children_kib"]),
        children_cpu_s=float(use["children_cpu_s"]),
    )


def last_json(stdout: str) -> Any:
    for line in reversed(stdout.splitlines()):
        if line.startswith(("{", "[")):
            return json.loads(line)
    raise BenchError(f"no JSON line in the output:\n{stdout[-2000:]}")


def run_pipeline(
    spec: Path,
    workspace: Path,
    sets: list[str],
    enc: EncodeSettings,
    tmp: Path,
    name: str = "pipe-run",
) -> PipeRun:
    pipe = Path(sys.executable).with_name("pipe")
    if not pipe.is_file():
        raise BenchError(f"{pipe} not found: run with the project's venv (.venv/bin/python)")
    args = ["run", str(spec), "--workspace", str(workspace), "--json"]
    for item in sets:
        args += ["--set", item]
    proc = run_measured(name, pipe, args, tmp)
    result = last_json(proc.stdout)
    if result.get("status") != "completed":
        raise BenchError(f"pipe run finished {result.get('status')}: {result.get('error')}")
    steps = result["steps"]
    first = next(iter(steps))  # the source step, first in topological order
    return PipeRun(
        docs=int(steps[first]["rows_out"]),
        chunks=int(steps[enc.step]["rows_out"]),
        encode_s=float(steps[enc.step]["seconds"]),
        step_seconds={name: float(s["seconds"]) for name, s in steps.items()},
        proc=proc,
    )


def read_chunks(pipeline: embedpipe.Pipeline, table: str) -> list[dict[str, Any]]:
    """The rows the run wrote, by chunk_id: chunk_id, title, text, vector."""
    return pipeline.sql(f"select chunk_id, title, text, vector from {table} order by chunk_id")


def encoder_input(title: str | None, text: str, include_title: bool) -> str:
    """The string the encode step embeds for one chunk (see embedpipe/steps/encode.py)."""
    return f"{title}\n\n{text}" if include_title and title else text


def run_raw(
    texts: list[str], enc: EncodeSettings, batch_size: int, tmp: Path
) -> tuple[RawRun, np.ndarray]:
    texts_file, vectors_file = tmp / "raw-texts.json", tmp / "raw-vectors.npy"
    texts_file.write_text(json.dumps({"texts": texts}, ensure_ascii=False))
    args = [
        str(texts_file),
        str(vectors_file),
        "--model",
        enc.model_dir,
        "--batch-size",
        str(batch_size),
    ]
    if not enc.normalize:
        args.append("--no-normalize")
    if enc.prompt:
        args += ["--prompt", enc.prompt]
    if enc.max_tokens:
        args += ["--max-seq-length", str(enc.max_tokens)]
    proc = run_measured("raw-encode", BENCH / "_raw_encode.py", args, tmp)
    report = last_json(proc.stdout)
    run = RawRun(
        chunks=int(report["rows"]),
        encode_s=float(report["encode_seconds"]),
        import_s=float(report["import_seconds"]),
        load_s=float(report["load_seconds"]),
        torch_threads=int(report["torch_threads"]),
        proc=proc,
    )
    return run, np.load(vectors_file)


def agreement(a: np.ndarray, b: np.ndarray) -> Agreement:
    cos = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return Agreement(float(cos.mean()), float(cos.min()))


@dataclass(frozen=True)
class BackendRun:
    name: str
    made_by: str  # openvino/bf16, onnx/int8, torch
    run: PipeRun
    build_s: float  # the exported model's one-time build and check, inside encode seconds
    agree: Agreement
    ndcg: float | None


def run_backend(
    name: str, spec: Path, sets: list[str], enc: EncodeSettings, tmp: Path,
    raw: dict[str, np.ndarray], table: str, args: argparse.Namespace,
    torch_run: tuple[PipeRun, Path] | None = None,
) -> BackendRun:  # fmt: skip
    """One backend's whole `pipe run` in a fresh workspace (torch: step 1's), its vectors
    against the raw torch ones, and its nDCG@10 by `pipe eval`."""
    backend, quantize = BACKENDS[name]
    sets = [*sets, f"steps.{enc.step}.backend={backend}", f"steps.{enc.step}.quantize={quantize}"]
    if torch_run is not None:
        p, workspace = torch_run
    else:
        workspace = tmp / f"ws-{name}"
        console.print(f"[bold]backend {name}[/]: pipe run → {workspace}")
        p = run_pipeline(spec, workspace, sets, enc, tmp, f"pipe-run-{name}")
    pipeline = embedpipe.load(spec, overrides=sets, workspace=workspace)
    made_by, build_s = "torch (fp32)", 0.0
    for artifact in pipeline.artifacts():
        lineage = next(a for a in _artifacts(workspace) if a.id == artifact["artifact"]).lineage()
        made_by = f"{lineage.get('made_by', made_by)} ({lineage.get('precision', '?')})"
        build_s = float(lineage.get("build_s", 0)) + float(lineage.get("check_s", 0))
    rows = read_chunks(pipeline, table)
    vectors = np.asarray([r["vector"] for r in rows], dtype=np.float32)
    reference = np.stack([raw[r["chunk_id"]] for r in rows])
    ndcg = None
    if not args.no_eval and args.limit is None:
        cmd = ["eval", str(spec), "--workspace", str(workspace), "--json",
               "--queries", str(args.queries), "--qrels", str(args.qrels)]  # fmt: skip
        for item in sets:
            cmd += ["--set", item]
        console.print(f"  pipe eval ({name})")
        out = run_measured(f"eval-{name}", Path(sys.executable).with_name("pipe"), cmd, tmp)
        result = last_json(out.stdout)
        result = result[0] if isinstance(result, list) else result
        ndcg = float(result["ndcg@10"])
    return BackendRun(name, made_by, p, build_s, agreement(vectors, reference), ndcg)


def _artifacts(workspace: Path) -> list[Any]:
    from embedpipe.artifacts import all_artifacts

    return all_artifacts(workspace)


def backend_rows(runs: list[BackendRun], raw: RawRun) -> list[list[str]]:
    """A row per metric, a column per backend."""
    raw_tput = raw.chunks / raw.encode_s
    base = next((b.ndcg for b in runs if b.name == "torch"), None)

    def verdict(b: BackendRun, ratio: float) -> str:
        if b.name == "torch" or b.ndcg is None or base is None:
            return ""
        speed, quality = BARS[BACKENDS[b.name][1]]
        ok = ratio >= speed and b.ndcg >= quality * base
        return f" ({'meets' if ok else 'misses'} ≥ {speed}x at ≥ {quality}x)"

    out: list[list[str]] = [["made by (precision)", *(b.made_by for b in runs)]]
    steady = []
    for b in runs:
        seconds = b.run.encode_s - b.build_s
        steady.append(b.run.chunks / seconds / raw_tput)
    out.append(["encode step seconds (first run)", *(f"{b.run.encode_s:.1f}" for b in runs)])
    out.append(["… of which the one-time build + check", *(f"{b.build_s:.1f}" for b in runs)])
    out.append(["throughput vs raw torch, build excluded",
                *(f"{r:.2f}x" for r in steady)])  # fmt: skip
    out.append(["throughput vs raw torch, first run with its build",
                *(f"{b.run.chunks / b.run.encode_s / raw_tput:.2f}x" for b in runs)])  # fmt: skip
    if any(b.ndcg is not None for b in runs):
        out.append(["nDCG@10 (`pipe eval`, SciFact test)",
                    *(f"{b.ndcg:.4f}" if b.ndcg is not None else "" for b in runs)])  # fmt: skip
        out.append(["nDCG@10 vs the torch index",
                    *(f"{b.ndcg / base:.4f}x{verdict(b, r)}" if b.ndcg and base else ""
                      for b, r in zip(runs, steady, strict=True))])  # fmt: skip
    out.append(["cosine to raw torch vectors (mean / min)",
                *(f"{b.agree.mean:.5f} / {b.agree.min:.5f}" for b in runs)])  # fmt: skip
    out.append(["peak RSS of `pipe run`", *(mib(b.run.proc.peak_kib) for b in runs)])
    return out


def backend_markdown(table_rows: list[list[str]], runs: list[BackendRun]) -> list[str]:
    head = ["metric", *(f"`{b.name}`" for b in runs)]
    return [
        "### Backends",
        "",
        "Each column is a whole `pipe run` of the same spec in a fresh workspace with "
        "`--set steps.vectors.backend=... --set steps.vectors.quantize=...`, measured in this "
        "sitting against the raw sentence-transformers encode above. A fast backend's first "
        "run builds its exported model (and checks it against torch on 256 chunks); that "
        "one-time cost is shown apart, and later runs and queries reuse the model.",
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * len(runs),
        *("| " + " | ".join(r) + " |" for r in table_rows),
        "",
    ]


# -- report -------------------------------------------------------------------------------------
def mib(kib: int) -> str:
    return f"{kib / 1024:,.0f} MiB"


def _child(m: Measured, what: str) -> str:
    if not m.children_peak_kib:
        return "none"
    return f"{mib(m.children_peak_kib)}, CPU {m.children_cpu_s:.1f} s{what}"


def rows(p: PipeRun, r: RawRun, agree: Agreement) -> list[tuple[str, str, str]]:
    """(metric, pipe run, raw sentence-transformers)."""
    pipe_tput, raw_tput = p.chunks / p.encode_s, r.chunks / r.encode_s
    ratio = pipe_tput / raw_tput
    raw_with_setup = r.chunks / (r.import_s + r.load_s + r.encode_s)
    verdict = "ok" if ratio >= TARGET_RATIO else "BELOW TARGET"
    outside = p.proc.wall_s - sum(p.step_seconds.values())
    return [
        ("chunks encoded", f"{p.chunks:,}", f"{r.chunks:,}"),
        ("encode seconds", f"{p.encode_s:.2f}", f"{r.encode_s:.2f}"),
        ("encode throughput (chunks/s)", f"{pipe_tput:.1f}", f"{raw_tput:.1f}"),
        ("throughput ratio pipe/raw", f"{ratio:.3f} (target ≥ {TARGET_RATIO}: {verdict})", ""),
        ("import + model load (s)", "inside encode seconds", f"{r.import_s:.2f} + {r.load_s:.2f}"),
        ("ratio if raw also counts import + load", f"{pipe_tput / raw_with_setup:.3f}", ""),
        ("step seconds", ", ".join(f"{n} {s:.2f}" for n, s in p.step_seconds.items()), ""),
        ("process wall time (s)", f"{p.proc.wall_s:.2f}", f"{r.proc.wall_s:.2f}"),
        ("… outside the steps (s)", f"{outside:.2f}", ""),
        ("process CPU time, all threads (s)", f"{p.proc.cpu_s:.1f}", f"{r.proc.cpu_s:.1f}"),
        ("peak RSS, the process itself", mib(p.proc.peak_kib), mib(r.proc.peak_kib)),
        ("its children: peak RSS, CPU", _child(p.proc, " (Prefect server)"), _child(r.proc, "")),
        ("torch threads", "", str(r.torch_threads)),
        ("vectors: cosine to raw, by chunk_id", f"mean {agree.mean:.6f}, min {agree.min:.6f}", ""),
    ]


def print_table(table_rows: list[tuple[str, str, str]], title: str) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("pipe run", justify="right")
    table.add_column("raw sentence-transformers", justify="right")
    for row in table_rows:
        table.add_row(*row)
    console.print(table)


def machine() -> dict[str, str]:
    u = platform.uname()
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read_lines("/proc/cpuinfo")
            if line.startswith("model name")
        ),
        u.processor or "unknown CPU",
    )
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    packages = ("torch", "sentence-transformers", "prefect", "lancedb", "embedpipe")
    return {
        "uname": f"{u.system} {u.release} {u.machine}",
        "cpu": f"{cpu}; {os.cpu_count()} CPUs ({usable} usable)",
        "python": platform.python_version(),
        "versions": ", ".join(f"{p} {_version(p)}" for p in packages),
    }


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine distorts timings."""
    fields = " ".join(_read_lines("/proc/loadavg")).split()[:3]
    return " ".join(fields) or "unknown"


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def provenance(started: datetime, info: dict[str, str], script: str) -> list[str]:
    """A section's first lines: when, by which command, on which machine."""
    return [
        f"- Date: {started:%Y-%m-%d %H:%M} UTC",
        f"- Command: `{command_line(script)}`",
        f"- Machine: {info['uname']}; {info['cpu']}; Python {info['python']}",
    ]


def command_line(script: str = __file__) -> str:
    """How this run was started, paths relative to the repository: `.venv/bin/python bench/X`."""
    python = Path(sys.executable)
    shown = os.path.relpath(python, ROOT) if python.is_relative_to(ROOT) else str(python)
    return shlex.join([shown, os.path.relpath(Path(script).resolve(), ROOT), *sys.argv[1:]])


def section(
    args: argparse.Namespace,
    info: dict[str, str],
    loads: tuple[str, str],
    p: PipeRun,
    table_rows: list[tuple[str, str, str]],
    extra: list[str] | None = None,
) -> str:
    if args.limit is not None:
        scope = (
            f"**Smoke run** (`--limit {args.limit}`: the corpus's first {p.docs:,} documents, "
            f"{p.chunks:,} chunks). It checks that the benchmark works; on so few chunks "
            "the timings are not the result. The full run is `make bench` (no arguments: "
            "the whole corpus)."
        )
    else:
        scope = f"Full corpus: {p.docs:,} documents, {p.chunks:,} chunks."
    lines = [
        SECTION,
        "",
        scope,
        "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Command: `{command_line()}`",
        f"- Machine: {info['uname']}; {info['cpu']}; Python {info['python']}",
        f"- Versions: {info['versions']}",
        f"- Load average (1, 5, 15 min) at the start: {loads[0]}; at the end: {loads[1]}",
        f"- Batch size {args.batch_size} for both, device cpu for both, "
        "one run each (single runs, expect ±15%).",
    ]
    if args.note:
        lines.append(f"- Note: {args.note}")
    lines += [
        "",
        "| metric | `pipe run` | raw sentence-transformers |",
        "|---|---:|---:|",
        *(f"| {m} | {a} | {b} |" for m, a, b in table_rows),
        "",
        "The pipeline's encode seconds are the encode step's `seconds` from `pipe run --json`: "
        "they include the step's setup (importing sentence-transformers, loading the model) "
        "and reading and writing its staged Arrow files. The raw seconds are the `encode()` "
        "call alone. Peak RSS and CPU time are each process's own (`getrusage`, measured by "
        "bench/_rusage.py); its children's are shown apart.",
        "",
        *(extra or []),
    ]
    return "\n".join(lines)


def write_section(path: Path, body: str, header: str = SECTION) -> None:
    """Replace the ``header`` section of ``path`` (or append it), leaving the rest as is."""
    if path.exists():
        lines = path.read_text().splitlines()
    else:
        lines = [
            "# Benchmarks",
            "",
            "Each section is rewritten by the script it is named after.",
            "",
        ]
    start = next((i for i, line in enumerate(lines) if line.strip() == header), None)
    new = body.rstrip("\n").splitlines()
    if start is None:
        while lines and not lines[-1].strip():
            lines.pop()
        lines += ["", *new]
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith(("## ", "# "))),
            len(lines),
        )
        lines[start:end] = [*new, ""] if end < len(lines) else new
    path.write_text("\n".join(lines) + "\n")


# -- main ---------------------------------------------------------------------------------------
def bench(args: argparse.Namespace, tmp: Path) -> None:
    info, load_before = machine(), load_average()
    spec = args.spec.resolve()
    pipeline = embedpipe.load(spec)
    enc = encode_settings(pipeline)
    table = index_table(pipeline)
    sets = [f"steps.{enc.step}.batch_size={args.batch_size}", f"steps.{enc.step}.device=cpu"]
    if args.limit is not None:
        ingest, corpus = limited_corpus(pipeline, args.limit, tmp)
        sets.append(f"steps.{ingest}.source={corpus}")
    base = [*sets, f"steps.{enc.step}.backend=torch"]  # step 1: the pipeline on torch
    workspace = tmp / "workspace"

    console.print(f"[bold]1/2[/] pipe run {spec.name} → {workspace} ({', '.join(base)})")
    p = run_pipeline(spec, workspace, base, enc, tmp)

    chunks = read_chunks(embedpipe.load(spec, overrides=base, workspace=workspace), table)
    if len(chunks) != p.chunks:
        raise BenchError(f"table {table} has {len(chunks)} rows; the encode step wrote {p.chunks}")
    texts = [encoder_input(c["title"], c["text"], enc.include_title) for c in chunks]
    console.print(f"[bold]2/2[/] raw sentence-transformers on the same {len(texts):,} chunks")
    r, raw_vectors = run_raw(texts, enc, args.batch_size, tmp)

    stored = np.asarray([c["vector"] for c in chunks], dtype=np.float32)
    table_rows = rows(p, r, agreement(stored, raw_vectors))
    scope = f"first {args.limit} docs (smoke run)" if args.limit else "full corpus"
    print_table(table_rows, f"encode_overhead · {scope} · batch {args.batch_size}")

    extra: list[str] = []
    if args.backends:
        raw = {c["chunk_id"]: v for c, v in zip(chunks, raw_vectors, strict=True)}
        runs = [
            run_backend(
                name,
                spec,
                sets,
                enc,
                tmp,
                raw,
                table,
                args,
                (p, workspace) if name == "torch" else None,
            )
            for name in args.backends
        ]
        by_backend = backend_rows(runs, r)
        shown = Table(title=f"encode backends · {scope}")
        for col in ["metric", *(b.name for b in runs)]:
            shown.add_column(col)
        for row in by_backend:
            shown.add_row(*row)
        console.print(shown)
        extra = backend_markdown(by_backend, runs)
    loads = (load_before, load_average())
    console.print(f"load average at the start: {loads[0]}; at the end: {loads[1]}")
    if not args.no_write:
        write_section(args.results, section(args, info, loads, p, table_rows, extra))
        console.print(f"wrote the {SECTION!r} section of {args.results}")


def main() -> None:
    args = parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="embedpipe-bench-"))
    try:
        bench(args, tmp)
    except (BenchError, embedpipe.EmbedpipeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        if args.keep:
            console.print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
