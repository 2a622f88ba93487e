"""Rich progress bars, one per step, and the summary table printed after a run."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

if TYPE_CHECKING:
    from embedpipe.results import Plan, RunResult, StepResult


class RunProgress:
    """One bar per step; a step's bar counts input rows consumed (output rows for sources)."""

    def __init__(
        self, console: Console, steps: list[str], *, enabled: bool = True, transient: bool = False
    ) -> None:
        # Without a terminal (cron, CI logs) live bars cannot redraw: log a line per step.
        self.console = console
        self.lines = enabled and not console.is_terminal
        self.progress = Progress(
            TextColumn("{task.description:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=console,
            disable=not enabled or self.lines,
            transient=transient,
        )
        self.ids: dict[str, TaskID] = {
            s: self.progress.add_task(s, total=None, start=False, note="") for s in steps
        }

    def __enter__(self) -> RunProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: tuple[type[BaseException], BaseException, TracebackType]) -> None:
        self.progress.stop()

    def start(self, step: str, total: int | None) -> None:
        if self.lines:
            self.console.print(f"{step}: running", highlight=False)
        self.progress.start_task(self.ids[step])
        self.progress.update(self.ids[step], total=total, note="running")

    def advance(self, step: str, n: int) -> None:
        self.progress.advance(self.ids[step], n)

    def finish(self, step: str, res: StepResult) -> None:
        done = self.progress.tasks[self.ids[step]].completed
        note = f"{res.status}: {res.rows_out} rows" + (
            f", {res.skipped} skipped" if res.skipped else ""
        )
        self.progress.update(self.ids[step], total=max(done, 1), completed=max(done, 1), note=note)
        if self.lines:
            self.console.print(f"{step}: {note} in {res.seconds:.1f} s", highlight=False)


def summary(result: RunResult) -> Table:
    """The end-of-run table: one row per step, the §9 counts."""
    table = Table(
        title=f"{result.pipeline} · run {result.run_id} · {result.status}"
        + (f" · lance v{result.lance_version}" if result.lance_version else "")
    )
    cols: list[tuple[str, Any]] = [("step", "left")] + [
        (c, "right") for c in ("in", "out", "computed", "cached", "deleted", "skipped", "seconds")
    ]
    for name, justify in cols:
        table.add_column(name, justify=justify)
    for name, s in result.steps.items():
        style = "red" if s.status == "failed" else None
        table.add_row(
            name,
            *(str(v) for v in (s.rows_in, s.rows_out, s.computed, s.cached, s.deleted, s.skipped)),
            f"{s.seconds:.1f}",
            style=style,
        )
    return table


def plan_table(plan: Plan) -> Table:
    """What a run will do (or would, for `pipe plan`): per step, rows and where they come from.

    Documents (source steps) and rows (index steps) are compared with the live index: new,
    changed, deleted. Other steps show what they compute and what they take from their cache.
    """
    title = f"{plan.pipeline} · plan" + (" · nothing to do" if plan.noop else "")
    table = Table(title=title)
    for name, justify in [("step", "left")] + [
        (c, "right") for c in ("rows", "new", "changed", "deleted", "to compute", "cached")
    ]:
        table.add_column(name, justify=justify)
    table.add_column("note")
    for name, s in plan.steps.items():
        note = []
        if s.estimated:
            secs = f", about {s.estimated_seconds:g} s" if s.estimated_seconds else ""
            note.append(f"{s.computed} rows to compute{secs}")
        if s.skipped:
            note.append(f"{s.skipped} skipped")
        if s.status == "failed":
            note.append(f"failed: {(s.error or '').splitlines()[0]}")
        table.add_row(
            name,
            *(str(v) for v in (s.rows_out, s.new, s.changed, s.deleted, s.computed, s.cached)),
            "; ".join(note),
            style="red" if s.status == "failed" else None,
        )
    return table
