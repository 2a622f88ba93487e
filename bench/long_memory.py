# ruff: noqa: RUF001, RUF002, RUF003 -- "×" is meant
"""Peak memory of long-context encoding: batches by length vs a fixed batch_size.

    .venv/bin/python bench/long_memory.py [--docs 16] [--batch 16] [--tokens 2048,4096] [--write]

The --docs longest QMSum transcripts (../shared/data/qmsum), one vector each (chunk strategy
none), all-MiniLM-L6-v2 with position interpolation to each --tokens, `batch_size: --batch`.
Each setting is one `pipe run` in a process of its own (bench/_rusage.py: its peak RSS), once as
the encode step runs now (past the model's 256 tokens, batch_size × 256 / length texts a pass)
and once with every pass holding batch_size texts whatever their length (the step before
batching by length, patched in the measured process). Same vectors either way (within float
noise); what differs is the peak.

With --write the "## Long-context memory" section of bench/RESULTS.md is rewritten.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

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
RESULTS = BENCH / "RESULTS.md"
SECTION = "## Long-context memory"
QMSUM = Path("/work/shared/data/qmsum")
OUT = Path("/tmp/embedpipe-long-memory")
SPEC = """\
name: longmem
workspace: ws-{name}
steps:
  docs: {{type: ingest, source: {corpus}, format: beir}}
  chunks: {{type: chunk, input: docs, strategy: none}}
  vectors:
    type: encode
    input: chunks
    batch_size: {batch}
    max_tokens: {tokens}
    long_context: {{position_interpolation: linear}}
  index: {{type: index, input: vectors}}
"""


def job(spec: dict[str, object]) -> dict[str, object]:
    import embedpipe
    from embedpipe.steps.encode import Encode

    if spec["fixed"]:  # every pass batch_size texts, whatever their length
        Encode.per_pass = lambda self, tokens: self.config.batch_size  # type: ignore[method-assign]
    pipeline = embedpipe.load(str(spec["spec"]))
    t0 = time.perf_counter()
    run = pipeline.run()
    if run.status != "completed":
        raise BenchError(f"{spec['spec']}: the run {run.status}: {run.error}")
    return {"run_s": time.perf_counter() - t0, "encode_s": run.steps["vectors"].seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", default="2048,4096")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job is not None:
        print(json.dumps(job(json.loads(args.job.read_text()))))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    info, before = machine(), load_average()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    lines = (QMSUM / "corpus.jsonl").read_text().splitlines()
    longest = sorted(lines, key=lambda ln: -len(json.loads(ln)["text"]))[: args.docs]
    corpus = OUT / "corpus.jsonl"
    corpus.write_text("\n".join(longest) + "\n")
    heads = ["max_tokens", "texts a pass", "peak RSS MiB", "encode s", "load at start"]
    rows, peaks = [], {}
    try:
        for tokens in [int(t) for t in args.tokens.split(",")]:
            for fixed in (True, False):
                name = f"{tokens}-{'fixed' if fixed else 'by-length'}"
                spec = OUT / f"{name}.yaml"
                spec.write_text(SPEC.format(name=name, corpus=corpus, batch=args.batch,
                                            tokens=tokens))  # fmt: skip
                (OUT / f"{name}.json").write_text(json.dumps({"spec": str(spec), "fixed": fixed}))
                load = os.getloadavg()[0]
                proc = run_measured(name, Path(__file__), ["--job", str(OUT / f"{name}.json")], OUT)
                result = last_json(proc.stdout)
                per = args.batch if fixed else max(1, args.batch * 256 // tokens)
                what = f"{per} ({'fixed batch_size' if fixed else 'by length, now'})"
                peaks[name] = proc.peak_kib / 1024
                rows.append([f"{tokens:,}", what, f"{proc.peak_kib / 1024:,.0f}",
                             f"{result['encode_s']:.0f}", f"{load:.2f}"])  # fmt: skip
                print(f"{name}: peak RSS {proc.peak_kib / 1024:,.0f} MiB, "
                      f"encode {result['encode_s']:.0f} s", flush=True)  # fmt: skip
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        shutil.rmtree(OUT, ignore_errors=True)
    print_table(heads, rows, SECTION.removeprefix("## "))
    if args.write:
        ratios = [f"{t:,} tokens: {peaks[f'{t}-fixed'] / peaks[f'{t}-by-length']:.2f}×"
                  for t in [int(t) for t in args.tokens.split(",")]]  # fmt: skip
        body = [
            SECTION, "",
            f"The {args.docs} longest QMSum transcripts, one vector each, all-MiniLM-L6-v2 with "
            f"position interpolation, `batch_size: {args.batch}`; each row one `pipe run` in a "
            "process of its own, peak RSS of that process. 'fixed batch_size' is the encode "
            "step before it batched by length (patched in the measured process).", "",
            f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            f"- Command: `{command_line(__file__)}`",
            f"- Machine: {info['uname']}; {info['cpu']}; Python {info['python']}",
            f"- Versions: {info['versions']}",
            f"- Load average (1, 5, 15 min) at the start: {before}; at the end: {load_average()}",
            "", *markdown(heads, rows), "",
            "Peak RSS, fixed batch / by length: " + ", ".join(ratios) + ".", "",
        ]  # fmt: skip
        write_section(RESULTS, "\n".join(body), SECTION)
        print(f"wrote {SECTION!r} in {RESULTS}")


if __name__ == "__main__":
    main()
