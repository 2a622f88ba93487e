"""Where the encode time goes, per backend, and the most a fast backend could gain on this CPU.

    .venv/bin/python bench/encode_roofline.py [--batches 4] [--write]

Issue 18 asks the OpenVINO backend for >= 3.5x raw torch (bf16) and >= 5x (int8). This script
asks whether a CPU allows it at all, on the same full batches for every backend (32 SciFact
abstracts each, every one at the model's 256-token window, so every batch has the same work):

1. The CPU's matmul throughput on one thread: torch's fp32 and bf16 GEMMs of the model's own
   shapes (8,192 tokens x 384 x 1,536 and back), the best of both.
2. torch (the sentence-transformers module, fp32, what the ratios are measured against),
   profiled with torch.profiler on one thread: time in the linear layers, in attention and in
   the rest; and its wall time per batch on two threads, as the issue's baseline runs.
3. The OpenVINO exports made by the encode step's own code (`backends._export`: the CPU's
   default precision, and int8 calibrated on 300 abstracts), profiled with OpenVINO's per-node
   counters on one thread: FullyConnected, the attention subgraphs, the rest.
4. Two ceilings per export, against torch's two-thread time, granting the export perfect
   scaling over the cores (two streams of one thread, as the backend runs): "as profiled" (its
   whole one-thread time) and "matmuls only" (as if everything but its linear layers took no
   time). A bar above "matmuls only" cannot be met on this CPU by any runtime that computes
   these matmuls in that precision.

With --write, the table goes to bench/RESULTS.md ("Fast encode: the CPU's ceiling").
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from encode_overhead import BARS, _version, load_average, machine, provenance, write_section

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "scifact"
RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION = "## Fast encode: the CPU's ceiling"
BATCH = 32
FLAGS = ("avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "avx512_fp16")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=4, help="full batches profiled (default 4)")
    p.add_argument("--write", action="store_true", help="rewrite the section in RESULTS.md")
    return p.parse_args()


def cpu_flags() -> str:
    """The instruction sets that decide bf16 and int8 speed (AMX, AVX-512 BF16 / VNNI)."""
    flags: set[str] = set()
    family = model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags" and not flags:
            flags = set(value.split())
        elif key == "cpu family" and family == "?":
            family = value.strip()
        elif key == "model" and model == "?":
            model = value.strip()
    have = [f for f in FLAGS if f in flags]
    return f"family {family} model {model}; {', '.join(have) or 'none of ' + ', '.join(FLAGS)}"


def full_texts(model: Any, n: int) -> list[str]:
    """The first ``n`` SciFact abstracts (title and text, as the encode step joins them) that
    fill the model's window: every batch then has exactly the same work."""
    out = []
    window = int(model.max_seq_length)
    with open(DATA / "corpus.jsonl") as f:
        for line in f:
            doc = json.loads(line)
            text = f"{doc.get('title', '')}\n\n{doc['text']}".strip()
            ids = model.tokenizer(text, truncation=True, max_length=window)["input_ids"]
            if len(ids) == window:
                out.append(text)
                if len(out) == n:
                    return out
    raise SystemExit(f"only {len(out)} abstracts fill {window} tokens; ask fewer --batches")


def shapes(model: Any) -> dict[str, int]:
    config = model[0].auto_model.config
    return {"hidden": config.hidden_size, "inner": config.intermediate_size,
            "layers": config.num_hidden_layers, "tokens": int(model.max_seq_length)}  # fmt: skip


def linear_flops(s: dict[str, int]) -> float:
    """FLOPs of the linear layers in one batch: per token and layer, Q, K, V and the attention
    output (4 h^2) and the two feed-forward layers (2 h i), a multiply-add counted as two."""
    per_token = s["layers"] * (4 * s["hidden"] ** 2 + 2 * s["hidden"] * s["inner"]) * 2
    return float(per_token * BATCH * s["tokens"])


def gemm_peak() -> dict[str, float]:
    """torch's best GEMM throughput on one thread, in GFLOP/s, for fp32 and bf16."""
    import torch

    out = {}
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        best = 0.0
        for m, k, n in ((8192, 384, 1536), (8192, 1536, 384)):
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            for _ in range(3):
                a @ b
            t = time.perf_counter()
            for _ in range(10):
                a @ b
            best = max(best, 2 * m * k * n * 10 / (time.perf_counter() - t) / 1e9)
        out[name] = best
    return out


def torch_profile(model: Any, batches: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds per batch on one thread: total, linear layers, attention (torch.profiler)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        model(batches[0])
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            for b in batches:
                model(b)
            total = time.perf_counter() - t
    spent: dict[str, float] = collections.defaultdict(float)
    for e in prof.key_averages():
        if e.key == "aten::linear":
            spent["matmul"] += e.cpu_time_total / 1e6
        elif e.key == "aten::scaled_dot_product_attention":
            spent["attention"] += e.cpu_time_total / 1e6
    n = len(batches)
    return {"total": total / n, "matmul": spent["matmul"] / n, "attention": spent["attention"] / n}


def torch_wall(model: Any, texts: list[str], threads: int) -> float:
    """Seconds per batch of ``model.encode`` (the issue's baseline) on ``threads`` threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model.encode(texts[:BATCH], batch_size=BATCH)
        t = time.perf_counter()
        model.encode(texts, batch_size=BATCH)
        return (time.perf_counter() - t) / (len(texts) / BATCH)
    finally:
        torch.set_num_threads(before)


def openvino_profile(xml: Path, batches: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Seconds per batch on one thread from OpenVINO's per-node counters: total, the
    FullyConnected (linear) nodes, the attention subgraphs; and the precision it ran in."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1, "PERF_COUNT": True})  # fmt: skip
    request = compiled.create_infer_request()
    request.infer(list(batches[0]))
    spent: dict[str, float] = collections.defaultdict(float)
    total = 0.0
    for ids, mask in batches:
        t = time.perf_counter()
        request.infer([ids, mask])
        total += time.perf_counter() - t
        for node in request.get_profiling_info():
            seconds = node.real_time.total_seconds()
            if node.node_type.startswith("FullyConnected"):
                spent["matmul"] += seconds
            elif "scaled_dot_product_attention" in node.node_name:
                spent["attention"] += seconds
            if "I8" in node.exec_type.upper() and node.node_type.startswith("FullyConnected"):
                spent["int8"] = 1.0
    n = len(batches)
    hint = str(compiled.get_property("INFERENCE_PRECISION_HINT")).lower()
    precision = "bf16" if "bf" in hint else "fp16" if "16" in hint else "fp32"
    return {"total": total / n, "matmul": spent["matmul"] / n,
            "attention": spent["attention"] / n,
            "precision": ("int8 + " if spent["int8"] else "") + precision}  # fmt: skip


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    from embedpipe import models
    from embedpipe.steps import backends

    info, load_before, started = machine(), load_average(), datetime.now(UTC)
    model = SentenceTransformer(models.resolve(models.DEFAULT_MODEL).location, device="cpu")
    texts = full_texts(model, args.batches * BATCH)
    groups = [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]
    arrays = [backends._tokens(model, g) for g in groups]
    features = [{"input_ids": torch.from_numpy(i), "attention_mask": torch.from_numpy(m)}
                for i, m in arrays]  # fmt: skip
    s = shapes(model)
    flops = linear_flops(s)
    print(f"model: {s}; linear GFLOP per batch of {BATCH}x{s['tokens']}: {flops / 1e9:.1f}")

    torch.set_num_threads(1)
    peak = gemm_peak()
    print(f"torch GEMM, one thread: fp32 {peak['fp32']:.0f}, bf16 {peak['bf16']:.0f} GFLOP/s")
    t1 = torch_profile(model, features)
    t2 = torch_wall(model, texts, 2)
    print(f"torch: {t1} one thread; {t2:.3f} s per batch on two threads")

    calibration = []
    with open(DATA / "corpus.jsonl") as f:
        for line in f:
            doc = json.loads(line)
            calibration.append(f"{doc.get('title', '')}\n\n{doc['text']}".strip())
            if len(calibration) == backends.CALIBRATION:
                break
    exports: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="roofline-") as tmp:
        for name, quantize in (("openvino", "none"), ("openvino-int8", "int8")):
            folder = Path(tmp) / name
            t = time.perf_counter()
            backends._export(model, "openvino", quantize, folder, calibration)
            print(f"built {name} in {time.perf_counter() - t:.1f} s")
            exports[name] = openvino_profile(folder / "model.xml", arrays)
            print(f"{name}: {exports[name]}")

    heads = ["", "torch (fp32)", *(f"{k} ({v['precision']})" for k, v in exports.items())]
    rows = [
        ["seconds per batch, one thread", t1["total"], *(e["total"] for e in exports.values())],
        ["… in the linear layers", t1["matmul"], *(e["matmul"] for e in exports.values())],
        ["… in attention", t1["attention"], *(e["attention"] for e in exports.values())],
    ]
    table = [[rows[0][0], *(f"{v:.3f}" for v in rows[0][1:])]]
    for row in rows[1:]:
        table.append([row[0], *(f"{v:.3f} ({100 * v / t:.0f}%)"
                                for v, t in zip(row[1:], rows[0][1:], strict=True))])  # fmt: skip
    table.append(["linear layers' throughput (GFLOP/s or GOP/s)",
                  *(f"{flops / r / 1e9:.0f}" for r in rows[1][1:])])  # fmt: skip
    table.append(
        [
            "torch's own GEMM, one thread (GFLOP/s)",
            f"fp32 {peak['fp32']:.0f}",
            f"bf16 {peak['bf16']:.0f}",
            "(no int8 GEMM)",
        ]
    )
    table.append(["seconds per batch, two threads (the baseline)", f"{t2:.3f}", "", ""])
    ceilings = {}
    for name, e in exports.items():
        as_profiled = t2 / (e["total"] / 2)
        matmuls_only = t2 / (e["matmul"] / 2)
        bar = BARS["int8" if name.endswith("int8") else "none"][0]
        ceilings[name] = (as_profiled, matmuls_only, bar)
    table.append(["ceiling vs torch on two threads: as profiled", "1.00x",
                  *(f"{c[0]:.2f}x" for c in ceilings.values())])  # fmt: skip
    table.append(["ceiling vs torch: matmuls only, all else free", "",
                  *(f"{c[1]:.2f}x" for c in ceilings.values())])  # fmt: skip
    table.append(["issue 18's bar", "",
                  *(f"{c[2]:.1f}x ({'within' if c[1] >= c[2] else 'above'} the ceiling)"
                    for c in ceilings.values())])  # fmt: skip
    print()
    for row in table:
        print(" | ".join(str(c) for c in row))

    if args.write:
        body = [
            SECTION,
            "",
            *provenance(started, info, __file__),
            f"- CPU: {cpu_flags()}",
            f"- Versions: {info['versions']}, openvino {_version('openvino')}, "
            f"nncf {_version('nncf')}",
            f"- Load average at the start: {load_before}; at the end: {load_average()}",
            f"- {args.batches} batches of {BATCH} SciFact abstracts, each at the model's "
            f"{s['tokens']}-token window; {flops / 1e9:.1f} GFLOP in the linear layers per "
            "batch. One-thread times are per-node profiles (torch.profiler; OpenVINO's "
            "PERF_COUNT); the ceilings grant the export perfect scaling over two cores.",
            "",
            "| | " + " | ".join(heads[1:]) + " |",
            "|---|" + "---:|" * (len(heads) - 1),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in table),
            "",
            *verdicts(exports, ceilings, t2),
        ]
        write_section(RESULTS, "\n".join(body), SECTION)
        print(f"wrote {SECTION!r} in {RESULTS}")


def verdicts(exports: dict[str, dict[str, Any]], ceilings: dict[str, tuple[float, float, float]],
             baseline: float) -> list[str]:  # fmt: skip
    """One line per export: whether its bar is reachable on this CPU, and what it would take."""
    out = []
    for name, (_, matmuls_only, bar) in ceilings.items():
        e = exports[name]
        if matmuls_only < bar:
            out.append(
                f"- **{name} ({e['precision']})**: the {bar}x bar is above this CPU's ceiling. "
                f"Its linear layers alone take {e['matmul']:.3f} s per batch on one thread; "
                f"even with everything else free that is {matmuls_only:.2f}x torch. No runtime "
                "that computes these matmuls in this precision meets the bar here."
            )
        else:
            budget = 2 * baseline / bar - e["matmul"]
            rest = e["total"] - e["matmul"]
            out.append(
                f"- **{name} ({e['precision']})**: the {bar}x bar is below the matmul-only "
                f"ceiling ({matmuls_only:.2f}x) but needs attention and every other op to take "
                f"at most {budget:.3f} s per batch on one thread; they take {rest:.3f} s "
                f"(attention {e['attention']:.3f} s)."
            )
    return out


if __name__ == "__main__":
    main()
