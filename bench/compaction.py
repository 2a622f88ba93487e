"""Nightly incremental runs against one table: fragments, search latency, and compaction.

    .venv/bin/python bench/compaction.py [--rows 10000] [--nights 300] [--write]

Every incremental run commits its new and changed rows as at least one new Lance fragment, and
an exact search opens every fragment. This drives the index step's own store (`LanceStore`:
the diff, the upsert, `retain`, and compaction) through a year of nightly runs on synthetic
chunks (384-d vectors, 800 characters of text): each night 1% of the rows are edited, 0.5%
deleted and 0.5% added. Two tables get the same nights: `compact: null` (never compacted) and
the default `compact: 16`. At checkpoints it reports each table's fragments, versions and bytes
on disk, the p50 of 30 exact top-10 searches (LanceDB's flat scan, `scan: lance`) and the
seconds the night's write took. With --write, the table goes to bench/RESULTS.md ("Nightly
re-runs: fragments and compaction").
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from encode_overhead import load_average, machine, provenance, write_section
from scale_engine import markdown

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION = "## Nightly re-runs: fragments and compaction"
DIMS = 384
SPEC = """\
name: nightly
workspace: ws
steps:
  docs: {type: ingest, source: corpus.jsonl, format: beir}
  chunks: {type: chunk, input: docs}
  vectors: {type: encode, input: chunks}
  index: {type: index, input: vectors, table: nightly}
"""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=10_000, help="chunks in the table (10,000)")
    p.add_argument("--nights", type=int, default=300, help="incremental runs (300)")
    p.add_argument("--write", action="store_true", help="rewrite the section in RESULTS.md")
    return p.parse_args()


class Corpus:
    """The chunks as the index step hands them over, edited night by night."""

    def __init__(self, rows: int) -> None:
        self.rng = np.random.default_rng(0)
        self.next = 0
        self.rows: dict[str, tuple[np.ndarray, str]] = {}
        for _ in range(rows):
            self._add()

    def _add(self) -> None:
        key = f"doc{self.next}#0"
        self.next += 1
        self.rows[key] = self._row(key)

    def _row(self, key: str) -> tuple[np.ndarray, str]:
        vector = self.rng.standard_normal(DIMS).astype(np.float32)
        return vector, f"{key} {self.rng.integers(1 << 30)} " + "x" * 780

    def night(self) -> None:
        keys = list(self.rows)
        n = len(keys)
        picked = self.rng.choice(n, size=n // 100 + n // 200, replace=False)
        for i in picked[: n // 100]:
            self.rows[keys[i]] = self._row(keys[i])
        for i in picked[n // 100 :]:
            del self.rows[keys[i]]
        for _ in range(n // 200):
            self._add()

    def batches(self) -> list[pa.RecordBatch]:
        keys = list(self.rows)
        vectors = np.stack([self.rows[k][0] for k in keys])
        table = pa.table(
            {
                "chunk_id": keys,
                "doc_id": [k.split("#")[0] for k in keys],
                "text": [self.rows[k][1] for k in keys],
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIMS),
                "run_id": ["r"] * len(keys),
            }
        )
        return table.to_batches(max_chunksize=4096)


def bytes_on_disk(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def searched(tbl: Any, queries: np.ndarray) -> float:
    """p50 milliseconds of exact top-10 searches (LanceDB's flat scan)."""
    tbl.search(queries[0]).limit(10).to_list()
    times = []
    for q in queries:
        t = time.perf_counter()
        tbl.search(q).limit(10).to_list()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    args = parse_args()
    import embedpipe
    from embedpipe.engine.lance import LanceStore
    from embedpipe.engine.workspace import Workspace

    info, load_before, started = machine(), load_average(), datetime.now(UTC)
    checkpoints = sorted({1, 30, 100, args.nights} & set(range(1, args.nights + 1)))
    queries = np.random.default_rng(1).standard_normal((30, DIMS)).astype(np.float32)
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="compaction-") as tmp:
        root = Path(tmp)
        (root / "corpus.jsonl").write_text('{"_id": "d", "text": "x"}\n')
        (root / "spec.yaml").write_text(SPEC)
        settings = {"compact: null": "null", "compact: 16 (default)": "16"}
        stores, targets = {}, {}
        for name, value in settings.items():
            loaded = embedpipe.load(root / "spec.yaml", overrides=[f"steps.index.compact={value}"])
            targets[name] = loaded.dag.targets["index"]
            ws = Workspace(root / name.split()[1])
            stores[name] = (ws, LanceStore(ws))
        corpus = Corpus(args.rows)
        batches = corpus.batches()
        for name, (_, store) in stores.items():
            store.write(targets[name], lambda: iter(batches))
        for night in range(1, args.nights + 1):
            corpus.night()
            batches = corpus.batches()
            for name, (ws, store) in stores.items():
                t = time.perf_counter()
                store.write(targets[name], lambda b=batches: iter(b))
                seconds = time.perf_counter() - t
                if night in checkpoints:
                    tbl = ws.connect().open_table("nightly")
                    ds = tbl.to_lance()
                    mib = bytes_on_disk(Path(ws.table_path("nightly"))) / 2**20
                    rows.append([
                        str(night), name, f"{tbl.count_rows():,}", str(len(ds.get_fragments())),
                        str(len(ds.versions())), f"{mib:.1f}",
                        f"{searched(tbl, queries):.1f}", f"{seconds:.2f}",
                    ])  # fmt: skip
                    print(" | ".join(rows[-1]), flush=True)
    heads = ["night", "setting", "rows", "fragments", "versions on disk", "table MiB",
             "exact search p50 (ms)", "that night's write (s)"]  # fmt: skip
    if args.write:
        body = [
            SECTION,
            "",
            *provenance(started, info, __file__),
            f"- Versions: {info['versions']}",
            f"- Load average at the start: {load_before}; at the end: {load_average()}",
            f"- {args.rows:,} synthetic chunks (384-d vectors, 800 characters of text) written by "
            "the index step's store (`LanceStore`: diff, upsert, `retain: 10`, compaction); "
            "each night 1% of the rows edited, 0.5% deleted, 0.5% added. Search: 30 exact "
            "top-10 queries through LanceDB's flat scan, p50.",
            "",
            *markdown(heads, rows, left=2),
            "",
        ]
        write_section(RESULTS, "\n".join(body), SECTION)
        print(f"wrote {SECTION!r} in {RESULTS}")


if __name__ == "__main__":
    main()
