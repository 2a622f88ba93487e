"""Hand-written code replaced by maintained libraries (issue 14, item 7): wcmatch for glob
patterns, pysbd for sentence boundaries, psutil for process checks; and environment defaults
applied by the CLI and the runner, never by ``import embedpipe``."""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from embedpipe import _env
from embedpipe.engine import orchestrator, ui
from embedpipe.engine.workspace import SERVER_PID
from embedpipe.steps import chunk as chunk_module
from embedpipe.steps.sources import walk
from tests.test_chunk import run_one
from tests.test_ingest import ingest

# -- wcmatch: glob sources, include and exclude -----------------------------------------------


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    for name in ("a.md", "b.txt", "sub/c.md", "sub/deep/d.md", ".hidden.md", "sub/.dot/e.md"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    return root


def globbed(root: Path, pattern: str) -> list[tuple[str, str | None]]:
    """(path relative to root, why it cannot be read) for each match of root/pattern."""
    return [(p.relative_to(root).as_posix(), why) for p, why in walk.glob_files(root / pattern)]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("**/*.md", ["a.md", "sub/c.md", "sub/deep/d.md"]),
        ("sub/**/*.md", ["sub/c.md", "sub/deep/d.md"]),  # '**' spans no directory too
        ("**", ["a.md", "b.txt", "sub/c.md", "sub/deep/d.md"]),  # below, never hidden
        ("sub/**", ["sub/c.md", "sub/deep/d.md"]),
        ("*.md", ["a.md"]),
        (".*.md", [".hidden.md"]),  # a leading '.' matched where the pattern has one
        ("sub/.dot/*", ["sub/.dot/e.md"]),
        ("[ab].*", ["a.md", "b.txt"]),
        ("*/*/?.md", ["sub/deep/d.md"]),
        ("*.MD", []),  # case-sensitive
    ],
)
def test_glob_patterns(corpus: Path, pattern: str, expected: list[str]) -> None:
    assert globbed(corpus, pattern) == [(e, None) for e in expected]


def test_glob_enters_only_directories_that_can_match(tmp_path: Path) -> None:
    """A loop (or any unreadable folder) where the pattern cannot reach is not walked, so
    not reported; one it can reach is reported with its reason, once."""
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "top.txt").write_text("top")
    (tmp_path / "docs" / "sub" / "up").symlink_to("..")
    docs = tmp_path / "docs"
    assert globbed(docs, "*.txt") == [("top.txt", None)]
    found = globbed(docs, "**/*.txt")
    assert found[0] == ("sub/up", found[0][1]) and "symlink loop" in str(found[0][1])
    assert found[1:] == [("top.txt", None)]


@pytest.mark.parametrize(
    ("pattern", "rel", "expected"),
    [
        ("*.md", "sub/c.md", True),  # from the right, as PurePath.match
        ("**/*.md", "a.md", True),
        ("sub/*.md", "x/sub/c.md", True),
        ("sub/**/*.md", "sub/c.md", True),  # PurePath.match (3.11) read '**' as '*': False
        ("sub/**", "sub/deep/d.md", True),
        ("sub/**", "sub", False),  # below sub, not a file named sub
        ("./a.md", "a.md", True),
        ("deep/", "sub/deep", True),
        ("", "anything/at/all", True),
        ("*.md", "a.MD", False),
        (r"\*.md", "*.md", True),  # wcmatch: '\' escapes a wildcard
        (r"\*.md", "a.md", False),
    ],
)
def test_include_exclude_matching(pattern: str, rel: str, expected: bool) -> None:
    assert walk.matches(Path(rel), pattern) is expected


def test_include_with_a_globstar_in_the_middle(tmp_path: Path, corpus: Path) -> None:
    rows, skipped = ingest(tmp_path, "corpus", include=["sub/**/*.md"])
    assert skipped == []
    assert [r["doc_id"] for r in rows] == ["corpus/sub/c.md", "corpus/sub/deep/d.md"]


# -- pysbd: sentence boundaries ---------------------------------------------------------------


def sentences(text: str) -> list[str]:
    spans = list(chunk_module._sentences(text))
    return [text[a:b] for a, b in spans]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Use a tool, e.g. a hammer. Then stop.",
            ["Use a tool, e.g. a hammer.", "Then stop."],
        ),
        (
            "Dr. Smith met Mr. Jones at 3 p.m. on Friday. They talked, i.e. argued.",
            ["Dr. Smith met Mr. Jones at 3 p.m. on Friday.", "They talked, i.e. argued."],
        ),
        ('He asked, "Is it safe?" She nodded.', ['He asked, "Is it safe?"', "She nodded."]),
        ("Version 3.14 is out! Get it.", ["Version 3.14 is out!", "Get it."]),
        # a line break inside a paragraph ends no sentence; a blank line always does
        ("A line that is\nhard-wrapped. Next one.", ["A line that is\nhard-wrapped.", "Next one."]),
        ("No full stop\n\nNew paragraph.", ["No full stop", "New paragraph."]),
        ("  Leading space.\r\n\r\n  Trailing space.   ", ["Leading space.", "Trailing space."]),
        ("", []),
        (" \n\n \t", []),
    ],
)
def test_sentence_boundaries(text: str, expected: list[str]) -> None:
    assert sentences(text) == expected


def test_a_long_paragraph_is_segmented_in_windows_with_the_same_sentences(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Windows bound pysbd's time (it grows with the square of its input); a sentence cut by
    a window's end is segmented again with what follows, so sentences do not change."""
    parts = [
        "Honeybees dance, e.g. the waggle dance.",
        "Dr. Frisch saw it in 1927.",
        'Is it "language"?',
        "Many say so.",
        "Some say no; most agree it is close.",
    ]
    text = " ".join(parts[i % len(parts)] for i in range(400))
    whole = list(chunk_module._sentences(text))
    assert len(whole) == 400
    monkeypatch.setattr(chunk_module, "_SENTENCE_WINDOW", 300)
    assert list(chunk_module._sentences(text)) == whole


def test_a_run_without_sentence_ends_longer_than_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cut at whitespace a window at a time (where there is none, at the window's end): the
    text is covered in order, and no word is split."""
    monkeypatch.setattr(chunk_module, "_SENTENCE_WINDOW", 100)
    words = [f"word{i}" for i in range(500)]
    text = " ".join(words) + " " + "x" * 350 + " end."
    spans = list(chunk_module._sentences(text))
    assert len(spans) > 10 and spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(b <= c for (_, b), (c, _) in itertools.pairwise(spans))  # in order, apart
    assert "".join("".join(text[a:b].split()) for a, b in spans) == "".join(text.split())
    found = [w for a, b in spans for w in text[a:b].split()]
    assert found[: len(words)] == words


def test_the_sentences_strategy_never_ends_a_chunk_after_e_g(tmp_path: Path) -> None:
    """The regex it replaced ended a sentence at "e.g.", so a chunk could end there:
    'Carpenters work with wood every day. Bring a tool, e.g.' and 'a saw. Then stop.'"""
    text = "Carpenters work with wood every day. Bring a tool, e.g. a saw. Then stop."
    rows = run_one(tmp_path, text, strategy="sentences", max_tokens=18, overlap=0)
    assert [r["text"] for r in rows] == [
        "Carpenters work with wood every day.",
        "Bring a tool, e.g. a saw. Then stop.",
    ]
    assert [(r["char_start"], r["char_end"]) for r in rows] == [(0, 36), (37, len(text))]


# -- psutil: process checks -------------------------------------------------------------------

STAND_IN = [sys.executable, "-c", "import time; time.sleep(120)", "prefect-server-stand-in"]


@pytest.fixture
def processes() -> Iterator[list[int]]:
    """Pids a test started; whichever still live are killed at its end."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()


def orphan(cmd: list[str], processes: list[int]) -> psutil.Process:
    """``cmd`` started by a shell that exits at once: its parent becomes init."""
    out = subprocess.run(
        ["sh", "-c", '"$@" >/dev/null 2>&1 & echo $!', "sh", *cmd],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    proc = psutil.Process(int(out.stdout))
    processes.append(proc.pid)
    if proc.ppid() != 1:
        pytest.skip(f"an orphan's parent here is pid {proc.ppid()} (a subreaper), not init")
    return proc


def test_ui_state_needs_a_live_prefect_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: list[int]
) -> None:
    monkeypatch.setenv("EMBEDPIPE_HOME", str(tmp_path))
    state_file = tmp_path / "ui.json"

    def state_for(pid: object) -> dict[str, object] | None:
        state_file.write_text(json.dumps({"pid": pid, "api_url": "http://127.0.0.1:9/api"}))
        return _env.ui_state()

    server = subprocess.Popen(STAND_IN)
    other = subprocess.Popen(["sleep", "120"])
    processes.extend([server.pid, other.pid])
    assert state_for(server.pid) == {"pid": server.pid, "api_url": "http://127.0.0.1:9/api"}
    assert state_for(other.pid) is None  # a pid reused by something else
    assert state_for(-1) is None and state_for("x") is None and state_for(None) is None
    server.kill()
    assert state_for(server.pid) is None  # a zombie: not reaped yet, but gone
    server.wait()
    assert state_for(server.pid) is None
    state_file.write_text("{not json")
    assert _env.ui_state() is None
    state_file.unlink()
    assert _env.ui_state() is None


def test_ui_kill_stops_the_process_group_and_reaps_it(processes: list[int]) -> None:
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
    for code, grace in (("import time; time.sleep(120)", 30.0), (stubborn, 0.5)):
        proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
        processes.append(proc.pid)
        time.sleep(0.5)  # the stubborn one has set its handler
        started = time.monotonic()
        ui._kill(proc.pid, grace=grace)
        assert time.monotonic() - started < 10
        proc.wait(timeout=5)
        assert not psutil.pid_exists(proc.pid) or psutil.Process(proc.pid).status() == "zombie"


def test_stop_orphaned_server(tmp_path: Path, processes: list[int]) -> None:
    """Only an orphaned Prefect process is stopped; the pid file goes in every case."""
    pid_file = tmp_path / SERVER_PID
    server = orphan(STAND_IN, processes)
    pid_file.write_text(str(server.pid))
    orchestrator.stop_orphaned_server(tmp_path)
    server.wait(timeout=10)  # ended by SIGTERM (and reaped by init)
    assert not pid_file.exists()

    not_prefect = orphan(["sleep", "120"], processes)
    child = subprocess.Popen(STAND_IN)  # its run (this process) is alive: not an orphan
    processes.append(child.pid)
    for pid in (not_prefect.pid, child.pid):
        pid_file.write_text(str(pid))
        orchestrator.stop_orphaned_server(tmp_path)
        assert not pid_file.exists()
    time.sleep(0.3)
    assert not_prefect.is_running() and child.poll() is None

    for junk in ("", "not a pid", "-3", "999999999"):
        pid_file.write_text(junk)
        orchestrator.stop_orphaned_server(tmp_path)
        assert not pid_file.exists()
    orchestrator.stop_orphaned_server(tmp_path)  # no file at all
