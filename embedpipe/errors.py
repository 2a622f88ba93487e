"""The error hierarchy: every error a user can see, in one place."""

from __future__ import annotations

from dataclasses import dataclass


class EmbedpipeError(Exception):
    """Base class; the CLI prints these as one sentence and exits non-zero."""

    exit_code = 1


@dataclass(frozen=True)
class SpecIssue:
    """One problem in a spec, located at ``file:line:col`` (1-based)."""

    file: str
    line: int
    col: int
    message: str
    source_line: str | None = None

    def render(self, *, excerpt: bool = False) -> str:
        head = f"{self.file}:{self.line}:{self.col}: {self.message}"
        if not excerpt or self.source_line is None:
            return head
        caret = " " * (self.col - 1) + "^"
        return f"{head}\n    {self.source_line}\n    {caret}"


class SpecError(EmbedpipeError):
    """The spec is invalid; carries every issue found, not just the first."""

    exit_code = 2

    def __init__(self, issues: list[SpecIssue]) -> None:
        self.issues = sorted(issues, key=lambda i: (i.file, i.line, i.col, i.message))
        n = len(self.issues)
        self.summary = f"{n} error{'s' if n != 1 else ''} in spec"
        super().__init__(self.render())

    def render(self, *, excerpt: bool = False) -> str:
        body = "\n".join(i.render(excerpt=excerpt) for i in self.issues)
        return f"{body}\n{self.summary}"


class SourceError(EmbedpipeError):
    """A step's input cannot be read at all (a missing path, not a bad document)."""


class StepFailed(EmbedpipeError):
    """A step raised; the run was not committed."""

    def __init__(self, step: str, reason: str, hint: str = "") -> None:
        self.step, self.reason, self.hint = step, reason, hint
        super().__init__(f"step '{step}' failed: {reason}" + (f"\n{hint}" if hint else ""))


class NotIndexed(EmbedpipeError):
    """Search or SQL asked for a table that no run has written yet."""
