"""The compression sweep on SciFact: `pipe eval --sweep` on whole abstracts, ratios to float.

    .venv/bin/python bench/sweep.py [--write]

Runs `pipe run pipelines/scifact-whole.yaml` (a no-op once the corpus is encoded), then
`pipe eval ... --sweep --json --plot bench/img/sweep-scifact.png` as one process, and prints
(with --write: puts into bench/RESULTS.md, section "Compression sweep") each setting's metrics,
its nDCG@10 ratio to float against the issue's targets, and the sweep's wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from encode_overhead import command_line, load_average, machine, write_section

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "pipelines" / "scifact-whole.yaml"
DATA = ROOT.parent / "shared" / "data" / "scifact"
PLOT = ROOT / "bench" / "img" / "sweep-scifact.png"
PIPE = str(Path(sys.executable).with_name("pipe"))
SECTION = "## Compression sweep (SciFact, pipe eval --sweep)"
# ratio of nDCG@10 to float each setting must reach (issue 15)
TARGETS = {"binary+rescore4": 0.995, "int8": 0.998, "binary-asymmetric": 0.965, "binary": 0.90,
           "pca-128": 0.95}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write bench/RESULTS.md")
    args = parser.parse_args()
    loads = [load_average()]
    run = subprocess.run([PIPE, "run", str(SPEC), "--json"], capture_output=True, text=True)
    if run.returncode not in (0, 3):
        print(run.stderr, file=sys.stderr)
        return 1
    encoded = json.loads(run.stdout)["steps"]["vectors"]
    t0 = time.perf_counter()
    data = ["--queries", str(DATA / "queries.jsonl"), "--qrels", str(DATA / "qrels" / "test.tsv")]
    cmd = [PIPE, "eval", str(SPEC), *data, "--sweep", "--json", "--plot", str(PLOT)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    loads.append(load_average())
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return 1
    results = json.loads(proc.stdout)
    base = next(r for r in results if r["config"] == "float")
    rows, verdicts = [], []
    for r in results:
        ratio = r["ndcg@10"] / base["ndcg@10"]
        target = TARGETS.get(r["config"])
        mark = "" if target is None else (" ✓" if ratio >= target else " ✗")
        rows.append(
            f"| {r['config']} | {r['ndcg@10']:.4f} | {ratio:.3f}{mark} | {r['recall@10']:.4f} | "
            f"{r['recall@100']:.4f} | {r['mrr@10']:.4f} | {r['bytes_per_vector']:g} | "
            f"{r['index_bytes'] / 2**20:.2f} | {r['latency_ms_p50']:.1f} | "
            f"{r['latency_ms_p95']:.1f} |"
        )
        if target is not None:
            verdicts.append(
                f"- {r['config']}: {ratio:.4f} of float (target ≥ {target}: "
                f"{'met' if ratio >= target else f'MISSED by {target - ratio:.4f}'})"
            )
    by = {r["config"]: r["ndcg@10"] for r in results}
    pca, mrl = by.get("pca-128", 0.0), by.get("matryoshka-128", 0.0)
    verdicts.append(
        f"- pca-128 {pca:.4f} vs matryoshka-128 {mrl:.4f}: "
        f"{'above (target met)' if pca > mrl else 'NOT above (target missed)'}"
    )
    info = machine()
    lines = [
        SECTION,
        "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Command: `{command_line(__file__)}`, which runs `pipe eval pipelines/scifact-whole."
        "yaml --queries ../shared/data/scifact/queries.jsonl --qrels ../shared/data/scifact/"
        "qrels/test.tsv --sweep --json --plot bench/img/sweep-scifact.png`",
        f"- Machine: {info['uname']}; {info['cpu']}; Python {info['python']}",
        f"- Versions: {info['versions']}",
        f"- Load average (1, 5, 15 min) at the start: {loads[0]}; at the end: {loads[1]}",
        f"- Data: SciFact test split ({base['queries']} queries), 5,183 abstracts whole (chunk "
        "`strategy: none`), all-MiniLM-L6-v2; the float vectors were computed once "
        f"(this run's `pipe run`: {encoded['computed']} computed, {encoded['cached']} cached).",
        f"- The sweep (12 settings, each a run that makes codes and a table from the cached "
        f"vectors, then {base['queries']} single queries) took **{seconds:.0f} s** in one "
        "`pipe eval` process; nothing was encoded again.",
        "",
        "| setting | nDCG@10 | ratio to float | R@10 | R@100 | MRR@10 | bytes/vector | "
        "table MiB | p50 ms | p95 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        *verdicts,
        "",
        "bytes/vector is the searched column (codes, or floats); *table MiB* is the Lance "
        "table on disk (binary+rescore keeps the floats beside the codes, for re-scoring; "
        "binary and binary-asymmetric keep only the codes). Latency is one query at a time "
        "through the search pipeline `pipe search` uses, query encoding included. int8 and "
        "binary-asymmetric are scored in process over every row (a float query against the "
        "codes); the others are LanceDB searches (Hamming for binary).",
        "",
        f"![nDCG@10 against bytes per vector and latency](img/{PLOT.name})",
        "",
    ]
    body = "\n".join(lines)
    print(body)
    if args.write:
        write_section(ROOT / "bench" / "RESULTS.md", body, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
