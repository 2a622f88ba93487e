"""The Ray executor: row-wise steps fan out over a Ray cluster (``runner: {type: ray}``).

    runner: {type: ray, address: auto, num_workers: 2, batch_size: 512}

Everything else stays as the local executor has it: the plan, the step caches, the incremental
rules, the catalog and the Prefect flow run are the driver's (the process that runs ``pipe
run``). A row-wise step (chunk, encode, compress, pool, a plugin's) hands its windows to a pool
of Ray actors; each actor unpickles the step once and loads its model (or the encode backend's
exported model) once, in ``setup``, then maps window after window. Results come back in input
order, so the driver's stream (and so the cache, the staged output and the index write) is the
one the local executor makes: the same chunk ids, the same vectors, one Lance commit per run.

Why actors and not Ray Data's ``map_batches``: the engine streams a step's windows out of its
incremental plan (only rows that missed the cache), and a window's result is a stream of events
(record batches, skipped inputs with reasons, counts) that must come back in order. An actor pool
with a bounded number of windows in flight does exactly that, holds at most ``2 x num_workers``
windows in memory, and needs no dataset materialised first.

An index step's rows are written the same way: the driver cuts them into pieces of
``fragment_rows`` rows, Ray tasks write each piece as a Lance fragment of the table (in
parallel, straight to the table's storage), and the driver commits the fragments, with the
deletions an incremental run makes, as one new table version (``engine/lance.py``). A run that
fails or is interrupted before that commit leaves the table as it was.

A worker that dies (killed, out of memory, its node lost) is restarted by Ray, which loads the
model again and runs the window it held once more (``max_retries`` times); its result is taken
once, so every row arrives once. Ctrl-C on the driver kills the actors: the index step, which
runs on the driver after them, commits nothing.

The workers read the workspace (an encode backend's exported model, a fitted codec) by its path:
on a cluster of several machines, put the workspace on a file system that every node mounts.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import socket
import time
import warnings
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import Field, field_validator

from embedpipe.engine.executors import Executor, ExecutorConfig, FragmentWriter
from embedpipe.errors import ExecutorError
from embedpipe.results import Event
from embedpipe.steps.base import Step, StepContext

EXTRA = "pip install 'embedpipe[ray]'"


class RayConfig(ExecutorConfig):
    """``runner:`` keys of the Ray executor."""

    address: str = Field(
        "auto",
        description="auto: the cluster RAY_ADDRESS names or one running on this machine, "
        "else a local one started for the run; local: always a local one; ray://HOST:PORT "
        "(Ray Client) or HOST:PORT: that cluster.",
    )
    num_workers: int = Field(2, ge=1, description="Ray actors per row-wise step.")
    batch_size: int | None = Field(
        None, ge=1, description="Rows per Ray task at most (default: the step's own window)."
    )
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs Ray reserves per actor.")
    max_retries: int = Field(
        3, ge=0, description="Restarts of a worker that died; its window runs again."
    )
    fragment_rows: int = Field(
        100_000, ge=1, description="Rows per Lance fragment a Ray task writes for an index "
        "step (at most 256 MiB of rows a task); the driver commits the fragments once.",
    )  # fmt: skip

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if value in ("auto", "local") or value.startswith("ray://"):
            return value
        host, _, port = value.rpartition(":")
        if host and port.isdigit():
            return value
        raise ValueError(
            f"'{value}' is not a Ray address; use auto, local, ray://HOST:PORT or HOST:PORT"
        )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Ray's start-up notices (e.g. that token authentication is on) and the Lance and LanceDB
    warnings about fork (Ray starts its processes with fork and exec) are not the user's
    business; errors still surface as exceptions."""
    log = logging.getLogger("ray")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*(lance|lancedb).*fork")
            yield
    finally:
        log.setLevel(level)


def _last_error(text: str) -> str:
    """The last ``SomeError: message`` line of a remote traceback (else its last line)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    found = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b.*:", line)]
    return (found or lines or ["unknown error"])[-1]


class _Worker:
    """One Ray actor: a step, set up once, mapping the windows it is given."""

    def __init__(self, step: Step, ctx: StepContext) -> None:
        from embedpipe import _env

        _env.apply()  # offline model resolution, quiet libraries: as in `pipe run`
        self.step, self.ctx = step, ctx
        self.where = f"{socket.gethostname()}:{os.getpid()}"
        step.setup(ctx)

    def map(self, window: pa.Table | pa.RecordBatch) -> tuple[list[Event], str, int, float]:
        started = time.perf_counter()
        events: list[Event] = []
        for event in self.step.map(window, self.ctx):
            events.extend(self.ctx.drain())  # skips join the stream where the local one has them
            events.append(event)
        events.extend(self.ctx.drain())
        return events, self.where, window.num_rows, time.perf_counter() - started


_FRAGMENT_BYTES = 256 << 20  # rows a fragment-writing task is sent, at most


def _write_fragment(
    uri: str, rows: bytes, mode: str, storage_version: str | None, options: dict[str, str]
) -> tuple[list[Any], str, int, float]:
    """A Ray task: one piece of an index step's rows (Arrow IPC) as Lance fragments of the
    dataset at ``uri``, uncommitted; their metadata goes back to the driver, which commits."""
    from lance.fragment import write_fragments

    started = time.perf_counter()
    table = pa.ipc.open_stream(rows).read_all()
    fragments = write_fragments(
        table,
        uri,
        schema=table.schema,
        mode=mode,
        data_storage_version=storage_version,
        max_rows_per_file=max(1, table.num_rows),  # one piece, one fragment
        storage_options=options or None,
    )
    where = f"{socket.gethostname()}:{os.getpid()}"
    return fragments, where, table.num_rows, time.perf_counter() - started


def _pieces(batches: Iterator[pa.RecordBatch], rows: int, size: int) -> Iterator[bytes]:
    """``batches`` regrouped into pieces of ``rows`` rows (fewer once ``size`` bytes), each as
    an Arrow IPC stream: only the piece's own bytes travel, never a sliced batch's buffers."""
    held: list[pa.RecordBatch] = []
    count = nbytes = 0

    def piece() -> bytes:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, held[0].schema) as writer:
            for part in held:
                writer.write_batch(part)
        return bytes(sink.getvalue())

    for batch in batches:
        per_row = max(1, batch.nbytes // max(1, batch.num_rows))
        while batch.num_rows:
            take = min(rows - count, max(1, (size - nbytes) // per_row))
            part, batch = batch.slice(0, take), batch.slice(take)
            held.append(part)
            count, nbytes = count + part.num_rows, nbytes + part.nbytes
            if count >= rows or nbytes >= size:
                yield piece()
                held, count, nbytes = [], 0, 0
    if held:
        yield piece()


def _cause(exc: Exception) -> Exception:
    """The step's or Lance's own error that a Ray task raised, as it was raised there."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, Exception) else exc


def _tally(seen: dict[str, list[float]], where: str, rows: int, seconds: float) -> None:
    """One task's rows and seconds on the worker ``where``, for the run's summary."""
    mark = seen[where]
    mark[0] += rows
    mark[1] += seconds
    mark[2] += 1


class RayExecutor(Executor):
    """Row-wise steps on a pool of Ray actors; every other step in this process."""

    name = "ray"
    Config: ClassVar[type[ExecutorConfig]] = RayConfig
    config: RayConfig

    def __init__(self, config: ExecutorConfig) -> None:
        super().__init__(config)
        self._started = False  # this executor started Ray (and so shuts it down)
        self._actors: list[Any] = []
        self.cluster: dict[str, Any] = {}
        # step -> worker -> [rows, seconds, windows]
        self.throughput: dict[str, dict[str, list[float]]] = {}

    @classmethod
    def unavailable(cls) -> str | None:
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            return f"the ray executor needs Ray, which is not installed: {EXTRA}"
        return None

    def _connect(self) -> Any:
        import ray

        # A process that joined a cluster already (a notebook, a test) keeps using it.
        if not ray.is_initialized():
            with _quiet():
                self._init(ray)
            self._started = True
        if not self.cluster:
            resources = ray.cluster_resources()
            self.cluster = {
                "address": self.config.address if self._started else "this process's",
                "nodes": len([n for n in ray.nodes() if n.get("Alive")]),
                "cpus": resources.get("CPU", 0),
            }
        return ray

    def _init(self, ray: Any) -> None:
        quiet = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        address, cpus = self.config.address, self.config.num_workers * self.config.cpus_per_worker
        try:
            if address == "auto":
                try:
                    ray.init(address="auto", **quiet)
                except ConnectionError:  # none running: start one for this run
                    ray.init(address="local", num_cpus=max(1, round(cpus)), **quiet)
            elif address == "local":  # a new one, whatever RAY_ADDRESS says
                ray.init(address="local", num_cpus=max(1, round(cpus)), **quiet)
            else:
                ray.init(address=address, **quiet)
        except Exception as exc:
            raise ExecutorError(
                f"runner.address: cannot reach the Ray cluster at {address}: {exc}; start it "
                "(`ray start --head`), fix the address, or use address: local"
            ) from exc

    def _workers(self, ray: Any, step: Step, ctx: StepContext) -> list[Any]:
        # What the worker needs of the context: paths and ids; the store stays here.
        remote_ctx = replace(ctx, store=None, target=None, pending=[], skip_count=0)
        # Passed by value: a step travels without its model (a few KB), so Ray keeps it in
        # each actor's creation task, which a restart runs again.
        cls = ray.remote(_Worker).options(
            num_cpus=self.config.cpus_per_worker,
            max_restarts=self.config.max_retries,
            max_task_retries=self.config.max_retries,
        )
        with _quiet():
            return [cls.remote(step, remote_ctx) for _ in range(self.config.num_workers)]

    def run(
        self, step: Step, inputs: list[Iterable[pa.RecordBatch]], ctx: StepContext
    ) -> Iterator[Event]:
        if step.row_wise and self.config.batch_size:
            step.window_limit = self.config.batch_size  # before the step cuts its windows
        return super().run(step, inputs, ctx)

    def map_windows(
        self, step: Step, windows: Iterator[pa.Table | pa.RecordBatch], ctx: StepContext
    ) -> Iterator[Event]:
        first = next(windows, None)
        if first is None:  # nothing to map: no cluster, no model loads
            return
        ray = self._connect()
        from ray.util import ActorPool

        actors = self._workers(ray, step, ctx)
        self._actors.extend(actors)
        pool = ActorPool(actors)
        seen = self.throughput.setdefault(step.name, defaultdict(lambda: [0.0, 0.0, 0]))
        in_flight, limit = 0, 2 * len(actors)
        try:
            for window in itertools.chain([first], windows):
                pool.submit(lambda actor, w: actor.map.remote(w), window)
                in_flight += 1
                while in_flight >= limit:
                    yield from self._next(pool, step, seen)
                    in_flight -= 1
            while pool.has_next():
                yield from self._next(pool, step, seen)
        finally:  # the step's workers, whether it ended, failed or was interrupted
            self._release(ray, actors)

    def _next(self, pool: Any, step: Step, seen: dict[str, list[float]]) -> list[Event]:
        from ray.exceptions import RayActorError, RayTaskError

        try:
            events, where, rows, seconds = pool.get_next()
        except RayTaskError as exc:  # the step's own error, raised in a worker: as it is
            raise _cause(exc) from None
        except RayActorError as exc:
            text = str(exc)
            if "creation task" in text:  # setup() failed in the worker: say why, not "memory"
                raise ExecutorError(
                    f"step '{step.name}': a Ray worker could not set the step up: "
                    f"{_last_error(text)} (is embedpipe, with the model, installed on every "
                    "node, and the workspace mounted at the same path?)"
                ) from None
            why = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
            raise ExecutorError(
                f"step '{step.name}': its Ray worker died and was restarted "
                f"{self.config.max_retries} time(s), then died again ({why}), so nothing was "
                "committed: raise runner.max_retries, or give the workers more memory"
            ) from None
        _tally(seen, where, rows, seconds)
        return events

    def fragment_writer(self) -> FragmentWriter | None:
        return self._write_fragments

    def _write_fragments(
        self,
        uri: str,
        batches: Iterator[pa.RecordBatch],
        schema: pa.Schema,
        *,
        mode: str,
        storage_version: str | None,
        storage_options: dict[str, str],
        label: str,
    ) -> list[Any]:
        """Each piece of ``batches`` written as a Lance fragment by a Ray task, at most
        2 x num_workers pieces in flight; the fragments' metadata in input order."""
        ray = self._connect()
        task = ray.remote(_write_fragment).options(
            num_cpus=self.config.cpus_per_worker, max_retries=self.config.max_retries
        )
        seen = self.throughput.setdefault(f"write {label}", defaultdict(lambda: [0.0, 0.0, 0]))
        limit, pending, fragments = 2 * self.config.num_workers, deque[Any](), []
        pieces = _pieces(batches, self.config.fragment_rows, _FRAGMENT_BYTES)
        try:
            with _quiet():
                for piece in pieces:
                    args = (uri, piece, mode, storage_version, storage_options)
                    pending.append(task.remote(*args))
                    while len(pending) >= limit:
                        fragments += self._written(ray, pending[0], label, seen)
                        pending.popleft()  # only once written: Ctrl-C cancels it too
                while pending:
                    fragments += self._written(ray, pending[0], label, seen)
                    pending.popleft()
        finally:  # failed or interrupted: no fragment is committed; stop writing more
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
        return fragments

    def _written(self, ray: Any, ref: Any, label: str, seen: dict[str, list[float]]) -> list[Any]:
        from ray.exceptions import RayTaskError

        try:
            fragments, where, rows, seconds = ray.get(ref)
        except RayTaskError as exc:  # Lance's own error, raised in the task: as it is
            raise _cause(exc) from None
        except ray.exceptions.RayError as exc:
            raise ExecutorError(
                f"table '{label}': a Ray task writing its rows failed "
                f"{self.config.max_retries + 1} time(s) ({_last_error(str(exc))}), so nothing "
                "was committed: raise runner.max_retries, or give the workers more memory"
            ) from None
        _tally(seen, where, rows, seconds)
        return list(fragments)

    def _release(self, ray: Any, actors: list[Any]) -> None:
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        self._actors = [a for a in self._actors if all(a is not b for b in actors)]

    def summary(self) -> list[str]:
        if not self.throughput:
            return []
        cluster = self.cluster  # set by _connect() before any window was mapped
        lines = [
            f"Ray cluster ({cluster['address']}): {cluster['nodes']} node(s), "
            f"{cluster['cpus']:g} CPUs, {self.config.num_workers} workers per step",
            "",
            "| step | worker | tasks | rows | rows/s |",
            "|---|---|--:|--:|--:|",
        ]
        for step, workers in self.throughput.items():
            for where, (rows, seconds, n) in sorted(workers.items()):
                rate = rows / seconds if seconds else 0.0
                lines.append(f"| {step} | {where} | {n:.0f} | {rows:.0f} | {rate:.1f} |")
        return lines

    def close(self) -> None:
        if not (self._started or self._actors):
            return
        import ray

        with contextlib.suppress(Exception):  # any a step left (its generator never finished)
            self._release(ray, list(self._actors))
        if self._started:
            with contextlib.suppress(Exception):
                ray.shutdown()
            self._started = False
