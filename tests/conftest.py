"""Shared fixtures: tiny corpora and specs that the tests write themselves."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from embedpipe import _env

T = TypeVar("T")

_env.apply()  # as `pipe` and the runner do (importing embedpipe sets nothing)
# Per-user state (the exported models shared by workspaces, `pipe ui`'s record) stays in the
# test session, never the developer's; subprocesses inherit it.
os.environ["EMBEDPIPE_HOME"] = _HOME = tempfile.mkdtemp(prefix="embedpipe-tests-home-")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)

# Six short documents on distinct topics: each query below has one clearly right answer.
CORPUS = [
    {
        "_id": "d1",
        "title": "Vitamin D and bone fractures",
        "text": "Vitamin D supplementation in older adults reduced the rate of hip fractures.",
    },
    {
        "_id": "d2",
        "title": "Honeybee navigation",
        "text": "Honeybees use the sun's position and a waggle dance to share flower locations.",
    },
    {
        "_id": "d3",
        "title": "Volcanic eruptions and climate",
        "text": "Sulfur aerosols from large eruptions cool the planet for one or two years.",
    },
    {
        "_id": "d4",
        "title": "Sourdough bread",
        "text": "A sourdough starter is a culture of wild yeast and lactic acid bacteria.",
    },
    {
        "_id": "d5",
        "title": "Black holes",
        "text": "Matter falling into a black hole heats up and emits X-rays before the horizon.",
    },
    {
        "_id": "d6",
        "title": "Chess openings",
        "text": "The Sicilian Defence answers 1.e4 with c5 and leads to sharp, unbalanced games.",
    },
]


def eventually(check: Callable[[], T], timeout: float = 120.0) -> T:
    """`check()` once it returns something true, retried until `timeout` s have passed.

    Prefect records task-run states from events, asynchronously and with retries (its SQLite
    database can be busy): a flow run is COMPLETED before all of its task runs say so. Waiting
    for that is waiting for a recording, not a timing: the last `check()` is returned as it is,
    so a state that never arrives fails the test's own assertion.
    """
    deadline = time.monotonic() + timeout
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return value


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "corpus.jsonl", CORPUS)


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a spec (dedented YAML) into tmp_path and return its path."""

    def write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    return write


BASIC_SPEC = """
name: tiny
workspace: ws
steps:
  docs: {type: ingest, source: corpus.jsonl, format: beir}
  chunks: {type: chunk, input: docs, strategy: tokens, max_tokens: 64, overlap: 8}
  vectors: {type: encode, input: chunks, batch_size: 8}
  index: {type: index, input: vectors, table: tiny}
"""


@pytest.fixture
def basic_spec(corpus: Path, write_spec: Callable[[str, str], Path]) -> Path:
    return write_spec(BASIC_SPEC)
