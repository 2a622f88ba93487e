# ruff: noqa: RUF002, RUF003 -- "τ" and "×" are meant
"""Long documents: every document-level strategy on QMSum through `pipe run` + `pipe eval`.

    .venv/bin/python bench/longdoc.py [--strategies a,b] [--taus 0.7,0.8,0.9,1.0] [--write]

QMSum (../shared/data/qmsum): 232 meeting transcripts of 1k–26k words; a query is a reference
summary and its one relevant document is its meeting. Each strategy is the same spec
(ingest → chunk → encode → index, all-MiniLM-L6-v2, exact search) with a few keys set
(`pipe run SPEC --set ...`), run in a process of its own (bench/_rusage.py: its peak RSS),
then judged by `Pipeline.eval` on the --split qrels (`pipe eval`'s code: document-level, a
document scores its best chunk). Strategies share one workspace, so chunks are cut once per
chunk setting; each encodes from scratch (its encode settings differ). The temperature sweep
runs PI-2048 at each --taus value.

Reference points (issue 16, plain numpy, a QMSum split of 281 queries): truncate-256 0.174,
truncate-512 0.200, PI-2048 0.207, PI-2048 τ 0.9 0.218, PI-4096 0.232, chunk-240 + mean
0.339, chunk-240 + max 0.547.

With --write each strategy's measurement is kept in bench/results/longdoc-<dataset>.json (a
sitting that runs some strategies keeps the others' last numbers), and the "## Long documents
(QMSum)" section of bench/RESULTS.md and the plot bench/img/longdoc-qmsum.png are drawn from
all of them. Everything else lives under --out (removed at the
end unless --keep).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
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
from scale_engine import markdown, print_table

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "RESULTS.md"
PLOT = BENCH / "img" / "longdoc-qmsum.png"
SECTION = "## Long documents (QMSum)"
QMSUM = Path("/work/shared/data/qmsum")
SCIFACT = Path("/work/shared/data/scifact")
OUT = Path("/tmp/embedpipe-longdoc")

WHOLE = ["steps.chunks.strategy=none"]
CHUNKS = ["steps.chunks.strategy=tokens", "steps.chunks.max_tokens=240", "steps.chunks.overlap=0"]


def pi(n: int, method: str = "linear", tau: float | str = 1.0) -> list[str]:
    return [*WHOLE, f"steps.vectors.max_tokens={n}",
            f"steps.vectors.long_context.position_interpolation={method}",
            f"steps.vectors.long_context.temperature={tau}"]  # fmt: skip


@dataclass(frozen=True)
class Strategy:
    name: str
    what: str
    sets: list[str]
    # query-time variants judged on the same run: label -> keys set (fusion weights)
    variants: tuple[tuple[str, tuple[str, ...]], ...] = ()


POOLED = ["steps.index.input=docvecs"]
FUSED = [*POOLED, "steps.docvecs.output=column"]
WEIGHTS = tuple((f"w{w:g}", (f"steps.docvecs.weight={w}",)) for w in (0.1, 0.2, 0.3, 0.5, 0.7))
LATE = ["steps.vectors.pooling=late_chunks", "steps.vectors.max_tokens=512"]


STRATEGIES = [
    Strategy("truncate-256", "whole document, first 256 tokens", [*WHOLE]),
    Strategy(
        "truncate-512", "whole document, first 512 tokens", [*WHOLE, "steps.vectors.max_tokens=512"]
    ),
    Strategy("pi-2048", "PI (linear) to 2,048 tokens", pi(2048)),
    Strategy("pi-2048-auto", "PI to 2,048, temperature auto (τ 0.9)", pi(2048, tau="auto")),
    Strategy("gp-2048", "grouped positions to 2,048", pi(2048, "grouped")),
    Strategy("rp-2048", "recurrent positions to 2,048", pi(2048, "recurrent")),
    Strategy("pi-4096", "PI (linear) to 4,096 tokens", pi(4096)),
    Strategy("pi-4096-auto", "PI to 4,096, temperature auto (τ 0.85)", pi(4096, tau="auto")),
    Strategy("pi-8192", "PI (linear) to 8,192 tokens", pi(8192)),
    Strategy("chunk-240-max", "240-token chunks, a document scores its best chunk", CHUNKS),
    Strategy(
        "chunk-240-mean",
        "one vector per document: the mean of its 240-token chunks' vectors (pool)",
        [*CHUNKS, *POOLED],
    ),
    Strategy(
        "fusion-240",
        "best chunk fused with the document's mean vector: (1 - w)·chunk + w·document",
        [*CHUNKS, *FUSED],
        WEIGHTS,
    ),
    Strategy(
        "late-240",
        "late chunking: 240-token chunks pooled from 512-token windows",
        [*CHUNKS, *LATE],
    ),
    Strategy(
        "late-240-fusion",
        "late chunks fused with the mean of the document's late chunks",
        [*CHUNKS, *LATE, *FUSED],
        WEIGHTS,
    ),
    Strategy(
        "late-240-c16",
        "late chunking, bounded: each 240-token chunk reads 16 tokens on each side",
        [*CHUNKS, *LATE, "steps.vectors.late_context=16"],
    ),
    Strategy(
        "late-240-c16-fusion",
        "bounded late chunks (16 tokens a side) fused with the mean of the document's",
        [*CHUNKS, *LATE, "steps.vectors.late_context=16", *FUSED],
        WEIGHTS,
    ),
    Strategy(
        "late-240-pi-2048",
        "late chunking in 2,048-token PI windows, τ auto",
        [
            *CHUNKS,
            "steps.vectors.pooling=late_chunks",
            "steps.vectors.max_tokens=2048",
            "steps.vectors.long_context.position_interpolation=linear",
            "steps.vectors.long_context.temperature=auto",
        ],
    ),
]
NOT_BUILT: dict[str, str] = {}

# --dataset scifact: late chunking on short documents (issue 16: at least as good as plain
# chunking by nDCG@10; published +1.9 points with another model), 128-token chunks.
CHUNKS_128 = [
    "steps.chunks.strategy=tokens",
    "steps.chunks.max_tokens=128",
    "steps.chunks.overlap=0",
]
SCIFACT_STRATEGIES = [
    Strategy("chunk-128-max", "128-token chunks, a document scores its best chunk", CHUNKS_128),
    Strategy(
        "late-128",
        "late chunking: 128-token chunks pooled from the whole abstract",
        [*CHUNKS_128, *LATE],
    ),
    Strategy(
        "late-128-256",
        "late chunking in 256-token windows (the model's own length), overlapping",
        [*CHUNKS_128, "steps.vectors.pooling=late_chunks", "steps.vectors.max_tokens=256"],
    ),
    *(
        Strategy(
            f"late-128-c{c}",
            f"late chunking, bounded: each chunk reads {c} tokens of its abstract on each side",
            [*CHUNKS_128, "steps.vectors.pooling=late_chunks", f"steps.vectors.late_context={c}"],
        )
        for c in (8, 16, 32, 64)
    ),
]


@dataclass(frozen=True)
class Dataset:
    data: Path
    split: str
    section: str
    plot: Path
    strategies: list[Strategy]
    corpus: str  # what the documents are, for the section's text
    label: str = "QMSum"
    base: str = "chunk-240-max"  # what the other strategies are compared with


DATASETS = {
    "qmsum": Dataset(QMSUM, "dev", SECTION, PLOT, STRATEGIES, "232 meeting transcripts"),
    "scifact": Dataset(SCIFACT, "test", "## Late chunking on short documents (SciFact)",
                       BENCH / "img" / "longdoc-scifact.png", SCIFACT_STRATEGIES,
                       "5,183 scientific abstracts", "SciFact", "chunk-128-max"),
}  # fmt: skip

SPEC = """\
# Written by bench/longdoc.py; each strategy runs it with --set keys.
name: longdoc
workspace: ws
steps:
  docs: {{type: ingest, source: {corpus}, format: beir}}
  chunks: {{type: chunk, input: docs, strategy: none}}
  vectors: {{type: encode, input: chunks, batch_size: 8, backend: torch}}
  docvecs: {{type: pool, input: vectors}}
  index: {{type: index, input: vectors, table: qmsum}}
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="qmsum")
    parser.add_argument("--strategies", help="comma-separated names (default: all of the set)")
    parser.add_argument(
        "--taus",
        default="0.6,0.7,0.8,1.0",
        help="PI-2048 temperatures to sweep ('' for none); pi-2048-auto adds τ 0.9",
    )
    parser.add_argument(
        "--docs", type=int, help="a quick check: only the first N documents and their queries"
    )
    parser.add_argument("--split", help="qrels split judged (default: dev, SciFact's test)")
    parser.add_argument("--data", type=Path, help="the BEIR folder (default: the dataset's)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--write", action="store_true", help=f"rewrite {SECTION!r} and the plot")
    parser.add_argument("--keep", action="store_true", help="keep --out (the workspace)")
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job is not None:
        return args
    args.set = DATASETS[args.dataset]
    args.split = args.split or args.set.split
    args.data = args.data or args.set.data
    names = [s.name for s in args.set.strategies]
    # --strategies '' runs none (only the --taus sweep)
    wanted = [n for n in args.strategies.split(",") if n] if args.strategies is not None else names
    unknown = set(wanted) - set(names)
    if unknown:
        parser.error(f"unknown strategies {sorted(unknown)}; known: {', '.join(names)}")
    args.strategies = [s for s in args.set.strategies if s.name in wanted]
    if args.dataset != "qmsum":
        args.taus = ""  # the temperature sweep is a long-document one
    try:
        args.taus = [float(t) for t in args.taus.split(",") if t.strip()]
    except ValueError:
        parser.error(f"--taus must be numbers separated by commas, not {args.taus!r}")
    for path in ("corpus.jsonl", "queries.jsonl", f"qrels/{args.split}.tsv"):
        if not (args.data / path).is_file():
            parser.error(f"{args.data / path} not found")
    args.out = args.out.resolve()
    args.store = BENCH / "results" / f"longdoc-{args.dataset}.json"
    return args


def job(spec: dict[str, Any]) -> dict[str, Any]:
    """One strategy: run the spec with its keys set, then eval it."""
    import embedpipe

    pipeline = embedpipe.load(spec["spec"], overrides=spec["sets"])
    t0 = time.perf_counter()
    run = pipeline.run()
    wall = time.perf_counter() - t0
    if run.status != "completed":
        raise BenchError(f"{spec['name']}: the run {run.status}: {run.error}")
    result = pipeline.eval(spec["queries"], spec["qrels"], record=False)
    variants = {}
    for label, extra in spec["variants"]:
        variant = embedpipe.load(spec["spec"], overrides=[*spec["sets"], *extra])
        variants[label] = variant.eval(spec["queries"], spec["qrels"], record=False).to_json()
    steps = run.steps
    return {
        "eval": result.to_json(),
        "variants": variants,
        "run_s": wall,
        "chunk_s": steps["chunks"].seconds,
        "encode_s": steps["vectors"].seconds,
        "chunks": steps["vectors"].rows_out,
    }


@dataclass
class Done:
    """One strategy's measurement, as stored in the dataset's JSON (bench/results/)."""

    name: str
    what: str
    result: dict[str, Any]
    peak_kib: int
    load: float
    date: str  # UTC, when it finished
    command: str

    @property
    def ndcg(self) -> float:
        return float(self.result["eval"]["ndcg@10"])

    def entries(self) -> list[tuple[str, dict[str, Any]]]:
        """(name, eval) per row: the strategy, or each query-time variant of it."""
        if self.result["variants"]:
            return [(f"{self.name} {k}", e) for k, e in self.result["variants"].items()]
        return [(self.name, self.result["eval"])]


def load_store(path: Path) -> dict[str, Done]:
    """Every strategy measured so far (a sitting re-runs some; the section shows them all)."""
    if not path.is_file():
        return {}
    return {name: Done(**d) for name, d in json.loads(path.read_text()).items()}


def save_store(path: Path, store: dict[str, Done]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {n: d.__dict__ for n, d in store.items()}
    path.write_text(json.dumps(body, indent=1, ensure_ascii=False) + "\n")


def entries(done: list[Done]) -> list[tuple[str, float]]:
    return [(name, float(e["ndcg@10"])) for d in done for name, e in d.entries()]


def run_one(args: argparse.Namespace, spec: Path, s: Strategy) -> Done:
    folder = args.out / "jobs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{s.name}.json"
    path.write_text(json.dumps({"name": s.name, "spec": str(spec), "sets": s.sets,
                                "variants": s.variants,
                                "queries": str(args.data / "queries.jsonl"),
                                "qrels": str(args.qrels)}))  # fmt: skip
    load = os.getloadavg()[0]
    proc = run_measured(s.name, Path(__file__), ["--job", str(path)], folder)
    return Done(s.name, s.what, last_json(proc.stdout), proc.peak_kib, load,
                f"{datetime.now(UTC):%Y-%m-%d %H:%M}", command_line(__file__))  # fmt: skip


HEADS = ["strategy", "what", "nDCG@10", "recall@10", "recall@100", "MRR@10", "chunks",
         "encode s", "peak RSS MiB", "load at start", "measured (UTC)"]  # fmt: skip


def rows(done: list[Done]) -> list[list[str]]:
    out = []
    for d in done:
        for name, e in d.entries():
            out.append([name, d.what, f"{e['ndcg@10']:.3f}",
                        f"{e['recall@10']:.3f}", f"{e['recall@100']:.3f}", f"{e['mrr@10']:.3f}",
                        f"{d.result['chunks']:,}", f"{d.result['encode_s']:.0f}",
                        f"{d.peak_kib / 1024:,.0f}", f"{d.load:.2f}", d.date])  # fmt: skip
    return out


def plot(done: list[Done], sweep: list[tuple[float, Done]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if sweep else 1, figsize=(12 if sweep else 8, 4.5))
    ax = axes[0] if sweep else axes
    named = entries(done)
    ax.barh([n for n, _ in named], [v for _, v in named], color="#4C72B0")
    for i, (_, v) in enumerate(named):
        ax.text(v + 0.005, i, f"{v:.3f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("nDCG@10 (QMSum)")
    ax.set_title("Document-level strategies, all-MiniLM-L6-v2")
    if sweep:
        taus = [t for t, _ in sweep]
        axes[1].plot(taus, [d.ndcg for _, d in sweep], marker="o")
        axes[1].set_xlabel("attention temperature τ (PI-2048)")
        axes[1].set_ylabel("nDCG@10")
        axes[1].set_title("TempScale sweep")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def section(args: argparse.Namespace, info: dict[str, str], loads: tuple[str, str],
            done: list[Done], sweep: list[tuple[float, Done]]) -> str:  # fmt: skip
    named = entries(done)
    best = max(named, key=lambda p: p[1])
    by_name = dict(named)
    lines = [
        args.set.section,
        "",
        ("**Quick check** (`--docs`), not the result. " if args.docs else "")
        + f"Every document-level strategy on {args.set.label}'s "
        f"{args.split} split ({done[0].result['eval']['queries']} queries, {args.set.corpus}), "
        "all-MiniLM-L6-v2, exact search; each strategy is one `pipe run` of the "
        "same spec with keys set, judged by `pipe eval`'s code (document level: a document "
        "scores its best chunk). Encode seconds are the encode step's, from scratch; peak RSS "
        "is the whole process's (run + eval).",
        "",
        f"- Written: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, from {args.store.relative_to(ROOT)} "
        "(each row was measured at its own date: a sitting runs some strategies, the others "
        "keep their last measurement)",
        *[
            f"- Command: `{c}`"
            for c in dict.fromkeys(d.command for d in [*done, *(x for _, x in sweep)])
        ],
        f"- Machine: {info['uname']}; {info['cpu']}; Python {info['python']}",
        f"- Versions: {info['versions']}",
        f"- Load average (1, 5, 15 min) at the start of this sitting: {loads[0]}; at the end: "
        f"{loads[1]}",
        "",
        *markdown(HEADS, rows(done), left=2),
        "",
    ]
    if sweep:
        lines += [
            "Temperature sweep (PI-2048, linear): "
            + ", ".join(f"τ {t:g}: {d.ndcg:.3f}" for t, d in sweep),
            "",
        ]
    lines += [f"Not measured: {n}: {why}." for n, why in NOT_BUILT.items()]
    lines += ["", f"Best: **{best[0]}**, nDCG@10 {best[1]:.3f}.", ""]
    base, trunc = by_name.get(args.set.base), by_name.get("truncate-256")
    if base is not None:
        whole = (args.set.base, "truncate", "pi-", "gp-", "rp-")
        lines += [f"- {n} vs {args.set.base}: {v - base:+.3f}" for n, v in named
                  if not n.startswith(whole)]  # fmt: skip
    if trunc is not None:
        lines += [f"- {n} vs truncate-256: {v - trunc:+.3f}" for n, v in named
                  if n.startswith(("pi-", "gp-", "rp-"))]  # fmt: skip
    lines += ["", f"![nDCG@10 by strategy](img/{args.set.plot.name})", ""]
    return "\n".join(lines)


def bench(args: argparse.Namespace) -> int:
    info, before = machine(), load_average()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    spec = args.out / "spec.yaml"
    corpus, args.qrels = args.data / "corpus.jsonl", args.data / "qrels" / f"{args.split}.tsv"
    if args.docs:  # a quick check: the first N documents the split judges, and their qrels
        head, *rest = args.qrels.read_text().splitlines()
        ids = set(list(dict.fromkeys(r.split("\t")[1] for r in rest))[: args.docs])
        lines = [ln for ln in corpus.read_text().splitlines() if json.loads(ln)["_id"] in ids]
        corpus = args.out / "corpus.jsonl"
        corpus.write_text("\n".join(lines) + "\n")
        args.qrels = args.out / "qrels.tsv"
        kept = [r for r in rest if r.split("\t")[1] in ids]
        args.qrels.write_text("\n".join([head, *kept]) + "\n")
    spec.write_text(SPEC.format(corpus=corpus))
    store = {} if args.docs else load_store(args.store)
    order = [s.name for s in args.set.strategies]

    def shown() -> list[Done]:  # the set's strategies in their order, then the sweep's
        return sorted(store.values(), key=lambda d: (order.index(d.name) if d.name in order
                                                     else len(order), d.name))  # fmt: skip

    def sweep_of() -> list[tuple[float, Done]]:
        taus = {1.0: store.get("pi-2048"), 0.9: store.get("pi-2048-auto")}  # auto: τ 0.9 at 2k
        taus |= {float(n.removeprefix("pi-2048-tau")): d for n, d in store.items()
                 if n.startswith("pi-2048-tau")}  # fmt: skip
        found = sorted((t, d) for t, d in taus.items() if d is not None)
        return found if len(found) > 2 else []

    def keep(d: Done) -> None:
        store[d.name] = d
        if args.write:  # after each strategy: a cut-short sitting still leaves its numbers
            save_store(args.store, store)
            now = (before, load_average())
            table = [x for x in shown() if not x.name.startswith("pi-2048-tau")]
            write_section(RESULTS, section(args, info, now, table, sweep_of()), args.set.section)

    for s in args.strategies:
        print(f"{s.name}: {s.what}", flush=True)
        d = run_one(args, spec, s)
        e = d.result["eval"]
        print(f"  nDCG@10 {e['ndcg@10']:.4f}, recall@100 {e['recall@100']:.3f}, "
              f"{d.result['chunks']:,} chunks, encode {d.result['encode_s']:.0f} s, "
              f"peak RSS {d.peak_kib / 1024:,.0f} MiB", flush=True)  # fmt: skip
        keep(d)
    for tau in args.taus:
        s = Strategy(f"pi-2048-tau{tau:g}", f"PI to 2,048, τ {tau:g}", pi(2048, tau=tau))
        if tau == 1.0 and "pi-2048" in store:  # the same keys as pi-2048
            continue
        d = run_one(args, spec, s)
        print(f"  τ {tau:g}: nDCG@10 {d.ndcg:.4f}", flush=True)
        keep(d)
    loads = (before, load_average())
    table = [x for x in shown() if not x.name.startswith("pi-2048-tau")]
    print_table(HEADS, rows(table), args.set.section.removeprefix("## "), left=2)
    if args.write:
        plot(table, sweep_of(), args.set.plot)
        write_section(RESULTS, section(args, info, loads, table, sweep_of()), args.set.section)
        print(f"wrote {args.set.section!r} in {RESULTS}, {args.set.plot} and {args.store}")
    return 0


def main() -> None:
    args = parse_args()
    if args.job is not None:
        print(json.dumps(job(json.loads(args.job.read_text()))))
        return
    try:
        code = bench(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        if not args.keep:
            shutil.rmtree(args.out, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
