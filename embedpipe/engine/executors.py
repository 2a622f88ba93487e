"""Executors: how a step's work is carried out, picked by the spec's ``runner: {type: ...}``.

The engine hands an executor a step, its inputs and its context, and takes back the step's
events (record batches, ``Skipped``, ``Stats``) in order. ``local`` runs everything in this
process. A step that declares ``row_wise`` exposes its work as ``map()`` over windows of its
input (``windows()``), so an executor may run those windows elsewhere, in parallel, and only
has to return each window's events in input order; any other step runs whole, here.

An executor may also write index tables' new rows as Lance fragments on its workers
(``fragment_writer()``); the store then commits those fragments in one new table version, as it
commits its own writes. ``local`` writes them here.

Executors register through the ``embedpipe.executors`` entry-point group, like steps::

    [project.entry-points."embedpipe.executors"]
    ray = "my_package.ray_executor:RayExecutor"
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, Protocol

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, ValidationError

from embedpipe import registry
from embedpipe.errors import PluginError, UsageError
from embedpipe.results import Event
from embedpipe.steps.base import Step, StepContext


class FragmentWriter(Protocol):
    """Writes rows as Lance fragments of the dataset at ``uri``, possibly in parallel, and
    returns their metadata in input order, uncommitted (``lance.fragment.FragmentMetadata``).
    ``mode`` is ``create`` for a new table, ``overwrite`` for one whose rows all change
    (both: fresh field ids), ``append`` for rows added to ``uri``'s current schema;
    ``storage_options`` are Lance's for an object-store ``uri`` ({} for a folder); ``label``
    names the table in progress reports."""

    def __call__(
        self,
        uri: str,
        batches: Iterator[pa.RecordBatch],
        schema: pa.Schema,
        *,
        mode: str,
        storage_version: str | None,
        storage_options: dict[str, str],
        label: str,
    ) -> list[Any]: ...


class ExecutorConfig(BaseModel):
    """An executor's keys under ``runner:`` (``type`` picks the executor)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = "local"


class Executor:
    """Base class: runs steps; subclasses may override ``map_windows`` to fan windows out."""

    name: ClassVar[str]
    Config: ClassVar[type[ExecutorConfig]] = ExecutorConfig

    def __init__(self, config: ExecutorConfig) -> None:
        self.config = config

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this executor cannot run here (a package it needs is missing, with the command
        that installs it), or None. Checked when a spec names it: a spec error at runner.type."""
        return None

    def run(
        self, step: Step, inputs: list[Iterable[pa.RecordBatch]], ctx: StepContext
    ) -> Iterator[Event]:
        """The step's events. Skips its helpers record with ``ctx.skip()`` join the stream
        just before the item during whose making they were recorded."""
        if step.row_wise:
            source = self.map_windows(step, step.windows(inputs[0]), ctx)
        else:
            source = step.run(inputs, ctx)
        for event in source:
            yield from ctx.drain()
            yield event
        yield from ctx.drain()

    def map_windows(
        self, step: Step, windows: Iterator[pa.Table | pa.RecordBatch], ctx: StepContext
    ) -> Iterator[Event]:
        """A row-wise step's events, window by window, in input order."""
        for window in windows:
            yield from step.map(window, ctx)

    def fragment_writer(self) -> FragmentWriter | None:
        """How an index step's new rows become Lance fragments elsewhere (the workers), for
        the store to commit in one version; None: the store writes them in this process."""
        return None

    def summary(self) -> list[str]:
        """Markdown lines for the run's summary in Prefect (workers, throughput); [] for none."""
        return []

    def close(self) -> None:
        """Release workers, connections (called once the run is over)."""


class LocalExecutor(Executor):
    """Every step in this process, one after another (the default)."""

    name = "local"


def make(runner: Any) -> Executor:
    """The executor the spec's ``runner:`` section names, with its settings checked."""
    settings = runner.model_dump() if isinstance(runner, BaseModel) else dict(runner or {})
    kind = settings.get("type", "local")
    cls = LocalExecutor if kind == "local" else registry.executor_class(kind)
    if not (isinstance(cls, type) and issubclass(cls, Executor)):
        raise PluginError(
            f"executor '{kind}' ({cls!r}) is not an embedpipe Executor; it must subclass "
            "embedpipe.engine.executors.Executor"
        )
    try:
        return cls(cls.Config(**settings))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        valid = ", ".join(cls.Config.model_fields)
        raise UsageError(
            f"runner.{where}: {first['msg']}; the {kind} executor takes: {valid}"
        ) from None
