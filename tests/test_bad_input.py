"""Bad input (issue 3): a corpus of broken, odd and hostile files, each skipped with a one-line
reason while the good documents beside it are still read.

``CASES`` is one table: what to write, which item must be skipped (with words its reason must
contain), and which documents must still come out. The cases run the ingest step directly (no
engine), so the whole table takes a few seconds. Cases that tests/test_ingest.py already covers
(a GIF named .txt, latin-1 text, empty text/markdown/jsonl/csv files, whitespace-only text,
scripts-only HTML, a JSON line cut mid-file, rows without id or text, duplicate ids across
files, max_file_mb, an unreadable file, a list row, truncated and non-PDF .pdf files, a corrupt
parquet, a missing source) are not repeated here.

The last test, ``test_e2e_cli_run_with_bad_inputs`` (the only end-to-end one), runs the real
``pipe`` CLI over a directory of bad and good files.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedpipe.errors import SourceError
from embedpipe.steps.ingest import Ingest
from tests.test_ingest import assert_reason, ingest, make_ctx, minimal_pdf

Maker = Callable[[Path], object]  # writes the file (or link, pipe, directory) at this path
GOOD = "docs/zz-good.txt"  # written next to every case: proof that the run goes on
MB200 = 200 * 2**20


@dataclass(frozen=True)
class Case:
    files: dict[str, bytes | Maker]  # paths relative to tmp_path
    skipped: tuple[str, ...]  # the items skipped; () when the odd input is read (a decision)
    words: tuple[str, ...] = ()  # every skipped item's reason contains each of these
    kept: tuple[str, ...] = ()  # doc ids that must still come out, besides the good file
    config: dict[str, Any] = field(default_factory=dict)
    source: str | list[str] = "docs"
    good: str = GOOD  # the good file's doc id (ids are relative to a glob's prefix)
    text: dict[str, str] = field(default_factory=dict)  # doc id -> text it must contain
    refused: bool = False  # refused before reading anything, as a source problem
    non_root: bool = False  # root reads mode-000 files: the case is skipped where it can


def lines(*records: Any) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def row(text: str = "a good row", **fields: Any) -> dict[str, Any]:
    return {**fields, "text": text}


def parquet(**columns: list[Any]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue()


def sparse(head: bytes = b"", tail: bytes = b"") -> Maker:
    """A 200 MB file that costs nothing on disk: ``head``, a hole of NUL bytes, ``tail``."""

    def make(path: Path) -> None:
        with path.open("wb") as f:
            f.write(head)
            f.truncate(MB200)
            f.seek(0, os.SEEK_END)
            f.write(tail)

    return make


def symlink(target: str) -> Maker:
    return lambda path: path.symlink_to(target)


def encrypted_pdf(path: Path) -> None:
    from pypdf import PdfWriter

    writer = PdfWriter(clone_from=io.BytesIO(minimal_pdf("Top secret")))
    writer.encrypt(user_password="secret", owner_password="owner", algorithm="RC4-128")
    writer.write(path)


def textless_pdf() -> bytes:
    """A one-page PDF whose page draws nothing: what a scan without OCR looks like."""
    pdf = minimal_pdf("x")
    draw = b"BT /F1 12 Tf 72 720 Td (x) Tj ET"
    return pdf.replace(draw, b" " * len(draw))  # same length: the xref offsets stay right


def locked_dir(path: Path) -> None:
    path.mkdir()
    (path / "inside.txt").write_text("cannot be listed")
    path.chmod(0)


def non_utf8_name(path: Path) -> None:
    with open(os.fsencode(path.parent) + b"/caf\xe9.txt", "wb") as f:
        f.write(b"text under a latin-1 file name")


PDF = minimal_pdf("Hello from a PDF page")

CASES = [
    # -- files that are not text, whatever their name --------------------------------------
    pytest.param(
        Case({"docs/tool.md": b"\x7fELF\x02\x01\x01" + bytes(40)}, ("docs/tool.md",),
             ("not text", "executable")),
        id="executable-named-md",
    ),
    pytest.param(
        Case({"docs/log.txt": b"x" * 10_000 + b"\x00 binary tail"}, ("docs/log.txt",),
             ("binary", "NUL", "offset 10,000")),
        id="nul-byte-after-the-first-8kb",
    ),
    pytest.param(
        Case({"docs/notes.txt": gzip.compress(b"compressed notes")}, ("docs/notes.txt",),
             ("gzip", "decompress")),
        id="gzip-named-txt",
    ),
    pytest.param(
        Case({"docs/corpus.jsonl": gzip.compress(lines(row()))}, ("docs/corpus.jsonl",),
             ("gzip",)),
        id="gzip-named-jsonl",
    ),
    pytest.param(
        Case({"docs/report.txt": b"PK\x03\x04\x14\x00\x06\x00word/document.xml"},
             ("docs/report.txt",), ("zip archive", "docx")),
        id="docx-named-txt",
    ),
    pytest.param(
        Case({"docs/paper.txt": PDF}, ("docs/paper.txt",), ("PDF", "format: pdf")),
        id="pdf-named-txt",
    ),
    pytest.param(
        Case({"docs/table.csv": parquet(id=["1"], text=["x"])}, ("docs/table.csv",),
             ("Parquet", "format: parquet")),
        id="parquet-named-csv",
    ),
    # -- encodings ------------------------------------------------------------------------------
    pytest.param(
        Case({"docs/quotes.md": "# Quotes\n\nHe said \u201chi\u201d.".encode("cp1252")},
             ("docs/quotes.md",), ("not valid UTF-8", "0x93", "offset 18", "save it as UTF-8")),
        id="cp1252-markdown",
    ),
    pytest.param(
        # Decision: UTF-8 only. A UTF-16 file is skipped with a reason that names UTF-16 (a
        # guess from two bytes could read binary junk starting FF FE as Chinese text).
        Case({"docs/windows.txt": "Notepad text".encode("utf-16")}, ("docs/windows.txt",),
             ("UTF-16", "byte-order mark", "save it as UTF-8")),
        id="utf16-with-bom",
    ),
    pytest.param(
        Case({"docs/empty.pdf": b""}, ("docs/empty.pdf",), ("empty file",)), id="empty-pdf"
    ),
    pytest.param(
        Case({"docs/empty.parquet": b""}, ("docs/empty.parquet",), ("empty file",)),
        id="empty-parquet",
    ),
    pytest.param(
        Case({"docs/zero-width.txt": "\u200b\ufeff\u00a0\n\u2003\u200b".encode()},
             ("docs/zero-width.txt",), ("empty document",)),
        id="only-invisible-characters",
    ),
    # -- sizes: skipped by size, before a byte is read ----------------------------------------
    pytest.param(
        Case({"docs/huge.txt": sparse()}, ("docs/huge.txt",),
             ("209,715,200 bytes", "max_file_mb=100")),
        id="200mb-text",
    ),
    pytest.param(
        Case({"docs/huge.md": sparse(b"# Big\n")}, ("docs/huge.md",),
             ("209,715,200 bytes", "max_file_mb=100")),
        id="200mb-markdown",
    ),
    pytest.param(
        Case({"docs/huge.pdf": sparse(PDF)}, ("docs/huge.pdf",),
             ("209,715,200 bytes", "max_file_mb=100")),
        id="200mb-pdf",
    ),
    pytest.param(
        # Row formats stream, but one line is one document: it is held to max_file_mb, and
        # read past 1 MB at a time rather than loaded.
        Case({"docs/big.jsonl": sparse(lines(row("first")), b"\n" + lines(row("last")))},
             ("docs/big.jsonl:2",), ("line is", "max_file_mb=100"),
             kept=("docs/big.jsonl:1", "docs/big.jsonl:3")),
        id="200mb-jsonl-line-of-nul-bytes",
    ),
    pytest.param(
        Case({"docs/long.jsonl": lines(row("x" * 2 * 2**20), row())}, ("docs/long.jsonl:1",),
             ("line is", "max_file_mb=1", "one document"), kept=("docs/long.jsonl:2",),
             config={"max_file_mb": 1}),
        id="enormous-jsonl-line",
    ),
    pytest.param(
        # Arrow's reader failed the whole file on a field over its 1 MB block; the stdlib's
        # refused fields over 128 KB.
        Case({"docs/long.csv": b"id,text\n1," + b"y" * 3 * 2**20 + b"\n2,short\n"}, (),
             kept=("1", "2"), config={"id_field": "id"}),
        id="csv-field-over-1mb-is-read",
    ),
    # -- documents with nothing in them ------------------------------------------------------
    pytest.param(
        Case({"docs/draft.md": b"---\ntitle: Draft\ntags: [todo]\n---\n\n"},
             ("docs/draft.md",), ("empty document", "front matter")),
        id="markdown-only-front-matter",
    ),
    pytest.param(
        Case({"docs/shell.html": b"<html><head><style>p{color:red}</style></head><body>"
              b"<!-- nothing yet --><noscript>enable js</noscript><template>t</template>"
              b"</body></html>"},
             ("docs/shell.html",), ("empty document", "HTML", "no visible text")),
        id="html-only-styles-comments-noscript",
    ),
    # -- PDF ------------------------------------------------------------------------------------
    pytest.param(
        Case({"docs/junk.pdf": b"%PDF-1.7\n" + bytes(range(1, 256)) * 20}, ("docs/junk.pdf",),
             ("unreadable PDF",)),
        id="pdf-garbage-after-header",
    ),
    pytest.param(
        Case({"docs/cut.pdf": PDF[: len(PDF) * 3 // 5]}, ("docs/cut.pdf",),
             ("unreadable PDF", "truncated")),
        id="pdf-real-file-cut-short",
    ),
    pytest.param(
        Case({"docs/secret.pdf": encrypted_pdf}, ("docs/secret.pdf",),
             ("encrypted", "password")),
        id="pdf-encrypted",
    ),
    pytest.param(
        Case({"docs/scan.pdf": textless_pdf()}, ("docs/scan.pdf",),
             ("no text layer", "1 page", "OCR")),
        id="pdf-without-text-layer",
    ),
    # -- JSON Lines ----------------------------------------------------------------------------
    pytest.param(
        Case({"docs/rows.jsonl": lines(row()) + b'{"text": "the export stopped he'},
             ("docs/rows.jsonl:2",), ("last line", "not valid JSON", "truncated"),
             kept=("docs/rows.jsonl:1",)),
        id="jsonl-last-line-cut-mid-object",
    ),
    pytest.param(
        Case({"docs/rows.jsonl": b"42\n" + lines(row())}, ("docs/rows.jsonl:1",),
             ("an integer", "not a JSON object"), kept=("docs/rows.jsonl:2",)),
        id="jsonl-row-is-a-number",
    ),
    pytest.param(
        Case({"docs/rows.jsonl": b"null\n" + lines(row())}, ("docs/rows.jsonl:1",),
             ("null", "not a JSON object"), kept=("docs/rows.jsonl:2",)),
        id="jsonl-row-is-null",
    ),
    pytest.param(
        Case({"docs/rows.jsonl": lines({"text": None}, row())}, ("docs/rows.jsonl:1",),
             ("'text'", "text_field", "null", "not a string"), kept=("docs/rows.jsonl:2",)),
        id="text-is-null",
    ),
    pytest.param(
        Case({"docs/rows.jsonl": lines({"text": 42}, row())}, ("docs/rows.jsonl:1",),
             ("'text'", "an integer", "not a string"), kept=("docs/rows.jsonl:2",)),
        id="text-is-a-number",
    ),
    pytest.param(
        Case({"docs/rows.jsonl": lines({"text": {"en": "hi"}}, row())}, ("docs/rows.jsonl:1",),
             ("'text'", "an object", "not a string"), kept=("docs/rows.jsonl:2",)),
        id="text-is-an-object",
    ),
    pytest.param(
        Case({"docs/ids.jsonl": lines(row(_id={"$oid": "5f1d"}), row(_id="g1"))},
             ("docs/ids.jsonl:1",), ("'_id'", "id_field", "an object", "string or integer"),
             kept=("g1",), config={"id_field": "_id"}),
        id="id-is-an-object",
    ),
    pytest.param(
        Case({"docs/ids.jsonl": lines(row(_id=1.5), row(_id=2))}, ("docs/ids.jsonl:1",),
             ("'_id'", "a float", "string or integer"), kept=("2",), config={"id_field": "_id"}),
        id="id-is-a-float",
    ),
    pytest.param(
        Case({"docs/ids.jsonl": lines(row(_id=None), row(_id="g1"))}, ("docs/ids.jsonl:1",),
             ("'_id'", "null", "no id"), kept=("g1",), config={"id_field": "_id"}),
        id="id-is-null",
    ),
    pytest.param(
        Case({"docs/ids.jsonl": lines(row(_id=7), row("same id as text", _id="7"))},
             ("docs/ids.jsonl:2",), ("duplicate", "'7'", "docs/ids.jsonl:1"), kept=("7",),
             config={"id_field": "_id"}),
        id="duplicate-id-integer-and-string",
    ),
    pytest.param(
        Case({"docs/rows.jsonl": lines(row("before\x00after"), row())}, ("docs/rows.jsonl:1",),
             ("NUL", "offset 6"), kept=("docs/rows.jsonl:2",)),
        id="jsonl-text-with-escaped-nul",
    ),
    pytest.param(
        Case({"docs/rows.jsonl": b'{"text": "raw\x00nul"}\n' + lines(row())},
             ("docs/rows.jsonl:1",), ("not valid JSON", "control character", "column 14"),
             kept=("docs/rows.jsonl:2",)),
        id="jsonl-raw-nul-byte-in-a-line",
    ),
    pytest.param(
        # Valid JSON, invalid Unicode: Arrow would have failed the whole batch.
        Case({"docs/rows.jsonl": b'{"text": "half \\ud83d a pair"}\n' + lines(row())},
             ("docs/rows.jsonl:1",), ("text", "not valid Unicode", "surrogate"),
             kept=("docs/rows.jsonl:2",)),
        id="jsonl-lone-surrogate",
    ),
    pytest.param(
        Case({"docs/rows.jsonl": b"[" * 100_000 + b"\n" + lines(row())}, ("docs/rows.jsonl:1",),
             ("nested too deeply",), kept=("docs/rows.jsonl:2",)),
        id="jsonl-nested-100k-deep",
    ),
    pytest.param(
        Case({"docs/blank.jsonl": b"\n  \n\t\n"}, ("docs/blank.jsonl",), ("no JSON records",)),
        id="jsonl-only-blank-lines",
    ),
    # -- .json files: an array of objects is read row by row (a decision) --------------------
    pytest.param(
        Case({"docs/list.json": json.dumps([row("one"), 3, row("three")], indent=2).encode()},
             ("docs/list.json:2",), ("an integer", "not a JSON object"),
             kept=("docs/list.json:1", "docs/list.json:3")),
        id="json-array-with-a-number",
    ),
    pytest.param(
        Case({"docs/cut.json": b'[\n  {"text": "a"},\n  {"text": "b'}, ("docs/cut.json",),
             ("not valid JSON", "line 3")),
        id="json-array-cut-short",
    ),
    pytest.param(
        Case({"docs/one.json": json.dumps(row("a single object"), indent=2).encode()}, (),
             kept=("docs/one.json:1",), text={"docs/one.json:1": "a single object"}),
        id="json-single-pretty-printed-object-is-read",
    ),
    # -- CSV ------------------------------------------------------------------------------------
    pytest.param(
        Case({"docs/t.csv": b"id,text\n1,good one\n2\n3,good three\n"}, ("docs/t.csv:2",),
             ("1 field", "header has 2"), kept=("1", "3"), config={"id_field": "id"}),
        id="csv-ragged-row",
    ),
    pytest.param(
        Case({"docs/t.csv": "id,text\n1,good\n2,caf\xe9\n3,good\n".encode("latin-1")},
             ("docs/t.csv:2",), ("'text'", "not valid UTF-8"), kept=("1", "3"),
             config={"id_field": "id"}),
        id="csv-latin1-row",
    ),
    pytest.param(
        Case({"docs/t.csv": b"id,text\n"}, ("docs/t.csv",), ("header but no rows",)),
        id="csv-header-only",
    ),
    pytest.param(
        Case({"docs/t.csv": b"id,body\n1,x\n2,y\n"}, ("docs/t.csv",),
             ("no column 'text'", "text_field", "'body'")),
        id="csv-without-the-text-column",
    ),
    pytest.param(
        Case({"docs/t.csv": b"id,text,text\n1,a,b\n"}, ("docs/t.csv",),
             ("repeats column 'text'",)),
        id="csv-repeated-column",
    ),
    # -- Parquet --------------------------------------------------------------------------------
    pytest.param(
        Case({"docs/t.parquet": b"id,text\n1,not parquet at all\n"}, ("docs/t.parquet",),
             ("not a Parquet file",)),
        id="parquet-that-is-csv",
    ),
    pytest.param(
        Case({"docs/t.parquet": parquet(text=["a", "b"])[:-20]}, ("docs/t.parquet",),
             ("not a Parquet file", "damaged")),
        id="parquet-cut-short",
    ),
    pytest.param(
        Case({"docs/t.parquet": parquet(id=["a"], text=[1])}, ("docs/t.parquet",),
             ("'text'", "int64", "not strings")),
        id="parquet-text-column-of-integers",
    ),
    pytest.param(
        Case({"docs/t.parquet": parquet(text=["good", None])}, ("docs/t.parquet:2",),
             ("'text'", "null"), kept=("docs/t.parquet:1",)),
        id="parquet-null-text",
    ),
    # -- file system ----------------------------------------------------------------------------
    pytest.param(
        Case({"docs/self.txt": symlink("self.txt")}, ("docs/self.txt",), ("symlink loop",)),
        id="symlink-to-itself",
    ),
    pytest.param(
        Case({"docs/sub/in.txt": b"inside sub", "docs/sub/up": symlink("..")},
             ("docs/sub/up",), ("symlink loop", "points back to docs/"),
             kept=("docs/sub/in.txt",)),
        id="directory-symlink-cycle",
    ),
    pytest.param(
        # glob.glob followed these two loops until the kernel's limit: hours, exponentially.
        Case({"docs/sub/in.txt": b"inside sub", "docs/sub/up": symlink(".."),
              "docs/sub/here": symlink(".")},
             ("sub/here", "sub/up"), ("symlink loop",), kept=("sub/in.txt",),
             source="docs/**/*.txt", good="zz-good.txt"),
        id="glob-over-two-symlink-cycles",
    ),
    pytest.param(
        Case({"docs/gone.md": symlink("moved-away.md")}, ("docs/gone.md",),
             ("broken symlink", "moved-away.md")),
        id="broken-symlink",
    ),
    pytest.param(
        # Decision: directory symlinks are followed (globs always did); only loops are not.
        Case({"elsewhere/shared.txt": b"shared text", "docs/linked": symlink("../elsewhere")},
             (), kept=("docs/linked/shared.txt",)),
        id="directory-symlink-is-followed",
    ),
    pytest.param(
        Case({"docs/foo.md/inner.txt": b"a directory named like a markdown file"}, (),
             kept=("docs/foo.md/inner.txt",)),
        id="directory-named-foo-md",
    ),
    pytest.param(
        Case({"docs/pipe.txt": os.mkfifo}, ("docs/pipe.txt",),
             ("not a regular file", "named pipe")),
        id="named-pipe",
    ),
    pytest.param(
        Case({"docs/placeholder": non_utf8_name}, ("docs/caf\\xe9.txt",),
             ("file name", "not valid UTF-8", "rename")),
        id="file-name-not-utf8",
    ),
    pytest.param(
        Case({"docs/locked": locked_dir}, ("docs/locked",),
             ("cannot read directory", "permission denied"), non_root=True),
        id="permission-denied-directory",
    ),
    pytest.param(
        Case({"docs/notes.txt": b"first copy", "other/docs/notes.txt": b"second copy"},
             ("docs/notes.txt",), ("duplicate doc_id", "earlier source", "same relative path"),
             kept=("docs/notes.txt",), source=["docs", "other/docs"],
             text={"docs/notes.txt": "first copy"}),
        id="same-file-name-in-two-sources",
    ),
    # -- read as they are ------------------------------------------------------------------------
    pytest.param(
        Case({"docs/dos.txt": b"line one\r\nline two\r\n"}, (), kept=("docs/dos.txt",),
             text={"docs/dos.txt": "line one\r\nline two"}),
        id="crlf-text",
    ),
    pytest.param(
        Case({"docs/dos.jsonl": lines(row("one")).replace(b"\n", b"\r\n") * 2}, (),
             kept=("docs/dos.jsonl:1", "docs/dos.jsonl:2")),
        id="crlf-jsonl",
    ),
    pytest.param(
        Case({"docs/bom.jsonl": b"\xef\xbb\xbf" + lines(row("after a BOM"))}, (),
             kept=("docs/bom.jsonl:1",)),
        id="jsonl-with-utf8-bom",
    ),
    # -- sources refused before reading (like a missing path, see test_ingest.py) ------------
    pytest.param(
        Case({"gone": symlink("nowhere")}, ("source",), ("'gone' is a broken symlink",
             "'nowhere' does not exist"), source=["docs", "gone"], refused=True),
        id="source-is-a-broken-symlink",
    ),
    pytest.param(
        Case({"loop": symlink("loop")}, ("source",), ("'loop' is a symlink loop",),
             source="loop", refused=True),
        id="source-is-a-symlink-loop",
    ),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_skipped_with_a_reason(tmp_path: Path, case: Case) -> None:
    for name, content in {GOOD: b"a good document", **case.files}.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            content(path)
    try:
        if case.non_root and all(os.access(tmp_path / name, os.R_OK) for name in case.files):
            pytest.skip("this user reads mode-000 directories (root)")
        if case.refused:
            assert_refused(tmp_path, case)
            return
        rows, skipped = ingest(tmp_path, case.source, **case.config)
    finally:
        for folder in tmp_path.rglob("*"):  # let pytest clean up a mode-000 directory
            if folder.is_dir() and not folder.is_symlink():
                folder.chmod(0o755)
    assert sorted(item for item, _ in skipped) == sorted(case.skipped), skipped
    for item in case.skipped:
        assert_reason(skipped, item, *case.words)
    docs = {r["doc_id"]: r for r in rows}
    assert sorted(docs) == sorted([*case.kept, case.good])
    for doc_id, text in case.text.items():
        assert text in docs[doc_id]["text"]


def assert_refused(tmp_path: Path, case: Case) -> None:
    """Validate reports the source, and a run raises SourceError before reading anything."""
    step = Ingest("docs", Ingest.Config(type="ingest", source=case.source), base_dir=tmp_path)
    [(key, problem)] = step.preflight()
    assert key[0] == "source" and "\n" not in problem
    for word in case.words:
        assert word in problem, f"{word!r} not in {problem!r}"
    with pytest.raises(SourceError, match=r"steps\.docs\.source: "):
        list(step.run([], make_ctx(tmp_path)))


def test_the_corpus_is_large() -> None:
    """Issue 3 asks for at least 30 bad inputs skipped or refused with a reason."""
    refused_or_skipped = [p for p in CASES if p.values[0].skipped]
    assert len(refused_or_skipped) >= 30


# -- end to end ---------------------------------------------------------------------------------

E2E_SPEC = """\
name: messy
workspace: ws
steps:
  docs: {type: ingest, source: corpus, format: auto}
  chunks: {type: chunk, input: docs, strategy: tokens, max_tokens: 64, overlap: 8}
  vectors: {type: encode, input: chunks, batch_size: 8}
  index: {type: index, input: vectors, table: messy}
"""

E2E_GOOD = {
    "corpus/bees.md": "# Honeybees\n\nHoneybees share flower locations with a waggle dance.\n",
    "corpus/volcano.txt": "Sulfur aerosols from large volcanic eruptions cool the planet.\n",
    "corpus/bread.html": "<html><head><title>Sourdough</title></head><body><p>A sourdough "
    "starter is a culture of wild yeast and lactic acid bacteria.</p></body></html>",
}


def e2e_bad(root: Path) -> dict[str, str]:
    """Write eight bad inputs under root/corpus: {item: a word its reason must contain}."""
    corpus = root / "corpus"
    (corpus / "empty.txt").write_bytes(b"")
    (corpus / "binary.txt").write_bytes(b"text\x00\x01\x02")
    (corpus / "latin1.md").write_bytes("# Caf\xe9\n".encode("latin-1"))
    sparse()(corpus / "huge.txt")
    (corpus / "loop.txt").symlink_to("loop.txt")
    (corpus / "broken.md").symlink_to("nowhere.md")
    (corpus / "bad.pdf").write_bytes(b"%PDF-1.7\n" + bytes(range(1, 256)) * 4)
    (corpus / "draft.md").write_text("---\ntitle: Draft\n---\n")
    return {
        "corpus/empty.txt": "empty",
        "corpus/binary.txt": "NUL",
        "corpus/latin1.md": "UTF-8",
        "corpus/huge.txt": "max_file_mb",
        "corpus/loop.txt": "symlink loop",
        "corpus/broken.md": "broken symlink",
        "corpus/bad.pdf": "PDF",
        "corpus/draft.md": "front matter",
    }


def pipe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "embedpipe.cli", *args], capture_output=True, text=True, check=False
    )


def last_json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_e2e_cli_run_with_bad_inputs(tmp_path: Path) -> None:
    """The CLI contract for bad input: exit 3 (completed, some inputs skipped), the skipped
    items and reasons in the catalog, the good documents searchable; --strict fails the run
    (exit 1) and commits nothing."""
    for name, text in E2E_GOOD.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    bad = e2e_bad(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(E2E_SPEC)

    proc = pipe("run", str(spec), "--json")
    out = last_json(proc)
    assert (proc.returncode, out["status"]) == (3, "completed"), proc.stderr
    assert out["steps"]["docs"]["skipped"] == len(bad)
    assert "Traceback" not in proc.stderr
    version = out["lance_version"]

    query = f"select item, reason from skipped where run_id = '{out['run_id']}'"
    skipped = {r["item"]: r["reason"] for r in last_json(pipe("sql", str(spec), query, "--json"))}
    assert sorted(skipped) == sorted(bad)
    for item, word in bad.items():
        assert word.lower() in skipped[item].lower() and "\n" not in skipped[item]

    # One search (each loads the model): the best hit is right, and every good document is in.
    hits = last_json(pipe("search", str(spec), "waggle dance of honeybees", "-k", "5", "--json"))
    assert hits[0]["doc_id"] == "corpus/bees.md"
    assert sorted({h["doc_id"] for h in hits}) == sorted(E2E_GOOD)

    # A new good document: a run that committed would change the index; --strict must not.
    (tmp_path / "corpus" / "new.txt").write_text("Black holes heat infalling matter.\n")
    strict = pipe("run", str(spec), "--strict", "--json")
    failed = last_json(strict)
    assert (strict.returncode, failed["status"]) == (1, "failed"), strict.stderr
    assert "Traceback" not in strict.stderr
    history = "select status, lance_version from runs order by started_at"
    runs = last_json(pipe("sql", str(spec), history, "--json"))
    assert [r["status"] for r in runs] == ["completed", "failed"]
    assert max(r["lance_version"] or 0 for r in runs) == version
    count = "select count(*) as n from messy where doc_id = 'corpus/new.txt'"
    assert last_json(pipe("sql", str(spec), count, "--json")) == [{"n": 0}]
