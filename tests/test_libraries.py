"""Hand-written code replaced by maintained libraries (issue 14, item 7): wcmatch for glob
patterns, pysbd for sentence boundaries, psutil for process checks; and environment defaults
applied by the CLI and the runner, never by ``import embedpipe``."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedpipe.steps.sources import walk
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
