"""Behaviour of the ingest step, run directly (no engine): files in, Arrow documents out."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from embedpipe import schemas
from embedpipe.errors import SourceError
from embedpipe.steps.base import StepContext
from embedpipe.steps.ingest import Ingest, content_hash

Rows = list[dict[str, Any]]
Skips = list[tuple[str, str]]


def make_ctx(tmp_path: Path) -> StepContext:
    return StepContext(
        pipeline="t", run_id="r", spec_hash="h", base_dir=tmp_path, workspace=tmp_path
    )


def ingest(tmp_path: Path, source: str | list[str], **config: Any) -> tuple[Rows, Skips]:
    """Run an ingest step over ``source`` (relative to tmp_path): (rows, skipped)."""
    step = Ingest("docs", Ingest.Config(type="ingest", source=source, **config), base_dir=tmp_path)
    ctx = make_ctx(tmp_path)
    step.setup(ctx)
    batches = list(step.run([], ctx))
    for batch in batches:
        assert batch.schema.equals(schemas.DOCUMENTS, check_metadata=True)
        assert batch.num_rows > 0
    return [row for b in batches for row in b.to_pylist()], list(ctx.skipped)


def by_id(rows: Rows) -> dict[str, dict[str, Any]]:
    return {r["doc_id"]: r for r in rows}


def assert_reason(skipped: Skips, item: str, *words: str) -> str:
    """``item`` was skipped once, with a one-sentence reason that mentions ``words``."""
    reasons = [reason for it, reason in skipped if it == item]
    assert len(reasons) == 1, f"{item} skipped {len(reasons)} times: {skipped}"
    reason = reasons[0]
    assert reason.strip() and "\n" not in reason
    for word in words:
        assert word.lower() in reason.lower(), f"{word!r} not in {reason!r}"
    return reason


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def minimal_pdf(text: str, title: str = "A Tiny PDF") -> bytes:
    """A one-page PDF with one line of Helvetica text, byte offsets in the xref table exact."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Title (%s) >>" % title.encode(),
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 6 0 R >>\n" % (len(objects) + 1)
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return out


# -- row formats ------------------------------------------------------------------------------


def test_beir_jsonl_ids_title_text_and_meta(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "corpus.jsonl",
        [
            {"_id": "d1", "title": "Bees", "text": "Bees dance.", "metadata": {"year": 2020}},
            {"_id": 7, "title": "", "text": "Numeric ids become strings.", "url": "http://x"},
        ],
    )
    rows, skipped = ingest(tmp_path, "corpus.jsonl", format="beir")
    assert skipped == []
    docs = by_id(rows)
    assert list(docs) == ["d1", "7"]
    assert docs["d1"]["title"] == "Bees"
    assert docs["d1"]["text"] == "Bees dance."
    assert docs["d1"]["source"] == "corpus.jsonl:1"
    assert json.loads(docs["d1"]["meta"]) == {"metadata": {"year": 2020}}
    assert docs["7"]["title"] == ""
    assert json.loads(docs["7"]["meta"]) == {"url": "http://x"}
    assert docs["7"]["source"] == "corpus.jsonl:2"


def test_beir_fixture_corpus(corpus: Path, tmp_path: Path) -> None:
    rows, skipped = ingest(tmp_path, corpus.name, format="beir")
    assert skipped == []
    assert [r["doc_id"] for r in rows] == ["d1", "d2", "d3", "d4", "d5", "d6"]
    assert all(json.loads(r["meta"]) == {} for r in rows)


def test_jsonl_with_custom_fields(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "data.jsonl",
        [{"pid": "p-1", "body": "The body.", "head": "The head", "title": "not used", "n": 3}],
    )
    rows, skipped = ingest(
        tmp_path, "data.jsonl", id_field="pid", text_field="body", title_field="head"
    )
    assert skipped == []
    [doc] = rows
    assert (doc["doc_id"], doc["text"], doc["title"]) == ("p-1", "The body.", "The head")
    # Fields that are not id, text or title go to meta, including a 'title' not chosen.
    assert json.loads(doc["meta"]) == {"title": "not used", "n": 3}


def test_jsonl_without_title_field(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d.jsonl", [{"text": "x", "title": "kept as meta"}])
    [doc], _ = ingest(tmp_path, "d.jsonl", title_field=None)
    assert doc["title"] == ""
    assert json.loads(doc["meta"]) == {"title": "kept as meta"}


def test_jsonl_without_id_field_uses_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "notes.jsonl"
    path.write_text('{"text": "first"}\n\n{"text": "third line"}\n')
    rows, skipped = ingest(tmp_path, "notes.jsonl")
    assert skipped == []
    # Blank lines are skipped silently but still count: ids are real line numbers.
    assert [(r["doc_id"], r["text"]) for r in rows] == [
        ("notes.jsonl:1", "first"),
        ("notes.jsonl:3", "third line"),
    ]
    assert [r["source"] for r in rows] == ["notes.jsonl:1", "notes.jsonl:3"]


def test_jsonl_rows_that_are_not_objects_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('["a list"]\n{"text": "ok"}\n')
    rows, skipped = ingest(tmp_path, "d.jsonl")
    assert [r["text"] for r in rows] == ["ok"]
    assert_reason(skipped, "d.jsonl:1", "not a JSON object")


def test_row_without_text_is_skipped(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "d.jsonl", [{"_id": "a", "body": "wrong field"}, {"_id": "b", "text": "ok"}]
    )
    rows, skipped = ingest(tmp_path, "d.jsonl", format="beir")
    assert [r["doc_id"] for r in rows] == ["b"]
    assert_reason(skipped, "d.jsonl:1", "text")


def test_many_rows_span_several_batches(tmp_path: Path) -> None:
    n = 1100  # more than two of the step's 512-row batches
    write_jsonl(tmp_path / "big.jsonl", [{"_id": f"d{i}", "text": f"doc {i}"} for i in range(n)])
    rows, skipped = ingest(tmp_path, "big.jsonl", format="beir")
    assert skipped == []
    assert [r["doc_id"] for r in rows] == [f"d{i}" for i in range(n)]


def test_parquet(tmp_path: Path) -> None:
    table = pa.table(
        {
            "id": ["a", "b"],
            "text": ["Alpha text.", "Beta text."],
            "title": ["Alpha", None],
            "year": [2001, 2002],
        }
    )
    pq.write_table(table, tmp_path / "docs.parquet")
    rows, skipped = ingest(tmp_path, "docs.parquet", id_field="id")
    assert skipped == []
    docs = by_id(rows)
    assert docs["a"]["text"] == "Alpha text." and docs["a"]["title"] == "Alpha"
    assert docs["b"]["title"] == ""  # a null title is an empty one
    assert json.loads(docs["a"]["meta"]) == {"year": 2001}
    assert docs["b"]["source"] == "docs.parquet:2"


def test_corrupt_parquet_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not really parquet")
    write_jsonl(tmp_path / "good.jsonl", [{"text": "still read"}])
    rows, skipped = ingest(tmp_path, ["bad.parquet", "good.jsonl"])
    assert [r["text"] for r in rows] == ["still read"]
    assert len(skipped) == 1 and skipped[0][0].startswith("bad.parquet")
    assert "parquet" in skipped[0][1].lower() and "\n" not in skipped[0][1]


def test_csv_keeps_every_value_as_text(tmp_path: Path) -> None:
    (tmp_path / "docs.csv").write_text(
        'id,title,text,year\n007,Bond,"Shaken, not stirred.",1964\n7,Seven,42,2000\n'
        '8,Multi,"line one\nline two",\n'
    )
    rows, skipped = ingest(tmp_path, "docs.csv", id_field="id")
    assert skipped == []
    docs = by_id(rows)
    # '007' and '7' are different ids; text that looks like a number is still text.
    assert list(docs) == ["007", "7", "8"]
    assert docs["007"]["text"] == "Shaken, not stirred."
    assert docs["007"]["title"] == "Bond"
    assert docs["7"]["text"] == "42"
    assert docs["8"]["text"] == "line one\nline two"
    assert json.loads(docs["007"]["meta"]) == {"year": "1964"}


def test_csv_type_change_late_in_a_large_file(tmp_path: Path) -> None:
    # Past Arrow's 1 MB read block, so a type inferred from the first block would break here.
    filler = "x" * 600
    lines = [f"{i},{filler} {i}" for i in range(2000)] + ["not-a-number,the last row"]
    (tmp_path / "big.csv").write_text("id,text\n" + "\n".join(lines) + "\n")
    assert (tmp_path / "big.csv").stat().st_size > 2**20
    rows, skipped = ingest(tmp_path, "big.csv", id_field="id")
    assert skipped == []
    assert len(rows) == 2001
    assert rows[-1]["doc_id"] == "not-a-number" and rows[-1]["text"] == "the last row"


def test_tsv(tmp_path: Path) -> None:
    (tmp_path / "docs.tsv").write_text("id\ttext\ttitle\nt1\tTab, separated text.\tT\n")
    [doc], skipped = ingest(tmp_path, "docs.tsv", id_field="id")
    assert skipped == []
    assert (doc["doc_id"], doc["text"], doc["title"]) == ("t1", "Tab, separated text.", "T")


# -- whole-file formats -----------------------------------------------------------------------


def test_text_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_bytes("\ufeffPlain notes.\nSecond line.\n".encode())
    [doc], skipped = ingest(tmp_path, "notes.txt")
    assert skipped == []
    assert doc["doc_id"] == "notes.txt" and doc["source"] == "notes.txt"
    assert doc["text"] == "Plain notes.\nSecond line.\n"  # the BOM is dropped
    assert doc["title"] == ""
    assert json.loads(doc["meta"]) == {}


def test_unknown_extension_reads_as_text(tmp_path: Path) -> None:
    (tmp_path / "LICENSE").write_text("Some licence text.")
    [doc], _ = ingest(tmp_path, "LICENSE")
    assert doc["text"] == "Some licence text."


def test_markdown_front_matter_and_heading(tmp_path: Path) -> None:
    (tmp_path / "guide.md").write_text(
        "---\ntags: [a, b]\nauthor: Ada\n---\n\nIntro line.\n\n# The Guide\n\nBody.\n"
    )
    [doc], skipped = ingest(tmp_path, "guide.md")
    assert skipped == []
    assert doc["title"] == "The Guide"
    assert json.loads(doc["meta"]) == {"tags": ["a", "b"], "author": "Ada"}
    assert doc["text"] == "Intro line.\n\n# The Guide\n\nBody.\n"
    assert "author" not in doc["text"]


def test_markdown_title_from_front_matter_wins(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("---\ntitle: From YAML\n---\n# From heading\ntext\n")
    [doc], _ = ingest(tmp_path, "a.md")
    assert doc["title"] == "From YAML"
    assert json.loads(doc["meta"]) == {}


def test_markdown_without_heading_uses_file_stem(tmp_path: Path) -> None:
    (tmp_path / "release-notes.md").write_text("## Only a second-level heading\ntext\n")
    [doc], _ = ingest(tmp_path, "release-notes.md")
    assert doc["title"] == "release-notes"


def test_markdown_heading_inside_code_fence_is_not_the_title(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("```bash\n# install it\npip install x\n```\n# Real Title\n")
    [doc], _ = ingest(tmp_path, "a.md")
    assert doc["title"] == "Real Title"


def test_markdown_front_matter_with_crlf_line_ends(tmp_path: Path) -> None:
    (tmp_path / "win.md").write_bytes(b"---\r\ntitle: Windows\r\nk: v\r\n---\r\n# H\r\nbody\r\n")
    [doc], _ = ingest(tmp_path, "win.md")
    assert doc["title"] == "Windows"
    assert json.loads(doc["meta"]) == {"k": "v"}
    assert doc["text"] == "# H\r\nbody\r\n"


def test_markdown_empty_front_matter(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("---\n---\nBody.\n\n---\n\nAfter a rule.\n")
    [doc], _ = ingest(tmp_path, "a.md")
    assert doc["text"] == "Body.\n\n---\n\nAfter a rule.\n"
    assert json.loads(doc["meta"]) == {}


def test_markdown_rule_is_not_front_matter(tmp_path: Path) -> None:
    text = "# Title\n\n---\n\nnot: yaml\n"
    (tmp_path / "a.md").write_text(text)
    [doc], _ = ingest(tmp_path, "a.md")
    assert doc["text"] == text and json.loads(doc["meta"]) == {}


def test_html(tmp_path: Path) -> None:
    (tmp_path / "page.html").write_text(
        "<html><head><title> Page Title </title><style>body { color: red }</style>"
        "<script>var secret = 1;</script></head>"
        "<body><h1>Heading</h1><p>First <b>bold</b> paragraph.</p>"
        "<noscript>enable js</noscript><script>track()</script></body></html>"
    )
    [doc], skipped = ingest(tmp_path, "page.html")
    assert skipped == []
    assert doc["title"] == "Page Title"
    assert "Heading" in doc["text"] and "paragraph." in doc["text"]
    for gone in ("color: red", "secret", "track()", "enable js", "<"):
        assert gone not in doc["text"]


def test_pdf(tmp_path: Path) -> None:
    (tmp_path / "paper.pdf").write_bytes(minimal_pdf("Hello from a PDF page"))
    [doc], skipped = ingest(tmp_path, "paper.pdf")
    assert skipped == []
    assert doc["doc_id"] == "paper.pdf"
    assert "Hello from a PDF page" in doc["text"]
    assert doc["title"] == "A Tiny PDF"
    assert json.loads(doc["meta"]) == {"pages": 1}


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog", id="truncated"),
        pytest.param(b"this is not a pdf at all", id="not-a-pdf"),
    ],
)
def test_malformed_pdf_is_skipped(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "bad.pdf").write_bytes(data)
    (tmp_path / "good.pdf").write_bytes(minimal_pdf("Still here"))
    rows, skipped = ingest(tmp_path, ["bad.pdf", "good.pdf"])
    assert [r["doc_id"] for r in rows] == ["good.pdf"]
    assert_reason(skipped, "bad.pdf", "PDF")


# -- directories and globs --------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """corpus/ with visible and hidden files, at several depths."""
    root = tmp_path / "corpus"
    files = {
        "a.md": "# A\nalpha",
        "b.txt": "bravo",
        "sub/c.md": "# C\ncharlie",
        "sub/deep/d.txt": "delta",
        ".hidden.md": "# hidden",
        ".git/config": "[core]",
        "sub/.secret/e.md": "# secret",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_directory_ids_relative_to_its_parent(tmp_path: Path, tree: Path) -> None:
    rows, skipped = ingest(tmp_path, "corpus")
    assert skipped == []
    ids = [r["doc_id"] for r in rows]
    assert ids == ["corpus/a.md", "corpus/b.txt", "corpus/sub/c.md", "corpus/sub/deep/d.txt"]
    assert by_id(rows)["corpus/sub/c.md"]["title"] == "C"  # format picked by extension


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        (["*.md"], [], ["a.md", "sub/c.md"]),
        (["**/*.md"], [], ["a.md", "sub/c.md"]),
        (["sub/*.md"], [], ["sub/c.md"]),
        ([], ["*.txt"], ["a.md", "sub/c.md"]),
        ([], ["sub/**"], ["a.md", "b.txt"]),
        (["*.txt"], ["deep/*"], ["b.txt"]),
    ],
)
def test_directory_include_exclude(
    tmp_path: Path, tree: Path, include: list[str], exclude: list[str], expected: list[str]
) -> None:
    rows, _ = ingest(tmp_path, "corpus", include=include, exclude=exclude)
    assert [r["doc_id"] for r in rows] == [f"corpus/{e}" for e in expected]


def test_glob_source(tmp_path: Path, tree: Path) -> None:
    rows, skipped = ingest(tmp_path, "corpus/**/*.md")
    assert skipped == []
    # Ids are relative to the glob's fixed prefix; hidden files do not match.
    assert [r["doc_id"] for r in rows] == ["a.md", "sub/c.md"]


def test_several_sources_and_absolute_paths(tmp_path: Path, tree: Path) -> None:
    rows, _ = ingest(tmp_path, [str(tree / "b.txt"), "corpus/sub/*.md"])
    assert [r["doc_id"] for r in rows] == ["b.txt", "c.md"]


# -- identity ---------------------------------------------------------------------------------


def test_doc_id_and_content_hash_are_stable(tmp_path: Path, tree: Path) -> None:
    first, _ = ingest(tmp_path, "corpus")
    second, _ = ingest(tmp_path, "corpus")
    key = [(r["doc_id"], r["content_hash"], r["text"], r["meta"]) for r in first]
    assert key == [(r["doc_id"], r["content_hash"], r["text"], r["meta"]) for r in second]
    for row in first:
        assert row["content_hash"] == content_hash(row["title"], row["text"])
        assert isinstance(row["ingested_at"], datetime)
        assert row["ingested_at"].utcoffset() is not None
    assert len({r["content_hash"] for r in first}) == len(first)


def test_content_hash_follows_text_and_title(tmp_path: Path) -> None:
    path = tmp_path / "a.md"
    path.write_text("# Title\nversion one")
    [before], _ = ingest(tmp_path, "a.md")
    path.write_text("# Title\nversion two")
    [after], _ = ingest(tmp_path, "a.md")
    assert after["doc_id"] == before["doc_id"]
    assert after["content_hash"] != before["content_hash"]
    assert content_hash("t1", "same") != content_hash("t2", "same")
    assert content_hash("ab", "c") != content_hash("a", "bc")


# -- bad inputs: skipped with a reason, the run goes on --------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        pytest.param("bin.txt", b"GIF89a\x00\x01\x02binary", ("binary", "NUL"), id="binary"),
        pytest.param("latin1.txt", "café".encode("latin-1"), ("UTF-8",), id="invalid-utf8"),
        pytest.param("empty.txt", b"", ("empty",), id="empty-text"),
        pytest.param("empty.md", b"", ("empty",), id="empty-markdown"),
        pytest.param("empty.jsonl", b"", ("empty",), id="empty-jsonl"),
        pytest.param("empty.csv", b"", ("empty",), id="empty-csv"),
        pytest.param("blank.txt", b"  \n\t \n", ("empty",), id="whitespace-only"),
        pytest.param("blank.html", b"<html><script>x()</script></html>", ("empty",), id="html"),
    ],
)
def test_bad_file_is_skipped_and_run_goes_on(
    tmp_path: Path, name: str, data: bytes, words: tuple[str, ...]
) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / name).write_bytes(data)
    (tmp_path / "docs" / "zz-good.txt").write_text("good document")
    rows, skipped = ingest(tmp_path, "docs")
    assert [r["doc_id"] for r in rows] == ["docs/zz-good.txt"]
    assert len(skipped) == 1
    assert_reason(skipped, f"docs/{name}", *words)


def test_bad_json_lines_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_bytes(
        b'{"_id": "a", "text": "one"}\n'
        b'{"_id": "b", "text": "trunc\n'
        b'{"_id": "c", "text": "caf\xe9"}\n'
        b'{"_id": "d", "text": "four"}\n'
    )
    rows, skipped = ingest(tmp_path, "d.jsonl", format="beir")
    assert [r["doc_id"] for r in rows] == ["a", "d"]
    assert len(skipped) == 2
    assert_reason(skipped, "d.jsonl:2", "not valid JSON")
    assert_reason(skipped, "d.jsonl:3", "UTF-8")


def test_whitespace_only_row_is_skipped(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d.jsonl", [{"_id": "a", "text": " \n "}, {"_id": "b", "text": "ok"}])
    rows, skipped = ingest(tmp_path, "d.jsonl", format="beir")
    assert [r["doc_id"] for r in rows] == ["b"]
    assert_reason(skipped, "d.jsonl:1", "empty")


@pytest.mark.parametrize("record", [{"text": "no id"}, {"_id": "", "text": "empty id"}])
def test_row_missing_id_field_is_skipped(tmp_path: Path, record: dict[str, Any]) -> None:
    write_jsonl(tmp_path / "d.jsonl", [record, {"_id": "ok", "text": "fine"}])
    rows, skipped = ingest(tmp_path, "d.jsonl", format="beir")
    assert [r["doc_id"] for r in rows] == ["ok"]
    assert_reason(skipped, "d.jsonl:1", "_id")


def test_row_missing_custom_id_field_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("key,text\nk1,one\n,two\n")
    rows, skipped = ingest(tmp_path, "d.csv", id_field="key")
    assert [r["doc_id"] for r in rows] == ["k1"]
    assert_reason(skipped, "d.csv:2", "key")


def test_duplicate_ids_keep_the_first(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [{"_id": "x", "text": "first"}, {"_id": "y", "text": "y"}])
    write_jsonl(tmp_path / "b.jsonl", [{"_id": "x", "text": "second"}, {"_id": "z", "text": "z"}])
    rows, skipped = ingest(tmp_path, ["a.jsonl", "b.jsonl"], format="beir")
    assert [(r["doc_id"], r["text"]) for r in rows] == [("x", "first"), ("y", "y"), ("z", "z")]
    assert_reason(skipped, "b.jsonl:1", "duplicate", "'x'", "a.jsonl:1")


def test_file_over_max_file_mb_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_text("x" * 500)  # 0.0001 MB is 104 bytes
    (tmp_path / "small.txt").write_text("tiny")
    rows, skipped = ingest(tmp_path, ["big.txt", "small.txt"], max_file_mb=0.0001)
    assert [r["doc_id"] for r in rows] == ["small.txt"]
    reason = assert_reason(skipped, "big.txt", "max_file_mb=0.0001", "500")
    assert "0 MB" not in reason  # the size is never rounded down to look under the limit


def test_unreadable_file_is_skipped(tmp_path: Path) -> None:
    locked = tmp_path / "docs" / "locked.txt"
    locked.parent.mkdir()
    locked.write_text("secret")
    (tmp_path / "docs" / "open.txt").write_text("open")
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("this user can read a mode-000 file (root)")
        rows, skipped = ingest(tmp_path, "docs")
    finally:
        locked.chmod(0o644)
    assert [r["doc_id"] for r in rows] == ["docs/open.txt"]
    assert_reason(skipped, "docs/locked.txt", "cannot read", "permission")


def test_mixed_bad_corpus_keeps_every_good_document(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    root.mkdir()
    (root / "1.txt").write_text("good one")
    (root / "2.txt").write_bytes(b"\x00\x01")
    (root / "3.md").write_text("# Three\ngood three")
    (root / "4.txt").write_bytes(b"\xff\xfe bad")
    (root / "5.txt").write_text("")
    write_jsonl(root / "6.jsonl", [{"text": "row one"}, {"text": ""}, {"text": "row three"}])
    (root / "7.pdf").write_bytes(b"%PDF-1.4 broken")
    rows, skipped = ingest(tmp_path, "mixed")
    assert [r["doc_id"] for r in rows] == [
        "mixed/1.txt",
        "mixed/3.md",
        "mixed/6.jsonl:1",
        "mixed/6.jsonl:3",
    ]
    assert sorted(item for item, _ in skipped) == [
        "mixed/2.txt",
        "mixed/4.txt",
        "mixed/5.txt",
        "mixed/6.jsonl:2",
        "mixed/7.pdf",
    ]
    assert all(reason.strip() and "\n" not in reason for _, reason in skipped)


# -- missing sources and config ---------------------------------------------------------------


def test_missing_source_raises_and_preflight_reports_it(tmp_path: Path) -> None:
    step = Ingest("docs", Ingest.Config(type="ingest", source="nope.jsonl"), base_dir=tmp_path)
    [(key, problem)] = step.preflight()
    assert key == ("source",)
    assert "nope.jsonl" in problem and "does not exist" in problem
    ctx = make_ctx(tmp_path)
    step.setup(ctx)
    with pytest.raises(SourceError, match=r"steps\.docs\.source: 'nope\.jsonl' does not exist"):
        list(step.run([], ctx))


def test_glob_matching_nothing_raises_and_preflight_reports_it(tmp_path: Path) -> None:
    (tmp_path / "real.txt").write_text("x")
    step = Ingest(
        "docs", Ingest.Config(type="ingest", source=["real.txt", "*.md"]), base_dir=tmp_path
    )
    [(key, problem)] = step.preflight()
    assert key == ("source", 1)  # the second entry of the list
    assert "'*.md' matches no files" in problem
    with pytest.raises(SourceError, match="matches no files"):
        list(step.run([], make_ctx(tmp_path)))


def test_preflight_is_quiet_when_sources_exist(tmp_path: Path, tree: Path) -> None:
    step = Ingest(
        "docs", Ingest.Config(type="ingest", source=["corpus", "corpus/*.md"]), base_dir=tmp_path
    )
    assert step.preflight() == []
    assert step.output_schema([]).equals(schemas.DOCUMENTS)


@pytest.mark.parametrize(
    "bad",
    [
        {"sourcce": "x"},
        {"source": "x", "fromat": "jsonl"},
        {"source": "x", "format": "docx"},
        {"source": "x", "max_file_mb": 0},
    ],
)
def test_config_rejects_bad_keys_and_values(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Ingest.Config(type="ingest", **bad)
