"""chunk: split documents into chunks, counting tokens with the encoder's own tokenizer.

Memory is bounded per document: a long text is tokenized one window of characters at a time
(cut where whitespace starts, so words are never split between windows) and a token is held
only until the chunk that needs it is made. Short documents are tokenized together, as before.
"""

from __future__ import annotations

import itertools
import re
import sys
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, ValidationInfo, field_validator

from embedpipe import models, schemas
from embedpipe.results import Event
from embedpipe.steps.base import Link, Step, StepConfig, StepContext

Span = tuple[int, int]  # character offsets [start, end) in the document text

_PARAGRAPH = re.compile(r"\n\s*\n")  # a blank line ends a sentence, whatever pysbd says
# A heading, or a code fence (which hides the headings inside it), at the start of a line.
_MARK = re.compile(r"^(?:(#{1,6}\s)|```|~~~)", re.MULTILINE)
# Where a window may end: before the last of a run of spaces, tabs or line breaks. Tokenizers
# split words there (BERT drops the space, byte-level BPE and SentencePiece attach the last
# space to the next word), so tokens do not change. Other Unicode spaces are left alone: BERT
# deletes control characters such as \x0b and \x1c, which would join the words around them.
_CUT = re.compile(r"[ \t\n\r](?=[^ \t\n\r])")

# Characters tokenized at once: a longer text is tokenized window by window. 64 Ki characters
# make at most 64 Ki tokens (a few MB), and about 16 Ki in English prose.
_WINDOW = 2**16
_GROUP = 2**19  # characters of short documents tokenized in one call (the tokenizer's threads)
_FLUSH = 2**22  # characters of chunk text after which a batch is yielded, mid-input-batch
_START = itemgetter(0)


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
    # 2: windows end at word boundaries; 3: room left for a prepended title; 4: sentences by pysbd
    version = 4
    cache_key = ("doc_id", "content_hash")  # a document's chunks depend on its text and title
    row_wise = True  # a document's chunks depend on that document alone
    config: ChunkConfig

    def __init__(self, name: str, config: StepConfig, *, base_dir: Path) -> None:
        super().__init__(name, config, base_dir=base_dir)
        self._tok: Any = None

    def output_schema(self, inputs: list[Link]) -> pa.Schema:
        return schemas.CHUNKS

    def token_budget(self) -> int | None:
        """The most tokens a chunk holds (None: whole documents), for the encoder's check."""
        return None if self.config.strategy == "none" else self.config.max_tokens

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

    def __getstate__(self) -> dict[str, Any]:
        # Sent to another process (an executor's worker; every step of the DAG travels with
        # its links), the tokenizer stays here: the worker's setup() loads its own.
        state = dict(self.__dict__)
        state.pop("_tok", None)
        return state

    def windows(self, rows: Iterable[pa.RecordBatch]) -> Iterator[pa.Table | pa.RecordBatch]:
        # Ingest's batches are already bounded by characters, however long the documents.
        batches = (b for b in rows if b.num_rows)  # the tokenizer cannot take an empty list
        limit = self.window_limit
        if not limit:
            return batches
        # An executor's cap splits a batch, never joins them (a batch is bounded by characters).
        return (b.slice(i, limit) for b in batches for i in range(0, b.num_rows, limit))

    def map(self, batch: pa.Table | pa.RecordBatch, ctx: StepContext) -> Iterator[Event]:
        specials = self._tok.num_special_tokens_to_add()
        budget = self.config.max_tokens - specials
        ids = batch.column("doc_id").to_pylist()
        titles = batch.column("title").to_pylist()
        has_hash = "content_hash" in batch.schema.names
        hashes = batch.column("content_hash").to_pylist() if has_hash else None
        reserved = self._title_tokens(batch.column("title"), budget)
        rows: list[dict[str, Any]] = []
        size, flushed = 0, False  # characters of chunk text in rows; a batch yielded yet
        for i, text, tokens in self._tokenized(batch.column("text")):
            ordinal = 0
            for (start, end), n_tokens in self._split(text, tokens, budget - reserved[i]):
                piece = text[start:end]
                if not piece.strip():
                    continue
                rows.append(
                    {
                        "chunk_id": f"{ids[i]}#{ordinal}",
                        "doc_id": ids[i],
                        "ordinal": ordinal,
                        "text": piece,
                        "title": titles[i],
                        "n_tokens": n_tokens + specials,
                        "char_start": start,
                        "char_end": end,
                        "content_hash": hashes[i] if hashes else None,
                    }
                )
                ordinal += 1
                size += len(piece)
                if size >= _FLUSH:  # a long document's chunks do not pile up in memory
                    yield pa.RecordBatch.from_pylist(rows, schema=schemas.CHUNKS)
                    rows, size, flushed = [], 0, True
        if rows or not flushed:
            yield pa.RecordBatch.from_pylist(rows, schema=schemas.CHUNKS)

    def _tokenized(self, texts: pa.Array) -> Iterator[tuple[int, str, _Tokens]]:
        """(row, text, its tokens) for each text of a batch column (null as empty). Texts up
        to a window long are tokenized together, up to ``_GROUP`` characters a call; a longer
        one streams its tokens a window at a time."""
        lengths = [n or 0 for n in pc.utf8_length(texts).to_pylist()]
        i = 0
        while i < len(lengths):
            if lengths[i] > _WINDOW:
                text = texts[i].as_py()
                yield i, text, _Tokens(text, self._tok)
                i += 1
                continue
            j, total = i, 0
            while j < len(lengths) and lengths[j] <= _WINDOW and total + lengths[j] <= _GROUP:
                total += lengths[j]
                j += 1
            group = [t or "" for t in texts.slice(i, j - i).to_pylist()]
            encoded = self._tok(group, add_special_tokens=False, return_offsets_mapping=True)
            for k, (text, offsets) in enumerate(zip(group, encoded["offset_mapping"], strict=True)):
                yield i + k, text, _Tokens(text, self._tok, offsets)
            i = j

    def _title_tokens(self, titles: pa.Array, budget: int) -> list[int]:
        """Tokens to leave free for the title when the encode step prepends it, so that the
        encoder does not truncate the chunk's tail; capped at half the budget (and counted
        no further, however long the title)."""
        prepends = any(getattr(s.config, "include_title", False) for s in self.downstream)
        if not prepends or titles.null_count == len(titles):
            return [0] * len(titles)
        return [tokens.bound(_END, 0, budget // 2) for _, _, tokens in self._tokenized(titles)]

    def _split(self, text: str, tokens: _Tokens, budget: int) -> Iterator[tuple[Span, int]]:
        strategy = self.config.strategy
        if strategy == "none":
            return iter([((0, len(text)), tokens.skip_to(_END))])
        if strategy == "tokens":
            return _windows(tokens, 0, _END, budget, self.config.overlap)
        units = _sentences(text) if strategy == "sentences" else _sections(text)
        return _pack(units, tokens, budget, self.config.overlap, join=strategy == "sentences")


_END = sys.maxsize  # a character offset past the end of any text


class _Tokens:
    """A text's tokens as character spans, read forward by index. Given no offsets, the text
    is tokenized one window at a time as tokens are asked for, and the tokens before the
    point that ``release`` and ``skip_to`` name are dropped: memory holds a window or two of
    tokens, however long the text."""

    def __init__(self, text: str, tok: Any, offsets: list[Span] | None = None) -> None:
        self._text, self._tok = text, tok
        self._buf: list[Span] = [] if offsets is None else offsets
        self._base = 0  # the index of _buf[0]
        self._pos = 0 if offsets is None else len(text)  # characters tokenized so far

    def _more(self) -> bool:
        """Tokenize the next window; False at the end of the text."""
        text, pos = self._text, self._pos
        if pos >= len(text):
            return False
        end = _cut(text, pos)
        offsets = self._tok(text[pos:end], add_special_tokens=False, return_offsets_mapping=True)
        self._buf.extend([(s + pos, e + pos) for s, e in offsets["offset_mapping"]])
        self._pos = end
        return True

    def __getitem__(self, k: int) -> Span:
        """Token ``k``, loaded by an earlier ``bound`` and not yet released."""
        return self._buf[k - self._base]

    def loaded(self) -> tuple[list[Span], int]:
        """The tokens held, and the index of the first."""
        return self._buf, self._base

    def bound(self, pos: int, lo: int, cap: int) -> int:
        """The index of the first token from ``lo`` on that starts at character ``pos`` or
        later, or the number of tokens when none does; at most ``cap``. Loads tokens up to
        index ``cap`` at most."""
        buf = self._buf
        while self._base + len(buf) < cap and (not buf or buf[-1][0] < pos) and self._more():
            pass
        lo_i = max(lo - self._base, 0)
        hi_i = max(min(len(buf), cap - self._base), lo_i)
        return self._base + bisect_left(buf, pos, lo_i, hi_i, key=_START)

    def skip_to(self, pos: int) -> int:
        """``bound(pos)`` with no cap, dropping every token that starts before ``pos``."""
        buf = self._buf
        while not buf or buf[-1][0] < pos:
            self._base += len(buf)
            buf.clear()
            if not self._more():
                return self._base
        k = self._base + bisect_left(buf, pos, key=_START)
        self.release(k)
        return k

    def release(self, k: int) -> None:
        """Tokens before index ``k`` are needed no more (dropped in bulk, so in linear time)."""
        drop = k - self._base
        if drop >= 4096 and 2 * drop >= len(self._buf):
            del self._buf[:drop]
            self._base = k


def _cut(text: str, pos: int) -> int:
    """Where the window that starts at ``pos`` ends: at the end of the text, or at the last
    space, tab or line break of a run (found in the window's last part when there is one,
    else anywhere in it), or, with no whitespace in the window at all, after ``_WINDOW``
    characters (a cut that may split a word: the one place where tokens can differ from
    tokenizing the text whole)."""
    end = pos + _WINDOW
    if end >= len(text):
        return len(text)
    for lo in (end - _WINDOW // 16, pos + 1):
        last = None
        for last in _CUT.finditer(text, lo, end + 1):  # noqa: B007 (the last match)
            pass
        if last is not None:
            return last.start()
    return end


def _windows(
    tokens: _Tokens, a: int, end: int, budget: int, overlap: int
) -> Iterator[tuple[Span, int]]:
    """Token windows over the tokens from index ``a`` that start before character ``end``, as
    character spans, sharing up to ``overlap`` tokens. Windows start and end at word
    boundaries where they can: a cut inside a word leaves a fragment the encoder
    re-tokenizes into more pieces, past ``budget``."""
    while True:
        b = tokens.bound(end, a, a + budget)
        if b == a:  # no tokens (an empty document): no windows
            return
        more = tokens.bound(end, b, b + 1) > b  # is token b (the next window's) there?
        if more:
            b = _word_start(tokens, a + 1, b, last=True) or b  # or cut a too-long word
        yield (tokens[a][0], tokens[b - 1][1]), b - a
        if not more:
            return
        lo = max(b - overlap, a + 1)  # always move forward
        a = _word_start(tokens, lo, b, last=False) or lo
        tokens.release(a)


def _word_start(tokens: _Tokens, lo: int, hi: int, *, last: bool) -> int | None:
    """The last (or first) token in ``lo..hi`` that follows whitespace, i.e. starts a word."""
    buf, base = tokens.loaded()  # indexed directly: this loop is the step's hottest
    ks = range(hi - base, lo - base - 1, -1) if last else range(lo - base, hi - base + 1)
    k = next((k for k in ks if k + base > 0 and buf[k][0] > buf[k - 1][1]), None)
    return None if k is None else k + base


def _pack(
    units: Iterable[Span], tokens: _Tokens, budget: int, overlap: int, *, join: bool
) -> Iterator[tuple[Span, int]]:
    """One chunk per unit, or (``join``) consecutive units joined up to ``budget`` tokens;
    units longer than ``budget`` are split into token windows. A unit's tokens are those
    that start inside it; they are counted only up to ``budget + 1``."""
    cur: Span | None = None
    cur_n = 0
    for start, end in units:
        i0 = tokens.skip_to(start)
        n = tokens.bound(end, i0, i0 + budget + 1) - i0
        if n == 0:
            continue
        if join and cur is not None and cur_n + n <= budget:
            cur, cur_n = (cur[0], end), cur_n + n
            continue
        if cur is not None:
            yield cur, cur_n
            cur = None
        if n > budget:
            yield from _windows(tokens, i0, end, budget, overlap)
        else:
            cur, cur_n = (start, end), n
    if cur is not None:
        yield cur, cur_n


# Characters given to pysbd at once. Its time grows with the square of its input (each
# abbreviation it finds is replaced in the whole text): 50 s for one paragraph of 200,000
# characters, against about 5 us a character in windows of this size.
_SENTENCE_WINDOW = 2048
_LINE_BREAKS = str.maketrans("\r\n", "  ")  # a line break inside a paragraph ends no sentence


def _sentences(text: str) -> Iterator[Span]:
    """Sentences, as spans with no whitespace at either end: paragraphs (cut at blank lines)
    split by pysbd, which knows abbreviations ("e.g.", "Dr."), initials and decimals."""
    import pysbd  # only the sentences strategy needs it

    segmenter = pysbd.Segmenter(language="en", clean=False)  # one a document: it keeps state
    start = 0
    for m in _PARAGRAPH.finditer(text):
        yield from _paragraph_sentences(text, start, m.start(), segmenter)
        start = m.end()
    yield from _paragraph_sentences(text, start, len(text), segmenter)


def _paragraph_sentences(text: str, start: int, end: int, segmenter: Any) -> Iterator[Span]:
    """The sentences of ``text[start:end]``, segmented up to ``_SENTENCE_WINDOW`` characters
    at a time (cut at whitespace where there is some): a window's last sentence may go on
    past it, so it is segmented again at the start of the next window."""
    while start < end:
        stop = end
        if end - start > _SENTENCE_WINDOW:
            stop = start + _SENTENCE_WINDOW
            space = max(text.rfind(c, start + _SENTENCE_WINDOW // 2, stop) for c in " \t\n\r")
            stop = space if space > start else stop
        piece = text[start:stop].translate(_LINE_BREAKS)  # same length: offsets hold
        cuts = _sentence_starts(piece, segmenter.segment(piece))
        if stop < end and len(cuts) > 1:
            stop = start + cuts.pop()  # the next window starts with this window's last sentence
        for a, b in itertools.pairwise([*cuts, stop - start]):
            span = _strip(piece, a, b)
            if span:
                yield start + span[0], start + span[1]
        start = stop


def _sentence_starts(piece: str, sentences: list[str]) -> list[int]:
    """Where each of pysbd's ``sentences`` starts in ``piece``, from 0. Found in order, from
    where the last one ended, so that offsets are exact even where pysbd dropped whitespace;
    should it ever change a sentence's text, the rest of the piece is one sentence."""
    starts, pos = [0], 0
    for sentence in sentences:
        sentence = sentence.strip()
        if not sentence:
            continue
        at = piece.find(sentence, pos)
        if at < 0:
            break
        if at > starts[-1]:
            starts.append(at)
        pos = at + len(sentence)
    return starts


def _strip(piece: str, a: int, b: int) -> Span | None:
    """``(a, b)`` without whitespace at either end; None when that leaves nothing."""
    part = piece[a:b]
    core = part.strip()
    if not core:
        return None
    a += len(part) - len(part.lstrip())
    return a, a + len(core)


def _sections(text: str) -> Iterator[Span]:
    """Markdown sections: a heading and the text up to the next heading outside code fences.
    One pass over headings and fences in order, so time and memory do not grow with their
    product or count."""
    start, inside_fence = 0, False
    for m in _MARK.finditer(text):
        if m.group(1) is None:
            inside_fence = not inside_fence
        elif m.start() > 0 and not inside_fence:
            if m.start() > start:
                yield start, m.start()
            start = m.start()
    if len(text) > start:
        yield start, len(text)
