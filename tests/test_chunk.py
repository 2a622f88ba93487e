"""Behaviour of the chunk step, run directly (no engine) with the real default tokenizer."""

from __future__ import annotations

import json
import string
from itertools import pairwise
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pydantic import ValidationError

from embedpipe import models, schemas
from embedpipe.steps.base import StepContext
from embedpipe.steps.chunk import Chunk
from embedpipe.steps.encode import Encode
from embedpipe.steps.ingest import content_hash
from tests.conftest import CORPUS

Rows = list[dict[str, Any]]

# Sentences of 8 to 20 tokens; the long rare words split into several word pieces, so a cut
# inside a word would show up as a re-tokenized chunk longer than the one counted.
SENTENCES = [
    "Photosynthesis converts sunlight into chemical energy inside chloroplasts.",
    "Electroencephalography records the electrical activity of the brain along the scalp.",
    "The antidisestablishmentarianism debate lasted for several decades.",
    "Mitochondria are often called the powerhouse of the cell!",
    "Is pneumonoultramicroscopicsilicovolcanoconiosis really the longest English word?",
    'The guide said "always wear a helmet."',
    "Honeybees share flower locations with a waggle dance.",
    "Sourdough starters are cultures of wild yeast and lactic acid bacteria.",
]


def prose(n: int) -> tuple[str, list[tuple[int, int]]]:
    """``n`` sentences joined by single spaces, and each sentence's character span."""
    parts, spans, pos = [], [], 0
    for i in range(n):
        s = SENTENCES[(i * 3) % len(SENTENCES)]
        spans.append((pos, pos + len(s)))
        parts.append(s)
        pos += len(s) + 1
    return " ".join(parts), spans


MARKDOWN = """# Title

Intro paragraph about the project.

## Install

```bash
# not a heading: a shell comment
pip install thing
```

More text after the code.

## Usage

Use it #hashtag and move on.
#notaheading either

### Deep section

Deep text.
"""


@pytest.fixture(scope="module")
def tok() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(models.resolve(models.DEFAULT_MODEL).location)


def n_tokens(tok: Any, text: str) -> int:
    """Tokens as the encoder counts them, special tokens included."""
    return len(tok(text)["input_ids"])


def make_ctx(tmp_path: Path) -> StepContext:
    return StepContext(
        pipeline="t", run_id="r", spec_hash="h", base_dir=tmp_path, workspace=tmp_path
    )


def make_step(tmp_path: Path, **config: Any) -> Chunk:
    return Chunk("chunks", Chunk.Config(type="chunk", input="docs", **config), base_dir=tmp_path)


def doc_batch(docs: list[tuple[str, str]], *, title: str = "T") -> pa.RecordBatch:
    """A documents batch from (doc_id, text) pairs."""
    return pa.RecordBatch.from_pylist(
        [
            {
                "doc_id": doc_id,
                "text": text,
                "title": title,
                "source": doc_id,
                "meta": "{}",
                "content_hash": content_hash(title, text),
                "ingested_at": None,
            }
            for doc_id, text in docs
        ],
        schema=schemas.DOCUMENTS,
    )


def chunk(step: Chunk, batches: list[pa.RecordBatch], tmp_path: Path) -> Rows:
    ctx = make_ctx(tmp_path)
    step.setup(ctx)
    out = list(step.run([iter(batches)], ctx))
    for batch in out:
        assert batch.schema.equals(schemas.CHUNKS, check_metadata=True)
    assert list(ctx.skipped) == []
    return [row for b in out for row in b.to_pylist()]


def run_one(tmp_path: Path, text: str, doc_id: str = "doc", **config: Any) -> Rows:
    return chunk(make_step(tmp_path, **config), [doc_batch([(doc_id, text)])], tmp_path)


def check_invariants(rows: Rows, texts: dict[str, str], tok: Any, max_tokens: int | None) -> None:
    """What holds for every strategy: ids, ordinals, spans, counts."""
    by_doc: dict[str, Rows] = {}
    for row in rows:
        by_doc.setdefault(row["doc_id"], []).append(row)
    for doc_id, chunks in by_doc.items():
        text = texts[doc_id]
        assert [c["ordinal"] for c in chunks] == list(range(len(chunks)))
        for c in chunks:
            assert c["chunk_id"] == f"{doc_id}#{c['ordinal']}"
            assert c["text"] == text[c["char_start"] : c["char_end"]]
            assert c["text"].strip()
            assert c["title"] == "T"
            assert c["content_hash"] == content_hash("T", text)
            counted = n_tokens(tok, c["text"])
            assert c["n_tokens"] == counted, c
            if max_tokens is not None:
                assert counted <= max_tokens, c
        starts = [c["char_start"] for c in chunks]
        assert starts == sorted(starts) and len(set(starts)) == len(starts)
    assert len({r["chunk_id"] for r in rows}) == len(rows)


# -- every strategy ---------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["tokens", "sentences", "markdown", "none"])
def test_every_strategy_keeps_the_invariants(tmp_path: Path, tok: Any, strategy: str) -> None:
    long_text, _ = prose(30)
    texts = {"prose": long_text, "md": MARKDOWN * 3, "short": "Just one short sentence."}
    step = make_step(tmp_path, strategy=strategy, max_tokens=48, overlap=8)
    rows = chunk(step, [doc_batch(list(texts.items()))], tmp_path)
    check_invariants(rows, texts, tok, None if strategy == "none" else 48)
    counts = {d: sum(r["doc_id"] == d for r in rows) for d in texts}
    assert counts["short"] == 1
    if strategy == "none":
        assert counts == {"prose": 1, "md": 1, "short": 1}
    else:
        assert counts["prose"] > 1 and counts["md"] > 1


def test_ids_restart_per_document_across_batches(tmp_path: Path, tok: Any) -> None:
    text_a, _ = prose(12)
    text_b, _ = prose(5)
    batches = [
        doc_batch([("a", text_a), ("empty", ""), ("blank", " \n\t ")]),
        doc_batch([]),
        doc_batch([("b", text_b)]),
    ]
    rows = chunk(make_step(tmp_path, max_tokens=32, overlap=4), batches, tmp_path)
    check_invariants(rows, {"a": text_a, "b": text_b}, tok, 32)
    assert {r["doc_id"] for r in rows} == {"a", "b"}  # empty and blank docs give no chunks
    assert next(r["ordinal"] for r in rows if r["doc_id"] == "b") == 0


def test_without_content_hash_column(tmp_path: Path) -> None:
    batch = pa.RecordBatch.from_pylist(
        [{"doc_id": "x", "text": "Some text here.", "title": None}],
        schema=Chunk.reads,
    )
    [row] = chunk(make_step(tmp_path), [batch], tmp_path)
    assert row["content_hash"] is None and row["title"] is None
    assert row["chunk_id"] == "x#0"


def test_chunks_are_identical_across_runs(tmp_path: Path) -> None:
    text, _ = prose(25)
    for strategy in ("tokens", "sentences", "markdown", "none"):
        runs = [
            run_one(tmp_path, text + "\n\n" + MARKDOWN, strategy=strategy, max_tokens=40, overlap=6)
            for _ in range(2)
        ]
        first, second = ([(r["chunk_id"], r["text"], r["char_start"]) for r in rs] for rs in runs)
        assert first == second


# -- tokens -----------------------------------------------------------------------------------


def test_token_windows_overlap(tmp_path: Path, tok: Any) -> None:
    text, _ = prose(30)
    rows = run_one(tmp_path, text, strategy="tokens", max_tokens=40, overlap=10)
    check_invariants(rows, {"doc": text}, tok, 40)
    assert len(rows) > 5
    assert rows[0]["char_start"] == 0 and rows[-1]["char_end"] == len(text.rstrip())
    for prev, nxt in pairwise(rows):
        assert prev["char_start"] < nxt["char_start"] < prev["char_end"]
        shared = text[nxt["char_start"] : prev["char_end"]]
        assert 1 <= n_tokens(tok, shared) - 2 <= 10  # overlap=10 at most, never none


def test_token_windows_without_overlap_tile_the_text(tmp_path: Path, tok: Any) -> None:
    text, _ = prose(30)
    rows = run_one(tmp_path, text, strategy="tokens", max_tokens=40, overlap=0)
    check_invariants(rows, {"doc": text}, tok, 40)
    for prev, nxt in pairwise(rows):
        assert prev["char_end"] < nxt["char_start"]
    # Every token of the document lands in exactly one window, in order.
    ids = [i for r in rows for i in tok(r["text"], add_special_tokens=False)["input_ids"]]
    assert ids == tok(text, add_special_tokens=False)["input_ids"]


def test_token_windows_do_not_cut_words(tmp_path: Path, tok: Any) -> None:
    text, _ = prose(30)
    # Budgets above the longest word (17 word pieces), so no word needs cutting.
    for max_tokens, overlap in [(19, 0), (24, 5), (33, 9)]:
        rows = run_one(tmp_path, text, strategy="tokens", max_tokens=max_tokens, overlap=overlap)
        check_invariants(rows, {"doc": text}, tok, max_tokens)
        for r in rows:
            start, end = r["char_start"], r["char_end"]
            assert start == 0 or text[start - 1].isspace(), r
            assert end == len(text) or text[end].isspace(), r


def test_token_windows_cut_a_run_longer_than_the_budget(tmp_path: Path, tok: Any) -> None:
    # No whitespace for hundreds of tokens: windows must still cut it, and make progress.
    run = "-".join(["alpha", "beta", "gamma"] * 60)
    text = f"Before the run. {run} After the run."
    rows = run_one(tmp_path, text, strategy="tokens", max_tokens=20, overlap=5)
    check_invariants(rows, {"doc": text}, tok, 20)
    assert len(rows) > 10
    assert rows[0]["char_start"] == 0 and rows[-1]["char_end"] == len(text)
    for prev, nxt in pairwise(rows):
        assert prev["char_start"] < nxt["char_start"]
        assert not text[prev["char_end"] : nxt["char_start"]].strip()  # no text left out


def test_smallest_budget_terminates(tmp_path: Path, tok: Any) -> None:
    text, _ = prose(4)
    rows = run_one(tmp_path, text, strategy="tokens", max_tokens=9, overlap=6)
    check_invariants(rows, {"doc": text}, tok, 9)


# -- sentences --------------------------------------------------------------------------------


def test_sentences_are_packed_whole(tmp_path: Path, tok: Any) -> None:
    text, spans = prose(24)
    max_tokens = 48
    assert all(n_tokens(tok, text[a:b]) <= max_tokens for a, b in spans)
    rows = run_one(tmp_path, text, strategy="sentences", max_tokens=max_tokens, overlap=4)
    check_invariants(rows, {"doc": text}, tok, max_tokens)
    starts = {a for a, _ in spans}
    ends = {b for _, b in spans}
    for r in rows:
        assert r["char_start"] in starts and r["char_end"] in ends, r
    # Chunks tile the sentences without overlap or gaps, packed greedily.
    sentence_of = {a: i for i, (a, _) in enumerate(spans)}
    firsts = [sentence_of[r["char_start"]] for r in rows]
    assert firsts[0] == 0 and rows[-1]["char_end"] == spans[-1][1]
    assert len(rows) < len(spans)  # short sentences share chunks
    for r, nxt_first in zip(rows, firsts[1:], strict=False):
        assert r["char_end"] == spans[nxt_first - 1][1]
        end = spans[nxt_first][1]
        joined = n_tokens(tok, text[r["char_start"] : end])
        assert joined > max_tokens  # the next sentence would not have fitted


def test_long_sentence_is_split_and_the_next_starts_fresh(tmp_path: Path, tok: Any) -> None:
    long_sentence = " ".join(["the quick brown fox jumps over the lazy dog"] * 12) + "."
    text = f"A short opener. {long_sentence} A short closer."
    rows = run_one(tmp_path, text, strategy="sentences", max_tokens=30, overlap=5)
    check_invariants(rows, {"doc": text}, tok, 30)
    assert rows[0]["text"] == "A short opener."
    assert rows[-1]["text"] == "A short closer."
    assert len(rows) > 4


def test_sentence_ends(tmp_path: Path) -> None:
    sentences = [
        'He asked, "Is it safe?"',
        "She nodded twice, slowly.",
        "Really, truly, honestly!",
        "Paragraph without a full stop here",
        "Next paragraph starts right here.",
        "Version 3.14 is not a sentence end.",
    ]
    text = " ".join(sentences[:4]) + "\n\n" + " ".join(sentences[4:])
    # 6 to 10 tokens each and a budget of 10 (12 less 2 special tokens): one sentence a chunk.
    rows = run_one(tmp_path, text, strategy="sentences", max_tokens=12, overlap=0)
    assert [r["text"] for r in rows] == sentences


# -- markdown ---------------------------------------------------------------------------------


def test_markdown_starts_a_chunk_at_each_heading(tmp_path: Path, tok: Any) -> None:
    rows = run_one(tmp_path, MARKDOWN, strategy="markdown", max_tokens=128, overlap=8)
    check_invariants(rows, {"doc": MARKDOWN}, tok, 128)
    headings = ["# Title", "## Install", "## Usage", "### Deep section"]
    assert [r["char_start"] for r in rows] == [MARKDOWN.index(h) for h in headings]
    assert [r["text"].splitlines()[0] for r in rows] == headings
    # Sections are contiguous: each runs to the next heading.
    assert [r["char_end"] for r in rows] == [r["char_start"] for r in rows[1:]] + [len(MARKDOWN)]
    assert "# not a heading" in rows[1]["text"]  # inside the ``` fence
    assert "#notaheading" in rows[2]["text"]


def test_markdown_long_section_is_split_inside_its_bounds(tmp_path: Path, tok: Any) -> None:
    body, _ = prose(20)
    text = f"# One\n\n{body}\n\n# Two\n\nShort."
    rows = run_one(tmp_path, text, strategy="markdown", max_tokens=40, overlap=6)
    check_invariants(rows, {"doc": text}, tok, 40)
    two = text.index("# Two")
    assert rows[-1]["text"] == "# Two\n\nShort."
    assert len(rows) > 3
    assert all(r["char_end"] <= two for r in rows[:-1])


def test_markdown_without_headings_is_one_chunk(tmp_path: Path) -> None:
    text = "Plain text, no headings.\n\nA second paragraph."
    [row] = run_one(tmp_path, text, strategy="markdown")
    assert row["text"] == text


def test_tilde_fences_hide_headings_too(tmp_path: Path) -> None:
    text = "# A\n\n~~~\n# inside\n~~~\n\n# B\n\nb\n"
    rows = run_one(tmp_path, text, strategy="markdown")
    assert [r["text"].splitlines()[0] for r in rows] == ["# A", "# B"]


# -- none -------------------------------------------------------------------------------------


def test_none_keeps_the_document_whole(tmp_path: Path, tok: Any) -> None:
    text, _ = prose(30)
    [row] = run_one(tmp_path, text, strategy="none", max_tokens=16, overlap=0)
    assert row["text"] == text and (row["char_start"], row["char_end"]) == (0, len(text))
    assert row["n_tokens"] == n_tokens(tok, text) > 16  # not cut, even past max_tokens


# -- which tokenizer --------------------------------------------------------------------------


@pytest.fixture
def char_tokenizer(tmp_path: Path) -> Path:
    """A BERT tokenizer that knows only letters: one token per character of a word."""
    folder = tmp_path / "chartok"
    folder.mkdir()
    letters = list(string.ascii_lowercase)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{c}" for c in letters)]
    (folder / "vocab.txt").write_text("\n".join([*vocab, ".", ","]) + "\n")
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def encode_step(tmp_path: Path, model: str) -> Encode:
    config = Encode.Config(type="encode", input="chunks", model=model)
    return Encode("vectors", config, base_dir=tmp_path)


def test_default_tokenizer_without_encode_step(tmp_path: Path) -> None:
    step = make_step(tmp_path)
    ref = step.tokenizer_model()
    assert ref.name == models.DEFAULT_MODEL
    assert ref.location == models.resolve(models.DEFAULT_MODEL).location
    step.downstream = [make_step(tmp_path)]  # a downstream step without a model
    assert step.tokenizer_model().name == models.DEFAULT_MODEL
    [row] = chunk(step, [doc_batch([("d", "hello world.")])], tmp_path)
    assert row["n_tokens"] == 5  # [CLS] hello world . [SEP]


def test_tokenizer_of_the_downstream_encode_step(tmp_path: Path, char_tokenizer: Path) -> None:
    step = make_step(tmp_path, strategy="none")
    step.downstream = [encode_step(tmp_path, "chartok")]
    assert step.tokenizer_model().location == str(char_tokenizer.resolve())
    [row] = chunk(step, [doc_batch([("d", "hello world.")])], tmp_path)
    assert row["n_tokens"] == 13  # 11 characters and '.', counted one by one, plus 2 specials


def test_tokenizer_of_the_downstream_encode_step_sets_the_budget(
    tmp_path: Path, char_tokenizer: Path
) -> None:
    step = make_step(tmp_path, strategy="tokens", max_tokens=12, overlap=0)
    step.downstream = [encode_step(tmp_path, "chartok")]
    rows = chunk(step, [doc_batch([("d", "abc defg hi jklmn opq rstu")])], tmp_path)
    # 10 letters fit in a window (12 less 2 special tokens); words are never split, so a
    # window ends before the word that would not fit.
    assert [r["text"] for r in rows] == ["abc defg hi", "jklmn opq", "rstu"]
    assert all(r["n_tokens"] <= 12 for r in rows)


def test_explicit_tokenizer_wins(tmp_path: Path, char_tokenizer: Path) -> None:
    step = make_step(tmp_path, strategy="none", tokenizer=models.DEFAULT_MODEL)
    step.downstream = [encode_step(tmp_path, "chartok")]
    assert step.tokenizer_model().name == models.DEFAULT_MODEL
    [row] = chunk(step, [doc_batch([("d", "hello world.")])], tmp_path)
    assert row["n_tokens"] == 5


# -- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("max_tokens", "overlap"), [(64, 62), (64, 63), (64, 64), (64, 500)])
def test_overlap_must_leave_room(max_tokens: int, overlap: int) -> None:
    with pytest.raises(ValidationError, match="overlap must be smaller than max_tokens - 2"):
        Chunk.Config(type="chunk", max_tokens=max_tokens, overlap=overlap)


def test_largest_overlap_allowed() -> None:
    assert Chunk.Config(type="chunk", max_tokens=64, overlap=61).overlap == 61


def test_default_overlap_is_checked_against_a_small_max_tokens() -> None:
    with pytest.raises(ValidationError, match="overlap"):
        Chunk.Config(type="chunk", max_tokens=20)  # the default overlap is 32
    assert Chunk.Config(type="chunk", max_tokens=20, overlap=4).overlap == 4


@pytest.mark.parametrize(
    "bad",
    [
        {"overlapp": 4},
        {"max_token": 64},
        {"strategy": "paragraphs"},
        {"max_tokens": 8},
        {"overlap": -1},
    ],
)
def test_config_rejects_bad_keys_and_values(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Chunk.Config(type="chunk", **bad)


def test_unknown_key_is_an_extra_forbidden_error() -> None:
    with pytest.raises(ValidationError) as info:
        Chunk.Config(type="chunk", overlapp=4)
    assert [e["type"] for e in info.value.errors()] == ["extra_forbidden"]


def test_output_schema() -> None:
    step = Chunk("c", Chunk.Config(type="chunk"), base_dir=Path("."))
    assert step.output_schema([]).equals(schemas.CHUNKS)
    assert step.requires() is not None and set(step.requires().names) == {"doc_id", "text", "title"}


def test_room_is_left_for_a_title_the_encoder_prepends(tmp_path: Path) -> None:
    """With encode's include_title, title + chunk must fit the window, or the tail is cut."""
    from embedpipe import models
    from embedpipe.steps.encode import Encode

    title = "A fairly long title about the retrieval of scientific abstracts"
    text = " ".join(f"word{i}" for i in range(400))
    for include_title in (True, False):
        chunk = Chunk(
            "chunks", Chunk.Config(type="chunk", max_tokens=64, overlap=0), base_dir=tmp_path
        )
        encode = Encode(
            "vectors", Encode.Config(type="encode", include_title=include_title), base_dir=tmp_path
        )
        chunk.downstream = [encode]
        ctx = StepContext(
            pipeline="t", run_id="r", spec_hash="h", base_dir=tmp_path, workspace=tmp_path
        )
        chunk.setup(ctx)
        batch = pa.RecordBatch.from_pylist(
            [{"doc_id": "d", "text": text, "title": title}],
            schema=pa.schema(
                [("doc_id", pa.string()), ("text", pa.string()), ("title", pa.string())]
            ),
        )
        rows = [r for b in chunk.run([iter([batch])], ctx) for r in b.to_pylist()]
        tok = models.tokenizer(models.resolve(models.DEFAULT_MODEL))
        lengths = [len(tok(f"{title}\n\n{r['text']}")["input_ids"]) for r in rows]
        if include_title:
            assert max(lengths) <= 64
        else:
            assert max(r["n_tokens"] for r in rows) <= 64 < max(lengths)


def test_rust_tokenizer_matches_transformers() -> None:
    """The chunker loads tokenizer.json with `tokenizers` (no transformers import); it must
    count exactly what the encoder's transformers tokenizer counts, offsets included."""
    from transformers import AutoTokenizer

    ref = models.resolve(models.DEFAULT_MODEL, Path("."))
    ours = models.tokenizer(ref)
    assert isinstance(ours, models.RustTokenizer)
    theirs = AutoTokenizer.from_pretrained(ref.location, use_fast=True)
    texts = [d["text"] for d in CORPUS] + [
        "Ünïcödé façade — naïve café",
        "A\tB\nC  D",
        "😀 emoji, <b>html</b> &amp; 1.e4 c5",
        "word " * 400,
    ]
    a = ours(texts, add_special_tokens=False, return_offsets_mapping=True)
    b = theirs(texts, add_special_tokens=False, return_offsets_mapping=True)
    assert a["input_ids"] == b["input_ids"]
    assert [[tuple(o) for o in x] for x in a["offset_mapping"]] == [
        [tuple(o) for o in x] for x in b["offset_mapping"]
    ]
    assert ours.num_special_tokens_to_add() == theirs.num_special_tokens_to_add()
