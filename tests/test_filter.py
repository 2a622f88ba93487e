"""The relevance filter step (issue 17): the Cosine Adapter is monotone within a query, fitting
separates relevant from irrelevant, the fitted artifact reloads with identical scores, `kept`
is `relevance >= threshold`, and a spec without a fitted adapter names `pipe fit`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import embedpipe
from embedpipe.engine import evaluate
from embedpipe.errors import ArtifactError, SpecError
from embedpipe.steps import adapter
from embedpipe.steps.filter import FilterConfig
from tests.conftest import write_jsonl

PIPE = str(Path(sys.executable).with_name("pipe"))
FAMILIES = ["linear", "sqrt", "quadratic", "power"]
floats = st.floats(-1, 1, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    family=st.sampled_from(FAMILIES),
    top=st.booleans(),
    seed=st.integers(0, 2**16),
    scores=arrays(np.float64, st.integers(2, 40), elements=floats),
)
def test_adapter_is_monotone_within_a_query(
    family: str, top: bool, seed: int, scores: np.ndarray
) -> None:
    rng = np.random.default_rng(seed)
    dims, hidden = 8, 5
    features = ["embedding", "top_score"] if top else ["embedding"]
    width = dims + top
    net = adapter.Adapter(
        {"w1": rng.normal(size=(hidden, width)), "b1": rng.normal(size=hidden),
         "w2": rng.normal(size=(3, hidden)) * 3, "b2": rng.normal(size=3),
         "features": np.asarray(features)},
        family,
    )  # fmt: skip
    query = rng.normal(size=dims)
    rel = net.apply(query, scores)
    order = np.argsort(scores, kind="stable")
    assert np.all(np.diff(rel[order]) >= -1e-12)  # never re-orders hits within a query
    assert np.all((rel >= 0) & (rel <= 1))


def test_choose_threshold_serves_the_target() -> None:
    values = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    labels = np.array([1, 1, 0, 1, 0, 0])
    # precision >= 0.75: keeping the top 4 (3 of 4 relevant) is the most recall at it
    assert adapter.choose_threshold(values, labels, 0.75, None) == 0.6
    assert adapter.choose_threshold(values, labels, None, 0.6) == 0.8  # 2 of 3 relevant
    assert adapter.choose_threshold(values, labels, None, 1.0) == 0.6
    assert adapter.choose_threshold(values, labels, None, None) is None


def synthetic(n: int = 120, seed: int = 0) -> adapter.TrainingData:
    """Two kinds of query: for one, relevant documents score above 0.3; for the other, above
    0.7. A raw threshold cannot serve both; the query vector says which kind it is."""
    rng = np.random.default_rng(seed)
    vectors, scores, hits = [], [], []
    for i in range(n):
        kind = i % 2
        v = rng.normal(size=16) * 0.1
        v[0] += 1.0 if kind else -1.0
        s = rng.uniform(0.0, 1.0, 30)
        cut = 0.7 if kind else 0.3
        vectors.append(v / np.linalg.norm(v))
        scores.append(s)
        hits.append((s > cut).astype(np.float64))
    return adapter.TrainingData([f"q{i}" for i in range(n)], np.asarray(vectors), scores, hits)


@pytest.mark.slow  # ~25 s each; the end-to-end test fits on real hits in the default run
@pytest.mark.parametrize("family", FAMILIES)
def test_fitting_separates_relevant_from_irrelevant(family: str) -> None:
    data = synthetic()
    config = FilterConfig(type="filter", input="index", family=family, target_precision=0.9)
    state, report = adapter.fit(config, data)
    net = adapter.Adapter(state, family)
    fresh = synthetic(40, seed=1)
    rel = np.concatenate(
        [net.apply(v, s) for v, s in zip(fresh.vectors, fresh.scores, strict=True)]
    )
    y = fresh.labels > 0
    # per-query cutoffs learned: relevance splits the classes far better than any raw cosine
    assert rel[y].min() > np.median(rel[~y]) and rel[~y].max() < np.median(rel[y])
    kept = rel >= float(state["threshold"])
    found = adapter.pr_at(kept, fresh.labels)
    raw = np.concatenate(fresh.scores)
    base = adapter.pr_at(raw >= np.quantile(raw, 1 - kept.mean()), fresh.labels)
    assert found["precision"] >= 0.8 and found["precision"] > base["precision"] + 0.1
    assert report["threshold"] == pytest.approx(float(state["threshold"]), abs=1e-6)


CORPUS = [
    {"_id": "d1", "title": "", "text": "Vitamin D supplements and the risk of hip fractures."},
    {"_id": "d2", "title": "", "text": "Honeybees dance to tell the hive where flowers are."},
    {"_id": "d3", "title": "", "text": "Calcium intake and bone density in older women."},
    {"_id": "d4", "title": "", "text": "Glaciers retreat as summers grow warmer in the Alps."},
    {"_id": "d5", "title": "", "text": "Ants follow pheromone trails laid by foragers."},
    {"_id": "d6", "title": "", "text": "A river delta forms where sediment settles at the sea."},
]
QUERIES = [
    {"_id": "q1", "text": "do vitamin supplements prevent fractures?"},
    {"_id": "q2", "text": "how do bees communicate about food?"},
    {"_id": "q3", "text": "what makes bones stronger in old age?"},
    {"_id": "q4", "text": "why are glaciers melting?"},
    {"_id": "q5", "text": "how do insects find their way to food?"},
    {"_id": "q6", "text": "where do river deltas come from?"},
]
QRELS = "query-id\tcorpus-id\tscore\n" + "".join(
    f"q{i}\td{i}\t1\n" for i in range(1, 7)
) + "q3\td1\t1\nq5\td2\t1\n"  # fmt: skip
SPEC = """
name: judged
workspace: ws
steps:
  docs: {type: ingest, source: corpus.jsonl, format: beir}
  chunks: {type: chunk, input: docs, strategy: none}
  vectors: {type: encode, input: chunks, batch_size: 8}
  index: {type: index, input: vectors}
  relevance: {type: filter, input: index, method: cosine_adapter, hidden: 8, holdout: 0.34}
"""


def test_filter_end_to_end(
    tmp_path: Path, write_spec: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_jsonl(tmp_path / "corpus.jsonl", CORPUS)
    queries = write_jsonl(tmp_path / "queries.jsonl", QUERIES)
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text(QRELS)
    spec = write_spec(SPEC)
    pipe = embedpipe.load(spec)
    done = pipe.run()
    assert done.status == "completed" and done.steps["relevance"].rows_out == 0
    # not fitted yet: the error names the exact command
    with pytest.raises(ArtifactError, match=rf"pipe fit {spec} --step relevance --queries"):
        pipe.search("vitamin", 3)

    args = [PIPE, "fit", str(spec), "--step", "relevance", "--queries", str(queries),
            "--qrels", str(qrels), "--json"]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["artifact"].startswith("relevance/") and report["version"] == 1
    (path,) = (pipe.workspace / "artifacts" / "relevance").glob("*/v1/lineage.json")
    lineage = json.loads(path.read_text())
    assert lineage["queries"] == 6 and lineage["positives"] == 8 and lineage["model"]

    proc = subprocess.run([PIPE, "runs", str(spec), "--artifacts", "--json"],
                          capture_output=True, text=True)  # fmt: skip
    (listed,) = [a for a in json.loads(proc.stdout) if a["step"] == "relevance"]
    assert listed["artifact"] == report["artifact"] and listed["metrics"]["threshold"] == (
        report["threshold"])  # fmt: skip

    all_hits = pipe.search("vitamin and bones", 6, keep_all=True)
    assert len(all_hits) == 6
    threshold = report["threshold"]
    for h in all_hits:
        assert h["kept"] == (h["relevance"] >= threshold)
    rel = [h["relevance"] for h in all_hits]
    assert rel == sorted(rel, reverse=True)  # monotone: the order of scores is kept
    kept = pipe.search("vitamin and bones", 6)
    assert [h["chunk_id"] for h in kept] == [h["chunk_id"] for h in all_hits if h["kept"]]
    # The artifact reloads with identical scores (another process).
    proc = subprocess.run([PIPE, "search", str(spec), "vitamin and bones", "-k", "6", "--all",
                           "--json"], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    again = json.loads(proc.stdout)
    assert [h["relevance"] for h in again] == pytest.approx(rel, abs=1e-12)
    assert list(again[0])[:4] == ["doc_id", "chunk_id", "score", "text"]
    # A threshold in the spec is query time: it overrides the fitted one, re-indexes nothing.
    loose = embedpipe.load(spec, overrides=["steps.relevance.threshold=0"])
    assert len(loose.search("vitamin and bones", 6)) == 6
    assert loose.run().steps["vectors"].computed == 0

    # pipe eval adds the filter object (DESIGN.md §9) and --plot draws its PR curve.
    png = tmp_path / "pr.png"
    args = [PIPE, "eval", str(spec), "--queries", str(queries), "--qrels", str(qrels), "--json",
            "--plot", str(png)]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)["filter"]
    assert {"threshold", "precision", "recall", "f1", "pr_auc", "precision_at_recall95",
            "baseline_threshold", "baseline_precision", "baseline_recall"} <= set(got)  # fmt: skip
    assert got["threshold"] == pytest.approx(threshold) and got["baseline_recall"] >= got["recall"]
    assert png.read_bytes()[:4] == b"\x89PNG"

    # A query-time setting upstream changes the scores it was fitted on: it needs a new fit.
    prompted = embedpipe.load(spec, overrides=["steps.vectors.prompts.query=query: "])
    with pytest.raises(ArtifactError, match="pipe fit"):
        prompted.search("vitamin and bones", 3)
    # A sweep measures the index in scratch workspaces: the filter's stage is left out there.
    monkeypatch.setattr(evaluate, "SWEEP", tuple(x for x in evaluate.SWEEP if x[0] == "float"))
    (swept,) = pipe.sweep(queries, qrels, k=10)
    assert swept.ndcg_10 > 0 and "filter" not in swept.extra

    # The plain baseline needs no fit when its threshold is in the spec.
    base = embedpipe.load(spec, overrides=["steps.relevance.method=cosine_threshold",
                                           "steps.relevance.threshold=0.3"])  # fmt: skip
    hits = base.search("vitamin and bones", 6, keep_all=True)
    assert all(h["relevance"] == h["score"] and h["kept"] == (h["score"] >= 0.3) for h in hits)


def test_filter_spec_errors(tmp_path: Path, write_spec: Callable[..., Path]) -> None:
    write_jsonl(tmp_path / "corpus.jsonl", CORPUS)
    spec = write_spec(SPEC)
    with pytest.raises(SpecError, match="target_precision or target_recall, not both"):
        embedpipe.load(spec, overrides=["steps.relevance.target_precision=0.5",
                                        "steps.relevance.target_recall=0.5"])  # fmt: skip
    with pytest.raises(SpecError, match=r"steps\.relevance\.input: step 'relevance' \(filter\) "
                       "acts on searches, but no index step"):  # fmt: skip
        embedpipe.load(spec, overrides=["steps.relevance.input=vectors"])
    with pytest.raises(SpecError, match="a filter writes nothing at index time"):
        embedpipe.load(spec, overrides=["steps.index.input=relevance",
                                        "steps.relevance.input=vectors"])  # fmt: skip
    with pytest.raises(SpecError, match="cosine_threshold has no family"):
        embedpipe.load(spec, overrides=["steps.relevance.method=cosine_threshold",
                                        "steps.relevance.family=sqrt"])  # fmt: skip


def test_filter_metrics_by_hand() -> None:
    from embedpipe.engine.evaluate import filter_metrics

    # (relevant?, relevance, raw score, kept): the filter keeps the first two
    rows = np.array([[1, 0.9, 0.5, 1], [0, 0.8, 0.7, 1], [1, 0.2, 0.6, 0], [0, 0.1, 0.4, 0]])
    got, _ = filter_metrics(rows, 0.5)
    assert got["precision"] == 0.5 and got["recall"] == 0.5 and got["f1"] == 0.5
    # relevance ranks relevant, not, relevant, not: AP = (1/1 + 2/3) / 2
    assert got["pr_auc"] == pytest.approx((1 + 2 / 3) / 2, abs=1e-6)
    assert got["precision_at_recall95"] == pytest.approx(2 / 3, abs=1e-6)
    # raw scores rank not, relevant, relevant, not: recall 0.5 needs the top two (0.6)
    assert got["baseline_threshold"] == 0.6 and got["baseline_precision"] == 0.5
    assert got["baseline_recall"] == 0.5


def test_unreachable_precision_and_the_threshold_baseline() -> None:
    # every query's top hit is irrelevant: precision 1 is out of reach of any threshold
    odd = adapter.TrainingData(
        [f"q{i}" for i in range(10)],
        None,
        [np.array([0.9, 0.5, 0.1])] * 10,
        [np.array([0.0, 1, 0])] * 10,
    )
    hard = FilterConfig(type="filter", input="index", method="cosine_threshold",
                        target_precision=1.0)  # fmt: skip
    state, report = adapter.fit(hard, odd)
    # flagged, and the cut of best precision (0.5, at 0.5) rather than one keeping nothing
    assert report["target_met"] is False and float(state["threshold"]) == 0.5
    assert report["precision"] == 0.5 and report["recall"] == 1.0
    data = synthetic(60)
    plain = FilterConfig(type="filter", input="index", method="cosine_threshold")
    state, report = adapter.fit(plain, data)  # no target: the held-out scores' median
    _, held = adapter.split(len(data.qids), plain.holdout, plain.seed)
    median = np.median(np.concatenate([data.scores[i] for i in held]))
    assert float(state["threshold"]) == pytest.approx(median) and "target_met" not in report
    assert np.all(adapter.sigmoid(np.array([-1e4, 0.0, 1e4])) == [0.0, 0.5, 1.0])
