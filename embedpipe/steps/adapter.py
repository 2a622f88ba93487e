"""The Cosine Adapter (arXiv 2408.04887) of the filter step: its forward pass in numpy (what a
search applies) and its fitting (`pipe fit`): training pairs from the pipeline's own hits, the
network trained with torch (binary cross-entropy, early stopping on held-out queries; torch is
imported only to fit), and the threshold chosen for a target precision or recall."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from embedpipe.errors import ArtifactError
from embedpipe.results import Hit, best_per_document
from embedpipe.steps.base import QueryEncoder

if TYPE_CHECKING:  # the filter step's config, read by attribute (no import: no cycle)
    FilterConfig = Any


class Adapter:
    """The adapter's forward pass in numpy (fitted with torch by adapter_fit)."""

    def __init__(self, arrays: dict[str, np.ndarray], family: str) -> None:
        self.w1, self.b1 = arrays["w1"], arrays["b1"]
        self.w2, self.b2 = arrays["w2"], arrays["b2"]
        self.family = family
        self.features = tuple(str(f) for f in arrays.get("features", ("embedding",)))

    @classmethod
    def load(cls, state: dict[str, np.ndarray]) -> Adapter:
        return cls(state, str(state["family"]))

    def params(self, queries: np.ndarray) -> np.ndarray:
        """(n, 3): a > 0, b, c > 0 per query."""
        h = np.maximum(np.asarray(queries, np.float64) @ self.w1.T + self.b1, 0)
        out = h @ self.w2.T + self.b2
        a = np.logaddexp(0, out[:, 0]) + 1e-3
        c = np.logaddexp(0, out[:, 2]) + 0.05
        return np.stack([a, out[:, 1], c], axis=1)

    def apply(self, query: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Relevance of each of a query's hits: ``query`` its embedding, ``scores`` its hits'."""
        if not len(scores):
            return np.zeros(0)
        a, b, c = self.params(inputs(self.features, query, scores)[None, :])[0]
        z = a * transform(self.family, np.asarray(scores, np.float64), c) + b
        return sigmoid(z)


def inputs(features: Sequence[str], query: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """What the network reads for one query: its embedding and/or its top hit's score (fixed
    per query, so the map stays monotone in each hit's own score)."""
    parts = []
    for name in features:
        if name == "embedding":
            parts.append(np.asarray(query, np.float64).reshape(-1))
        elif name == "top_score":
            parts.append(np.asarray([np.max(scores)], np.float64))
    return np.concatenate(parts)


def transform(family: str, s: np.ndarray, c: float | np.ndarray = 1.0) -> np.ndarray:
    """g(s), increasing in s for every family."""
    if family == "sqrt":
        return np.sign(s) * np.sqrt(np.abs(s))
    if family == "quadratic":
        return np.sign(s) * s * s
    if family == "power":
        return np.sign(s) * np.abs(s) ** c
    return s


@dataclass
class TrainingData:
    """Per judged query: its embedding, its retrieved documents' scores (a document scores its
    best chunk) and whether its qrels mark each relevant."""

    qids: list[str]
    vectors: np.ndarray | None  # (queries, dims); None when nothing needs them
    scores: list[np.ndarray]
    hits: list[np.ndarray]  # per query: 1.0 relevant, 0.0 not

    @property
    def labels(self) -> np.ndarray:
        return np.concatenate(self.hits) if self.hits else np.zeros(0)

    def labels_digest(self) -> str:
        blob = b"".join(np.asarray(s, np.float32).tobytes() for s in self.scores)
        blob += self.labels.astype(np.uint8).tobytes()
        return hashlib.sha256(blob).hexdigest()[:16]


def training_data(
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    search: Callable[[list[str], int], list[list[Hit]]],
    encode: QueryEncoder | None,
    depth: int,
) -> TrainingData:
    """Search every judged query (``depth`` documents each) and label its documents."""
    qids = [q for q in qrels if q in queries and any(r > 0 for r in qrels[q].values())]
    if not qids:
        raise ArtifactError(
            "no query in --queries has a relevant document in --qrels: are they the same split?"
        )
    texts = [queries[q] for q in qids]
    # chunk hits, deeper for a query whose chunks fold into fewer than `depth` documents (as
    # `pipe eval` does), so the threshold is chosen on lists as deep as those it is judged on
    k = depth * 3
    found = search(texts, k)
    while short := [i for i, h in enumerate(found) if len(h) == k and _docs(h) < depth]:
        k *= 4
        for i, hits in zip(short, search([texts[i] for i in short], k), strict=True):
            found[i] = hits
    scores, labels = [], []
    for qid, hits in zip(qids, found, strict=True):
        top = list(best_per_document(hits).items())[:depth]
        best = {doc: float(h["score"]) for doc, h in top}
        relevant = {d for d, r in qrels[qid].items() if r > 0}
        scores.append(np.fromiter(best.values(), np.float64, len(best)))
        labels.append(np.asarray([d in relevant for d in best], np.float64))
    if not any(lab.any() for lab in labels):
        raise ArtifactError(
            "no relevant document of --qrels is among the index's hits for these queries: "
            "are the qrels for this corpus and its ids?"
        )
    vectors = np.asarray(encode(texts), np.float32) if encode is not None else None
    return TrainingData(qids, vectors, scores, labels)


def _docs(hits: list[Hit]) -> int:
    return len({str(h["doc_id"]) for h in hits})


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-z) without overflow for large |z|."""
    return np.exp(-np.logaddexp(0, -z))


def split(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Query indices for training and held out (at least one each when n >= 2)."""
    order = np.random.default_rng(seed).permutation(n)
    held = min(n - 1, max(1, round(n * holdout))) if n >= 2 else 0
    return np.sort(order[held:]), np.sort(order[:held])


def fit(config: FilterConfig, data: TrainingData) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The fitted state (arrays for the artifact) and a report of held-out metrics."""
    train, held = split(len(data.qids), config.holdout, config.seed)
    if not len(held):
        held = train
    report: dict[str, Any] = {"train_queries": len(train), "held_out_queries": len(held)}
    state: dict[str, np.ndarray] = {
        "family": np.asarray(config.family),
        "features": np.asarray(list(config.features)),
    }
    if config.method == "cosine_adapter":
        assert data.vectors is not None
        arrays, trained = _train(config, data, train, held)
        state |= arrays
        report |= trained
        net = Adapter(state, config.family)
        rel = [net.apply(data.vectors[i], data.scores[i]) for i in held]
        default = 0.5
    else:
        rel = [data.scores[i] for i in held]
        default = float(np.median(np.concatenate(rel))) if rel else 0.5
    labels = np.concatenate([data.hits[i] for i in held])
    values = np.concatenate(rel)
    threshold = choose_threshold(values, labels, config.target_precision, config.target_recall)
    if threshold is None:
        threshold = default
    state["threshold"] = np.asarray(threshold)
    kept = values >= threshold
    found = pr_at(kept, labels)
    report |= {"threshold": round(float(threshold), 6), **_rounded(found)}
    if config.target_precision is not None:
        report["target_met"] = bool(found["precision"] >= config.target_precision)
    elif config.target_recall is not None:
        report["target_met"] = bool(found["recall"] >= config.target_recall)
    return state, report


def _rounded(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in d.items()}


def pr_at(kept: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    tp = float((kept & (labels > 0)).sum())
    precision = tp / kept.sum() if kept.sum() else 0.0
    recall = tp / (labels > 0).sum() if (labels > 0).sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def choose_threshold(
    values: np.ndarray, labels: np.ndarray, precision: float | None, recall: float | None
) -> float | None:
    """The threshold on ``values`` that serves the target: the lowest reaching ``precision``
    (most recall), or the highest reaching ``recall``; None without a target."""
    if precision is None and recall is None:
        return None
    order = np.argsort(-values, kind="stable")
    v, y = values[order], (labels[order] > 0).astype(np.float64)
    tp = np.cumsum(y)
    prec = tp / np.arange(1, len(y) + 1)
    rec = tp / max(1.0, y.sum())
    # only cut between distinct values: the last index of each run of equal values
    last = np.r_[v[1:] != v[:-1], True]
    if recall is not None:
        ok = np.flatnonzero(last & (rec >= recall))
        return float(v[ok[0]]) if len(ok) else float(v[-1])
    ok = np.flatnonzero(last & (prec >= precision))
    if not len(ok):  # unreachable: the cut of best precision (reported as missed)
        ok = np.flatnonzero(last & (prec >= prec[last].max()))
    return float(v[ok[-1]])


def _train(
    config: FilterConfig, data: TrainingData, train: np.ndarray, held: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    import torch

    torch.manual_seed(config.seed)
    assert data.vectors is not None
    dims = len(inputs(config.features, data.vectors[0], data.scores[0]))

    def tensors(idx: np.ndarray) -> tuple[Any, Any, Any]:
        rows = np.concatenate([np.full(len(data.scores[i]), i) for i in idx])
        per_query = {i: inputs(config.features, data.vectors[i], data.scores[i]) for i in idx}
        q = torch.from_numpy(np.stack([per_query[i] for i in rows]).astype(np.float32))
        s = torch.from_numpy(np.concatenate([data.scores[i] for i in idx]).astype(np.float32))
        y = torch.from_numpy(np.concatenate([data.hits[i] for i in idx]).astype(np.float32))
        return q, s, y

    qt, st, yt = tensors(train)
    qh, sh, yh = tensors(held)
    net = torch.nn.Sequential(
        torch.nn.Linear(dims, config.hidden), torch.nn.ReLU(), torch.nn.Linear(config.hidden, 3)
    )
    # Start from one global map: a fitted logistic curve on the score, the same for every query.
    with torch.no_grad():
        a0, b0 = _logistic(st.numpy().astype(np.float64), yt.numpy(), config.family)
        net[2].weight.mul_(0.01)
        net[2].bias.copy_(
            torch.tensor([math.log(math.expm1(min(max(a0, 1e-2), 50.0))), b0, 0.5413])
        )
    optim = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=1e-4)

    def logits(q: Any, s: Any) -> Any:
        out = net(q)
        a = torch.nn.functional.softplus(out[:, 0]) + 1e-3
        c = torch.nn.functional.softplus(out[:, 2]) + 0.05
        g = s
        if config.family == "sqrt":
            g = torch.sign(s) * torch.sqrt(torch.abs(s))
        elif config.family == "quadratic":
            g = torch.sign(s) * s * s
        elif config.family == "power":
            g = torch.sign(s) * torch.abs(s) ** c
        return a * g + out[:, 1]

    loss_fn = torch.nn.BCEWithLogitsLoss()  # unweighted: relevance stays a probability
    best, best_state, patience, epoch = math.inf, None, 0, 0
    for epoch in range(1, 1001):  # noqa: B007 -- reported
        net.train()
        optim.zero_grad()
        loss = loss_fn(logits(qt, st), yt)
        loss.backward()
        optim.step()
        net.eval()
        with torch.no_grad():
            held_loss = float(torch.nn.functional.binary_cross_entropy_with_logits(
                logits(qh, sh), yh))  # fmt: skip
        if held_loss < best - 1e-5:
            best, patience = held_loss, 0
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            patience += 1
            if patience >= 30:
                break
    assert best_state is not None
    net.load_state_dict(best_state)
    arrays = {
        "w1": net[0].weight.detach().numpy().astype(np.float64),
        "b1": net[0].bias.detach().numpy().astype(np.float64),
        "w2": net[2].weight.detach().numpy().astype(np.float64),
        "b2": net[2].bias.detach().numpy().astype(np.float64),
    }
    return arrays, {"epochs": epoch, "held_out_bce": round(best, 6)}


def _logistic(s: np.ndarray, y: np.ndarray, family: str) -> tuple[float, float]:
    """One global logistic fit of y on g(s) (a few Newton steps): the adapter's start."""
    g = transform(family, s)
    mu, sd = g.mean(), g.std() or 1.0
    x = np.stack([(g - mu) / sd, np.ones_like(g)], axis=1)
    w = np.zeros(2)
    for _ in range(25):
        p = sigmoid(x @ w)
        grad = x.T @ (p - y)
        hess = (x.T * (p * (1 - p))) @ x + 1e-6 * np.eye(2)
        w -= np.linalg.solve(hess, grad)
    a, b = w[0] / sd, w[1] - w[0] * mu / sd
    if a > 50:  # the start is clamped at a = 50: keep the boundary -b/a where it was
        a, b = 50.0, b * 50 / a
    return float(max(a, 1e-2)), float(b)
