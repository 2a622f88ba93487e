"""The error hierarchy: every error a user can see, in one place."""

from __future__ import annotations

import os
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


class UsageError(EmbedpipeError):
    """A command-line argument that cannot be used (exit 2, like an invalid spec)."""

    exit_code = 2


class WorkspaceBusy(EmbedpipeError):
    """Another run of the pipeline holds the workspace lock."""


class WorkspaceNotWritable(EmbedpipeError):
    """The workspace (or a file in it) cannot be written: permissions, a read-only mount."""

    def __init__(self, root: object, reason: str) -> None:
        super().__init__(
            f"workspace {root} is not writable ({reason}); nothing was changed. Make it "
            "writable (e.g. chmod -R u+w on it), or run with --workspace DIR"
        )


class CatalogBusy(EmbedpipeError):
    """Another process holds the run catalog's DuckDB file for longer than a run waits."""


class CatalogDamaged(EmbedpipeError):
    """The run catalog's DuckDB file cannot be opened as a database."""

    def __init__(self, path: object, reason: str) -> None:
        wal = f"{path}.wal"
        also = f" && mv {wal} {wal}.damaged" if os.path.exists(wal) else ""
        super().__init__(
            f"the run catalog {path} is damaged ({reason}). The index and its caches are "
            f"intact; move the catalog aside and the next run starts a new one (the run "
            f"history is lost): mv {path} {path}.damaged{also}"
        )


class CatalogWriteFailed(EmbedpipeError):
    """A run's record could not be written to the catalog, nor kept for a later write."""


class IndexDamaged(EmbedpipeError):
    """An index table's files on disk are missing or unreadable."""

    def __init__(self, table: str, path: object, reason: str, spec: object) -> None:
        self.table = table
        if "://" in str(path):  # in an object store: no mv; move its objects with the store's tool
            how = f"move or delete the objects under {path} (e.g. aws s3 mv --recursive), then"
        else:
            how = f"mv {path} {path}.damaged &&"
        super().__init__(
            f"index table '{table}' is damaged: {reason}. Rebuild it from the step caches "
            f"(nothing is re-encoded): {how} pipe run {spec}"
        )


class PrefectUnreachable(EmbedpipeError):
    """The configured Prefect server does not answer."""


class PluginError(EmbedpipeError):
    """A registered plugin (step kind or executor) cannot be imported or is not one."""


class ExecutorError(EmbedpipeError):
    """The executor cannot run the step's work: its cluster is unreachable, or a worker died
    more often than its retries allow (nothing was committed)."""


class NoIndex(EmbedpipeError):
    """The pipeline has no step that writes a table, so there is nothing to search."""


class NoRows(EmbedpipeError):
    """Every input was skipped or empty: an index step got no rows (the table is kept)."""

    def __init__(self, table: str, spec: object = "SPEC") -> None:
        super().__init__(
            "no rows reached the index (every input was skipped or empty), so table "
            f"'{table}' was left as it was; see why: pipe sql {spec} \"select * from skipped\""
        )


class NoQueryEncoder(EmbedpipeError):
    """No step upstream of an index can turn a query into a vector for its search column."""


class SkippedStrict(EmbedpipeError):
    """``--strict`` is on and a step skipped inputs: the run commits nothing."""


class SqlError(EmbedpipeError):
    """A `pipe sql` query that DuckDB refused."""


class ServerStartFailed(EmbedpipeError):
    """`pipe ui` could not start the local Prefect server."""


class RunFailed(EmbedpipeError):
    """A scheduled or served run ended failed (its record names the step and reason)."""


class ArtifactError(EmbedpipeError):
    """A fitted artifact (codec, adapter, exported model) is missing or unreadable."""


class QualityGateError(ArtifactError):
    """A built model (an int8 or exported encoder) strays from the torch model's vectors
    beyond the configured floor; nothing was indexed with it."""


class EvalError(EmbedpipeError):
    """`pipe eval` input (queries, qrels) is unusable; the message names the file and line."""

    exit_code = 2


class InternalError(EmbedpipeError):
    """An unexpected exception: a bug in embedpipe (or a library it uses)."""


# What each exit code of `pipe` means; `--json` output carries it as "meaning".
EXIT_MEANINGS = {
    0: "completed",
    1: "failed: nothing was committed by the failed step; the index keeps its last version",
    2: "invalid spec or command-line usage: nothing was run",
    3: "completed, but some inputs were skipped (reasons in the catalog's skipped table)",
    130: "interrupted (Ctrl-C): nothing was committed by the interrupted step",
}
