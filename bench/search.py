# ruff: noqa: RUF001, RUF002, RUF003 -- the multiplication sign in "×4" and "×193" is meant
"""Search at 1M vectors: float exact vs binary + rescore vs an ANN index, in LanceDB.

    .venv/bin/python bench/search.py [--rows 1000000] [--sigma 0.02] [--write]

Everything searched goes through embedpipe's own search pipeline (``Searcher``, what `pipe
search` and `pipe eval` run), on tables written by embedpipe's own store (``LanceStore.write``,
what an index step writes with); only the query encoders are replaced by a look-up of vectors
encoded beforehand, so that model time does not dilute the ratios (its median is reported
apart).

Data. The source is pipelines/scifact-whole.yaml's table: the all-MiniLM-L6-v2 vectors of
SciFact's 5,183 abstracts (one chunk each) and their rows. If that table is missing, `pipe run
pipelines/scifact-whole.yaml` runs first (~6–10 min). Row r of the benchmark's tables is a copy
of abstract r mod 5,183 (copy r // 5,183; ×193 each for 1M rows) with ids of its own
(``{doc_id}-r{copy}``), its source's other columns (text, title, ...) and the source's vector
plus Gaussian noise of --sigma per dimension (seeded), re-normalised. σ 0.02 keeps a copy at
cosine ≈ 1/√(1 + 384·σ²) ≈ 0.93 to its original (measured and reported): the real vectors'
structure with near-duplicates around each (uniform random vectors would say nothing about real
data). Queries: SciFact's 300 test queries (those of qrels/test.tsv), encoded once by the
spec's own query encoders (the codes by the compress step's).

Configurations, each a spec (ingest → chunk → encode → [compress binary] → index) under OUT
whose index step differs; the table is written by ``LanceStore.write`` into the spec's
workspace exactly as that index step writes it (row hashes, one commit), never by running the
upstream steps (the spec's ingest source is a one-line stand-in):

    float exact         index on `vector`, cosine, `ann: none`: Lance's flat search
    ANN [, refine ×R]   the same table with `ann: {type: ivf_hnsw_sq}` (--ann; auto partitions
                        ≈ √rows, default nprobes), built the way the index step builds it
                        (``LanceStore._ann``); and the same with refine_factor R (--refine)
    binary + rescore ×N compress binary (uint8[48], Hamming) and `column: code, rescore: N`:
                        a k·N shortlist re-scored exactly on the `vector` column (kept)
                        (--rescore, default 4, 10, 100 and 200); the Hamming candidates come
                        from the codes held in memory (`scan: auto`), and for the largest
                        factor also from LanceDB's flat scan (`scan: lance`)
    binary only         the same codes with `store_vectors: false` (no floats in the table;
                        the Hamming ranking alone); and the same with `store_columns: []`
                        (no text or title either: ids, content hashes, codes, lineage)
    float, ids          the float table with `store_columns: []`, measured for bytes only

For each: recall@10 against the exact top-10 (numpy, float32 cosine over all rows, for the same
queries), single-query latency p50/p95 (every query once, after --warmup queries; float exact,
seconds a query at 1M rows, only the first --exact-queries, and the ratios compare those same
queries), build time (the store's own: row hashes, the write, the ANN index; the time spent
making its input batches is shown apart), bytes on disk (``index_bytes``, what `pipe eval`
reports: the current version's data, deletion and index files; by column from Lance's data
statistics) and peak RSS.
Each step runs in a process of its own under bench/_rusage.py (this script with --job), so its
peak RSS is its own: the parent stays small because Linux carries a process's peak RSS over
fork and exec, so a child's figure is never below its parent's RSS when it was started. The
five tables are written first; then float exact and the binary configurations search back to
back (their ratios are the targets); then the ANN index is built and searched. Before each
search the script waits (up to --max-wait seconds in all) while the 1-minute load average is
above --quiet-load; every process records the load it started at.

Targets (issue 15), reported, not enforced: binary + rescore answers ≥ 5× faster (p50) than
exact float search at recall@10 ≥ 0.95, and the binary-only table is ≥ 8× smaller on disk
than the float table (both without text, `store_columns: []`; with text, reported too). With
--write the "## Search at 1M vectors" section of bench/RESULTS.md is rewritten. Everything
lives under --out (default /tmp/embedpipe-search; ~9 GB at 1M rows),
removed at the end unless --keep. Exits 1 when the benchmark itself fails
(a table unlike its spec, a missing ANN index, query codes unlike the codec's).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from encode_overhead import (
    BenchError,
    Measured,
    command_line,
    last_json,
    load_average,
    machine,
    run_measured,
    write_section,
)
from rich.console import Console
from scale_engine import markdown, print_table

import embedpipe

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "RESULTS.md"
SECTION = "## Search at 1M vectors"
SOURCE = ROOT / "pipelines" / "scifact-whole.yaml"
SCIFACT = Path("/work/shared/data/scifact")
OUT = Path("/tmp/embedpipe-search")
K = 10
DIMS = 384
BATCH_ROWS = 65_536  # rows per batch handed to the store, and per block of the exact search
DEPTH = 1000  # exact neighbours kept per query (their scores describe the data)
SPEED_TARGET, RECALL_TARGET, BYTES_TARGET = 5.0, 0.95, 8.0
LINEAGE = ("spec_hash", "run_id", "row_hash")

console = Console()
if not console.is_terminal:  # a log file: room for the tables instead of 80 columns
    console.width = max(console.width, 180)


@dataclass(frozen=True)
class Config:
    """One searched configuration: its index step, and the table it searches."""

    name: str
    table: str  # a key of TABLES
    index: str  # the index step's settings (YAML flow mapping, without type)
    compress: bool = False  # a compress (binary) step between encode and index
    searched: bool = True  # False: the table is only measured (bytes on disk)

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.name)


@dataclass
class Done:
    """One measured process: what it reported, and the load it started at."""

    name: str
    proc: Measured
    result: dict[str, Any]
    load: float


@dataclass
class Searched:
    config: Config
    done: Done
    recall: float
    build_s: float  # the store's seconds to make what this configuration searches

    def latency(self, p: float, first: int | None = None) -> float:
        """The p-th percentile of its latencies (of the ``first`` queries only, if given)."""
        return float(np.percentile(self.done.result["latencies_ms"][:first], p))

    @property
    def queries(self) -> int:
        return len(self.done.result["latencies_ms"])

    @property
    def bytes(self) -> int:
        return int(self.done.result["bytes"])


TABLES = {
    "float": "float vectors",
    "binary+floats": "binary codes + float vectors",
    "binary-only": "binary codes (store_vectors: false)",
    "float, ids": "float vectors, no text or title (store_columns: [])",
    "binary-only, ids": "binary codes, no text or title (store_vectors: false, store_columns: [])",
}


def configs(ann: str, refine: int, rescores: list[int]) -> list[Config]:
    floats = "input: vectors, table: bench, metric: cosine"
    codes = "input: codes, table: bench, column: code"
    return [
        Config("float exact", "float", f"{{{floats}}}"),
        Config(ann, "float", f"{{{floats}, ann: {{type: {ann}}}}}"),
        Config(
            f"{ann}, refine ×{refine}",
            "float",
            f"{{{floats}, ann: {{type: {ann}, refine_factor: {refine}}}}}",
        ),
        *(
            Config(f"binary + rescore ×{n}", "binary+floats", f"{{{codes}, rescore: {n}}}", True)
            for n in rescores
        ),
        # the same, Hamming candidates from LanceDB's flat scan instead of codes held in memory
        Config(
            f"binary + rescore ×{max(rescores)}, scan: lance",
            "binary+floats",
            f"{{{codes}, rescore: {max(rescores)}, scan: lance}}",
            True,
        ),
        Config("binary only", "binary-only", f"{{{codes}, store_vectors: false}}", True),
        Config(
            "binary only, ids",
            "binary-only, ids",
            f"{{{codes}, store_vectors: false, store_columns: []}}",
            True,
        ),
        Config("float, ids", "float, ids", f"{{{floats}, store_columns: []}}", searched=False),
    ]


# -- setup --------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Float exact vs binary + rescore vs ANN search through embedpipe's "
        "Searcher, on noisy copies of SciFact's all-MiniLM-L6-v2 vectors."
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="table rows (default 1M)")
    parser.add_argument(
        "--sigma",
        type=float,
        default=0.02,
        help="Gaussian noise per dimension added to each copy before re-normalising "
        "(default 0.02: cosine ≈ 0.93 to its original)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    parser.add_argument(
        "--rescore",
        default="4,10,100,200",
        help="binary + rescore shortlist factors (default 4,10,100,200: 200 is about what "
        "recall@10 0.95 takes on these vectors); the largest is also run with scan: lance",
    )
    parser.add_argument(
        "--ann",
        choices=("ivf_hnsw_sq", "ivf_pq"),
        default="ivf_hnsw_sq",
        help="the ANN index on the float vectors (default ivf_hnsw_sq: ivf_pq builds slower "
        "and finds a fraction of the exact top-10 here)",
    )
    parser.add_argument(
        "--refine", type=int, default=10, help="refine_factor of the second ANN row"
    )
    parser.add_argument(
        "--exact-queries",
        type=int,
        default=60,
        help="queries float exact search is timed on, the first N (default 60: ~2 s each at 1M "
        "rows); the others search every query, and ratios compare the same N",
    )
    parser.add_argument("--warmup", type=int, default=5, help="queries searched before timing")
    parser.add_argument("--source", type=Path, default=SOURCE, help="the spec of the vectors")
    parser.add_argument("--queries", type=Path, default=SCIFACT / "queries.jsonl")
    parser.add_argument("--qrels", type=Path, default=SCIFACT / "qrels" / "test.tsv")
    parser.add_argument("--out", type=Path, default=OUT, help=f"work folder (default: {OUT})")
    parser.add_argument(
        "--quiet-load",
        type=float,
        default=1.5,
        help="before each search, wait while the 1-min load average is above this",
    )
    parser.add_argument(
        "--max-wait", type=float, default=300, help="seconds of such waiting in all, at most"
    )
    parser.add_argument(
        "--write", action="store_true", help=f"rewrite the {SECTION!r} section of RESULTS.md"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="the Markdown to update")
    parser.add_argument("--keep", action="store_true", help="keep --out (tables included)")
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)  # a measured process
    args = parser.parse_args()
    if args.job is not None:
        return args
    if args.rows < 10_000:
        parser.error("--rows must be at least 10,000 (the ANN index needs rows to train on)")
    try:
        args.rescore = sorted({int(n) for n in args.rescore.split(",") if n.strip()})
    except ValueError:
        parser.error(f"--rescore must be integers separated by commas, not {args.rescore!r}")
    if not args.rescore or min(args.rescore) < 1:
        parser.error("--rescore needs factors of at least 1")
    if args.sigma < 0 or args.refine < 1 or args.warmup < 0 or args.exact_queries < 1:
        parser.error("--sigma must be ≥ 0, --refine and --exact-queries ≥ 1, --warmup ≥ 0")
    for path in (args.queries, args.qrels, args.source):
        if not path.is_file():
            parser.error(f"{path} not found")
    args.out = args.out.resolve()
    return args


def write_spec(out: Path, config: Config) -> Path:
    """The configuration's spec, OUT/specs/SLUG/spec.yaml; its workspace is the table's."""
    path = out / "specs" / config.slug / "spec.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "corpus.jsonl").write_text('{"_id": "0", "title": "", "text": "unused"}\n')
    codes = "  codes: {type: compress, input: vectors, method: binary}\n" * config.compress
    path.write_text(
        f"# Written by bench/search.py: {config.name}. Never run: its table is written directly.\n"
        "name: bench_search\n"
        f"workspace: ../../tables/{''.join(c if c.isalnum() else '-' for c in config.table)}\n"
        "steps:\n"
        "  docs: {type: ingest, source: corpus.jsonl, format: beir}\n"
        "  chunks: {type: chunk, input: docs, strategy: none}\n"
        "  vectors: {type: encode, input: chunks, model: all-MiniLM-L6-v2}\n"
        f"{codes}"
        f"  index: {{type: index, {config.index[1:]}\n"
    )
    embedpipe.load(path)  # fails here if the spec is wrong
    return path


def source_table(spec: Path) -> Path:
    """The source spec's Lance table; `pipe run SPEC` first when it is missing."""
    pipeline = embedpipe.load(spec)
    _, target = pipeline.dag.index()
    path = Path(pipeline.dag.spec.workspace) / "lance" / f"{target.table}.lance"
    if not (path / "_versions").is_dir():
        pipe = Path(sys.executable).with_name("pipe")
        console.print(f"[bold]{path} is missing[/]: pipe run {spec} (~6–10 min)")
        if subprocess.run([str(pipe), "run", str(spec)], cwd=ROOT, check=False).returncode:
            raise BenchError(f"`pipe run {spec}` failed; run it yourself, then this again")
    return path


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# -- the measured processes ---------------------------------------------------------------------
def job_prepare(job: dict[str, Any]) -> dict[str, Any]:
    """Source rows, query vectors and codes, the noisy vectors, their ids and the exact top-10,
    written under the job's data folder."""
    import lancedb

    from embedpipe.engine.evaluate import EvalInput
    from embedpipe.steps.codecs import Binary

    data = Path(job["data"])
    table = Path(job["table"])
    source = lancedb.connect(table.parent).open_table(table.stem).to_arrow().sort_by("chunk_id")
    vec = source.schema.field("vector").type
    if not (pa.types.is_fixed_size_list(vec) and vec.list_size == DIMS):
        raise BenchError(f"{table}: vector is {vec}, not {DIMS} floats (all-MiniLM-L6-v2)")
    n, rows = source.num_rows, job["rows"]

    # Queries: the float spec's query encoder, and the compress step's for the codes.
    evals = EvalInput.read(Path(job["queries"]), Path(job["qrels"]))
    texts = list(evals.queries.values())
    dag = embedpipe.load(job["float_spec"]).dag
    step, _ = dag.index()
    encode = next(
        e
        for s in [dag.steps[step], *dag.ancestors(step)]
        if (e := s.query_encoder("vector")) is not None
    )
    floats = np.asarray(encode(texts), np.float32)
    coded = embedpipe.load(job["binary_spec"]).dag.steps["codes"].query_encoder("code")
    assert coded is not None
    codes = np.asarray(coded(texts), np.uint8)
    if not np.array_equal(codes, Binary(DIMS).query(floats)):
        raise BenchError("the compress step's query codes differ from Binary.query(floats)")
    times = []
    for i, t in enumerate(texts[:53]):
        t0 = time.perf_counter()
        encode([t])
        if i >= 3:  # the first three warm up
            times.append(time.perf_counter() - t0)
    np.savez(data / "queries.npz", texts=np.array(texts), floats=floats, codes=codes)
    keep = [c for c in source.column_names if c not in LINEAGE]
    with pa.ipc.new_file(data / "source.arrow", source.select(keep).schema) as w:
        w.write_table(source.select(keep))

    # Row r: source r % n plus N(0, σ²) per dimension, re-normalised. The exact top-DEPTH of
    # each query by block: its top-10 is what recall counts; deeper ranks say how close it is.
    t0 = time.perf_counter()
    base = unit(
        source.column("vector").combine_chunks().flatten().to_numpy().reshape(n, DIMS)
    ).astype(np.float32)
    rng = np.random.default_rng(job["seed"])
    q = unit(floats).T.astype(np.float32)
    best_s = np.full((len(texts), 0), -np.inf, np.float32)
    best_i = np.zeros((len(texts), 0), np.int64)
    cos_sum, cos_min, exact_s = 0.0, 1.0, 0.0
    with (data / "vectors.f32").open("wb") as f:
        for start in range(0, rows, BATCH_ROWS):
            src = base[np.arange(start, min(rows, start + BATCH_ROWS)) % n]
            noise = rng.standard_normal(src.shape, dtype=np.float32) * np.float32(job["sigma"])
            x = unit(src + noise).astype(np.float32)
            x.tofile(f)
            cos = (x * src).sum(axis=1)
            cos_sum, cos_min = cos_sum + float(cos.sum()), min(cos_min, float(cos.min()))
            t1 = time.perf_counter()
            block = x @ q  # (rows, queries)
            depth = min(DEPTH, len(block))
            top = np.argpartition(-block, depth - 1, axis=0)[:depth].T
            best_s = np.concatenate([best_s, np.take_along_axis(block.T, top, axis=1)], axis=1)
            best_i = np.concatenate([best_i, top + start], axis=1)
            depth = min(DEPTH, best_s.shape[1])
            keep = np.argpartition(-best_s, depth - 1, axis=1)[:, :depth]
            best_s = np.take_along_axis(best_s, keep, axis=1)
            best_i = np.take_along_axis(best_i, keep, axis=1)
            exact_s += time.perf_counter() - t1
    order = np.argsort(-best_s, axis=1, kind="stable")
    best_s = np.take_along_axis(best_s, order, axis=1)
    best_i = np.take_along_axis(best_i, order, axis=1)[:, :K]
    make_s = time.perf_counter() - t0 - exact_s
    docs = source.column("doc_id").to_pylist()
    chunks = source.column("chunk_id").to_pylist()
    tails = [c[len(d) :] if c.startswith(d) else f"#{c}" for c, d in zip(chunks, docs, strict=True)]
    doc_ids = [f"{docs[r % n]}-r{r // n}" for r in range(rows)]
    chunk_ids = [f"{doc_ids[r]}{tails[r % n]}" for r in range(rows)]
    ids = pa.table({"chunk_id": chunk_ids, "doc_id": doc_ids})
    with pa.ipc.new_file(data / "ids.arrow", ids.schema) as w:
        w.write_table(ids)
    return {
        "sources": n,
        "cos_mean": cos_sum / rows,
        "cos_min": cos_min,
        "make_s": make_s,
        "exact_s": exact_s,
        "encode_ms": float(np.median(times)) * 1000,
        "queries": len(texts),
        "exact": [[chunk_ids[i] for i in row] for row in best_i.tolist()],
        # mean cosine of the exact neighbours at these ranks, and distinct abstracts in a top-10
        "ranks": {r: float(best_s[:, r - 1].mean()) for r in (1, K, 100, DEPTH)},
        "sources_in_top": float(np.mean([len({i % n for i in row}) for row in best_i.tolist()])),
    }


def job_build(job: dict[str, Any]) -> dict[str, Any]:
    """The spec's table written by LanceStore.write, its batches made from the source rows, the
    ids and the vectors file (the time spent making them is measured apart)."""
    from embedpipe.engine.lance import LanceStore
    from embedpipe.engine.workspace import Workspace
    from embedpipe.steps.codecs import Binary

    dag = embedpipe.load(job["spec"]).dag
    _, target = dag.index()
    ws = Workspace(Path(dag.spec.workspace), dag.spec.path)
    data = Path(job["data"])
    with pa.ipc.open_file(data / "source.arrow") as f:
        source = f.read_all()
    with pa.ipc.open_file(data / "ids.arrow") as f:
        ids = f.read_all().combine_chunks()
    rows, n, codec = job["rows"], source.num_rows, Binary(DIMS)
    coded = "code" in target.schema.names
    making = [0.0]

    def batches() -> Iterator[pa.RecordBatch]:
        with (data / "vectors.f32").open("rb") as vf:
            for start in range(0, rows, BATCH_ROWS):
                t0 = time.perf_counter()
                size = min(rows, start + BATCH_ROWS) - start
                x = np.fromfile(vf, np.float32, size * DIMS).reshape(size, DIMS)
                t = source.take(pa.array(np.arange(start, start + size) % n))
                for name, column in (
                    ("chunk_id", ids.column("chunk_id").slice(start, size)),
                    ("doc_id", ids.column("doc_id").slice(start, size)),
                    ("vector", pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), DIMS)),
                ):
                    t = t.set_column(t.schema.get_field_index(name), name, column)
                if coded:  # what the compress step adds
                    t = t.append_column("code", codec.arrow(codec.encode(x)))
                    t = t.append_column("codec", pa.array(["binary"] * size))
                # what the index step adds before handing its rows to the store
                t = t.append_column("spec_hash", pa.array([dag.spec.hash] * size))
                t = t.append_column("run_id", pa.array([job["run_id"]] * size))
                batch = t.combine_chunks().to_batches()[0]
                making[0] += time.perf_counter() - t0
                yield batch

    t0 = time.perf_counter()
    stats = LanceStore(ws).write(target, batches)
    wall = time.perf_counter() - t0
    tbl = ws.connect().open_table(target.table)
    for v in target.vectors:
        held = tbl.schema.field(v.name).type if v.name in tbl.schema.names else None
        if held is None or not held.equals(v.type):
            raise BenchError(f"{job['spec']}: column {v.name} is {held}, declared {v.type}")
    return {"wall_s": wall, "input_s": making[0], "store_s": wall - making[0],
            "rows": tbl.count_rows(), "version": stats.get("version")}  # fmt: skip


def job_index(job: dict[str, Any]) -> dict[str, Any]:
    """The ANN index the spec declares, on its existing table, built as the index step builds
    it after writing rows (``LanceStore._ann``, then the retention it applies)."""
    from embedpipe.engine.lance import LanceStore, retain
    from embedpipe.engine.workspace import Workspace

    dag = embedpipe.load(job["spec"]).dag
    _, target = dag.index()
    ws = Workspace(Path(dag.spec.workspace), dag.spec.path)
    store = LanceStore(ws)
    tbl = store.db.open_table(target.table)
    t0 = time.perf_counter()
    built = store._ann(tbl, target, tbl.count_rows(), stale=False)
    if built:
        retain(tbl, target.retain)
    seconds = time.perf_counter() - t0
    indices = [str(i.index_type) for i in tbl.list_indices()]
    if not built or not indices:
        raise BenchError(f"{job['spec']}: no ANN index was built ({tbl.count_rows():,} rows)")
    return {"store_s": seconds, "indices": indices}


def column_bytes(ds: Any) -> dict[str, int]:
    """Bytes on disk of each top-level column (Lance's data statistics)."""
    names = {f.id(): f.name() for f in ds.lance_schema.fields()}
    return {names[s.id]: int(s.bytes_on_disk) for s in ds.stats.data_stats().fields
            if s.id in names}  # fmt: skip


def job_search(job: dict[str, Any]) -> dict[str, Any]:
    """Each query once through the spec's Searcher, its query encoders replaced by a look-up
    of the vectors encoded beforehand, after a warm-up: latencies and top-10 chunk ids."""
    from embedpipe.engine.evaluate import index_bytes
    from embedpipe.engine.search import Searcher

    searcher = Searcher(embedpipe.load(job["spec"]).dag)
    cached = np.load(Path(job["data"]) / "queries.npz")
    texts = [str(t) for t in cached["texts"]]
    row = {t: i for i, t in enumerate(texts)}
    held = {"vector": cached["floats"], "code": cached["codes"]}

    def lookup(column: str) -> Callable[[list[str]], np.ndarray]:
        return lambda part: held[column][[row[t] for t in part]]

    searcher.encode = lookup(searcher.column.name)
    if searcher.rescore is not None:
        searcher.encode_rescore = lookup(searcher.rescore.name)
    for t in texts[: job["warmup"]]:
        searcher.search_many([t], K, refresh=False)
    latencies, top = [], []
    for t in texts[: job.get("limit")]:
        t0 = time.perf_counter()
        hits = searcher.search_many([t], K, refresh=False)[0]
        latencies.append((time.perf_counter() - t0) * 1000)
        top.append([str(h["chunk_id"]) for h in hits])
    return {
        "latencies_ms": latencies,
        "top": top,
        "bytes": index_bytes(searcher),
        "columns": column_bytes(searcher.tbl.to_lance()),
        "indices": [str(i.index_type) for i in searcher.tbl.list_indices()],
        "searched": f"{searcher.column.name} ({searcher.column.metric})",
        "rescore": searcher.rescore.name if searcher.rescore else None,
        "shortlist": searcher.target.shortlist,
        "ann": searcher.column.ann is not None,
    }


def job_bytes(job: dict[str, Any]) -> dict[str, Any]:
    """Bytes on disk of the spec's table, as a search job reports them (no search)."""
    from embedpipe.engine.evaluate import index_bytes
    from embedpipe.engine.search import Searcher

    searcher = Searcher(embedpipe.load(job["spec"]).dag)
    return {"bytes": index_bytes(searcher), "columns": column_bytes(searcher.tbl.to_lance())}


JOBS = {
    "prepare": job_prepare,
    "build": job_build,
    "index": job_index,
    "search": job_search,
    "bytes": job_bytes,
}


class Runner:
    """Runs jobs in processes of their own under bench/_rusage.py; a search once the machine
    is quiet (up to --max-wait seconds of waiting over the whole run)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.folder = args.out / "jobs"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.waited = 0.0
        self.parent_kib: list[int] = []  # the parent's RSS as each job starts (see docstring)

    def __call__(self, name: str, job: dict[str, Any], *, wait: bool = True) -> Done:
        load = self.wait_quiet() if wait else os.getloadavg()[0]
        path = self.folder / f"{name}.json"
        path.write_text(json.dumps(job))
        self.parent_kib.append(_rss_kib())
        proc = run_measured(name, Path(__file__), ["--job", str(path)], self.folder)
        return Done(name, proc, last_json(proc.stdout), load)

    def wait_quiet(self) -> float:
        limit, most = self.args.quiet_load, self.args.max_wait
        if os.getloadavg()[0] > limit and self.waited < most:
            console.print(f"  waiting for a 1-min load ≤ {limit} (now {os.getloadavg()[0]:.2f})")
        while os.getloadavg()[0] > limit and self.waited < most:
            time.sleep(5)
            self.waited += 5
        return os.getloadavg()[0]


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# -- report -------------------------------------------------------------------------------------
def mib(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def main_rows(searched: list[Searched], rows: int) -> list[list[str]]:
    return [
        [
            s.config.name,
            f"{s.recall:.3f}",
            f"{s.latency(50):,.1f}",
            f"{s.latency(95):,.1f}",
            f"{s.build_s:.1f}",
            mib(s.bytes),
            f"{s.bytes / rows:,.0f}",
            f"{s.done.proc.peak_kib / 1024:,.0f}",
        ]
        for s in searched
    ]


MAIN_HEADS = [
    "configuration",
    "recall@10",
    "p50 ms",
    "p95 ms",
    "build s",
    "MiB on disk",
    "bytes/row",
    "search peak RSS MiB",
]


def target_lines(
    searched: list[Searched], sizes: dict[str, dict[str, Any]]
) -> tuple[list[str], list[str]]:
    """(ratio lines, target lines). Latency ratios compare the same queries: those float exact
    was timed on (the first --exact-queries)."""
    named = {s.config.name: s for s in searched}
    exact, only = named["float exact"], named["binary only"]
    n = exact.queries
    e50, e95 = exact.latency(50), exact.latency(95)
    ratios, targets, met = [], [], False
    for s in searched:
        if s is exact:
            continue
        o50, o95 = s.latency(50, n), s.latency(95, n)
        r50 = e50 / o50
        ratios.append(
            f"float exact / {s.config.name}: p50 {e50:,.1f} / {o50:,.1f} ms = **{r50:.1f}×**, "
            f"p95 {e95:,.1f} / {o95:,.1f} ms = {e95 / o95:.1f}×, at recall@10 {s.recall:.3f}"
        )
        if s.config.table != "binary+floats":
            continue
        fast, good = r50 >= SPEED_TARGET, s.recall >= RECALL_TARGET
        met |= fast and good
        gaps = []
        if not fast:
            gaps.append(f"{r50:.1f}× is {SPEED_TARGET / r50:.2f}× short of {SPEED_TARGET:.0f}×")
        if not good:
            gaps.append(f"recall@10 is {RECALL_TARGET - s.recall:.3f} short of {RECALL_TARGET}")
        verdict = "ok" if fast and good else "MISSED: " + "; ".join(gaps)
        targets.append(
            f"{s.config.name}: float exact p50 / its p50 = {r50:.1f}× at recall@10 "
            f"{s.recall:.3f} (target ≥ {SPEED_TARGET:.0f}× at ≥ {RECALL_TARGET}: {verdict})"
        )
    fb, bb = exact.bytes, only.bytes
    cf, cb = exact.done.result["columns"], only.done.result["columns"]
    ratios.append(
        f"bytes on disk, float table / binary-only table, both with text and title: {mib(fb)} "
        f"/ {mib(bb)} MiB = **{fb / bb:.2f}×**; the `vector` column alone / the `code` column: "
        f"{mib(cf['vector'])} / {mib(cb['code'])} MiB = {cf['vector'] / cb['code']:.1f}×"
    )
    tb = sum(cb.get(n, 0) for n in ("text", "title"))
    fi, bi = sizes["float, ids"]["bytes"], named["binary only, ids"].bytes
    ratio = fi / bi
    ratios.append(
        f"bytes on disk, both tables with `store_columns: []` (no text or title: ids, "
        f"content hashes, vectors or codes, lineage): {mib(fi)} / {mib(bi)} MiB = "
        f"**{ratio:.1f}×** (text and title are {mib(tb)} MiB, {tb / bb:.0%} of the binary-only "
        "table that keeps them)"
    )
    short = f"MISSED, {BYTES_TARGET / ratio:.2f}× short"
    targets.append(
        f"bytes on disk without floats: float table / binary-only table, both without text "
        f"(`store_columns: []`) = {ratio:.1f}× (target ≥ {BYTES_TARGET:.0f}×: "
        f"{'ok' if ratio >= BYTES_TARGET else short}); with text and title in both: "
        f"{fb / bb:.2f}×"
    )
    head = f"speed at recall: {'met' if met else 'MISSED'} (by any rescore factor measured)"
    return ratios, [head, *targets]


COLUMNS = ("vector", "code", "text", "title", "chunk_id", "doc_id", "row_hash")


def column_rows(searched: list[Searched], sizes: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Bytes on disk of each table by column (MiB); the float table before and after its ANN
    index."""
    rows, seen = [], set()
    measured = [(s.config.table, s.config.name, s.done.result) for s in searched] + [
        (table, "", r) for table, r in sizes.items()
    ]
    for table, name, r in measured:
        key = (table, r.get("ann", False))
        if key in seen:
            continue
        seen.add(key)
        c, total = r["columns"], int(r["bytes"])
        data = sum(c.values())
        rest = data - sum(c.get(n, 0) for n in COLUMNS)
        name = table + f" + {name} index" * r.get("ann", False)
        rows.append(
            [
                name,
                *(mib(c[n]) if n in c else "—" for n in COLUMNS),
                mib(rest),
                mib(total - data),
                f"**{mib(total)}**",
            ]
        )
    return rows


COLUMN_HEADS = ["table", *COLUMNS, "other columns", "index files", "total"]


def build_rows(builds: list[tuple[str, str, Done]]) -> list[list[str]]:
    out = []
    for table, what, d in builds:
        r = d.result
        out.append(
            [
                table,
                what,
                f"{r['store_s'] + r.get('input_s', 0):.1f}",
                f"{r['input_s']:.1f}" if "input_s" in r else "—",
                f"**{r['store_s']:.1f}**",
                f"{d.proc.peak_kib / 1024:,.0f}",
                f"{d.load:.2f}",
            ]
        )
    return out


BUILD_HEADS = ["table", "step", "s", "input batches s", "build s", "peak RSS MiB", "load at start"]


def search_rows(searched: list[Searched]) -> list[list[str]]:
    out = []
    for s in searched:
        r, lat = s.done.result, s.done.result["latencies_ms"]
        rescore = f"{r['rescore']}, k×{r['shortlist']}" if r["rescore"] else "—"
        out.append(
            [
                s.config.name,
                s.config.table,
                r["searched"],
                rescore,
                f"{s.queries}",
                f"{np.mean(lat):,.1f}",
                f"{min(lat):,.1f}",
                f"{max(lat):,.1f}",
                f"{s.done.load:.2f}",
            ]
        )
    return out


SEARCH_HEADS = [
    "configuration",
    "table",
    "searched",
    "re-scored on",
    "queries",
    "mean ms",
    "min ms",
    "max ms",
    "load at start",
]


def engine_commit() -> str:
    package = Path(embedpipe.__file__).parent
    git = ["git", "-C", str(package.parent)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return f"{package} (not a git checkout)"
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "embedpipe"], capture_output=True, text=True
    ).stdout.strip()
    return f"commit {head.stdout.strip()}{'+dirty' * bool(dirty)} ({package})"


def ram() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 2**20:.0f} GiB RAM"
    return "RAM unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


@dataclass
class Report:
    args: argparse.Namespace
    info: dict[str, str]
    loads: tuple[str, str]
    prep: Done
    builds: list[tuple[str, str, Done]]
    searched: list[Searched]
    sizes: dict[str, dict[str, Any]]  # tables only measured: their bytes
    waited: float
    parent_mib: float


def section(r: Report) -> str:
    args, p = r.args, r.prep.result
    ratios, targets = target_lines(r.searched, r.sizes)
    ranks = [p["ranks"][str(n)] for n in (1, K, 100, DEPTH)]  # JSON keys are strings
    quick = (
        f" **Quick check** (`--rows {args.rows:,}`), not the result: that is the 1M-row run "
        "(`make bench-search`)."
        if args.rows != 1_000_000
        else ""
    )
    lines = [
        SECTION,
        "",
        f"{args.rows:,} vectors of {DIMS} dimensions made of real ones: the all-MiniLM-L6-v2 "
        f"vectors of SciFact's {p['sources']:,} abstracts (pipelines/scifact-whole.yaml), "
        f"each copied ×{-(-args.rows // p['sources'])} with ids of its own, its row's text and "
        f"title, and Gaussian noise σ = {args.sigma} per dimension (seed {args.seed}), "
        f"re-normalised: a copy keeps cosine {p['cos_mean']:.3f} to its original on average "
        f"(min {p['cos_min']:.3f}).{quick} Queries: SciFact's {p['queries']} test queries, "
        "encoded beforehand by the specs' own query encoders, then searched one at a time "
        "through embedpipe's `Searcher` (what `pipe search` runs) with those encoders replaced "
        "by a look-up: the latencies are the search alone. Recall@10 is against the exact "
        "top-10 (numpy, float32 cosine over every row) of the same queries. Tables are written "
        f"by `LanceStore.write`, as the index step writes them; the ANN index is {args.ann} "
        "(`--ann`), built by `LanceStore._ann` with embedpipe's defaults (partitions ≈ √rows, "
        "nprobes 20).",
        "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Command: `{command_line(__file__)}`",
        f"- Machine: {r.info['uname']}; {r.info['cpu']}; {ram()}; Python {r.info['python']}",
        f"- Versions: {r.info['versions']}, pylance {_version('pylance')}, numpy {np.__version__}",
        f"- Engine: embedpipe at {r.info['engine']}",
        f"- Load average (1, 5, 15 min) at the start: {r.loads[0]}; at the end: {r.loads[1]}. "
        f"Each search first waited for a 1-min load ≤ {args.quiet_load}, up to "
        f"{args.max_wait:.0f} s in all ({r.waited:.0f} s waited); the load each started at is "
        "in the tables below.",
        f"- Query encoding (the model, one query, median of 50): {p['encode_ms']:.1f} ms, not "
        "in the latencies.",
        f"- Each search: `Searcher.search_many([query], 10, refresh=False)`, every query once "
        f"after {args.warmup} warm-up queries, in a process of its own; float exact only on the "
        f"first {args.exact_queries} queries (it takes seconds each), and the latency ratios "
        "below compare those same queries. One run (single runs, expect ±15%).",
        "",
        *markdown(MAIN_HEADS, main_rows(r.searched, args.rows)),
        "",
        f"What recall@10 measures here: the exact top-10 of a query holds "
        f"{p['sources_in_top']:.1f} distinct abstracts on average (its rows are noisy copies "
        f"of them), and its scores are close to those that follow: mean cosine {ranks[0]:.3f} "
        "at rank 1, "
        f"{ranks[1]:.3f} at rank 10, {ranks[2]:.3f} at rank 100, {ranks[3]:.3f} at rank "
        f"{DEPTH:,}. A method must order near-duplicates about {ranks[1] - ranks[2]:.3f} apart "
        "in cosine to find them.",
        "",
        *(f"- {line}" for line in ratios),
        "",
        "Targets (issue 15):",
        "",
        *(f"- {line}" for line in targets),
        "",
        "Bytes on disk by column (MiB, Lance's data statistics; *total* is `index_bytes`, what "
        "`pipe eval` reports: the current version's data, deletion and index files):",
        "",
        *markdown(COLUMN_HEADS, column_rows(r.searched, r.sizes)),
        "",
        "Builds: *build s* is the store's own time (`LanceStore.write`: row hashes, the write "
        "in one commit; `LanceStore._ann`: the ANN index), without making its input batches "
        "from the files the prepare step wrote (a stand-in for an index step reading its "
        "staged input). The ANN rows' build time is the float table's write plus its index.",
        "",
        *markdown(BUILD_HEADS, build_rows(r.builds), left=2),
        "",
        *markdown(SEARCH_HEADS, search_rows(r.searched), left=4),
        "",
        "Peak RSS is each process's own (`getrusage`, bench/_rusage.py). The prepare process "
        f"(peak RSS {r.prep.proc.peak_kib / 1024:,.0f} MiB) loads the model, encodes the queries, "
        f"makes the noisy vectors ({p['make_s']:.1f} s) and the exact top-10 "
        f"({p['exact_s']:.1f} s). Linux carries a process's peak RSS over fork and exec, so no "
        f"child reads below its parent's RSS at its start: the parent held at most "
        f"{r.parent_mib:,.0f} MiB.",
        "",
    ]
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------
def bench(args: argparse.Namespace) -> int:
    info, load_before = machine(), load_average()
    info["engine"] = engine_commit()  # at the start: what the measured processes import
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    shutil.rmtree(args.out, ignore_errors=True)
    (args.out / "data").mkdir(parents=True)
    cfgs = configs(args.ann, args.refine, args.rescore)
    specs = {c.name: str(write_spec(args.out, c)) for c in cfgs}
    run = Runner(args)
    data = str(args.out / "data")

    console.print(f"[bold]prepare[/]: queries, {args.rows:,} noisy vectors, the exact top-10")
    prep = run(
        "prepare",
        {"kind": "prepare", "table": str(source_table(args.source)), "data": data,
         "rows": args.rows, "sigma": args.sigma, "seed": args.seed, "queries": str(args.queries),
         "qrels": str(args.qrels), "float_spec": specs["float exact"],
         "binary_spec": specs[next(c.name for c in cfgs if c.compress)]},
        wait=False,
    )  # fmt: skip
    p = prep.result
    console.print(
        f"  cosine of a copy to its original: mean {p['cos_mean']:.4f}, min {p['cos_min']:.4f}; "
        f"exact top-10 {p['exact_s']:.1f} s; query encode median {p['encode_ms']:.1f} ms; "
        f"peak RSS {prep.proc.peak_kib / 1024:,.0f} MiB\n  exact neighbours: "
        f"{p['sources_in_top']:.1f} distinct abstracts in a top-10; mean cosine by rank "
        + ", ".join(f"{rank}: {c:.3f}" for rank, c in p["ranks"].items())
    )
    run_id = f"bench-search-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    builds: list[tuple[str, str, Done]] = []
    store_s: dict[str, float] = {}  # the store's seconds to make what each table is searched by
    for table, what in TABLES.items():
        console.print(f"[bold]build[/] {table}: {what}")
        spec = specs[next(c.name for c in cfgs if c.table == table)]
        job = {"kind": "build", "spec": spec, "data": data, "rows": args.rows, "run_id": run_id}
        done = run(f"build-{table}", job, wait=False)
        builds.append((table, f"write: {what}", done))
        store_s[table] = done.result["store_s"]
        console.print(
            f"  {done.result['rows']:,} rows: store {store_s[table]:.1f} s (+ input "
            f"{done.result['input_s']:.1f} s), peak RSS {done.proc.peak_kib / 1024:,.0f} MiB "
            f"(load at start {done.load:.2f})"
        )

    def search(c: Config, build_s: float) -> Searched:
        console.print(f"[bold]search[/] {c.name}")
        job = {"kind": "search", "spec": specs[c.name], "data": data, "warmup": args.warmup,
               "limit": args.exact_queries if c.name == "float exact" else None}  # fmt: skip
        done = run(f"search-{c.slug}", job)
        tops = zip(done.result["top"], p["exact"], strict=False)  # float exact: the first N
        s = Searched(c, done, float(np.mean([len(set(a) & set(b)) / K for a, b in tops])), build_s)
        console.print(
            f"  recall@10 {s.recall:.3f}, p50 {s.latency(50):.1f} ms, p95 {s.latency(95):.1f} ms, "
            f"{mib(s.bytes)} MiB, peak RSS {done.proc.peak_kib / 1024:,.0f} MiB (load at start "
            f"{done.load:.2f})"
        )
        return s

    # The exact and binary searches back to back (their ratios are the targets), then the ANN
    # index on the float table and its searches.
    sizes = {}
    for c in cfgs:
        if not c.searched:
            sizes[c.table] = run(f"bytes-{c.slug}", {"kind": "bytes", "spec": specs[c.name]}).result
    anns = [c for c in cfgs if "ann:" in c.index]
    searched = [search(c, store_s[c.table]) for c in cfgs if c.searched and c not in anns]
    console.print(f"[bold]index[/] float: {args.ann}")
    done = run("index-float", {"kind": "index", "spec": specs[anns[0].name]}, wait=False)
    builds.append(("float", f"ANN index ({args.ann})", done))
    console.print(f"  {done.result['store_s']:.1f} s, {done.result['indices']}")
    searched += [search(c, store_s["float"] + done.result["store_s"]) for c in anns]
    order = {c.name: i for i, c in enumerate(cfgs)}
    searched.sort(key=lambda s: order[s.config.name])

    report = Report(
        args, info, (load_before, load_average()), prep, builds, searched, sizes, run.waited,
        max(run.parent_kib) / 1024,
    )  # fmt: skip
    print_table(MAIN_HEADS, main_rows(searched, args.rows), f"search · {args.rows:,} rows")
    ratios, targets = target_lines(searched, sizes)
    for line in [*ratios, *targets]:
        console.print(line.replace("**", ""))
    print_table(COLUMN_HEADS, column_rows(searched, sizes), "MiB on disk by column")
    print_table(BUILD_HEADS, build_rows(builds), "builds", left=2)
    print_table(SEARCH_HEADS, search_rows(searched), "searches", left=4)
    console.print(f"load average at the start: {report.loads[0]}; at the end: {report.loads[1]}")
    if args.write:
        write_section(args.results, section(report), SECTION)
        console.print(f"wrote the {SECTION!r} section of {args.results}")
    return 0


def main() -> None:
    args = parse_args()
    if args.job is not None:  # a measured process: its result is its last line
        job = json.loads(args.job.read_text())
        print(json.dumps(JOBS[job["kind"]](job)))
        return
    try:
        code = bench(args)
    except (BenchError, embedpipe.EmbedpipeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        if args.keep:
            console.print(f"kept {args.out}")
        else:
            shutil.rmtree(args.out, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
