"""Hand-written code replaced by maintained libraries (issue 14, item 7): wcmatch for glob
patterns, pysbd for sentence boundaries, psutil for process checks; and environment defaults
applied by the CLI and the runner, never by ``import embedpipe``."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from embedpipe import _env, models
from embedpipe.engine import flow, orchestrator, ui
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
    # SIGKILL lands asynchronously: wait (without reaping) until the kernel made it a zombie
    deadline = time.monotonic() + 30
    while psutil.Process(server.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the killed stand-in never became a zombie"
        time.sleep(0.05)
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


# -- environment defaults: applied by the CLI and the runner, not by `import embedpipe` ---------


def clean_env(tmp_path: Path) -> dict[str, str]:
    """This process's environment without the defaults, and a home with no `pipe ui` state."""
    env = {k: v for k, v in os.environ.items() if k not in _env.DEFAULTS}
    env.pop("PREFECT_API_URL", None)
    return env | {"EMBEDPIPE_HOME": str(tmp_path / "home")}


def run_python(code: str, env: dict[str, str]) -> Any:
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_embedpipe_leaves_the_environment_alone(tmp_path: Path) -> None:
    code = (
        "import json, os\n"
        "before = dict(os.environ)\n"
        "import embedpipe, embedpipe.api, embedpipe.cli, embedpipe.models, embedpipe.engine.flow\n"
        "print(json.dumps(dict(os.environ) == before))\n"
    )
    assert run_python(code, clean_env(tmp_path)) is True


def test_the_cli_applies_the_defaults_first(tmp_path: Path) -> None:
    keys = sorted(_env.DEFAULTS)
    code = (
        "import atexit, json, os, sys\n"
        "sys.argv = ['pipe', '--help']\n"
        "from embedpipe import cli\n"
        f"atexit.register(lambda: print(json.dumps({{k: os.environ.get(k) for k in {keys!r}}})))\n"
        "cli.main()  # ends with os._exit, after the exit handlers\n"
    )
    assert run_python(code, clean_env(tmp_path)) == _env.DEFAULTS
    # the user's own settings win
    mine = run_python(code, clean_env(tmp_path) | {"HF_HUB_OFFLINE": "0", "DO_NOT_TRACK": "0"})
    assert mine == _env.DEFAULTS | {"HF_HUB_OFFLINE": "0", "DO_NOT_TRACK": "0"}


class Applied(Exception):
    """Raised by a stand-in for _env.apply: proof it ran before anything else."""


def stub_apply() -> None:
    raise Applied


@pytest.mark.parametrize(
    "call",
    [
        lambda: flow.execute(None),  # type: ignore[arg-type]
        lambda: flow.plan(None),  # type: ignore[arg-type]
        lambda: models.load(models.ModelRef("m", "/nowhere", "r", None, False)),
        lambda: models.tokenizer(models.ModelRef("m", "/nowhere", "r", None, False)),
        lambda: ui.start(port=9),
    ],
    ids=["execute", "plan", "load", "tokenizer", "ui-start"],
)
def test_the_runner_and_model_loading_apply_the_defaults_first(
    monkeypatch: pytest.MonkeyPatch, call: Callable[[], object]
) -> None:
    monkeypatch.setattr(_env, "apply", stub_apply)
    with pytest.raises(Applied):
        call()


def test_models_load_with_local_files_only_unless_downloads_are_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hugging Face reads HF_HUB_OFFLINE once, when imported: a program that imported it
    before the defaults were applied still loads models from local files only."""
    monkeypatch.setattr(models, "_load", lambda location, device, local_only, variant: local_only)
    monkeypatch.setattr(models, "_tokenizer", lambda location, local_only: local_only)
    ref = models.ModelRef("m", "some/hub-id", "r", None, False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert models.load(ref) is True and models.tokenizer(ref) is True
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # applied
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert models.load(ref) is False and models.tokenizer(ref) is False


def test_user_api_url_is_the_users_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: list[int]
) -> None:
    """With `pipe ui`'s server alive, apply() points runs at it, unless the user set
    PREFECT_API_URL; USER_API_URL is always what the user set (None: nothing)."""
    server = subprocess.Popen(STAND_IN)
    processes.append(server.pid)
    monkeypatch.setenv("EMBEDPIPE_HOME", str(tmp_path))
    (tmp_path / "ui.json").write_text(json.dumps({"pid": server.pid, "api_url": "http://ui/api"}))
    # set, then deleted: so that monkeypatch restores the value before this test (or none),
    # not the one apply() sets below (a delenv of an unset variable records nothing)
    monkeypatch.setenv("PREFECT_API_URL", "unset-by-this-test")
    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.setattr(_env, "USER_API_URL", None)
    monkeypatch.setattr(_env, "_SET_API_URL", None)
    for _ in range(2):  # a second call changes nothing
        _env.apply()
        assert os.environ["PREFECT_API_URL"] == "http://ui/api" and _env.USER_API_URL is None
    monkeypatch.setenv("PREFECT_API_URL", "http://mine/api")
    _env.apply()
    assert os.environ["PREFECT_API_URL"] == "http://mine/api"
    assert _env.USER_API_URL == "http://mine/api"
