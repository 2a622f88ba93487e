"""The example plugin (examples/embedpipe-keyword-boost) end to end: a step, an index column and
a query stage that the engine knows nothing about, through the real `pipe` command."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import embedpipe

# Five short documents. Only chess.txt has one of the query's words ("ash"); volcano.md is the
# one that means the same as the query, in other words ("volcano erupts" is not "volcanic
# eruption" to the keyword tokenizer). With boost 2.0 per matching term, chess.txt
# must come first (cosine similarities differ by less than 2), while without boosting the
# volcano document leads.
DOCS = {
    "volcano.md": """
        # Mountains of fire

        When a volcano erupts, magma rising through the crust bursts out of the mountain,
        hurling molten rock and tephra high into the sky; the dust darkens the sky for weeks.
    """,
    "chess.txt": """
        The chess club meets in the Ash room on Tuesdays to study the Sicilian Defence.
        Bring your own board; the Ash room has tea.
    """,
    "bees.md": """
        # Honeybee navigation

        Honeybees use the position of the sun and a waggle dance to share flower locations.
    """,
    "bread.txt": """
        A sourdough starter is a culture of wild yeast and lactic acid bacteria kept in flour.
    """,
    "holes.md": """
        # Black holes

        Matter falling into a black hole heats up and emits X-rays before the horizon.
    """,
}

SPEC = """
name: plugdemo
workspace: ws
steps:
  docs: {type: ingest, source: corpus, include: ["*.md", "*.txt"]}
  chunks: {type: chunk, input: docs, strategy: tokens, max_tokens: 128, overlap: 8}
  vectors: {type: encode, input: chunks, batch_size: 8}
  keywords: {type: keywords, input: vectors, top: 8, boost: 2.0}
  index: {type: index, input: keywords, table: plugdemo}
"""

QUERY = "volcanic eruption ash"


def pipe(*args: str) -> Any:
    """Run the real CLI with --json; return its (last) JSON document."""
    proc = subprocess.run(
        [sys.executable, "-m", "embedpipe.cli", *args, "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def name(doc_or_chunk_id: str) -> str:
    """The file name in a doc_id (``corpus/chess.txt``) or chunk_id (``corpus/chess.txt#0``)."""
    return Path(doc_or_chunk_id.split("#")[0]).name


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert importlib.util.find_spec("embedpipe_keyword_boost"), (
        "the example plugin is not installed: pip install -e examples/embedpipe-keyword-boost "
        "(make test does)"
    )
    root = tmp_path_factory.mktemp("plugin")
    (root / "corpus").mkdir()
    for name, text in DOCS.items():
        (root / "corpus" / name).write_text(textwrap.dedent(text).strip() + "\n")
    path = root / "spec.yaml"
    path.write_text(SPEC.lstrip())
    out = pipe("run", str(path))
    assert out["status"] == "completed", out
    assert list(out["steps"]) == ["docs", "chunks", "vectors", "keywords", "index"]
    assert all(s["rows_out"] == 5 for s in out["steps"].values()), out["steps"]
    return path


def test_keywords_column_is_in_the_table(spec: Path) -> None:
    rows = pipe("sql", str(spec), "select chunk_id, keywords from plugdemo order by chunk_id")
    by_doc = {name(r["chunk_id"]): r["keywords"].split() for r in rows}
    assert set(by_doc) == set(DOCS)
    assert all(0 < len(words) <= 8 for words in by_doc.values())
    assert by_doc["chess.txt"][:2] == ["ash", "room"]  # twice each; ties go alphabetically
    assert "ash" not in by_doc["volcano.md"] and "sky" in by_doc["volcano.md"]


@pytest.fixture(scope="module")
def boosted(spec: Path) -> list[dict[str, Any]]:
    """`pipe search --json` hits for QUERY, all five documents."""
    return pipe("search", str(spec), QUERY, "-k", "5")


def test_search_is_boosted_by_keywords(spec: Path, boosted: list[dict[str, Any]]) -> None:
    plain = pipe("search", str(spec), QUERY, "-k", "5", "--set", "steps.keywords.boost=0")
    assert len(boosted) == len(plain) == 5
    assert all("keyword_boost" in h and "keywords" not in h for h in boosted + plain)
    assert all(h["keyword_boost"] == 0 for h in plain)

    # the stage added 2.0 per matching term to the plain score, and re-sorted by it
    base = {h["chunk_id"]: h["score"] for h in plain}
    assert set(base) == {h["chunk_id"] for h in boosted}
    for h in boosted:
        assert h["score"] == pytest.approx(base[h["chunk_id"]] + h["keyword_boost"])
    scores = [h["score"] for h in boosted]
    assert scores == sorted(scores, reverse=True)

    # the document that shares the query's words moves to the top; meaning alone ranks it lower
    assert name(boosted[0]["doc_id"]) == "chess.txt" and boosted[0]["keyword_boost"] == 2.0
    assert name(plain[0]["doc_id"]) == "volcano.md"
    assert [h["chunk_id"] for h in boosted] != [h["chunk_id"] for h in plain]


def test_python_api_gives_the_same_hits(spec: Path, boosted: list[dict[str, Any]]) -> None:
    cli = boosted
    api = embedpipe.load(spec).search(QUERY, 5)
    assert [h["chunk_id"] for h in api] == [h["chunk_id"] for h in cli]
    for a, c in zip(api, cli, strict=True):
        assert a["score"] == pytest.approx(c["score"], abs=1e-6)
        assert a["keyword_boost"] == c["keyword_boost"]
        assert "keywords" not in a  # fetched for the stage only
