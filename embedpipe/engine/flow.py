"""Runs a DAG: a plan first, then, if there is work, one Prefect flow run with a task per step.

The plan (runner.py) reads the sources, re-chunks what changed and diffs against the index
without loading a model or writing a table. When it finds nothing to do, the run is recorded in
the catalog and Prefect is not started at all: its ephemeral server costs 8-10 s per process,
most of a no-op. The flow run record of such a no-op is written by the next run that starts
Prefect (see orchestrator.py); with a Prefect server configured, it is written at once.
"""

from __future__ import annotations

import contextlib
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console

from embedpipe import _env
from embedpipe.dag import Dag
from embedpipe.engine import executors, orchestrator
from embedpipe.engine.catalog import STALE_COMMITTED, Catalog, new_run_id, now
from embedpipe.engine.crash import crash_point
from embedpipe.engine.progress import RunProgress, plan_table
from embedpipe.engine.runner import Runner, reason
from embedpipe.engine.workspace import Workspace, not_writable
from embedpipe.errors import IndexDamaged, StepFailed, WorkspaceNotWritable
from embedpipe.results import Plan, RunResult, StepResult

__all__ = ["Plan", "RunResult", "StepResult", "execute", "plan"]


def plan(dag: Dag, *, console: Console | None = None, progress: bool = True) -> Plan:
    """What a run would do, per step, writing nothing: no table, cache or catalog row."""
    _env.apply()  # the environment defaults, before Prefect or Hugging Face is imported
    import tempfile

    ws = Workspace.of(dag.spec)
    console = console or Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="embedpipe-plan-") as tmp:
        bars = RunProgress(
            console, dag.order, enabled=progress and console.is_terminal, transient=True
        )
        runner = Runner(
            dag, ws, "plan", Path(tmp), bars, Catalog(ws.catalog_path),
            planning=True, write_caches=False,
        )  # fmt: skip
        with bars:
            for name in dag.order:
                runner.run(name)
    return Plan(dag.spec.name, runner.results, _noop(dag, runner))


def _noop(dag: Dag, runner: Runner) -> bool:
    """Nothing to do: every table would stay as it is (no rows, no ANN index to build)."""
    return bool(dag.targets) and not any(runner.results[n].commits for n in dag.targets)


def execute(
    dag: Dag,
    *,
    overrides: list[str] | None = None,
    console: Console | None = None,
    progress: bool = True,
    prefect_logs: bool = False,
    strict: bool = False,
) -> RunResult:
    """Run ``dag`` once; always returns a result (status failed on error) and records it."""
    _env.apply()  # the environment defaults, before Prefect or Hugging Face is imported
    spec = dag.spec
    ws = Workspace.of(spec)
    console = console or Console(stderr=True)
    tables = dag.tables()
    models = sorted({m for s in dag.steps.values() for m in s.models()})
    executor = executors.make(spec.spec.runner)  # its settings are checked before anything
    with ws.lock(spec.name):
        try:
            ws.clear_staging()  # left by a run that was killed
            ws.remove_uncommitted_tables()  # a first write killed before its commit
        except OSError as exc:
            raise WorkspaceNotWritable(ws.root, f"{exc.strerror or exc}: {exc.filename}") from None
        orchestrator.check_server()  # a configured server that does not answer: fail now
        orchestrator.stop_orphaned_server(ws.root)
        catalog = Catalog(ws.catalog_path, spec.path)
        for run_id, started_at in catalog.fail_stale():
            committed = ws.versions_since(tables, started_at)
            if committed is not None:
                catalog.finish_run(
                    run_id, lance_version=committed, error=STALE_COMMITTED.format(v=committed)
                )
        result = RunResult(new_run_id(), spec.name)
        try:  # room for the run's record, before anything starts
            catalog.reserve(result.run_id)
        except OSError as exc:
            raise WorkspaceNotWritable(ws.root, f"{exc.strerror or exc}: {exc.filename}") from None
        started = time.perf_counter()
        try:
            catalog.start_run(
                run_id=result.run_id,
                pipeline=spec.name,
                status="running",
                started_at=now(),
                spec_path=str(spec.path),
                spec_hash=spec.hash,
                overrides=overrides or [],
                tables=tables,
                models=models,
                embedpipe_version=metadata.version("embedpipe"),
            )
        except BaseException:
            catalog.discard(result.run_id)
            raise
        # A plan's bars vanish when done; without a terminal the run's lines say it all.
        plan_bars = RunProgress(
            console, dag.order, enabled=progress and console.is_terminal, transient=True
        )
        planner = Runner(
            dag, ws, result.run_id, ws.staging(result.run_id), plan_bars, catalog,
            planning=True, strict=strict,
        )  # fmt: skip
        prefect_state = None
        runner: Runner | None = None
        prestarted: list[bool] = []

        def warm_up(name: str, res: StepResult) -> None:
            """Changed documents mean work: start Prefect while the plan goes on."""
            if not dag.steps[name].config.inputs() and (res.new or res.changed or res.deleted):
                with contextlib.suppress(Exception):  # the flow starts it later, or reports why
                    prestarted.append(orchestrator.prestart(ws.root))

        planner.on_step_done = warm_up
        try:
            ws.new_staging(result.run_id)
            try:
                with planner.bars:
                    for name in dag.order:
                        planner.run(name)
                result.noop = _noop(dag, planner)
            except StepFailed as exc:
                if _hopeless(exc, ws.root):  # it would fail again in its task, retried or not
                    raise
                # Run anyway: the step fails again in its task, so Prefect records the failure
                # too (and a transient error may pass).
            if progress:
                console.print(plan_table(Plan(spec.name, planner.results, result.noop)))
            if result.noop and not orchestrator.server_configured():
                result.steps = planner.results  # what the plan did is all there was
                prefect_state = "deferred"
                if any(prestarted):
                    orchestrator.stop_prestarted()
                if progress:
                    console.print(
                        "nothing to do: the index is up to date, so no new Lance version; "
                        "Prefect was not started (the next run that starts it records this one)"
                    )
            else:
                runner = Runner(
                    dag, ws, result.run_id, ws.staging(result.run_id),
                    RunProgress(console, dag.order, enabled=progress), catalog,
                    planning=False, strict=strict, executor=executor,
                )  # fmt: skip
                result.steps = runner.results
                with runner.bars:
                    orchestrator.run_flow(
                        dag, runner, planner, result, catalog, prefect_logs=prefect_logs
                    )
                result.lance_version = runner.version
                prefect_state = "recorded"
            result.status = "completed"
            # The runner's keys where it ran a step, the plan's where the run took its output.
            try:
                planner.prune_caches([r for r in (runner, planner) if r is not None])
            except Exception as exc:  # a cache too big costs disk, never a completed run
                console.print(f"warning: step caches not pruned: {reason(exc)}", markup=False)
        except Exception as exc:
            result.status = "failed"
            result.error = reason(exc)
            if not_writable(exc, ws.root) and "not writable" not in result.error:
                result.error += f" (the workspace {ws.root} cannot be written: free space or fix"
                result.error += " its permissions, then run again)"
            if not result.steps:
                result.steps = planner.results
        except KeyboardInterrupt:
            result.status = "failed"
            result.error = "interrupted (Ctrl-C); nothing was committed by the interrupted step"
            raise
        finally:
            with contextlib.suppress(Exception):
                executor.close()
            with contextlib.suppress(OSError):
                ws.clear_staging()
            try:
                default = dag.index()[1].table if tables else None
                result.live_version = ws.table_version(default) if default else 0
            except Exception as exc:  # the run's own record matters more than this number
                result.error = result.error or f"cannot read the index version: {reason(exc)}"
            result.seconds = time.perf_counter() - started
            _record(dag, catalog, result, prefect_state)
    return result


def _hopeless(exc: StepFailed, root: Path) -> bool:
    """A failure no retry can pass: a damaged index or an unwritable workspace."""
    cause = exc.__cause__
    return isinstance(cause, IndexDamaged | WorkspaceNotWritable) or not_writable(exc, root)


def _record(dag: Dag, catalog: Catalog, result: RunResult, prefect_state: str | None) -> None:
    """Write the run's steps and outcome to the catalog; when it refuses (held by another
    process past the wait, damaged, a full disk), keep them for the next command that can."""
    if result.status == "running":  # ended by something other than an error (SystemExit)
        result.status = "failed"
        result.error = result.error or "the run was stopped before it finished"
    steps = [
        (step_row(dag, result.run_id, name, res), res.skips)
        for name, res in result.steps.items()
        if res.status != "pending"
    ]
    values = {
        "status": result.status,
        "ended_at": now(),
        "seconds": result.seconds,
        "flow_run_id": result.flow_run_id,
        "lance_version": result.lance_version,
        "error": result.error,
        "noop": result.noop,
        "prefect": "recorded" if result.flow_run_id else prefect_state,
    }
    crash_point("record")
    try:
        result.warning = catalog.write_or_keep(
            result.run_id, catalog.ops(result.run_id, steps, values)
        )
    except OSError as exc:
        result.record_lost = True
        done = f"the run {result.status}"
        if result.lance_version:
            done += f" and committed version {result.lance_version}"
        result.warning = f"{exc.strerror}; {done}; the next run marks it failed in the catalog"


def step_row(dag: Dag, run_id: str, name: str, res: StepResult) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "step": name,
        "type": dag.steps[name].type,
        "status": res.status,
        "rows_in": res.rows_in,
        "rows_out": res.rows_out,
        "computed": res.computed,
        "cached": res.cached,
        "deleted": res.deleted,
        "skipped": res.skipped,
        "seconds": res.seconds,
        "started_at": res.started_at,
        "ended_at": now(),
        "error": res.error,
        "new": res.new,
        "changed": res.changed,
    }
