"""chunk: split documents into chunks, counting tokens with the encoder's own tokenizer."""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, ValidationInfo, field_validator

from embedpipe import models, schemas
from embedpipe.steps.base import Link, Step, StepConfig, StepContext

Span = tuple[int, int]  # character offsets [start, end) in the document text

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n")
_HEADING = re.compile(r"^#{1,6}\s", re.MULTILINE)
_FENCE = re.compile(r"^(```|~~~)", re.MULTILINE)


class ChunkConfig(StepConfig):
    strategy: Literal["tokens", "sentences", "markdown", "none"] = Field(
        "tokens",
        description="tokens: fixed token windows; sentences: whole sentences packed up to "
        "max_tokens; markdown: one chunk per heading section (split further when long); "
        "none: one chunk per document.",
    )
    max_tokens: int = Field(
        256,
        gt=8,
        description="Most tokens per chunk, as the encoder counts them (special tokens included).",
    )
    # validate_default: the default 32 must also fit a small max_tokens, or windows would
    # advance one token at a time.
    overlap: int = Field(
        32,
        ge=0,
        validate_default=True,
        description="Tokens shared by consecutive token windows (at most; windows start and "
        "end at word boundaries).",
    )
    tokenizer: str | None = Field(
        None,
        description="Model whose tokenizer counts tokens. Default: the model of the "
        "encode step that reads this step.",
    )

    @field_validator("overlap")
    @classmethod
    def _overlap_below_max(cls, v: int, info: ValidationInfo) -> int:
        max_tokens = info.data.get("max_tokens")
        if max_tokens is not None and v >= max_tokens - 2:
            raise ValueError(f"overlap must be smaller than max_tokens - 2 ({max_tokens - 2})")
        return v


class Chunk(Step):
    """Split documents into chunks with stable ids (``doc_id#ordinal``).

    ```yaml
    chunks:
      type: chunk
      input: docs
      strategy: tokens      # tokens | sentences | markdown | none
      max_tokens: 256       # counted with the encode model's tokenizer
      overlap: 32
    ```
    """

    type = "chunk"
    Config = ChunkConfig
    reads = pa.schema([schemas.DOCUMENTS.field(n) for n in ("doc_id", "text", "title")])
    version = 3  # 2: windows end at word boundaries; 3: room left for a prepended title
    cache_key = ("doc_id", "content_hash")  # a document's chunks depend on its text and title
    config: ChunkConfig

    def __init__(self, name: str, config: StepConfig, *, base_dir: Path) -> None:
        super().__init__(name, config, base_dir=base_dir)
        self._tok: Any = None

    def output_schema(self, inputs: list[Link]) -> pa.Schema:
        return schemas.CHUNKS

    def tokenizer_model(self) -> models.ModelRef:
        """The explicit tokenizer, else the model of a downstream encode step, else the default."""
        name = self.config.tokenizer
        if name is None:
            name = next(
                (s.config.model for s in self.downstream if hasattr(s.config, "model")),
                models.DEFAULT_MODEL,
            )
        return models.resolve(name, self.base_dir)

    def fingerprint(self) -> dict[str, str]:
        ref = self.tokenizer_model()
        prepends = any(getattr(s.config, "include_title", False) for s in self.downstream)
        return {"tokenizer": f"{ref.name}@{ref.revision}", "title_room": str(prepends)}

    def preflight(self) -> list[tuple[tuple[str, ...], str]]:
        if self.config.tokenizer is None:
            return []  # the encode step reports its own model
        problem = models.unavailable(self.tokenizer_model())
        return [(("tokenizer",), problem)] if problem else []

    def setup(self, ctx: StepContext) -> None:
        self._tok = models.tokenizer(self.tokenizer_model())

    def run(
        self, inputs: list[Iterator[pa.RecordBatch]], ctx: StepContext
    ) -> Iterator[pa.RecordBatch]:
        specials = self._tok.num_special_tokens_to_add()
        budget = self.config.max_tokens - specials
        for batch in inputs[0]:
            if batch.num_rows == 0:
                continue  # the tokenizer cannot take an empty list
            docs = batch.to_pydict()
            encoded = self._tok(docs["text"], add_special_tokens=False, return_offsets_mapping=True)
            reserved = self._title_tokens(docs["title"], budget)
            hashes = docs.get("content_hash")
            rows: list[dict[str, Any]] = []
            for i, text in enumerate(docs["text"]):
                offsets = encoded["offset_mapping"][i]
                spans = self._split(text, offsets, budget - reserved[i])
                ordinal = 0
                for (start, end), n_tokens in spans:
                    piece = text[start:end]
                    if not piece.strip():
                        continue
                    rows.append(
                        {
                            "chunk_id": f"{docs['doc_id'][i]}#{ordinal}",
                            "doc_id": docs["doc_id"][i],
                            "ordinal": ordinal,
                            "text": piece,
                            "title": docs["title"][i],
                            "n_tokens": n_tokens + specials,
                            "char_start": start,
                            "char_end": end,
                            "content_hash": hashes[i] if hashes else None,
                        }
                    )
                    ordinal += 1
            yield pa.RecordBatch.from_pylist(rows, schema=schemas.CHUNKS)

    def _title_tokens(self, titles: list[str | None], budget: int) -> list[int]:
        """Tokens to leave free for the title when the encode step prepends it, so that the
        encoder does not truncate the chunk's tail; capped at half the budget."""
        present = [t or "" for t in titles]
        prepends = any(getattr(s.config, "include_title", False) for s in self.downstream)
        if not prepends or not any(present):
            return [0] * len(titles)
        ids = self._tok(present, add_special_tokens=False)["input_ids"]
        return [min(len(i), budget // 2) for i in ids]  # an empty title has no tokens

    def _split(self, text: str, offsets: list[Span], budget: int) -> list[tuple[Span, int]]:
        strategy = self.config.strategy
        if strategy == "none":
            return [((0, len(text)), len(offsets))]
        starts = [s for s, _ in offsets]
        if strategy == "tokens":
            return _windows(0, len(offsets), offsets, budget, self.config.overlap)
        if strategy == "sentences":
            return _pack(_sentences(text), starts, offsets, budget, self.config.overlap, join=True)
        return _pack(_sections(text), starts, offsets, budget, self.config.overlap, join=False)


def _windows(
    i0: int, i1: int, offsets: list[Span], budget: int, overlap: int
) -> list[tuple[Span, int]]:
    """Token windows over tokens ``i0..i1``, as character spans, sharing up to ``overlap``
    tokens. Windows start and end at word boundaries where they can: a cut inside a word
    leaves a fragment the encoder re-tokenizes into more pieces, past ``budget``."""
    out: list[tuple[Span, int]] = []
    a = i0
    while a < i1:  # no tokens (an empty document): no windows
        b = min(a + budget, i1)
        if b < i1:
            b = _word_start(offsets, a + 1, b, last=True) or b  # or cut a too-long word
        out.append(((offsets[a][0], offsets[b - 1][1]), b - a))
        if b == i1:
            break
        lo = max(b - overlap, a + 1)  # always move forward
        a = _word_start(offsets, lo, b, last=False) or lo
    return out


def _word_start(offsets: list[Span], lo: int, hi: int, *, last: bool) -> int | None:
    """The last (or first) token in ``lo..hi`` that follows whitespace, i.e. starts a word."""
    ks = range(hi, lo - 1, -1) if last else range(lo, hi + 1)
    return next((k for k in ks if k > 0 and offsets[k][0] > offsets[k - 1][1]), None)


def _pack(
    units: list[Span],
    starts: list[int],
    offsets: list[Span],
    budget: int,
    overlap: int,
    *,
    join: bool,
) -> list[tuple[Span, int]]:
    """One chunk per unit, or (``join``) consecutive units joined up to ``budget`` tokens;
    units longer than ``budget`` are split into token windows."""
    out: list[tuple[Span, int]] = []
    cur: Span | None = None
    cur_n = 0
    for start, end in units:
        i0, i1 = bisect_left(starts, start), bisect_left(starts, end)
        n = i1 - i0
        if n == 0:
            continue
        if join and cur is not None and cur_n + n <= budget:
            cur, cur_n = (cur[0], end), cur_n + n
            continue
        if cur is not None:
            out.append((cur, cur_n))
            cur = None
        if n > budget:
            out.extend(_windows(i0, i1, offsets, budget, overlap))
        else:
            cur, cur_n = (start, end), n
    if cur is not None:
        out.append((cur, cur_n))
    return out


def _sentences(text: str) -> list[Span]:
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        spans.append((start, m.start() + len(m.group(0).rstrip())))
        start = m.end()
    if start < len(text):
        spans.append((start, len(text)))
    return spans


def _sections(text: str) -> list[Span]:
    """Markdown sections: a heading and the text up to the next heading outside code fences."""
    fences = [m.start() for m in _FENCE.finditer(text)]
    bounds = [0]
    for m in _HEADING.finditer(text):
        inside_fence = sum(1 for f in fences if f < m.start()) % 2 == 1
        if m.start() > 0 and not inside_fence:
            bounds.append(m.start())
    bounds.append(len(text))
    return [(a, b) for a, b in pairwise(bounds) if b > a]
