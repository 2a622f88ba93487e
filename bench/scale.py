"""Throughput of the local executor against Ray with 1 and 2 workers, on SciFact.

    .venv/bin/python bench/scale.py [--limit N] [--workers 1,2] [--ray-batch 512]

Runs pipelines/scifact.yaml with the real CLI (`pipe run SPEC --workspace TMP --json`) once per
executor, each in a fresh workspace: `local`, then `runner: {type: ray, address: local,
num_workers: W, batch_size: B, fragment_rows: F}` for each W of --workers. The encode step
is the row-wise step that goes to Ray (the plan computes ingest and chunk in the `pipe`
process), so the comparison is the encode step's `seconds` and its chunks/s, plus the index
step's seconds (on Ray: its rows written as Lance fragments by Ray tasks, F rows each, then
one commit), the whole run's wall time and the driver's peak RSS.

Ray's own costs are measured apart, in this process: starting a local cluster, starting one
actor that loads the model, and the round trip of a window through an actor that does nothing
with it (the per-window overhead). With them the run's encode seconds split into compute and
overhead, which is what docs/scaling.md builds its model on. Rewrites the "## Scale-out on Ray"
section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
from encode_overhead import (  # bench/ is on sys.path when this runs as a script
    RESULTS,
    SPEC,
    BenchError,
    PipeRun,
    _version,
    command_line,
    encode_settings,
    limited_corpus,
    load_average,
    machine,
    mib,
    run_pipeline,
    write_section,
)

import embedpipe

SECTION = "## Scale-out on Ray"


@dataclass(frozen=True)
class Overheads:
    start_s: float  # ray.init of a local cluster
    actor_s: float  # one actor started and its encode step set up (model loaded)
    window_ms: float  # median round trip of a window through an idle actor
    window_rows: int


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="only the first N documents")
    parser.add_argument("--workers", default="1,2", help="Ray worker counts to run")
    parser.add_argument("--ray-batch", type=int, default=512, help="runner.batch_size (rows)")
    parser.add_argument(
        "--fragment-rows", type=int, default=2000, help="runner.fragment_rows (index rows a task)"
    )
    parser.add_argument("--backend", default="torch", help="steps.vectors.backend for all runs")
    parser.add_argument("--spec", type=Path, default=SPEC)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    args.workers = [int(w) for w in args.workers.split(",") if w]
    return args


def overheads(spec: Path, rows: int) -> Overheads:
    """Ray's fixed costs on this machine, measured in this process."""
    import ray

    from embedpipe.engine.ray_executor import _Worker
    from embedpipe.steps.base import StepContext

    pipeline = embedpipe.load(spec, overrides=["steps.vectors.backend=torch"])
    step = pipeline.dag.steps[encode_settings(pipeline).step]
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    start = time.perf_counter() - t0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ctx = StepContext("bench", "r", "h", Path(tmp), Path(tmp))
            t0 = time.perf_counter()
            actor = ray.remote(_Worker).options(num_cpus=1).remote(step, ctx)
            ray.get(actor.__ray_ready__.remote())
            actor_s = time.perf_counter() - t0

            @ray.remote(num_cpus=1)
            class Echo:
                def map(self, window: pa.Table) -> int:
                    return window.num_rows

            echo = Echo.remote()
            window = pa.table({"chunk_id": [f"c{i}" for i in range(rows)],
                               "text": ["x" * 1000] * rows})  # fmt: skip
            ray.get(echo.map.remote(window))
            trips = []
            for _ in range(20):
                t0 = time.perf_counter()
                ray.get(echo.map.remote(window))
                trips.append(time.perf_counter() - t0)
    finally:
        ray.shutdown()
    return Overheads(start, actor_s, statistics.median(trips) * 1000, rows)


def table_rows(runs: dict[str, PipeRun], batch: int, index: str, fragment_rows: int) -> list[str]:
    local = runs["local"]
    out = [
        "| executor | encode s | chunks/s | vs local | Ray windows | index s | index fragments "
        "| run wall s | driver RSS |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, run in runs.items():
        rate = run.chunks / run.encode_s
        windows = "" if name == "local" else str(math.ceil(run.chunks / batch))
        pieces = "1" if name == "local" else str(math.ceil(run.chunks / fragment_rows))
        out.append(
            f"| {name} | {run.encode_s:.1f} | {rate:.1f} | {local.encode_s / run.encode_s:.2f}x "
            f"| {windows} | {run.step_seconds.get(index, 0):.2f} | {pieces} "
            f"| {run.proc.wall_s:.1f} | {mib(run.proc.peak_kib)} |"
        )
    return out


def bench(args: argparse.Namespace, tmp: Path) -> None:
    info, load_before = machine(), load_average()
    spec = args.spec.resolve()
    pipeline = embedpipe.load(spec)
    enc = encode_settings(pipeline)
    sets = [f"steps.{enc.step}.backend={args.backend}"]
    if args.limit:
        ingest, corpus = limited_corpus(pipeline, args.limit, tmp)
        sets.append(f"steps.{ingest}.source={corpus}")
    configs: dict[str, list[str]] = {"local": []}
    for w in args.workers:
        runner = (
            f"{{type: ray, address: local, num_workers: {w}, batch_size: {args.ray_batch}, "
            f"fragment_rows: {args.fragment_rows}}}"
        )
        configs[f"ray, {w} worker{'s' if w > 1 else ''}"] = [f"runner={runner}"]
    runs: dict[str, PipeRun] = {}
    for k, (name, extra) in enumerate(configs.items()):
        print(f"{k + 1}/{len(configs)} pipe run ({name})", flush=True)
        runs[name] = run_pipeline(spec, tmp / f"ws{k}", sets + extra, enc, tmp, name=f"run{k}")
    print("Ray's fixed costs", flush=True)
    over = overheads(spec, args.ray_batch)
    load_after = load_average()
    local = runs["local"]
    lines = [
        SECTION,
        "",
        f"{'The first ' if args.limit else 'All '}{local.docs:,} documents of the spec's corpus "
        f"({local.chunks:,} chunks); encode on `{args.backend}`, batch 32; Ray windows of "
        f"{args.ray_batch} rows; on Ray the index rows are written as Lance fragments of "
        f"{args.fragment_rows:,} rows by Ray tasks, then committed once.",
        "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Command: `{command_line(__file__)}`",
        f"- Machine: {info['uname']}; {info['cpu']}; Python {info['python']}",
        f"- Versions: {info['versions']}, ray {_version('ray')}",
        f"- Load average (1, 5, 15 min) at the start: {load_before}; at the end: {load_after}",
    ]
    if args.note:
        lines.append(f"- Note: {args.note}")
    lines += [
        "",
        *table_rows(runs, args.ray_batch, next(iter(pipeline.dag.targets)), args.fragment_rows),
        "",
        "Ray's fixed costs, measured apart on the same machine:",
        "",
        f"- starting a local cluster (`ray.init`): {over.start_s:.1f} s",
        f"- starting one actor and setting up its encode step (model loaded): {over.actor_s:.1f} s",
        f"- a window of {over.window_rows} rows through an idle actor and back (median of 20): "
        f"{over.window_ms:.1f} ms",
        "",
        "The encode step's seconds on Ray include the cluster start and every actor's model "
        "load. On 2 cores, 1 worker leaves one core idle and 2 workers share the cores the "
        "local run's torch threads use, so Ray cannot be faster here; what it costs per window "
        "and per worker is what docs/scaling.md scales up.",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section(args.results, body, SECTION)
        print(f"wrote {args.results}")


def main() -> None:
    args = parse_args()
    try:
        with tempfile.TemporaryDirectory(prefix="embedpipe-scale-") as tmp:
            bench(args, Path(tmp))
    except BenchError as exc:
        sys.exit(f"bench/scale.py: {exc}")


if __name__ == "__main__":
    main()
