"""The contract every step kind implements, checked when the class is defined.

A step is one class: a pydantic ``Config`` (``extra="forbid"``), the Arrow schema it requires
from its input (``reads``), the schema it writes (``output_schema``), and ``run()``, a generator
over Arrow record batches. Constructing a step is cheap (``pipe validate`` builds every step);
models and handles load in ``setup()``, which the engine calls before ``run()``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field


class StepConfig(BaseModel):
    """Keys every step accepts; each step kind adds its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(description="The step kind, e.g. ingest, chunk, encode, index.")
    input: str | list[str] | None = Field(
        default=None, description="The step (or steps) whose output this step reads."
    )

    def inputs(self) -> list[str]:
        if self.input is None:
            return []
        return [self.input] if isinstance(self.input, str) else list(self.input)


class Store(Protocol):
    """What the engine lends a step for writing an index (steps never import LanceDB)."""

    def write(
        self, table: str, batches: Callable[[], Iterator[pa.RecordBatch]], step: Step
    ) -> dict[str, int]: ...


@dataclass
class StepContext:
    """Everything a running step may use; built by the engine."""

    pipeline: str
    run_id: str
    spec_hash: str
    base_dir: Path
    workspace: Path
    store: Store | None = None
    # What the engine keeps in the workspace (tables, catalog, caches, staged outputs): never a
    # source's document, even with the workspace inside a source folder (``workspace: .``).
    owned: tuple[Path, ...] = ()
    skipped: list[tuple[str, str]] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)

    def is_owned(self, path: Path) -> bool:
        """Whether ``path`` is (or is inside) something the engine keeps in the workspace."""
        if not self.owned:
            return False
        real = Path(os.path.realpath(path))  # never raises on a symlink loop, unlike resolve()
        return any(real == p or p in real.parents for p in self.owned)

    def skip(self, item: str, reason: str) -> None:
        """Record an input refused by this step; the run goes on."""
        self.skipped.append((item, reason))


@dataclass(frozen=True)
class Link:
    """Where a step reads from: the upstream step's name and the schema it writes."""

    step: str
    schema: pa.Schema


class Step:
    """Base class of every step kind. Subclasses set ``type``, ``Config`` and ``reads``."""

    type: ClassVar[str]
    Config: ClassVar[type[StepConfig]]
    reads: ClassVar[pa.Schema | None] = None  # None: a source step, no input
    max_inputs: ClassVar[int] = 1
    version: ClassVar[int] = 1  # bump when output for the same input and config changes
    progress: ClassVar[str] = "input"  # what a progress bar counts: "input" or "output" rows
    # Whether `pipe plan` runs this step on rows its cache lacks, to count exactly what follows.
    # False for steps too costly to run just to count (encode): a plan estimates their work and
    # passes those rows on with the step's own output columns null.
    plan_runs: ClassVar[bool] = True
    # Columns, present in both input and output rows, that determine a row's output: the
    # engine caches outputs by them and re-runs the step only on rows it has not seen.
    cache_key: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, config: StepConfig, *, base_dir: Path) -> None:
        self.name = name
        self.config = config
        self.base_dir = base_dir
        self.upstream: list[Step] = []  # set by the DAG builder
        self.downstream: list[Step] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("abstract", False):
            return
        missing = [a for a in ("type", "Config") if not hasattr(cls, a)]
        if missing:
            raise TypeError(f"step class {cls.__name__} must define {', '.join(missing)}")
        if not issubclass(cls.Config, StepConfig):
            raise TypeError(f"{cls.__name__}.Config must subclass embedpipe.steps.StepConfig")
        if cls.Config.model_config.get("extra") != "forbid":
            raise TypeError(f"{cls.__name__}.Config must forbid extra keys")
        if not (cls.__doc__ or "").strip():
            raise TypeError(f"step class {cls.__name__} needs a docstring with a YAML example")

    # -- the DAG check ------------------------------------------------------------------------
    def requires(self) -> pa.Schema | None:
        """Columns (and types) this step needs from its input; None for source steps."""
        return self.reads

    def output_schema(self, inputs: list[Link]) -> pa.Schema:
        """The schema this step writes, given what its inputs write."""
        raise NotImplementedError

    def check(self, inputs: list[Link]) -> list[tuple[tuple[str, ...], str]]:
        """Extra checks beyond column types: ``[(config key path, message)]``."""
        return []

    def fingerprint(self) -> dict[str, str]:
        """What else, beyond the config and ``version``, decides the output (model revisions)."""
        return {}

    def preflight(self) -> list[tuple[tuple[str, ...], str]]:
        """Checks against the outside world (do the sources exist?), for validate and run only:
        searching an existing index must work even when its sources are gone."""
        return []

    # -- running ------------------------------------------------------------------------------
    def setup(self, ctx: StepContext) -> None:
        """Load models, open files: the heavy work construction must not do."""

    def run(
        self, inputs: list[Iterable[pa.RecordBatch]], ctx: StepContext
    ) -> Iterator[pa.RecordBatch]:
        """Stream output batches. Each input is an iterable of record batches; iterating it
        again starts again from its first batch."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def rebatch(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """Regroup a stream of record batches into tables of about ``rows`` rows."""
    pending: list[pa.RecordBatch] = []
    n = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        n += batch.num_rows
        if n >= rows:
            table = pa.Table.from_batches(pending)
            for start in range(0, table.num_rows - rows + 1, rows):
                yield table.slice(start, rows)
            rest = table.num_rows % rows
            pending = table.slice(table.num_rows - rest).to_batches() if rest else []
            n = rest
    if n:
        yield pa.Table.from_batches(pending)
