"""Runs one step of a DAG, for real or as a plan, staging its output for the next step.

Steps stream Arrow record batches; between steps they are staged as Arrow IPC files, so memory
stays flat however large the corpus. A *plan* runs the same code with two differences: the
index store diffs instead of writing, and steps too costly to run just to count (``plan_runs =
False``: encode) are not run on the rows their cache lacks. Those rows pass on with the step's
own columns null, so the index diff downstream still counts them as new or changed.

Everything a plan computed exactly (ingest, chunk) stays staged, and the run that follows it
reuses it instead of computing it twice.
"""

from __future__ import annotations

import ctypes
import functools
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from embedpipe.dag import Dag
from embedpipe.engine.cache import StepCache
from embedpipe.engine.catalog import Catalog, now
from embedpipe.engine.executors import Executor, LocalExecutor
from embedpipe.engine.lance import LanceStore, PlanStore, columns, compare
from embedpipe.engine.progress import RunProgress
from embedpipe.engine.workspace import Workspace
from embedpipe.errors import EmbedpipeError, SkippedStrict, StepFailed
from embedpipe.results import Event, Skipped, Stats, StepResult
from embedpipe.schemas import hash_rows
from embedpipe.steps.base import Step, StepContext

__all__ = ["Runner", "StepResult", "reason"]


class Runner:
    """Runs the steps of ``dag`` one at a time, in order, into ``staging``."""

    def __init__(
        self,
        dag: Dag,
        ws: Workspace,
        run_id: str,
        staging: Path,
        bars: RunProgress,
        catalog: Catalog,
        *,
        planning: bool,
        write_caches: bool = True,
        strict: bool = False,
        executor: Executor | None = None,
    ) -> None:
        self.dag, self.ws, self.run_id, self.staging, self.bars = dag, ws, run_id, staging, bars
        self.catalog = catalog
        self.planning, self.write_caches, self.strict = planning, write_caches, strict
        # A plan counts in this process: only a run's work goes to the spec's executor.
        self.executor = executor or LocalExecutor(LocalExecutor.Config())
        self.store: LanceStore | PlanStore = (
            PlanStore(ws) if planning else LanceStore(ws, self.executor.fragment_writer())
        )
        self.results: dict[str, StepResult] = {n: StepResult() for n in dag.order}
        self.versions: dict[str, int] = {}  # the Lance version each index step committed
        # The cache keys each cached step's input had, as Arrow arrays (see prune_caches).
        self.used: dict[str, list[pa.Array]] = {}
        self.on_step_done: Callable[[str, StepResult], None] | None = None

    @property
    def version(self) -> int | None:
        """The version the run committed to the default index's table (the run's
        ``lance_version``); None when that table was left as it was."""
        default = self.dag.default_index
        return self.versions.get(default) if default else None

    def path(self, step: str) -> Path:
        return self.staging / f"{step}.arrow"

    def exact(self, name: str) -> bool:
        """Whether the plan's staged output of ``name`` is final (a run may reuse it)."""
        step = self.dag.steps[name]
        res = self.results[name]
        if res.status != "completed" or res.estimated or not step.downstream:
            return False
        if name in self.dag.targets:  # the plan's store wrote nothing: the run must write
            return False
        return all(self.exact(u) for u in step.config.inputs())

    def adopt(self, name: str, res: StepResult) -> None:
        """Take a step's result from the plan that already computed it."""
        self.results[name] = res
        self.bars.start(name, res.rows_out)
        self.bars.advance(name, res.rows_out)
        self.bars.finish(name, res)

    def context(self, name: str | None = None) -> StepContext:
        return StepContext(
            pipeline=self.dag.spec.name,
            run_id=self.run_id,
            spec_hash=self.dag.spec.hash,
            base_dir=self.dag.spec.base_dir,
            workspace=self.ws.root,
            store=self.store,
            target=self.dag.targets.get(name) if name else None,
            owned=self.ws.owned(),
        )

    def run(self, name: str) -> StepResult:
        step = self.dag.steps[name]
        res = StepResult(status="running", started_at=now())
        self.results[name] = res
        ctx = self.context(name)
        t0 = time.perf_counter()
        upstream = step.config.inputs()
        self.bars.start(name, sum(self.results[u].rows_out for u in upstream) or None)
        try:
            self._run(step, ctx, res)
            res.absorb(res.stats)
            if res.estimated:
                res.estimated_seconds = self._estimate(step, res.computed)
            if "version" in res.stats:
                self.versions[name] = res.stats["version"]
            if self.strict and res.skips:
                item, why = res.skips[0]
                raise SkippedStrict(
                    f"{len(res.skips)} input(s) skipped and --strict is on; first: {item}: "
                    f"{why}. Fix or remove those inputs, or run without --strict"
                )
            res.status = "completed"
        except Exception as exc:
            res.status = "failed"
            res.error = reason(exc)
            if not isinstance(exc, EmbedpipeError):
                res.error += "\n" + "".join(traceback.format_exception(exc)[-3:])
            raise StepFailed(name, reason(exc), hint=self._hint()) from exc
        finally:
            res.skips += [(s.item, s.reason) for s in ctx.drain()]
            res.skipped = len(res.skips)
            res.seconds = round(time.perf_counter() - t0, 3)
            self.bars.finish(name, res)
            release_memory()
        if self.on_step_done:
            self.on_step_done(name, res)
        return res

    def _run(self, step: Step, ctx: StepContext, res: StepResult) -> None:
        name = step.name
        upstream = step.config.inputs()
        # A bar counts the rows a step consumes, or writes for sources, cached steps and 1:1
        # steps that consume in large windows (encode), so it moves as work completes.
        cache = self._cache_for(name)
        by_output = not upstream or step.progress == "output" or cache is not None
        tick = functools.partial(self.bars.advance, name)
        if cache is not None:
            out = self._cached(step, cache, ctx, upstream[0], res, tick)
        elif self.planning and not step.plan_runs:
            out = self._placeholders(step, Staged(self.path(upstream[0]), res), res, None)
            res.estimated = True
        else:
            step.setup(ctx)
            inputs = [Staged(self.path(u), res, None if by_output else tick) for u in upstream]
            out = counted(self.executor.run(step, inputs, ctx), res, tick)
        if step.downstream:
            write_staged(self.path(name), out, self.dag.schemas[name])
        else:
            for _ in out:
                pass
        if not upstream:
            self._documents_diff(name, res)

    def _cache_for(self, name: str) -> StepCache | None:
        """A cache when the step declares key columns that its one input and its output have."""
        step = self.dag.steps[name]
        ups = step.config.inputs()
        if not step.cache_key or len(ups) != 1:
            return None
        for schema in (self.dag.schemas[ups[0]], self.dag.schemas[name]):
            if any(schema.get_field_index(c) < 0 for c in step.cache_key):
                return None
        return StepCache(self.ws.root, step, writable=self.write_caches)

    def _cached(
        self,
        step: Step,
        cache: StepCache,
        ctx: StepContext,
        upstream: str,
        res: StepResult,
        tick: Callable[[int], None],
    ) -> Iterator[pa.RecordBatch]:
        """Reuse cached output for input rows whose key is cached; run the step on the rest
        only (and load its model only if there is a rest)."""
        source = self.path(upstream)
        # The input's keys first (kept for prune_caches), then one lookup of all of them in
        # the cache: one hash table of the cache's keys, not one per input batch.
        used = self.used.setdefault(step.name, [])
        group = step.cache_whole
        grouped: list[pa.Array] = []  # the group column, read in the same pass
        for batch in read_staged(source):
            res.rows_in += batch.num_rows
            used.append(hash_rows(batch, step.cache_key))
            if group:
                grouped.append(batch.column(group))
        snap = cache.snapshot(touch=self.write_caches)
        keys = pa.chunked_array(used, pa.string())
        cached = pc.is_in(keys, value_set=snap.keys)
        todo = len(keys) - (pc.sum(cached).as_py() or 0)  # input rows to compute
        if todo and group and todo < len(keys):
            # Rows computed together (a document's chunks under late chunking): one missing
            # row sends its whole group to the step again.
            groups = pa.chunked_array(grouped)
            missed = pc.unique(pc.filter(groups, pc.invert(cached)))
            cached = pc.and_(cached, pc.invert(pc.is_in(groups, value_set=missed)))
            todo = len(keys) - (pc.sum(cached).as_py() or 0)
            keys = pc.filter(keys, cached)
        # The cached rows those keys name (all of them, in cache order).
        wanted = pc.is_in(snap.keys, value_set=keys) if len(snap.keys) else None
        del keys
        misses = self.path(f"{step.name}.misses")
        if todo:  # a re-run where nothing changed stages nothing here
            with pa.OSFile(str(source)) as file:
                schema = pa.ipc.open_stream(file).schema
            write_staged(misses, _rest(read_staged(source), cached), schema)
        del cached
        if wanted is not None:
            yield from counted(snap.rows(wanted), res, tick, cached=True)
        del snap, wanted
        if not todo:
            return
        if self.planning and not step.plan_runs:
            res.estimated = True
            yield from self._placeholders(step, Staged(misses), res, cache.schema())
            return
        step.setup(ctx)  # only now load models: an unchanged re-run never does
        out = self.executor.run(step, [Staged(misses)], ctx)
        yield from counted(cache.tee(out) if self.write_caches else out, res, tick)

    def prune_caches(self, runs: list[Runner]) -> None:
        """After a successful run: drop cached rows no input needs any more (see StepCache)."""
        for name in self.dag.order:
            cache = self._cache_for(name)
            used = next((r.used[name] for r in runs if name in r.used), None)
            if cache is not None and used is not None:
                cache.prune(pa.chunked_array(used, pa.string()))
                release_memory()

    def _placeholders(
        self, step: Step, rows: Staged, res: StepResult, schema: pa.Schema | None
    ) -> Iterator[pa.RecordBatch]:
        """What a plan passes on for rows a step was not run on: its own columns null."""
        schema = schema or self.dag.schemas[step.name]
        for batch in rows:
            n = batch.num_rows
            cols = [
                pc.cast(batch.column(f.name), f.type)
                if f.name in batch.schema.names
                else pa.nulls(n, f.type)
                for f in schema
            ]
            res.rows_out += n
            yield pa.RecordBatch.from_arrays(cols, schema=schema)

    def _documents_diff(self, name: str, res: StepResult) -> None:
        """A source step's documents against those the default index holds: new, changed,
        deleted (all steps and commands count against the same table)."""
        schema = self.dag.schemas[name]
        cols = ["doc_id", "content_hash"]
        if any(schema.get_field_index(c) < 0 for c in cols) or not self.dag.targets:
            return
        have = self.ws.documents(self.dag.index()[1].table)
        if have is None:
            res.new = res.computed = res.rows_out
            return
        come = columns(read_staged(self.path(name)), cols)
        counts = compare(have, come, "doc_id", "content_hash")
        res.new, res.changed, res.deleted = counts["new"], counts["changed"], counts["deleted"]
        res.computed = res.new + res.changed
        res.cached = res.rows_out - res.computed

    def _estimate(self, step: Step, rows: int) -> float | None:
        rate = self.catalog.throughput(step.name)
        return round(rows / rate, 1) if rate and rows else None

    def _hint(self) -> str:
        spec = self.dag.spec.path
        if self.planning and not self.write_caches:  # pipe plan: no catalog rows to point at
            return f"pipe plan wrote nothing; fix it, then plan again: pipe plan {spec}"
        where = f"where run_id = '{self.run_id}'"
        return (
            "Nothing was committed; the index keeps its previous version. Inspect: "
            f'pipe sql {spec} "select step, status, error from step_runs {where}" and '
            f'pipe sql {spec} "select * from skipped {where}"; fix, then re-run: pipe run {spec}'
        )


def release_memory() -> None:
    """Hand the memory a step freed back to the system before the next step: Arrow's pool
    and the C allocator (Lance's) otherwise keep freed pages, and each step's peak would
    stack on what the steps before it left."""
    pa.default_memory_pool().release_unused()
    if _malloc_trim is not None:
        _malloc_trim(0)


def _trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``; None where the C library has none (macOS, musl)."""
    try:
        return ctypes.CDLL(None).malloc_trim  # type: ignore[no-any-return]
    except (AttributeError, OSError, TypeError):
        return None


_malloc_trim = _trim()


def reason(exc: BaseException) -> str:
    if isinstance(exc, EmbedpipeError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


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
        for batch in read_staged(self.path):
            if res:
                res.rows_in += batch.num_rows
            if tick:
                tick(batch.num_rows)
            yield batch


def counted(
    events: Iterable[Event],
    res: StepResult,
    tick: Callable[[int], None] | None,
    *,
    cached: bool = False,
) -> Iterator[pa.RecordBatch]:
    """A step's record batches, counted; its ``Skipped`` and ``Stats`` go into ``res``."""
    for event in events:
        if isinstance(event, Skipped):
            res.skips.append((event.item, event.reason))
            continue
        if isinstance(event, Stats):
            res.stats.update(event.values)
            continue
        if isinstance(event, pa.Table):  # a step may yield a table: staged batch by batch
            for batch in event.to_batches():
                res.rows_out += batch.num_rows
                res.cached += batch.num_rows if cached else 0
                if tick:
                    tick(batch.num_rows)
                yield batch
            continue
        res.rows_out += event.num_rows
        if cached:
            res.cached += event.num_rows
        if tick:
            tick(event.num_rows)
        yield event


def write_staged(path: Path, batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> None:
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


def _rest(batches: Iterable[pa.RecordBatch], cached: pa.ChunkedArray) -> Iterator[pa.RecordBatch]:
    """The rows of ``batches`` whose flag in ``cached`` (one per row, in order) is false."""
    at = 0
    for batch in batches:
        n = batch.num_rows
        yield batch.filter(pc.invert(cached.slice(at, n)))
        at += n


def read_staged(path: Path) -> Iterator[pa.RecordBatch]:
    # Plain reads, not a memory map: pages of a mapped file stay resident once touched, so a
    # step reading a large staged output would hold all of it in memory by the end.
    with pa.OSFile(str(path)) as source:
        yield from pa.ipc.open_stream(source)
