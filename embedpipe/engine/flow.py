"""Runs a DAG as one Prefect flow run, one task run per step.

Steps stream Arrow record batches; between steps they are staged as Arrow IPC files in the
workspace, so memory stays flat however large the corpus. Only this package imports Prefect.
"""

from __future__ import annotations

import errno
import functools
import logging
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from prefect import flow, tags, task
from prefect.cache_policies import NO_CACHE
from rich.console import Console

from embedpipe.dag import Dag
from embedpipe.engine.cache import StepCache
from embedpipe.engine.catalog import Catalog, now
from embedpipe.engine.progress import RunProgress
from embedpipe.engine.workspace import LanceStore, Workspace
from embedpipe.errors import EmbedpipeError, StepFailed
from embedpipe.schemas import hash_rows
from embedpipe.steps.base import Step, StepContext
from embedpipe.steps.encode import Encode
from embedpipe.steps.index import Index


@dataclass
class StepResult:
    rows_in: int = 0
    rows_out: int = 0
    computed: int = 0
    cached: int = 0
    deleted: int = 0
    skipped: int = 0
    seconds: float = 0.0
    status: str = "pending"
    error: str | None = None


@dataclass
class RunResult:
    run_id: str
    pipeline: str
    status: str = "running"
    lance_version: int | None = None  # the version this run committed, if any
    live_version: int = 0  # the index table's version after the run (the previous one on failure)
    steps: dict[str, StepResult] = field(default_factory=dict)
    flow_run_id: str | None = None
    error: str | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The §9 shape of `pipe run --json`."""
        return {
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "status": self.status,
            "lance_version": self.lance_version or self.live_version,
            "steps": {
                name: {k: v for k, v in asdict(s).items() if k not in ("status", "error")}
                for name, s in self.steps.items()
            },
            **({"error": self.error} if self.error else {}),
        }


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only errors that may pass: timeouts, dropped connections, busy files."""
    try:
        state.result()
    except (TimeoutError, ConnectionError):
        return True
    except OSError as exc:
        return exc.errno in (errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.EIO)
    except Exception:
        return False
    return False


def quiet_run_logs(quiet: bool = True) -> None:
    """Flow- and task-run logs (failure tracebacks included) go to Prefect's API, where the UI
    shows them; on the terminal our progress bars and one-line errors say it instead."""
    logging.getLogger("prefect").setLevel(logging.WARNING if quiet else logging.INFO)
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)  # the UI still gets INFO
        logger.propagate = not quiet


def execute(
    dag: Dag,
    *,
    overrides: list[str] | None = None,
    console: Console | None = None,
    progress: bool = True,
    prefect_logs: bool = False,
) -> RunResult:
    """Run ``dag`` once; always returns a result (status failed on error) and records it."""
    quiet_run_logs(not prefect_logs)
    spec = dag.spec
    ws = Workspace(spec.workspace)
    console = console or Console(stderr=True)
    tables = [s.table_name(spec.name) for s in dag.steps.values() if isinstance(s, Index)]
    models = sorted({s.config.model for s in dag.steps.values() if isinstance(s, Encode)})
    with ws.lock(spec.name):
        ws.clear_staging()  # left by a run that was killed
        catalog = Catalog(ws.catalog_path)
        result = RunResult(new_run_id(), spec.name)
        result.steps = {n: StepResult() for n in dag.order}
        started = time.perf_counter()
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
        bars = RunProgress(console, dag.order, enabled=progress)
        try:
            with bars:
                pipeline_flow = _flow_for(dag, ws, catalog, result, bars)
                # Tags entered outside the flow call land on the flow run and its task runs.
                with tags("embedpipe", f"pipeline:{spec.name}", f"spec:{spec.hash[:8]}"):
                    pipeline_flow(
                        pipeline=spec.name,
                        spec=str(spec.path),
                        spec_hash=spec.hash,
                        run_id=result.run_id,
                    )
            result.status = "completed"
        except Exception as exc:
            result.status = "failed"
            result.error = _reason(exc)
        except KeyboardInterrupt:
            result.status = "failed"
            result.error = "interrupted (Ctrl-C); nothing was committed by the interrupted step"
            raise
        finally:
            ws.clear_staging()
            result.live_version = ws.table_version(tables[-1]) if tables else 0
            result.seconds = time.perf_counter() - started
            catalog.finish_run(
                result.run_id,
                status=result.status,
                ended_at=now(),
                seconds=result.seconds,
                flow_run_id=result.flow_run_id,
                lance_version=result.lance_version,
                error=result.error,
            )
    return result


def _reason(exc: BaseException) -> str:
    if isinstance(exc, EmbedpipeError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _flow_for(
    dag: Dag, ws: Workspace, catalog: Catalog, result: RunResult, bars: RunProgress
) -> Callable[..., None]:
    """A Prefect flow for this run. Heavy objects are closed over, not passed as parameters:
    Prefect records parameters (and task inputs) in its database, so they stay small."""
    spec = dag.spec
    store = LanceStore(ws)

    def step_task(step: str, run_id: str) -> None:
        _run_step(dag, step, ws, store, catalog, result, bars)

    @flow(
        name=spec.name,
        flow_run_name=f"{spec.name}-{result.run_id}",
        validate_parameters=False,
        persist_result=False,
        log_prints=False,
    )
    def pipeline_flow(pipeline: str, spec: str, spec_hash: str, run_id: str) -> None:
        from prefect.runtime import flow_run

        result.flow_run_id = str(flow_run.id) if flow_run.id else None
        for name in dag.order:
            task(
                step_task,
                name=f"{name} ({dag.steps[name].type})",
                task_run_name=name,
                retries=2,
                retry_delay_seconds=2,
                retry_condition_fn=_transient,
                cache_policy=NO_CACHE,
                persist_result=False,
                tags=[f"step:{name}"],
            )(step=name, run_id=run_id)

    return pipeline_flow


def _run_step(
    dag: Dag,
    name: str,
    ws: Workspace,
    store: LanceStore,
    catalog: Catalog,
    result: RunResult,
    bars: RunProgress,
) -> None:
    step = dag.steps[name]
    res = StepResult(status="running")
    result.steps[name] = res
    ctx = StepContext(
        pipeline=dag.spec.name,
        run_id=result.run_id,
        spec_hash=dag.spec.hash,
        base_dir=dag.spec.base_dir,
        workspace=ws.root,
        store=store,
    )
    started_at, t0 = now(), time.perf_counter()
    upstream = step.config.inputs()
    total = sum(result.steps[u].rows_out for u in upstream) or None
    bars.start(name, total)
    try:
        # A bar counts the rows a step consumes, or writes for sources, cached steps and 1:1
        # steps that consume in large windows (encode), so it moves as work completes.
        cache = _cache_for(dag, name, ws)
        by_output = not upstream or step.progress == "output" or cache is not None
        tick = functools.partial(bars.advance, name)
        if cache is None:
            step.setup(ctx)
            inputs = [
                Staged(_path(ws, result.run_id, u), res, None if by_output else tick)
                for u in upstream
            ]
            out = _counted_output(step.run(inputs, ctx), res, tick)
        else:
            out = _cached_run(step, cache, ctx, ws, result.run_id, upstream[0], res, tick)
        if step.downstream:
            _write(_path(ws, result.run_id, name), out, dag.schemas[name])
        else:
            for _ in out:
                pass
        res.rows_out = ctx.stats.get("rows_out", res.rows_out)
        res.computed = ctx.stats.get("computed", res.rows_out - res.cached)
        res.cached = ctx.stats.get("cached", res.cached)
        res.deleted = ctx.stats.get("deleted", 0)
        if "version" in ctx.stats:
            result.lance_version = ctx.stats["version"]
        res.status = "completed"
    except Exception as exc:
        res.status = "failed"
        res.error = _reason(exc)
        if not isinstance(exc, EmbedpipeError):
            res.error += "\n" + "".join(traceback.format_exception(exc)[-3:])
        raise StepFailed(name, _reason(exc), hint=_hint(dag, result.run_id)) from exc
    finally:
        res.skipped = len(ctx.skipped)
        res.seconds = round(time.perf_counter() - t0, 3)
        bars.finish(name, res)
        catalog.record_step(
            {
                "run_id": result.run_id,
                "step": name,
                "type": step.type,
                "status": res.status,
                "rows_in": res.rows_in,
                "rows_out": res.rows_out,
                "computed": res.computed,
                "cached": res.cached,
                "deleted": res.deleted,
                "skipped": res.skipped,
                "seconds": res.seconds,
                "started_at": started_at,
                "ended_at": now(),
                "error": res.error,
            },
            ctx.skipped,
        )


def _hint(dag: Dag, run_id: str) -> str:
    spec = dag.spec.path
    where = f"where run_id = '{run_id}'"
    return (
        "Nothing was committed; the index keeps its previous version. Inspect: "
        f'pipe sql {spec} "select step, status, error from step_runs {where}" and '
        f'pipe sql {spec} "select * from skipped {where}"; fix, then re-run: pipe run {spec}'
    )


class Staged:
    """A step's input: a staged Arrow IPC file, read batch by batch. A step may iterate it more
    than once (each pass re-reads the file); only the first pass counts ``rows_in``."""

    def __init__(
        self, path: Path, res: StepResult | None = None, tick: Callable[[int], None] | None = None
    ) -> None:
        self.path, self.res, self.tick = path, res, tick

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        res, tick = self.res, self.tick
        self.res = self.tick = None
        for batch in _read_path(self.path):
            if res:
                res.rows_in += batch.num_rows
            if tick:
                tick(batch.num_rows)
            yield batch


def _counted_output(
    batches: Iterator[pa.RecordBatch],
    res: StepResult,
    tick: Callable[[int], None] | None,
    *,
    cached: bool = False,
) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        res.rows_out += batch.num_rows
        if cached:
            res.cached += batch.num_rows
        if tick:
            tick(batch.num_rows)
        yield batch


def _cache_for(dag: Dag, name: str, ws: Workspace) -> StepCache | None:
    """A cache when the step declares key columns that its one input and its output both have."""
    step = dag.steps[name]
    ups = step.config.inputs()
    if not step.cache_key or len(ups) != 1:
        return None
    for schema in (dag.schemas[ups[0]], dag.schemas[name]):
        if any(schema.get_field_index(c) < 0 for c in step.cache_key):
            return None
    return StepCache(ws.root, step)


def _cached_run(
    step: Step,
    cache: StepCache,
    ctx: StepContext,
    ws: Workspace,
    run_id: str,
    upstream: str,
    res: StepResult,
    tick: Callable[[int], None],
) -> Iterator[pa.RecordBatch]:
    """Reuse cached output for input rows whose key is cached; run the step on the rest only
    (and load its model only if there is a rest)."""
    known = pa.array(sorted(cache.keys()), pa.string())
    hits: set[str] = set()
    misses = _path(ws, run_id, f"{step.name}.misses")
    todo = 0  # input rows to compute
    with pa.memory_map(str(_path(ws, run_id, upstream))) as source:
        schema = pa.ipc.open_stream(source).schema

    def split() -> Iterator[pa.RecordBatch]:
        nonlocal todo
        for batch in _read(ws, run_id, upstream):
            res.rows_in += batch.num_rows
            keys = hash_rows(batch, step.cache_key)
            cached = pc.is_in(keys, value_set=known)
            hits.update(pc.filter(keys, cached).to_pylist())
            rest = batch.filter(pc.invert(cached))
            todo += rest.num_rows
            yield rest

    _write(misses, split(), schema)
    yield from _counted_output(cache.rows(hits), res, tick, cached=True)
    if todo:  # only now load models: an unchanged re-run never does
        step.setup(ctx)
        yield from _counted_output(cache.tee(step.run([Staged(misses)], ctx)), res, tick)


def _path(ws: Workspace, run_id: str, step: str) -> Path:
    return ws.staging(run_id) / f"{step}.arrow"


def _write(path: Path, batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> None:
    """Stage a step's output as an Arrow IPC stream, batch by batch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    with pa.OSFile(str(path), "wb") as sink:
        for batch in batches:
            if writer is None:
                writer = pa.ipc.new_stream(sink, batch.schema)
            writer.write_batch(batch)
        if writer is None:
            writer = pa.ipc.new_stream(sink, schema)
        writer.close()


def _read(ws: Workspace, run_id: str, step: str) -> Iterator[pa.RecordBatch]:
    return _read_path(_path(ws, run_id, step))


def _read_path(path: Path) -> Iterator[pa.RecordBatch]:
    with pa.memory_map(str(path)) as source:
        yield from pa.ipc.open_stream(source)
