"""Hardening, issue 13: reading input files with bounded memory, and damaged CSV rows.

The classes, not only the examples of the issue:

- Chunking one document holds a bounded window of tokens, whatever the document's length or
  strategy: peak memory is measured in a subprocess, never time. A long text is tokenized
  window by window, and its chunks are the ones the text tokenized whole gives.
- Every reader is bounded by ``max_file_mb`` for one document, not by the file: a file, a
  JSON line, a CSV row, a row's text or a PDF's text over the limit is skipped with a reason
  naming the file (and line), never loaded whole; HTML is read without a tree; markdown front
  matter is not expanded; titles, which every chunk repeats, are cut.
- A CSV quoted field that never closes (at the end of the file, or swallowing rows up to a
  later field's quote) costs its own row, skipped with a reason naming the file and line; the
  rows after it are read.

Each test writes its own tiny corpus under tmp_path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedpipe import models, schemas
from embedpipe.steps import chunk as chunk_module
from embedpipe.steps.base import StepContext
from embedpipe.steps.chunk import Chunk
from embedpipe.steps.ingest import _BATCH_CHARS, MAX_FILE_MB, Ingest, content_hash
from tests.test_ingest import assert_reason, ingest

MB = 2**20

# -- chunking: bounded memory ---------------------------------------------------------------

# Run in a fresh interpreter: chunk one single-line document with every strategy and report
# the resident memory before chunking and the peak (VmHWM) after, in MB.
_CHUNK_PROBE = r"""
import json, sys
from pathlib import Path
import pyarrow as pa
from embedpipe import schemas
from embedpipe.steps.base import StepContext
from embedpipe.steps.chunk import Chunk

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024

text = Path(sys.argv[1]).read_text()
batch = pa.RecordBatch.from_pylist(
    [{"doc_id": "d", "text": text, "title": "T", "source": "d", "meta": "{}",
      "content_hash": "h", "ingested_at": None}], schema=schemas.DOCUMENTS)
ctx = StepContext(pipeline="t", run_id="r", spec_hash="h", base_dir=Path("."),
                  workspace=Path("."))
steps = []
for strategy in sys.argv[2].split(","):
    step = Chunk("c", Chunk.Config(type="chunk", strategy=strategy), base_dir=Path("."))
    step.setup(ctx)
    small = batch.slice(0, 1).set_column(1, "text", pa.array(["A short warm-up text."]))
    list(step.run([iter([small])], ctx))  # the tokenizer's first allocations
    steps.append((strategy, step))
before = status("VmRSS")
out = {}
for strategy, step in steps:
    rows, biggest = 0, 0
    for b in step.run([iter([batch])], ctx):
        rows += b.num_rows
        biggest = max(biggest, sum(len(t) for t in b.column("text").to_pylist()))
        del b
    out[strategy] = {"rows": rows, "biggest_batch_chars": biggest}
print(json.dumps({"before": before, "peak": status("VmHWM"), "strategies": out}))
"""


def single_line_text(n_chars: int) -> str:
    """One line of prose: words, and sentence ends (for the sentences strategy), no newline."""
    words = ["photosynthesis", "converts", "sunlight", "into", "chemical", "energy", "inside",
             "chloroplasts", "while", "honeybees", "share", "flower", "locations"]  # fmt: skip
    parts, size, i = [], 0, 0
    while size < n_chars:
        word = words[i % len(words)] + ("." if i % 17 == 16 else "")
        parts.append(word)
        size += len(word) + 1
        i += 1
    return " ".join(parts)[:n_chars]


@pytest.mark.parametrize(
    "strategies",
    [
        ["tokens", "markdown", "none"],
        # pysbd takes ~35 s over 3 MB (in 2,048-character windows): its own slow case
        pytest.param(["sentences"], marks=pytest.mark.slow),
    ],
    ids=["tokens-markdown-none", "sentences"],
)
def test_single_line_text_is_chunked_in_bounded_memory(
    tmp_path: Path, strategies: list[str]
) -> None:
    """A 3 MB single-line document, every strategy: the peak grows by a window and a copy of
    the text, not by the tokens of the whole text (which took over 100 times its size)."""
    n_chars = 3 * MB
    path = tmp_path / "one-line.txt"
    path.write_text(single_line_text(n_chars))
    proc = subprocess.run(
        [sys.executable, "-c", _CHUNK_PROBE, str(path), ",".join(strategies)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    growth = probe["peak"] - probe["before"]
    # A copy of the text as a Python string (3 MB), a window of tokens (a few MB), a batch of
    # chunk rows and its Arrow copy: about 40 MB. Tokenizing the whole text at once (before
    # issue 13) took about 390 MB here.
    assert growth < 64, probe
    for strategy in {"tokens", "sentences", "markdown"} & set(strategies):
        stats = probe["strategies"][strategy]
        assert stats["rows"] > 1000, probe  # really chunked
        # a long document's chunks are yielded in batches of bounded size
        assert stats["biggest_batch_chars"] <= chunk_module._FLUSH + 10_000, probe
    if "none" in strategies:
        assert probe["strategies"]["none"]["rows"] == 1


# -- chunking: a long text gives the chunks of the text tokenized whole ------------------------


def mixed_text(n_chars: int) -> str:
    """Prose, markdown sections, a code fence, CJK, accents, emoji, tabs, CRLF, runs of
    spaces and a long hyphenated run: what a window cut must not change."""
    pieces = [
        "# Heading one\n\n",
        "Photosynthesis converts sunlight into chemical energy. ",
        "Is pneumonoultramicroscopicsilicovolcanoconiosis really the longest word? ",
        'The guide said "always wear a helmet." ',
        "Café naïve façade Ünïcödé 東京 日本語の文章 😀 emoji.\t",
        "Line one\r\nline two   spaced\u00a0out\n\n",
        "```\n# not a heading\ncode()\n```\n\n",
        "## Section two\n\n",
        "-".join(["alpha", "beta", "gamma"] * 40) + " ",
        "Mitochondria are often called the powerhouse of the cell! ",
        "### Deep\n\nHoneybees share flower locations with a waggle dance.\n\n",
    ]
    out, i = [], 0
    while sum(map(len, out)) < n_chars:
        out.append(pieces[i % len(pieces)])
        i += 1
    return "".join(out)[:n_chars]


def make_ctx(tmp_path: Path) -> StepContext:
    return StepContext(
        pipeline="t", run_id="r", spec_hash="h", base_dir=tmp_path, workspace=tmp_path
    )


def chunk_rows(tmp_path: Path, texts: dict[str, str], **config: Any) -> list[tuple[Any, ...]]:
    step = Chunk("chunks", Chunk.Config(type="chunk", input="docs", **config), base_dir=tmp_path)
    ctx = make_ctx(tmp_path)
    step.setup(ctx)
    batch = pa.RecordBatch.from_pylist(
        [
            {"doc_id": d, "text": t, "title": "T", "source": d, "meta": "{}",
             "content_hash": content_hash("T", t), "ingested_at": None}
            for d, t in texts.items()
        ],
        schema=schemas.DOCUMENTS,
    )  # fmt: skip
    rows = [r for b in step.run([iter([batch])], ctx) for r in b.to_pylist()]
    assert list(ctx.skipped) == []
    return [(r["chunk_id"], r["char_start"], r["char_end"], r["n_tokens"], r["text"]) for r in rows]


STRATEGIES = [
    {"strategy": "tokens", "max_tokens": 64, "overlap": 8},
    {"strategy": "tokens", "max_tokens": 256, "overlap": 32},
    {"strategy": "sentences", "max_tokens": 48, "overlap": 4},
    {"strategy": "markdown", "max_tokens": 96, "overlap": 8},
    {"strategy": "none"},
]


@pytest.mark.parametrize(
    "config", STRATEGIES, ids=lambda c: f"{c['strategy']}-{c.get('max_tokens')}"
)
def test_long_text_gives_the_chunks_of_the_text_tokenized_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: dict[str, Any]
) -> None:
    """Texts of many windows (a small window, so that the test is quick) chunk exactly as
    with no window at all: same boundaries, offsets and token counts, for every strategy."""
    texts = {"long": mixed_text(40_000), "short": mixed_text(900), "empty": ""}
    monkeypatch.setattr(chunk_module, "_WINDOW", 10**9)
    unbounded = chunk_rows(tmp_path, texts, **config)
    monkeypatch.setattr(chunk_module, "_WINDOW", 1_500)  # the long text: about 27 windows
    windowed = chunk_rows(tmp_path, texts, **config)
    assert windowed == unbounded
    assert len({r[0].split("#")[0] for r in windowed}) == 2  # the empty text has no chunks


def test_text_just_under_the_window_is_tokenized_whole(tmp_path: Path) -> None:
    """At the real window: a text just under it is one tokenizer call, exactly as before; one
    just over it is windowed, with the same chunks."""
    window = chunk_module._WINDOW
    under, over = mixed_text(window - 1), mixed_text(window + 5_000)
    tok = models.tokenizer(models.resolve(models.DEFAULT_MODEL))
    rows = chunk_rows(tmp_path, {"under": under, "over": over}, max_tokens=128, overlap=16)
    for doc_id, text in (("under", under), ("over", over)):
        offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        expected = chunk_module._windows(
            chunk_module._Tokens(text, tok, offsets["offset_mapping"]), 0, chunk_module._END,
            128 - 2, 16,
        )  # fmt: skip
        got = [(r[1], r[2], r[3] - 2) for r in rows if r[0].startswith(f"{doc_id}#")]
        assert got == [(a, b, n) for (a, b), n in expected]


def test_windowed_tokens_equal_whole_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token stream itself: windows end before the last space of a run, so no word is cut
    and no token changes, with the tokenizer's offsets shifted into the whole text."""
    monkeypatch.setattr(chunk_module, "_WINDOW", 700)
    text = mixed_text(30_000)
    tok = models.tokenizer(models.resolve(models.DEFAULT_MODEL))
    whole = [tuple(o) for o in tok(text, add_special_tokens=False, return_offsets_mapping=True)[
        "offset_mapping"]]  # fmt: skip
    tokens = chunk_module._Tokens(text, tok)
    streamed = []
    while tokens.bound(chunk_module._END, len(streamed), len(streamed) + 1) > len(streamed):
        streamed.append(tuple(tokens[len(streamed)]))
    assert streamed == whole


def test_run_without_spaces_longer_than_the_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No whitespace for many windows (a minified blob, CJK): windows are cut anyway, chunks
    stay within max_tokens, cover the text in order, and the step terminates."""
    monkeypatch.setattr(chunk_module, "_WINDOW", 500)
    text = "start " + "東京" * 2_000 + " " + "x-y" * 3_000 + " end"
    for config in STRATEGIES[:4]:
        rows = chunk_rows(tmp_path, {"d": text}, **config)
        assert rows[0][1] == 0 and rows[-1][2] == len(text)
        assert all(r[3] <= config["max_tokens"] for r in rows)
        starts = [r[1] for r in rows]
        assert starts == sorted(starts) and len(set(starts)) == len(starts)


# -- ingest: every reader bounded by max_file_mb --------------------------------------------


def compressed_pdf(text: str, repeats: int) -> bytes:
    """A one-page PDF whose content stream is deflated: ``text`` shown ``repeats`` times, far
    more text than bytes in the file."""
    stream = zlib.compress(b"BT /F1 12 Tf 72 720 Td " + b"(%s) Tj T* " % text.encode() * repeats
                           + b"ET", 9)  # fmt: skip
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream
        + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]  # fmt: skip
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)  # fmt: skip
    return out


def sparse(path: Path, size: int, head: bytes = b"", tail: bytes = b"") -> None:
    """A file of ``size`` bytes that costs nothing on disk: head, a hole of NUL bytes, tail."""
    with path.open("wb") as f:
        f.write(head)
        f.truncate(size - len(tail))
        f.seek(0, os.SEEK_END)
        f.write(tail)


def test_default_limit_is_the_measured_one() -> None:
    """The default limit is the one measured for issue 13 (see the report there)."""
    assert Ingest.Config(type="ingest", source="x").max_file_mb == MAX_FILE_MB


@pytest.mark.parametrize("name", ["huge.txt", "huge.md", "huge.html", "huge.pdf"])
def test_whole_file_over_the_default_limit_is_skipped(tmp_path: Path, name: str) -> None:
    sparse(tmp_path / name, int(MAX_FILE_MB * MB) + 1, head=b"%PDF-1.4\n" if "pdf" in name else b"")
    (tmp_path / "good.txt").write_text("a good document")
    rows, skipped = ingest(tmp_path, ".")
    assert [r["doc_id"] for r in rows] == [f"{tmp_path.name}/good.txt"]
    assert_reason(skipped, f"{tmp_path.name}/{name}", f"max_file_mb={MAX_FILE_MB:g}", "bytes")


@pytest.mark.parametrize(
    ("name", "content", "item", "words"),
    [
        pytest.param("big.txt", b"word " * 30_000, "big.txt", ("max_file_mb=0.1",), id="text"),
        pytest.param("big.md", b"# T\n\n" + b"word " * 30_000, "big.md", ("max_file_mb=0.1",),
                     id="markdown"),
        pytest.param("big.html", b"<p>word</p>" * 20_000, "big.html", ("max_file_mb=0.1",),
                     id="html"),
        pytest.param("big.json", json.dumps([{"text": "w " * 99}] * 1_000).encode(), "big.json",
                     ("max_file_mb=0.1", "use .jsonl"), id="json-array"),
        pytest.param("zip.pdf", compressed_pdf("a few words of text", 20_000), "zip.pdf",
                     ("PDF text", "max_file_mb", "page 1"), id="pdf-text-past-the-limit"),
        pytest.param("rows.csv", b"id,text\n1,good\n2," + b"w" * 200_000 + b"\n3,good\n",
                     "rows.csv:2", ("line 3", "max_file_mb=0.1"), id="csv-line"),
        pytest.param("rows.csv", b'id,text\n1,good\n2,"never closed\n'
                     + b"".join(b"%d,row %d\n" % (i, i) for i in range(3, 20_000)),
                     "rows.csv:2", ("line 3", "max_file_mb=0.1", "unterminated quote"),
                     id="csv-quote-open-past-the-limit"),
    ],
)  # fmt: skip
def test_over_the_limit_is_skipped_with_a_reason(
    tmp_path: Path, name: str, content: bytes, item: str, words: tuple[str, ...]
) -> None:
    (tmp_path / name).write_bytes(content)
    rows, skipped = ingest(
        tmp_path, name, max_file_mb=0.1, id_field="id" if "csv" in name else None
    )
    assert [i for i, _ in skipped] == [item], skipped
    assert_reason(skipped, item, *words)
    if name == "rows.csv":  # the rows around it are read
        assert [r["doc_id"] for r in rows][:2] == ["1", "3"]


def test_parquet_text_over_the_limit_is_skipped(tmp_path: Path) -> None:
    pq.write_table(
        pa.table({"text": ["short", "w" * 200_000, "short too"]}), tmp_path / "t.parquet"
    )
    rows, skipped = ingest(tmp_path, "t.parquet", max_file_mb=0.1)
    assert [r["doc_id"] for r in rows] == ["t.parquet:1", "t.parquet:3"]
    assert_reason(skipped, "t.parquet:2", "text is 200,000 characters", "max_file_mb=0.1")


def test_overlong_jsonl_line_is_skipped_naming_file_and_line(tmp_path: Path) -> None:
    lines = [json.dumps({"text": "first"}), json.dumps({"text": "w " * 600_000}),
             json.dumps({"text": "third"})]  # fmt: skip
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    rows, skipped = ingest(tmp_path, "rows.jsonl", max_file_mb=1)
    assert [r["doc_id"] for r in rows] == ["rows.jsonl:1", "rows.jsonl:3"]
    assert_reason(skipped, "rows.jsonl:2", "line is 1,200,013 bytes", "max_file_mb=1")


_INGEST_PROBE = r"""
import json, sys
from pathlib import Path
from embedpipe.steps.base import StepContext
from embedpipe.steps.ingest import Ingest

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024

path = Path(sys.argv[1])
step = Ingest("docs", Ingest.Config(type="ingest", source=str(path), max_file_mb=1),
              base_dir=path.parent)
ctx = StepContext(pipeline="t", run_id="r", spec_hash="h", base_dir=path.parent,
                  workspace=path.parent)
before = status("VmRSS")
rows = [r["doc_id"] for b in step.run([], ctx) for r in b.to_pylist()]
print(json.dumps({"before": before, "peak": status("VmHWM"), "rows": rows,
                  "skipped": list(ctx.skipped)}))
"""


@pytest.mark.parametrize("name", ["one-line.jsonl", "one-line.csv"])
def test_a_single_line_of_256_mb_is_read_past_in_bounded_memory(tmp_path: Path, name: str) -> None:
    """A row format's file is not size-limited, but one line is: a 256 MB line (a sparse
    file, free on disk) is read past a MB at a time and skipped, naming the file and line."""
    path = tmp_path / name
    good = b'{"text": "good"}\n' if name.endswith("jsonl") else b"text\ngood\n"
    sparse(path, 256 * MB, head=good + b"x", tail=b"\n" + good.splitlines(keepends=True)[-1])
    proc = subprocess.run(
        [sys.executable, "-c", _INGEST_PROBE, str(path)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    assert probe["peak"] - probe["before"] < 64, probe  # the line's 256 MB are never held
    assert probe["rows"] == [f"{name}:1", f"{name}:3"], probe
    [(item, reason)] = probe["skipped"]
    assert item == f"{name}:2" and "max_file_mb=1" in reason, probe
    assert ("line 3" in reason) if name.endswith("csv") else ("line is" in reason), probe


def test_ingest_batches_are_cut_by_characters(tmp_path: Path) -> None:
    """Many large documents do not pile up in one batch of 512: a batch is yielded once it
    holds 8 Mi characters of text."""
    text = "word " * (MB // 5)  # 1 MiB each
    for i in range(20):
        (tmp_path / f"doc{i:02}.txt").write_text(text)
    step = Ingest("docs", Ingest.Config(type="ingest", source="."), base_dir=tmp_path)
    batches = list(step.run([], make_ctx(tmp_path)))
    sizes = [sum(len(t) for t in b.column("text").to_pylist()) for b in batches]
    assert sum(b.num_rows for b in batches) == 20
    assert len(batches) > 1 and max(sizes) < _BATCH_CHARS + 1.1 * MB, sizes


def test_titles_are_cut_before_every_chunk_repeats_them(tmp_path: Path) -> None:
    """A one-line markdown file that is all heading: its title would be the whole file,
    repeated in each of its chunks. Titles stop at 1,000 characters, cut at a space."""
    heading = "# " + "word " * 50_000
    (tmp_path / "one.md").write_text(heading)
    (tmp_path / "rows.jsonl").write_text(json.dumps({"title": "t" * 5_000, "text": "x"}) + "\n")
    (tmp_path / "ok.md").write_text("# An ordinary title\n\nBody.\n")
    rows, skipped = ingest(tmp_path, ".")
    assert skipped == []
    titles = {r["doc_id"].split("/")[-1]: r["title"] for r in rows}
    assert titles["ok.md"] == "An ordinary title"
    assert len(titles["one.md"]) <= 1_001 and titles["one.md"].endswith("word…")
    assert len(titles["rows.jsonl:1"]) == 1_001 and titles["rows.jsonl:1"].endswith("…")
    for row in rows:
        assert row["content_hash"] == content_hash(row["title"], row["text"])


def test_front_matter_aliases_are_not_expanded(tmp_path: Path) -> None:
    """A billion laughs in front matter: YAML aliases are refused, so the front matter is
    left as text (as invalid YAML always was) instead of expanding to gigabytes."""
    bomb = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    bomb += [f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]"
             for p, c in zip("abcdefgh", "bcdefghi", strict=True)]  # fmt: skip
    (tmp_path / "bomb.md").write_text("---\n" + "\n".join(bomb) + "\n---\n# Title\n\nBody.\n")
    deep = "---\nk: " + "[" * 20_000 + "]" * 20_000 + "\n---\n# Deep\n\nBody.\n"
    (tmp_path / "deep.md").write_text(deep)
    (tmp_path / "fine.md").write_text("---\ntitle: Fine\ntags: [a, b]\n---\nBody.\n")
    rows, skipped = ingest(tmp_path, ".")
    assert skipped == []
    docs = {r["doc_id"].split("/")[-1]: r for r in rows}
    assert docs["bomb.md"]["meta"] == "{}" and "lol" in docs["bomb.md"]["text"]
    assert docs["deep.md"]["meta"] == "{}" and docs["deep.md"]["title"] == "Deep"
    assert docs["fine.md"]["title"] == "Fine" and json.loads(docs["fine.md"]["meta"]) == {
        "tags": ["a", "b"]
    }


HTML_DOCS = [
    "<html><head><title> Page Title </title><style>p{}</style></head><body><h1>Head</h1>"
    "<p>First <b>bold</b> paragraph &amp; more&nbsp;text.</p><script>x()</script></body></html>",
    "<p>unclosed <div>nested <span>deep</div> after</p> tail <br> next</br> line",
    "<title>A <b>bold</b> title</title><noscript><p>hidden <title>no</title></noscript>shown",
    "<template><p>kept out</p></template><ruby>漢<rp>(</rp><rt>kan</rt><rp>)</rp></ruby>"
    "<![CDATA[cdata text]]><!-- a comment --><?pi x?>&#65;&#x42;&foo; &amp",
    "<pre>  keep\n\n  lines  </pre><textarea>\n t \n</textarea><svg><title>svg</title></svg>",
    "<body>no end tags<p>one<p>two<li>three<td>four",
    "plain text, no tags at all\r\nsecond line",
    "<script>never closed <p>so nothing after is text",
]


@pytest.mark.parametrize("html", HTML_DOCS)
def test_html_text_is_beautifulsoups_without_the_tree(tmp_path: Path, html: str) -> None:
    """HTML is read from the parser's events, holding text rather than an object per tag
    and string (about 70 times the file's size): the text and title are what BeautifulSoup
    gives, for any markup."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    title = soup.title.get_text(strip=True) if soup.title else ""
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    lines = (line.strip() for line in soup.get_text("\n").splitlines())
    text = "\n".join(line for line in lines if line)
    (tmp_path / "page.html").write_text(html)
    rows, skipped = ingest(tmp_path, "page.html")
    if not text.strip():
        assert_reason(skipped, "page.html", "empty document")
        return
    [doc] = rows
    assert (doc["text"], doc["title"]) == (text, title)


def test_json_array_rows_are_those_of_json_loads(tmp_path: Path) -> None:
    """A .json array is parsed an element at a time, giving the rows json.loads would."""
    records = [{"text": f"row {i}", "n": i, "nested": {"a": [1, {"b": None}]}} for i in range(300)]
    (tmp_path / "a.json").write_text(json.dumps(records, indent=1))
    rows, skipped = ingest(tmp_path, "a.json")
    assert skipped == []
    assert [r["text"] for r in rows] == [r["text"] for r in records]
    assert [json.loads(r["meta"]) for r in rows][7] == {"n": 7, "nested": {"a": [1, {"b": None}]}}


# -- CSV: an unterminated quote costs its own row ---------------------------------------------

CSV_CASES = [
    pytest.param(
        b'id,text\n1,good one\n2,"never closed\n3,third\n4,fourth\n',
        "2", "line 3", ["1", "3", "4"], id="at-the-end-of-the-file",
    ),
    pytest.param(
        b'id,text\n1,good\n2,"never closed',
        "2", "line 3", ["1"], id="on-the-last-line-without-newline",
    ),
    pytest.param(
        b'id,text\n1,good\n2,"broken\n3,fine\n4,"quoted, with a comma"\n5,last\n',
        "2", "line 3", ["1", "3", "4", "5"], id="in-the-middle-up-to-a-later-quote",
    ),
    pytest.param(
        b'id,text,year\r\n1,"multi\r\nline",2001\r\n2,"broken,2002\r\n3,"ok",2003\r\n4,x,2004\r\n',
        "2", "line 4", ["1", "3", "4"], id="crlf-three-columns",
    ),
    pytest.param(
        b'id\ttext\n1\t"tab broken\n2\t"fine"\n3\tlast\n',
        "1", "line 2", ["2", "3"], id="tsv",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("data", "bad_id", "line", "kept"), CSV_CASES)
def test_unterminated_csv_quote_skips_only_its_row(
    tmp_path: Path, data: bytes, bad_id: str, line: str, kept: list[str]
) -> None:
    name = "t.tsv" if b"\t" in data.splitlines()[0] else "t.csv"
    (tmp_path / name).write_bytes(data)
    rows, skipped = ingest(tmp_path, name, id_field="id")
    docs = {r["doc_id"]: r for r in rows}
    assert sorted(docs) == sorted(kept), skipped
    assert [item for item, _ in skipped] == [f"{name}:{bad_id}"]
    assert_reason(skipped, f"{name}:{bad_id}", "unterminated quote", line)
    for doc_id, doc in docs.items():  # ids are row numbers here: the rows after keep theirs
        assert doc["source"] == f"{name}:{doc_id}"
        assert "\n" not in doc["text"] or doc_id == "1"  # no row swallowed another


def test_every_row_opening_a_quote_is_skipped_row_by_row(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_bytes(b'id,text\n1,"one\n2,"two\n3,"three\n4,four\n')
    rows, skipped = ingest(tmp_path, "t.csv", id_field="id")
    assert [r["doc_id"] for r in rows] == ["4"]
    assert [item for item, _ in skipped] == ["t.csv:1", "t.csv:2", "t.csv:3"]
    for _, reason in skipped:
        assert "unterminated quote" in reason and "\n" not in reason


def test_well_formed_quotes_are_read_as_before(tmp_path: Path) -> None:
    """Quoted fields over several lines are values, not damage; a quote followed by text on
    one line is read leniently, as Python's csv module does."""
    data = (b'id,text\n1,"para one\npara two, with a comma"\n2,"He said ""hi"""\n'
            b'3,"Quoted" then more\n4,plain\n')  # fmt: skip
    (tmp_path / "t.csv").write_bytes(data)
    rows, skipped = ingest(tmp_path, "t.csv", id_field="id")
    assert skipped == []
    assert [r["text"] for r in rows] == [
        "para one\npara two, with a comma",
        'He said "hi"',
        "Quoted then more",
        "plain",
    ]


def test_unterminated_quote_in_the_header_skips_the_file(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_bytes(b'id,"text\n1,a\n2,b\n')
    rows, skipped = ingest(tmp_path, "t.csv")
    assert rows == []
    assert_reason(skipped, "t.csv", "CSV header", "unterminated quote", "line 1")
