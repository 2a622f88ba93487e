"""The keywords step and its keyword_boost stage, on in-memory tables (no model, no index)."""

from __future__ import annotations

import pyarrow as pa
from embedpipe_keyword_boost import KeywordBoost, Keywords, keywords

from embedpipe import schemas
from embedpipe.steps import Link
from embedpipe.testing import StepContract, make_step, run_step

DIMS = 4
TEXTS = [
    "Bees, bees and more BEES! The hive hums; bees dance. Honey, honey.",
    "Volcanic ash clouds cool the planet after a large eruption.",
    "A sourdough starter is wild yeast and lactic acid bacteria.",
    "",
]


def encoded(texts: list[str] = TEXTS) -> pa.Table:
    """Rows shaped like encode's output, with tiny vectors."""
    n = len(texts)
    schema = schemas.embeddings(DIMS)
    columns = {
        "chunk_id": [f"d{i}#0" for i in range(n)],
        "doc_id": [f"d{i}" for i in range(n)],
        "ordinal": [0] * n,
        "text": texts,
        "title": [f"Doc {i}" for i in range(n)],
        "n_tokens": [len(t.split()) for t in texts],
        "char_start": [0] * n,
        "char_end": [len(t) for t in texts],
        "content_hash": [f"h{i}" for i in range(n)],
        "vector": [[float(i), 0.5, -0.5, 1.0] for i in range(n)],
        "model": ["tiny"] * n,
        "model_revision": ["tiny==0"] * n,
        "dims": [DIMS] * n,
        "normalized": [False] * n,
    }
    return pa.table(columns, schema=schema)


class TestKeywordsContract(StepContract):
    step_type = "keywords"
    config = {"input": "vectors"}

    def sample(self) -> pa.Table:
        return encoded()


def test_keywords_are_the_most_frequent_terms() -> None:
    step = make_step("keywords", {"input": "vectors", "top": 3})
    out = run_step(step, [encoded()]).table
    # bees x4, honey x2, then dance/hive/hums once each: ties go alphabetically; "and",
    # "more" and "the" are stopwords.
    assert out.column("keywords").to_pylist() == [
        "bees honey dance",
        "ash clouds cool",
        "acid bacteria lactic",
        "",
    ]
    assert keywords("The sun's rays, the SUN!", 8) == "sun rays"


def test_every_input_column_passes_through() -> None:
    rows = encoded()
    step = make_step("keywords", {"input": "vectors"})
    out = run_step(step, [rows]).table
    assert out.column_names == [*rows.column_names, "keywords"]
    assert out.drop_columns(["keywords"]).equals(rows)
    declared = step.output_schema([Link("vectors", rows.schema)])
    assert declared.names == out.column_names
    # field metadata (the vector column's metric) survives, so the index still finds it
    assert schemas.metric_of(declared.field("vector")) == "cosine"
    assert schemas.metric_of(out.schema.field("vector")) == "cosine"


def hit(chunk_id: str, score: float, words: str) -> dict:
    return {"doc_id": chunk_id.split("#")[0], "chunk_id": chunk_id, "score": score,
            "text": "...", "title": "", "keywords": words}  # fmt: skip


def test_stage_moves_matching_hits_up() -> None:
    step = make_step("keywords", {"input": "vectors", "boost": 0.1})
    [stage] = step.query_stages()
    assert isinstance(stage, KeywordBoost)
    assert (stage.name, stage.columns, stage.depth) == ("keyword_boost", ("keywords",), 3)
    hits = [hit("a#0", 0.80, "bread yeast"), hit("b#0", 0.75, "volcanic ash eruption")]
    [out] = stage(["Volcanic eruptions and the ash they spread"], [hits])
    assert [h["chunk_id"] for h in out] == ["b#0", "a#0"]
    assert out[0]["keyword_boost"] == 0.2 and isinstance(out[0]["keyword_boost"], float)
    assert abs(out[0]["score"] - 0.95) < 1e-9
    assert out[1]["keyword_boost"] == 0.0 and out[1]["score"] == 0.80


def test_zero_boost_keeps_the_order() -> None:
    step = make_step("keywords", {"input": "vectors", "boost": 0})
    [stage] = step.query_stages()
    hits = [hit("a#0", 0.80, "bread yeast"), hit("b#0", 0.75, "volcanic ash eruption")]
    [out] = stage(["volcanic ash"], [[dict(h) for h in hits]])
    assert [h["chunk_id"] for h in out] == ["a#0", "b#0"]
    assert [h["score"] for h in out] == [0.80, 0.75]
    assert all(h["keyword_boost"] == 0.0 for h in out)


def test_stage_handles_each_query_of_a_batch() -> None:
    [stage] = make_step("keywords", {"input": "vectors", "boost": 0.5}).query_stages()
    first = [hit("a#0", 0.9, "bread"), hit("b#0", 0.8, "bees")]
    second = [hit("a#0", 0.9, "bread"), hit("b#0", 0.8, "bees")]
    out = stage(["bees", "bread"], [first, second])
    assert [h["chunk_id"] for h in out[0]] == ["b#0", "a#0"]
    assert [h["chunk_id"] for h in out[1]] == ["a#0", "b#0"]


def test_boost_is_query_time_only() -> None:
    """Changing boost re-computes nothing: it is out of the step's identity."""
    a = make_step("keywords", {"input": "vectors", "boost": 0.05})
    b = make_step("keywords", {"input": "vectors", "boost": 1.0})
    assert a.config.identity() == b.config.identity()
    assert make_step("keywords", {"input": "vectors", "top": 3}).config.identity() != (
        a.config.identity()
    )
    assert Keywords.row_wise
