"""`pipe eval`: retrieval quality, size and latency of an index, on BEIR-format queries and qrels.

Every query goes through the same search pipeline `pipe search` uses (``Searcher``), one at a
time, so latency is what a user's single query costs (encoding included). Chunks are folded to
documents, each scored by its best chunk, and the metrics come from ir-measures (nDCG@10,
R@10, R@100, RR@10 — pytrec_eval underneath). When an ANN index answered, the same queries are
searched exactly as well, and the ANN's recall@10 against exact search is reported.

``sweep`` evaluates compression settings on one index without re-encoding: each setting is the
spec with a ``compress`` step (and index settings) changed through overrides, run in a scratch
workspace whose step caches are links to the main one's, so vectors come from the cache and only
codes and the table are made.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedpipe import dag as dag_mod
from embedpipe.dag import Dag
from embedpipe.engine.catalog import Catalog, now
from embedpipe.engine.search import Searcher
from embedpipe.engine.workspace import Workspace
from embedpipe.errors import EvalError, NotIndexed
from embedpipe.results import EvalResult, best_per_document

KEY = "doc_id"  # qrels name documents; hits are chunks, folded to their documents


# -- inputs: BEIR queries and qrels ----------------------------------------------------------------
def read_queries(path: Path) -> dict[str, str]:
    """``{query id: text}`` from a BEIR ``queries.jsonl`` (``_id`` and ``text`` per line)."""
    out: dict[str, str] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalError(f"{path}: cannot read the queries file ({exc})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            qid, text = row["_id"], row["text"]
        except (ValueError, KeyError, TypeError):
            raise EvalError(
                f'{path}:{n}: not a query line; each line is a JSON object with "_id" and '
                '"text", e.g. {"_id": "q1", "text": "what is ..."}'
            ) from None
        out[str(qid)] = str(text)
    if not out:
        raise EvalError(f"{path}: no queries in the file")
    return out


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """``{query id: {doc id: relevance}}`` from a BEIR qrels TSV (``query-id corpus-id score``,
    with or without its header) or a TREC qrels file (``qid 0 docid rel``)."""
    out: dict[str, dict[str, int]] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalError(f"{path}: cannot read the qrels file ({exc})") from None
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts or (n == 1 and parts[0].lower() in ("query-id", "query_id", "qid")):
            continue
        if len(parts) not in (3, 4):
            raise EvalError(
                f"{path}:{n}: expected 'query-id<TAB>corpus-id<TAB>score' (BEIR) or "
                f"'qid 0 docid rel' (TREC), found {len(parts)} fields"
            )
        qid, doc, rel = (parts[0], parts[1], parts[2]) if len(parts) == 3 else (
            parts[0], parts[2], parts[3])  # fmt: skip
        try:
            out.setdefault(qid, {})[doc] = int(float(rel))
        except ValueError:
            raise EvalError(f"{path}:{n}: relevance '{rel}' is not a number") from None
    if not out:
        raise EvalError(f"{path}: no judgements in the file")
    return out


# -- metrics --------------------------------------------------------------------------------------
MEASURES = ("nDCG@10", "R@10", "R@100", "RR@10")


def metrics(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean nDCG@10, R@10, R@100 and RR@10 over the queries of ``qrels`` (ir-measures). A
    query with no hit scores 0 (it is not dropped, which would flatter the mean)."""
    import ir_measures

    measures = [ir_measures.parse_measure(m) for m in MEASURES]
    judged = {q: docs for q, docs in qrels.items() if any(r > 0 for r in docs.values())}
    sums = dict.fromkeys(MEASURES, 0.0)
    for m in ir_measures.iter_calc(measures, _qrels(judged), _run(run, judged)):
        sums[str(m.measure)] += float(m.value)
    n = len(judged)
    return {k: (v / n if n else 0.0) for k, v in sums.items()}


def _qrels(qrels: dict[str, dict[str, int]]) -> list[Any]:
    import ir_measures

    return [ir_measures.Qrel(q, d, r) for q, docs in qrels.items() for d, r in docs.items()]


def _run(run: dict[str, dict[str, float]], judged: dict[str, Any]) -> list[Any]:
    import ir_measures

    return [
        ir_measures.ScoredDoc(q, d, float(s))
        for q, docs in run.items()
        if q in judged
        for d, s in docs.items()
    ]


def documents(hits: Sequence[dict[str, Any]], k: int) -> dict[str, float]:
    """The top ``k`` documents of a query's chunk hits, each scored by its best chunk."""
    best = best_per_document(hits)
    return {doc: float(h["score"]) for doc, h in list(best.items())[:k]}


def _document_marks(
    hits: Sequence[dict[str, Any]], found: dict[str, float]
) -> dict[str, tuple[float, float, bool]]:
    """(relevance, score, kept) of each document in ``found``: its best chunk's."""
    best = best_per_document(hits)
    return {d: (float(best[d]["relevance"]), float(best[d]["score"]), bool(best[d]["kept"]))
            for d in found}  # fmt: skip


def _curve(values: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and threshold at every cut of ``values`` (highest first), cutting
    only between distinct values."""
    order = np.argsort(-values, kind="stable")
    v, t = values[order], y[order]
    tp = np.cumsum(t)
    cut = np.r_[v[1:] != v[:-1], True]
    precision = (tp / np.arange(1, len(t) + 1))[cut]
    recall = (tp / max(1.0, t.sum()))[cut]
    return precision, recall, v[cut]


def _average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """PR-AUC as average precision: precision at each cut weighted by the recall it adds."""
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def filter_metrics(
    rows: np.ndarray, threshold: float | None
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """The `filter` object of `pipe eval` (DESIGN.md §9) over every (query, retrieved top-k
    document) pair; ``rows`` = (relevant?, relevance, raw score, kept). Precision and recall are
    those of the kept set among the retrieved documents; the baseline is one global raw-score
    threshold, the highest that reaches the same recall on the same queries."""
    y, rel, raw, kept = rows[:, 0] > 0, rows[:, 1], rows[:, 2], rows[:, 3] > 0
    positives = max(1, int(y.sum()))

    def at(mask: np.ndarray) -> tuple[float, float, float]:
        tp = float((mask & y).sum())
        p = tp / mask.sum() if mask.sum() else 0.0
        r = tp / positives
        return p, r, (2 * p * r / (p + r) if p + r else 0.0)

    precision, recall, f1 = at(kept)
    p_curve, r_curve, _ = _curve(rel, y.astype(float))
    bp_curve, br_curve, b_cut = _curve(raw, y.astype(float))
    reach = np.flatnonzero(br_curve >= recall - 1e-12)
    b_threshold = float(b_cut[reach[0]]) if len(reach) else float(raw.min())
    b_precision, b_recall, _ = at(raw >= b_threshold)
    at95 = p_curve[r_curve >= 0.95]
    report = {
        "threshold": None if threshold is None else round(float(threshold), 6),
        "precision": round(precision, 6),
        "recall": round(recall, 6),
        "f1": round(f1, 6),
        "pr_auc": round(_average_precision(p_curve, r_curve), 6),
        "precision_at_recall95": round(float(at95.max()) if len(at95) else 0.0, 6),
        "baseline_threshold": round(b_threshold, 6),
        "baseline_precision": round(b_precision, 6),
        "baseline_recall": round(b_recall, 6),
        "baseline_pr_auc": round(_average_precision(bp_curve, br_curve), 6),
        "pairs": len(y),
        "relevant": int(y.sum()),
    }
    curves = {"filter": (r_curve, p_curve), "baseline": (br_curve, bp_curve),
              "at": (recall, precision), "baseline_at": (b_recall, b_precision)}  # fmt: skip
    return report, curves


NO_FILTER_PLOT = (
    "--plot without --sweep draws a filter step's precision-recall curve, and no step marks "
    "this index's hits relevant; add --sweep for the quality/cost plot"
)


def plot_filter(result: EvalResult, path: Path, title: str = "") -> Path:
    """Precision against recall of the filter's relevance and of the raw score (the baseline),
    each point the kept set at one threshold; the filter's threshold and the baseline's at the
    same recall marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not result.curves:
        raise EvalError(NO_FILTER_PLOT)
    c, report = result.curves, result.extra.get("filter", {})
    fig, ax = plt.subplots(figsize=(6.5, 5))
    ax.plot(*c["filter"], label=f"filter (PR-AUC {report.get('pr_auc', 0):.3f})", color="#4C72B0")
    ax.plot(*c["baseline"], label=f"raw score (PR-AUC {report.get('baseline_pr_auc', 0):.3f})",
            color="#DD8452")  # fmt: skip
    ax.scatter(*c["at"], color="#4C72B0", zorder=3, label="filter at its threshold")
    ax.scatter(*c["baseline_at"], color="#DD8452", marker="s", zorder=3,
               label="raw threshold, same recall")  # fmt: skip
    ax.set_xlabel("recall (of the relevant documents retrieved)")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or "relevance filter")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- one evaluation -------------------------------------------------------------------------------
@dataclass
class EvalInput:
    queries_path: Path
    qrels_path: Path
    k: int = 100
    queries: dict[str, str] = field(default_factory=dict)
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def read(cls, queries: Path, qrels: Path, k: int = 100) -> EvalInput:
        if k < 10:
            raise EvalError(f"-k {k}: at least 10 (nDCG@10 and recall@10 need 10 documents)")
        q, rels = read_queries(queries), read_qrels(qrels)
        missing = [qid for qid in rels if qid not in q]
        if len(missing) == len(rels):
            raise EvalError(
                f"no query of {qrels} is in {queries} (e.g. '{missing[0]}'): are they from "
                "the same dataset?"
            )
        rels = {qid: docs for qid, docs in rels.items() if qid in q}
        return cls(Path(queries), Path(qrels), k, {qid: q[qid] for qid in rels}, rels)


def evaluate(
    dag: Dag,
    data: EvalInput,
    *,
    step: str | None = None,
    config: str = "spec",
    record: bool = True,
    progress: Callable[[int], None] | None = None,
    without: Sequence[str] = (),
) -> EvalResult:
    """Search every judged query through ``dag``'s search pipeline and measure it (``without``:
    steps whose query stages are left out)."""
    t0 = time.perf_counter()
    searcher = Searcher(dag, step, without=without)
    ws = searcher.ws
    rows, docs = _table_documents(searcher)
    judged = {d for rels in data.qrels.values() for d, r in rels.items() if r > 0}
    if rows and not judged & docs:
        raise EvalError(
            f"no document {data.qrels_path} judges relevant is in table "
            f"'{searcher.target.table}' (e.g. '{next(iter(judged), '')}' is not; the table has "
            f"e.g. '{next(iter(docs), '')}'): are the qrels for this corpus and its ids?"
        )
    wanted = max(data.k, 100)  # documents per query: recall@100 needs 100
    # chunk hits per query: enough for `wanted` documents at the table's chunks per document;
    # a query whose hits fold into fewer documents is searched again, deeper
    first = wanted * max(1, min(20, math.ceil(rows / max(1, len(docs)))))
    ids = list(data.queries)
    searcher.search_many(ids[:1] and [data.queries[ids[0]]], 1)  # load the model, open the table
    run: dict[str, dict[str, float]] = {}
    top: dict[str, list[str]] = {}
    judged_rows: list[tuple[float, float, float, bool]] = []  # relevant?, relevance, score, kept
    latencies = []
    for qid in ids:
        start = time.perf_counter()
        depth = first
        while True:
            hits = searcher.search_many([data.queries[qid]], depth, refresh=False,
                                        keep_all=True)[0]  # fmt: skip
            found = documents(hits, wanted)
            if len(found) >= wanted or len(hits) < depth or depth >= rows:
                break
            depth *= 2
        latencies.append((time.perf_counter() - start) * 1000)
        run[qid] = found
        top[qid] = [str(h.get("chunk_id")) for h in hits[:10]]
        if hits and "relevance" in hits[0]:  # a filter stage marked the hits
            relevant = {d for d, r in data.qrels.get(qid, {}).items() if r > 0}
            marks = _document_marks(hits, found)
            judged_rows += [(float(d in relevant), *marks[d]) for d in found]
        if progress:
            progress(1)
    scores = metrics(data.qrels, run)
    ann_recall = None
    if searcher.column.ann is not None and searcher.held is None and _has_ann(searcher):
        texts = [data.queries[q] for q in ids]
        exact = searcher.search_many(texts, 10, exact=True, refresh=False, keep_all=True)
        overlap = [len(set(top[q]) & {str(h.get("chunk_id")) for h in e}) / max(1, len(e))
                   for q, e in zip(ids, exact, strict=True)]  # fmt: skip
        ann_recall = float(np.mean(overlap)) if overlap else None
    version = int(searcher.tbl.version)
    result = EvalResult(
        config=config,
        ndcg_10=round(scores["nDCG@10"], 6),
        recall_10=round(scores["R@10"], 6),
        recall_100=round(scores["R@100"], 6),
        mrr_10=round(scores["RR@10"], 6),
        queries=len(ids),
        bytes_per_vector=float(_bytes_per_vector(searcher)),
        index_bytes=index_bytes(searcher),
        latency_ms_p50=round(float(np.percentile(latencies, 50)), 3),
        latency_ms_p95=round(float(np.percentile(latencies, 95)), 3),
        ann_recall_10=None if ann_recall is None else round(ann_recall, 6),
        lance_version=version,
        seconds=round(time.perf_counter() - t0, 3),
        eval_id=f"{now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}",
    )
    if judged_rows:
        threshold = next((s.threshold for s in searcher.stages if hasattr(s, "threshold")), None)
        report, curves = filter_metrics(np.asarray(judged_rows, dtype=float), threshold)
        result.extra["filter"] = report
        result.curves = curves
    if record:
        _record(dag, ws, searcher, data, result)
    return result


def _table_documents(searcher: Searcher) -> tuple[int, set[str]]:
    """The table's row count and its distinct document ids."""
    import pyarrow.compute as pc

    ds = searcher.tbl.to_lance()
    rows = ds.count_rows()
    column = KEY if KEY in ds.schema.names else searcher.target.key
    return rows, set(pc.unique(ds.to_table(columns=[column]).column(column)).to_pylist())


def _has_ann(searcher: Searcher) -> bool:
    try:
        return bool(searcher.tbl.to_lance().list_indices())
    except Exception:
        return False


def _bytes_per_vector(searcher: Searcher) -> float:
    """Bytes of the searched column per row: what candidate search reads (codes or floats)."""
    t = searcher.column.type
    size = getattr(t, "list_size", None)
    if not size:
        ds = searcher.tbl.to_lance()
        first = ds.head(1, columns=[searcher.column.name]).column(0)
        size = len(first[0]) if len(first) else 0
    return size * t.value_type.bit_width / 8


def index_bytes(searcher: Searcher) -> int:
    """Bytes on disk of the table's current version: its data, deletion and index files."""
    ds = searcher.tbl.to_lance()
    files = ds.tracked_files(min_version=ds.version).read_all().to_pylist()
    paths = [
        f["path"]
        for f in files
        if f["version"] == ds.version and str(f["type"]) not in ("manifest", "transaction file")
    ]
    store = re.match(r"^([A-Za-z][\w+.-]+):/*(.*)$", ds.uri)  # s3://b/p, file-object-store:/p
    if store is None:
        root = Path(ds.uri)
        return sum((root / p).stat().st_size for p in paths if (root / p).exists())
    return _stored_bytes(ds, paths, *store.groups())


def _stored_bytes(ds: Any, paths: list[str], scheme: str, rest: str) -> int:
    """``index_bytes`` of a table in an object store: the files' sizes as Arrow's file system
    for the URI lists them (credentials from the environment), or, where Arrow cannot reach
    it, the data files' sizes Lance recorded when it wrote them."""
    import pyarrow.fs as pafs

    uri = f"file:///{rest}" if "file" in scheme else f"{scheme}://{rest}"
    try:
        fs, base = pafs.FileSystem.from_uri(uri)
        infos = fs.get_file_info([f"{base.rstrip('/')}/{p}" for p in paths])
        return sum(i.size for i in infos if i.type == pafs.FileType.File)
    except Exception:
        data = [d for f in ds.get_fragments() for d in f.metadata.files]
        return sum(int(d.file_size_bytes or 0) for d in data)


def _record(dag: Dag, ws: Workspace, searcher: Searcher, data: EvalInput, r: EvalResult) -> None:
    catalog = Catalog(ws.catalog_path, dag.spec.path)
    last = catalog.last_completed() or {}
    catalog.record_eval(
        eval_id=r.eval_id,
        run_id=last.get("run_id"),
        pipeline=dag.spec.name,
        spec_hash=dag.spec.hash,
        step=searcher.step,
        index_table=searcher.target.table,
        lance_version=r.lance_version,
        config=r.config,
        queries_path=str(data.queries_path),
        qrels_path=str(data.qrels_path),
        k=data.k,
        evaluated_at=now(),
        seconds=r.seconds,
        ndcg_10=r.ndcg_10,
        recall_10=r.recall_10,
        recall_100=r.recall_100,
        mrr_10=r.mrr_10,
        queries=r.queries,
        bytes_per_vector=r.bytes_per_vector,
        index_bytes=r.index_bytes,
        latency_ms_p50=r.latency_ms_p50,
        latency_ms_p95=r.latency_ms_p95,
        ann_recall_10=r.ann_recall_10,
        metrics=json.dumps(r.to_json()),
    )


# -- the compression sweep ------------------------------------------------------------------------
# (name, compress settings or None for the floats as they are, index settings)
SWEEP: tuple[tuple[str, dict[str, Any] | None, dict[str, Any]], ...] = (
    ("float", None, {}),
    ("int8", {"method": "int8"}, {"store_vectors": False}),
    ("binary", {"method": "binary"}, {"store_vectors": False}),
    ("binary+rescore4", {"method": "binary"}, {"rescore": 4}),
    ("binary+rescore10", {"method": "binary"}, {"rescore": 10}),
    ("binary-asymmetric", {"method": "binary"}, {"asymmetric": True, "store_vectors": False}),
    *(
        (f"{m}-{d}", {"method": m, "dims": d}, {"store_vectors": False})
        for m in ("matryoshka", "pca")
        for d in (64, 128, 256)
    ),
)
CODES_STEP = "sweep_codes"


def sweep_overrides(dag: Dag, step: str | None = None) -> list[tuple[str, list[str]]]:
    """Each sweep setting as ``--set`` overrides of ``dag``'s spec: a compress step fed by the
    step that makes the float vectors, the index step reading its codes."""
    index, _ = dag.index(step)
    source = _float_source(dag, index)
    configs = []
    # Every index setting a sweep varies is set for every setting, so none of the spec's own
    # (a rescore, asymmetric, an ANN index on codes) leaks into another; all search exactly.
    base = {"rescore": None, "rescore_column": "vector", "asymmetric": False,
            "store_vectors": True, "metric": None, "ann.type": "none"}  # fmt: skip
    for name, codes, settings in SWEEP:
        sets = []
        if codes is None:
            sets += [f"steps.{index}.input={source}", f"steps.{index}.column=vector"]
        else:
            sets += [f"steps.{CODES_STEP}.type=compress", f"steps.{CODES_STEP}.input={source}"]
            sets += [f"steps.{CODES_STEP}.{k}={v}" for k, v in codes.items()]
            sets += [f"steps.{index}.input={CODES_STEP}", f"steps.{index}.column=code"]
        for key, value in {**base, **settings}.items():
            sets.append(f"steps.{index}.{key}={json.dumps(value)}")
        configs.append((name, sets))
    return configs


def _float_source(dag: Dag, index: str) -> str:
    """The step upstream of ``index`` that makes the float ``vector`` column (the encoder)."""
    for s in dag.ancestors(index):
        if s.query_encoder("vector") is not None and s.query_scorer("vector") is None:
            return s.name
    raise EvalError(
        f"--sweep needs the float vectors the index step '{index}' is built from; no step "
        "upstream of it makes a 'vector' column with a query encoder"
    )


def sweep(
    dag: Dag,
    data: EvalInput,
    *,
    step: str | None = None,
    overrides: list[str] | None = None,
    on_result: Callable[[EvalResult], None] | None = None,
    keep: bool = False,
) -> list[EvalResult]:
    """Evaluate every setting of ``SWEEP`` on the spec's data, encoding nothing again."""
    from embedpipe.engine.flow import execute

    ws = Workspace.of(dag.spec)
    index, target = dag.index(step)
    if not ws.table_exists(target.table):
        raise NotIndexed(
            f"table '{target.table}' does not exist in {ws.root} yet; --sweep reuses its "
            f"vectors: run first: pipe run {dag.spec.path}"
        )
    main_version = ws.table_version(target.table)
    # Scratch workspaces beside the main one's caches (hard links need one file system), in a
    # folder of this sweep's own: two sweeps at once never remove each other's.
    (ws.root / "sweep").mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{now():%Y%m%dT%H%M%S}-", dir=ws.root / "sweep"))
    results = []
    for name, sets in sweep_overrides(dag, step):
        variant_ws = scratch / name
        shutil.rmtree(variant_ws, ignore_errors=True)
        _link_caches(ws.root, variant_ws)
        # Its tables in the scratch workspace too, wherever the spec keeps its own.
        local = [f"tables.uri={variant_ws / 'lance'}", "tables.storage_options={}"]
        variant = dag_mod.load(
            dag.spec.path, overrides=[*(overrides or []), *sets, *local], workspace=variant_ws
        )
        run = execute(variant, overrides=sets, console=None, progress=False)
        if run.status != "completed":
            raise EvalError(f"sweep setting {name}: its run failed: {run.error}")
        # A step with fitted query-time state (a relevance filter) has none in the scratch
        # workspace, and the sweep measures the index: its stages are left out.
        fitted = [n for n in variant.order if variant.steps[n].trainable
                  and variant.steps[n].query_stages()]  # fmt: skip
        result = evaluate(variant, data, step=index, config=name, record=False, without=fitted)
        result.lance_version = main_version  # the scratch table is gone; these are its vectors
        _record(dag, ws, Searcher(variant, index), data, result)
        results.append(result)
        if on_result:
            on_result(result)
        if not keep:
            shutil.rmtree(variant_ws, ignore_errors=True)
    if not keep:
        shutil.rmtree(scratch, ignore_errors=True)
        with contextlib.suppress(OSError):
            (ws.root / "sweep").rmdir()  # when no other sweep is using it
    return results


def _link_caches(main: Path, variant: Path) -> None:
    """The variant workspace's step caches as hard links to the main one's files (Lance never
    rewrites a file in place), so its run finds every vector already computed."""
    src = main / "cache"
    if not src.is_dir():
        return
    shutil.copytree(src, variant / "cache", copy_function=_link)


def _link(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# -- the plot -------------------------------------------------------------------------------------
def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both cost (lower) and quality (higher),
    by increasing cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot(results: Sequence[EvalResult], path: Path, title: str = "") -> Path:
    """A PNG: nDCG@10 against bytes per vector and against p50 latency, Pareto fronts drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5), constrained_layout=True)
    panels = (("bytes_per_vector", "bytes per vector (log scale)", True),
              ("latency_ms_p50", "single-query latency p50 (ms)", False))  # fmt: skip
    for ax, (attr, label, log) in zip(axes, panels, strict=True):
        pts = [(float(getattr(r, attr)), r.ndcg_10) for r in results]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="tab:blue", zorder=3)
        for r, (x, y) in zip(results, pts, strict=True):
            ax.annotate(r.config, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        front = pareto(pts)
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], color="tab:orange",
                linestyle="--", label="Pareto front", zorder=2)  # fmt: skip
        if log:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(label)
        ax.set_ylabel("nDCG@10")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle(title or "quality against cost")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)
    return path
