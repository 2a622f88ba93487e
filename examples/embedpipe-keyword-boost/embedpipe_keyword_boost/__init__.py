"""An example embedpipe plugin: a step that adds a column, and a query stage that reads it.

``keywords`` sits between ``encode`` and ``index``: it passes every column through and appends
``keywords``, each chunk's most frequent terms. The index keeps it (every input column lands in
the Lance table, so ``pipe sql`` sees it), and the step's query stage, ``keyword_boost``, adds
``boost`` to a hit's score for each query term among its keywords. No engine change is needed:
the step is found through the ``embedpipe.steps`` entry point, the stage through
``Step.query_stages()``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence

import pyarrow as pa
from pydantic import Field

from embedpipe import schemas
from embedpipe.steps import QUERY_TIME, Event, Hit, Link, QueryStage, Step, StepConfig, StepContext

__all__ = ["STOPWORDS", "KeywordBoost", "Keywords", "KeywordsConfig", "keywords", "terms"]

# A small English stopword list: function words that say nothing about a chunk's topic.
_STOPWORDS = """
    a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself yourselves
"""
STOPWORDS = frozenset(_STOPWORDS.split())

_WORD = re.compile(r"[a-z][a-z0-9]*")


def terms(text: str | None) -> list[str]:
    """The lowercase word terms of ``text``, in order: runs of letters and digits starting with
    a letter, at least two characters long, stopwords removed."""
    return [w for w in _WORD.findall((text or "").lower()) if len(w) > 1 and w not in STOPWORDS]


def keywords(text: str | None, top: int) -> str:
    """The ``top`` most frequent terms of ``text``, space-separated: most frequent first, ties
    broken alphabetically (so the same text always gives the same keywords)."""
    counts = Counter(terms(text))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return " ".join(word for word, _ in ranked[:top])


class KeywordsConfig(StepConfig):
    top: int = Field(8, gt=0, le=256, description="Keywords kept per chunk.")
    boost: float = Field(
        0.05,
        ge=0,
        description="Query time: added to a hit's score for each query term among its "
        "keywords. It changes no stored row, so it is left out of the cache fingerprint and "
        "the spec hash (changing it re-computes nothing).",
        json_schema_extra=QUERY_TIME,
    )


class KeywordBoost:
    """The query stage: ``boost`` per query term found among a hit's keywords, then re-sorted
    by the boosted score, best first. Each hit gets ``keyword_boost``, what was added."""

    name = "keyword_boost"
    columns = ("keywords",)
    depth = 3  # sees 3 * k candidates: a boosted hit may come from below the top k

    def __init__(self, boost: float) -> None:
        self.boost = boost

    def __call__(self, queries: Sequence[str], hits: list[list[Hit]]) -> list[list[Hit]]:
        out = []
        for query, found in zip(queries, hits, strict=True):
            wanted = set(terms(query))
            changed = False
            for hit in found:
                overlap = len(wanted & set((hit.get("keywords") or "").split()))
                added = float(self.boost * overlap)
                hit["keyword_boost"] = added
                if added:
                    hit["score"] = float(hit["score"]) + added
                    changed = True
            # Nothing added: keep the order the earlier stages left (a stable sort would too,
            # unless an earlier stage ordered hits by something other than the score).
            out.append(sorted(found, key=lambda h: h["score"], reverse=True) if changed else found)
        return out


class Keywords(Step):
    """Append a ``keywords`` column: each chunk's most frequent terms, for keyword boosting.

    ```yaml
    keywords:
      type: keywords
      input: vectors
      top: 8          # keywords kept per chunk
      boost: 0.05     # query time: added to a hit's score per query term among its keywords
    ```
    Every input column passes through unchanged (vectors included, so it can sit between
    `encode` and `index`); the index keeps `keywords` in its table, where `pipe sql` sees it.
    Keywords are lowercase word terms without common English stopwords, most frequent first,
    ties broken alphabetically, space-separated. Searches of an index this step feeds get a
    `keyword_boost` stage: `boost` is added to a hit's score per query term among its keywords,
    the hits are re-sorted, and each hit carries its `keyword_boost`.
    """

    type = "keywords"
    Config = KeywordsConfig
    config: KeywordsConfig
    reads = pa.schema([schemas.CHUNKS.field("chunk_id"), schemas.CHUNKS.field("text")])
    row_wise = True  # a chunk's keywords come from its own text alone
    # No cache_key: the step is cheap, and a cached row would carry stale pass-through columns
    # (vectors) unless every one of them were part of the key.

    def output_schema(self, inputs: list[Link]) -> pa.Schema:
        upstream = inputs[0].schema if inputs else schemas.embeddings(None)
        kept = [f for f in upstream if f.name != "keywords"]
        return pa.schema([*kept, pa.field("keywords", pa.string())], metadata=upstream.metadata)

    def map(self, rows: pa.Table | pa.RecordBatch, ctx: StepContext) -> Iterator[Event]:
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_batches([rows])
        top = self.config.top
        words = [keywords(t, top) for t in table.column("text").to_pylist()]
        if "keywords" in table.column_names:
            table = table.drop_columns(["keywords"])
        table = table.append_column(pa.field("keywords", pa.string()), pa.array(words, pa.string()))
        yield from table.to_batches()

    def query_stages(self) -> list[QueryStage]:
        return [KeywordBoost(self.config.boost)]
