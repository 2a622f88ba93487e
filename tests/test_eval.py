"""`pipe eval`: metrics against a hand-computed example, its JSON contract (DESIGN.md §9), the
`evals` catalog table, the sweep and its plot (issue 15)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import embedpipe
from embedpipe.engine import evaluate
from embedpipe.errors import EvalError
from embedpipe.results import EvalResult
from tests.conftest import write_jsonl

PIPE = str(Path(sys.executable).with_name("pipe"))
KEYS = {"ndcg@10", "recall@10", "recall@100", "mrr@10", "queries", "bytes_per_vector",
        "index_bytes", "latency_ms_p50", "latency_ms_p95"}  # fmt: skip

SPEC = """
name: judged
workspace: ws
steps:
  docs: {type: ingest, source: corpus.jsonl, format: beir}
  chunks: {type: chunk, input: docs, strategy: none}
  vectors: {type: encode, input: chunks, batch_size: 8}
  index: {type: index, input: vectors}
"""
QUERIES = [
    {"_id": "q1", "text": "do vitamin supplements prevent hip fractures in the elderly?"},
    {"_id": "q2", "text": "how do honeybees tell each other where flowers are?"},
    {"_id": "q3", "text": "a query nobody judged"},
]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n"


def test_metrics_equal_a_hand_computed_example() -> None:
    qrels = {"q1": {"a": 1, "b": 1}, "q2": {"c": 1}, "q3": {"z": 1}}
    run = {"q1": {"a": 0.9, "x": 0.8, "b": 0.7}, "q2": {"y": 0.9, "c": 0.5}}  # q3: no hit
    got = evaluate.metrics(qrels, run)
    ndcg_q1 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    ndcg_q2 = (1 / math.log2(3)) / 1
    assert got["nDCG@10"] == pytest.approx((ndcg_q1 + ndcg_q2 + 0) / 3)
    assert got["R@10"] == pytest.approx((1 + 1 + 0) / 3)
    assert got["RR@10"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert got["R@100"] == pytest.approx(2 / 3)


def test_documents_score_by_their_best_chunk() -> None:
    hits = [{"doc_id": "a", "score": 0.5}, {"doc_id": "b", "score": 0.9},
            {"doc_id": "a", "score": 0.95}, {"doc_id": "c", "score": 0.1}]  # fmt: skip
    assert evaluate.documents(hits, 2) == {"a": 0.95, "b": 0.9}


def test_bad_eval_inputs_name_the_file_and_line(tmp_path: Path) -> None:
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"_id": "1", "text": "ok"}\nnot json\n')
    with pytest.raises(EvalError, match=r"q\.jsonl:2: not a query line"):
        evaluate.read_queries(queries)
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\n1\td1\t1\n1\td2\n")
    with pytest.raises(EvalError, match=r"qrels\.tsv:3: expected"):
        evaluate.read_qrels(qrels)
    queries.write_text('{"_id": "9", "text": "other"}\n')
    qrels.write_text("1\td1\t1\n")
    with pytest.raises(EvalError, match=r"no query of .* is in"):
        evaluate.EvalInput.read(queries, qrels)


def test_pareto_front() -> None:
    points = [(48, 0.58), (1536, 0.645), (384, 0.644), (256, 0.60), (64, 0.50)]
    assert evaluate.pareto(points) == [0, 3, 2, 1]  # (64, 0.50) is beaten by (48, 0.58)


def test_plot_is_a_png(tmp_path: Path) -> None:
    results = [
        EvalResult(name, n, 0.8, 0.9, 0.6, 300, b, 10_000, lat, lat * 2)
        for name, n, b, lat in (("float", 0.645, 1536, 20.0), ("binary", 0.58, 48, 5.0))
    ]
    path = evaluate.plot(results, tmp_path / "sub" / "sweep.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_eval_json_catalog_and_sweep(
    tmp_path: Path, corpus: Path, write_spec: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = write_spec(SPEC)
    queries = write_jsonl(tmp_path / "queries.jsonl", QUERIES)
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text(QRELS)
    pipe = embedpipe.load(spec)
    with pytest.raises(embedpipe.errors.NotIndexed, match="pipe run"):
        pipe.eval(queries, qrels)
    assert pipe.run().status == "completed"

    args = [PIPE, "eval", str(spec), "--queries", str(queries), "--qrels", str(qrels)]
    proc = subprocess.run([*args, "--json", "-k", "10"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert set(body) == KEYS
    assert body["queries"] == 2 and body["ndcg@10"] == 1.0 and body["mrr@10"] == 1.0
    assert body["bytes_per_vector"] == 384 * 4 and body["index_bytes"] > 0
    assert 0 < body["latency_ms_p50"] <= body["latency_ms_p95"]
    (row,) = pipe.sql("select config, ndcg_10, k, run_id, lance_version, metrics from evals")
    assert row["ndcg_10"] == 1.0 and row["k"] == 10 and row["lance_version"] == 1
    assert row["run_id"] == pipe.runs(1)[0]["run_id"]
    assert json.loads(row["metrics"])["queries"] == 2

    # Every sweep setting is a valid spec; a short sweep re-encodes nothing.
    for _name, sets in evaluate.sweep_overrides(pipe.dag):
        embedpipe.load(spec, overrides=sets)  # raises SpecError if a setting is malformed
    short = tuple(s for s in evaluate.SWEEP if s[0] in ("float", "binary+rescore4", "pca-64"))
    monkeypatch.setattr(evaluate, "SWEEP", short)
    seen: list[EvalResult] = []
    results = pipe.sweep(queries, qrels, k=10, on_result=seen.append)
    assert (
        [r.config for r in results]
        == ["float", "binary+rescore4", "pca-64"]
        == [r.config for r in seen]
    )
    float_, rescored, pca = results
    assert float_.ndcg_10 == 1.0 and rescored.bytes_per_vector == 48
    assert pca.bytes_per_vector == 256 and rescored.ndcg_10 == 1.0
    assert not (pipe.workspace / "sweep").exists()  # scratch workspaces are removed
    configs = [r["config"] for r in pipe.sql("select config from evals order by evaluated_at")]
    assert configs == ["spec", "float", "binary+rescore4", "pca-64"]
    runs = pipe.runs(10)
    assert len(runs) == 1  # the sweep ran its settings in scratch workspaces, not here


def test_eval_cli_refuses_plot_without_sweep(
    tmp_path: Path, corpus: Path, write_spec: Callable[..., Path]
) -> None:
    spec = write_spec(SPEC)
    queries = write_jsonl(tmp_path / "queries.jsonl", QUERIES)
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text(QRELS)
    proc = subprocess.run(
        [PIPE, "eval", str(spec), "--queries", str(queries), "--qrels", str(qrels),
         "--plot", str(tmp_path / "x.png")], capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and "no step marks this index's hits relevant" in proc.stderr
