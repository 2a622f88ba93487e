"""Nightly incremental runs on a table with an ANN index: train it again every night, or add
each night's rows to it as a delta (index `ann.rebuild`).

    .venv/bin/python bench/ann_upkeep.py [--rows 100000] [--nights 20] [--write]

Drives the index step's own store (`LanceStore`: diff, upsert, ANN upkeep, compaction,
`retain`) through nightly runs on synthetic chunks whose 384-d vectors lie around 500 topics
(a Gaussian each; an ANN index has structure to find), with `ann: {type: ivf_hnsw_sq}` and the
default partitions (about √rows). Each night 1% of the rows are edited, 0.5% deleted and 0.5%
added. Two tables get the same nights: `ann.rebuild: 0` (the index trained again on every
change, as before this setting) and the default `ann.rebuild: 0.2` (deltas until 20% of the
rows came after the training). It reports each night's write seconds (diff + commit + index
upkeep + compaction), and at checkpoints recall@10 of 50 queries (nprobes 20) against the exact
top-10 over the live rows, and the p50 search latency. With --write, the table goes to
bench/RESULTS.md ("Nightly re-runs: ANN index upkeep").
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from compaction import DIMS, SPEC, Corpus
from encode_overhead import load_average, machine, provenance, write_section
from lancedb.index import HnswSq
from scale_engine import markdown

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION = "## Nightly re-runs: ANN index upkeep"
TOPICS = 500


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=100_000, help="chunks in the table (100,000)")
    p.add_argument("--nights", type=int, default=20, help="incremental runs (20)")
    p.add_argument("--write", action="store_true", help="rewrite the section in RESULTS.md")
    p.add_argument(
        "--no-training-check", dest="training_check", action="store_false",
        help="skip timing a training over deletion files against one without",
    )  # fmt: skip
    return p.parse_args()


def training_check(rows: int, tmp: Path) -> list[str]:
    """Time training the index on a table whose fragments carry deletion files (1% of the rows
    deleted), then again after ``drop_deleted`` rewrote them: why the store drops deleted rows
    before it trains."""
    import lancedb

    from embedpipe.engine.lance import _in_list, drop_deleted

    corpus = Topical(rows)
    tbl = lancedb.connect(tmp / "check").create_table("t", pa.Table.from_batches(corpus.batches()))
    config = HnswSq(distance_type="cosine", num_partitions=max(1, int(math.sqrt(rows))))
    tbl.create_index("vector", config=config)
    gone = list(corpus.rows)[::100]
    tbl.delete(_in_list("chunk_id", pa.array(gone)))
    t = time.perf_counter()
    tbl.create_index("vector", config=config, replace=True)
    with_deletions = time.perf_counter() - t
    t = time.perf_counter()
    drop_deleted(tbl)
    tbl.checkout_latest()
    dropped = time.perf_counter() - t
    t = time.perf_counter()
    tbl.create_index("vector", config=config, replace=True)
    without = time.perf_counter() - t
    line = (
        f"- Training `ivf_hnsw_sq` on {rows:,} rows with {len(gone):,} deleted: "
        f"**{with_deletions:.1f} s** over the deletion files; {dropped:.1f} s to rewrite the "
        f"fragments without them (`drop_deleted`), then **{without:.1f} s** "
        f"({with_deletions / max(dropped + without, 1e-9):.1f}x faster in all)."
    )
    print(line, flush=True)
    return [line]


class Topical(Corpus):
    """Chunks whose vectors lie around one of ``TOPICS`` centres (unit vectors)."""

    def __init__(self, rows: int) -> None:
        self.centres = np.random.default_rng(7).standard_normal((TOPICS, DIMS)).astype(np.float32)
        super().__init__(rows)

    def _row(self, key: str) -> tuple[np.ndarray, str]:
        _, text = super()._row(key)
        centre = self.centres[self.rng.integers(TOPICS)]
        v = centre + 0.7 * self.rng.standard_normal(DIMS).astype(np.float32)
        return (v / np.linalg.norm(v)).astype(np.float32), text

    def queries(self, n: int) -> np.ndarray:
        rng = np.random.default_rng(3)
        q = self.centres[rng.integers(TOPICS, size=n)]
        q = q + 0.7 * rng.standard_normal((n, DIMS)).astype(np.float32)
        return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)

    def exact(self, queries: np.ndarray, k: int = 10) -> list[set[str]]:
        keys = list(self.rows)
        x = np.stack([self.rows[key][0] for key in keys])
        scores = queries @ x.T
        return [{keys[i] for i in np.argpartition(-s, k)[:k]} for s in scores]


def measured(tbl: Any, queries: np.ndarray, truth: list[set[str]]) -> tuple[float, float]:
    """(recall@10 against the exact top-10, p50 ms) of searches through the table's index."""
    found, times = 0.0, []
    for q, want in zip(queries, truth, strict=True):
        t = time.perf_counter()
        hits = tbl.search(q).nprobes(20).limit(10).to_list()
        times.append(time.perf_counter() - t)
        found += len({h["chunk_id"] for h in hits} & want) / 10
    return found / len(queries), 1000 * statistics.median(times)


def main() -> None:
    args = parse_args()
    import embedpipe
    from embedpipe.engine.lance import LanceStore, untrained_share
    from embedpipe.engine.workspace import Workspace

    info, load_before, started = machine(), load_average(), datetime.now(UTC)
    check: list[str] = []
    if args.training_check:
        with tempfile.TemporaryDirectory(prefix="ann-training-") as tmp:
            check = training_check(args.rows, Path(tmp))
    checkpoints = {0, 1, args.nights // 2, args.nights}
    rows: list[list[str]] = []
    totals: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="ann-upkeep-") as tmp:
        root = Path(tmp)
        (root / "corpus.jsonl").write_text('{"_id": "d", "text": "x"}\n')
        (root / "spec.yaml").write_text(SPEC)
        settings = {"ann.rebuild: 0 (train every night)": "0", "ann.rebuild: 0.2 (default)": "0.2"}
        stores, targets = {}, {}
        for i, (name, value) in enumerate(settings.items()):
            sets = ["steps.index.ann.type=ivf_hnsw_sq", f"steps.index.ann.rebuild={value}"]
            targets[name] = embedpipe.load(root / "spec.yaml", overrides=sets).dag.targets["index"]
            ws = Workspace(root / f"ws{i}")
            stores[name] = (ws, LanceStore(ws))
            totals[name] = 0.0
        corpus = Topical(args.rows)
        queries = corpus.queries(50)
        for night in range(args.nights + 1):
            if night:
                corpus.night()
            batches = corpus.batches()
            truth = corpus.exact(queries) if night in checkpoints else []
            for name, (ws, store) in stores.items():
                t = time.perf_counter()
                store.write(targets[name], lambda b=batches: iter(b))
                seconds = time.perf_counter() - t
                if night:
                    totals[name] += seconds
                if night in checkpoints:
                    tbl = ws.connect().open_table("nightly")
                    recall, p50 = measured(tbl, queries, truth)
                    segments = [
                        i for i in tbl.to_lance().list_indices() if i["fields"] == ["vector"]
                    ]
                    rows.append([
                        "first run" if not night else str(night), name, f"{seconds:.2f}",
                        f"{totals[name]:.1f}", str(len(segments)),
                        f"{untrained_share(tbl, 'vector'):.3f}", f"{recall:.3f}", f"{p50:.1f}",
                    ])  # fmt: skip
                    print(" | ".join(rows[-1]), flush=True)
    heads = ["night", "setting", "that night's write (s)", "nights' writes so far (s)",
             "index segments", "rows after training", "recall@10", "search p50 (ms)"]  # fmt: skip
    ratio = totals[next(iter(settings))] / max(totals[list(settings)[1]], 1e-9)
    print(f"writes over {args.nights} nights: {' vs '.join(f'{v:.1f} s' for v in totals.values())}")
    if args.write:
        body = [
            SECTION,
            "",
            *provenance(started, info, __file__),
            f"- Versions: {info['versions']}",
            f"- Load average at the start: {load_before}; at the end: {load_average()}",
            f"- {args.rows:,} synthetic chunks around {TOPICS} topics (384-d), `ann: {{type: "
            "ivf_hnsw_sq}` with default partitions, `compact: 16`; each night 1% of the rows "
            "edited, 0.5% deleted, 0.5% added, written by the index step's store. Recall@10: 50 "
            "queries, nprobes 20, against the exact top-10 over the live rows.",
            f"- The nights' writes in all: **{ratio:.1f}x** less time with deltas (training "
            f"every night {totals[next(iter(settings))]:.1f} s, deltas "
            f"{totals[list(settings)[1]]:.1f} s).",
            *check,
            "",
            *markdown(heads, rows, left=2),
            "",
        ]
        write_section(RESULTS, "\n".join(body), SECTION)
        print(f"wrote {SECTION!r} in {RESULTS}")


if __name__ == "__main__":
    main()
