"""The contract every step kind implements, checked when the class is defined.

A step is one class: a pydantic ``Config`` (``extra="forbid"``), the Arrow schema it requires
from its input (``reads``), the schema it writes (``output_schema``), and ``run()``, a generator
over Arrow record batches. Constructing a step is cheap (``pipe validate`` builds every step);
models and handles load in ``setup()``, which the engine calls before ``run()``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from embedpipe.results import Event, Hit, Skipped

if TYPE_CHECKING:
    from embedpipe.artifacts import Artifacts

# A config field marked ``json_schema_extra=SPEED_ONLY`` changes how fast a step runs, never what
# it writes (batch size, device, ANN probes); one marked ``QUERY_TIME`` changes only how searches
# use the table (a query stage's weight). Both are left out of the cache fingerprint and the spec
# hash, so changing them re-computes nothing.
SPEED_ONLY = {"speed_only": True}
QUERY_TIME = {"query_time": True}
# A field added to a step after a release, marked ``json_schema_extra=ADDED``, stays out of the
# identity while it holds its default: caches and spec hashes made before it existed stay valid
# (nothing is re-computed on upgrade), and setting it re-computes as any change would.
ADDED = {"added": True}


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

    def identity(self) -> dict[str, Any]:
        """The config as JSON, without ``input`` and without speed-only fields: what decides
        the step's output (the cache fingerprint and the spec hash are made of it)."""
        return identity(self)


def decides_output(info: Any, query_time: bool = False) -> bool:
    """Whether a config field (pydantic ``FieldInfo``) can change what a step writes: not
    when it is marked speed-only or query-time (``query_time``: query-time fields count)."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    return not extra.get("speed_only") and (query_time or not extra.get("query_time"))


def identity(model: BaseModel, *, query_time: bool = False) -> dict[str, Any]:
    """``model`` dumped as JSON without its ``input`` and speed-only fields, nested ones too;
    query-time fields too unless ``query_time`` (what decides a search's scores: the state a
    filter fits on them depends on them)."""
    out: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        skip = name == "input" and isinstance(model, StepConfig)
        if skip or not decides_output(info, query_time):
            continue
        value = getattr(model, name)
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("added") and value == info.get_default(call_default_factory=True):
            continue
        if isinstance(value, BaseModel):
            out[name] = identity(value, query_time=query_time)
        else:
            out[name] = model.model_dump(mode="json", include={name})[name]
    return out


# -- what an index step declares (the Lance store builds its table from this alone) -------------
@dataclass(frozen=True)
class Ann:
    """An approximate-nearest-neighbour index on a vector column."""

    kind: str  # ivf_pq | ivf_hnsw_sq | ivf_flat (none: no entry at all)
    partitions: int | None = None  # None: about sqrt(rows)
    sub_vectors: int | None = None  # PQ only; None: the largest divisor of d up to d/8
    min_rows: int = 5000  # built once the table has this many rows
    # query time (speed only): partitions probed, re-rank k * refine_factor exactly
    nprobes: int = 20
    refine_factor: int | None = None
    # Rows changed since the index was trained, as a share of the table, past which a run
    # trains it again; below, the run's rows join it as a delta (speed only).
    rebuild: float = 0.2


@dataclass(frozen=True)
class VectorColumn:
    """A column searched by distance: its name, Arrow type, metric and ANN index."""

    name: str
    type: pa.DataType
    metric: str  # cosine | dot | l2 | hamming
    ann: Ann | None = None
    # A column naming, per row, the fitted state (artifact id) this column was made with: the
    # searcher reads it from the table and hands it to the query encoder and scorer.
    made_with: str | None = None


@dataclass(frozen=True)
class IndexTarget:
    """A table an index step writes. Rows are keyed by ``key``; ``lineage`` columns say which
    run wrote a row and do not make it a different row; every other column (vectors and
    pass-through ones alike) is part of the row's identity, hashed into ``row_hash``."""

    table: str
    key: str
    schema: pa.Schema  # the table's columns: the input's, then lineage and row_hash
    vectors: tuple[VectorColumn, ...]
    search: str  # the vector column candidates are found on
    rescore: str | None = None  # re-score a shortlist of k * shortlist on this column
    shortlist: int = 1
    retain: int | None = 10  # versions kept for rollback; None keeps all
    # Merge the table's small or deletion-heavy fragments once more than this many are
    # (right after the commit of a run that changed rows); None never does.
    compact: int | None = 16
    lineage: tuple[str, ...] = ("spec_hash", "run_id")
    row_hash: str = "row_hash"
    # Score ``search`` in process with the scorer of the step that made it (``Step.
    # query_scorer``), a float query against the stored codes, instead of the store's search.
    asymmetric: bool = False
    # Where exact search scores rows: "lance" (the store's flat scan), "memory" (the searched
    # column held in memory, scored in process) or "auto" (memory for Hamming codes).
    scan: str = "auto"

    def vector(self, name: str) -> VectorColumn:
        return next(v for v in self.vectors if v.name == name)

    @property
    def columns(self) -> tuple[str, ...]:
        """Pass-through columns: neither key, vector, lineage nor row hash."""
        own = {self.key, self.row_hash, *self.lineage, *(v.name for v in self.vectors)}
        return tuple(n for n in self.schema.names if n not in own)


class Store(Protocol):
    """What the engine lends a step for writing an index (steps never import LanceDB)."""

    def write(
        self, target: IndexTarget, batches: Callable[[], Iterator[pa.RecordBatch]]
    ) -> dict[str, int]: ...


# -- what a step contributes to search ------------------------------------------------------------
QueryEncoder = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class Scorer:
    """Scores stored values of a column for a query, computed in process rather than by the
    store: for columns the store cannot search (int8 codes) and for *asymmetric* search (a
    float query against binary codes, no float read). ``encode`` makes the query's form
    ``score`` takes; ``score(query, stored)`` gives one score per stored row (``stored`` has
    one row each), higher is better."""

    encode: QueryEncoder
    score: Callable[[np.ndarray, np.ndarray], np.ndarray]


class QueryStage(Protocol):
    """A query-time stage: takes each query's hits, best first, and returns them re-ordered,
    annotated (new keys on a hit) or cut. ``columns`` are table columns it reads from hits;
    it sees ``depth`` * k candidates per query (more, if it reorders or drops hits). A stage
    that judges relevance marks each hit ``relevance`` (float) and ``kept`` (bool): searches
    drop hits with ``kept: False`` unless asked for all, and `pipe eval` measures the marks
    (the stage then has a ``threshold`` attribute, the relevance it keeps from)."""

    name: str
    columns: tuple[str, ...]
    depth: int

    def __call__(self, queries: Sequence[str], hits: list[list[Hit]]) -> list[list[Hit]]: ...


@dataclass
class StepContext:
    """Everything a running step may use; built by the engine."""

    pipeline: str
    run_id: str
    spec_hash: str
    base_dir: Path
    workspace: Path
    store: Store | None = None
    target: IndexTarget | None = None  # the table this step writes, as it declared it
    # What the engine keeps in the workspace (tables, catalog, caches, staged outputs): never a
    # source's document, even with the workspace inside a source folder (``workspace: .``).
    owned: tuple[Path, ...] = ()
    # Skips recorded with ``skip()`` by a step's helpers, waiting to join its output stream.
    pending: list[Skipped] = field(default_factory=list)
    skip_count: int = 0  # skips recorded with ``skip()`` so far, drained or not

    def is_owned(self, path: Path) -> bool:
        """Whether ``path`` is (or is inside) something the engine keeps in the workspace."""
        if not self.owned:
            return False
        real = Path(os.path.realpath(path))  # never raises on a symlink loop, unlike resolve()
        return any(real == p or p in real.parents for p in self.owned)

    def skip(self, item: str, reason: str) -> None:
        """Refuse an input; the run goes on. Shorthand for yielding ``Skipped(item, reason)``
        from ``run()``, for helpers deep inside a step: the executor moves it into the step's
        output stream just before the step's next item (or at its end)."""
        self.pending.append(Skipped(item, reason))
        self.skip_count += 1

    @property
    def skipped(self) -> tuple[tuple[str, str], ...]:
        """Skips ``skip()`` recorded that the engine has not yet taken (all of them when a
        test runs a step directly); read-only: record one with ``skip()``."""
        return tuple((s.item, s.reason) for s in self.pending)

    def drain(self) -> list[Skipped]:
        """Take the skips ``skip()`` recorded (the engine calls this)."""
        out, self.pending = self.pending, []
        return out


@dataclass
class FitContext:
    """What `pipe fit` gives a trainable step (``Step.fit``)."""

    workspace: Path
    fit_id: str  # names this fit in artifacts' lineage
    # The step's input rows as the last run computed them (iterable again and again); None
    # when the step upstream keeps no cache to read them from.
    rows: Iterable[pa.RecordBatch] | None = None
    queries: dict[str, str] | None = None  # query id -> text (from --queries)
    qrels: dict[str, dict[str, int]] | None = None  # query id -> {doc id: relevance}
    # The pipeline's own search (queries, k) -> hits, for mining negatives; None without index.
    search: Callable[[list[str], int], list[list[Hit]]] | None = None


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
    # A column whose rows the step computes together (e.g. doc_id: a chunk's vector depends on
    # its document's other chunks): when one row of a group misses the cache, the engine sends
    # the whole group to the step again. None: rows are computed alone.
    cache_whole: str | None = None
    # Whether each output row depends on one input row only. Such a step implements ``map()``
    # over a window of rows, and an executor may run its windows anywhere, in any order.
    row_wise: ClassVar[bool] = False
    # Rows per window an executor asked for at most (set before ``windows()``); None: the
    # step's own ``window_rows()``. Windows still keep what the step keeps together.
    window_limit: int | None = None
    # Whether the step has fitted state that `pipe fit` (re)fits: then it implements ``fit()``.
    trainable: ClassVar[bool] = False

    def __init__(self, name: str, config: StepConfig, *, base_dir: Path) -> None:
        self.name = name
        self.config = config
        self.base_dir = base_dir
        self.upstream: list[Step] = []  # set by the DAG builder
        self.downstream: list[Step] = []
        # The pipeline's workspace, set by the DAG builder: where fitted artifacts live.
        self.workspace: Path | None = None
        self.spec_path: Path | None = None  # the spec file, set by the DAG builder (messages)

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

    def models(self) -> list[str]:
        """The models this step runs, as the spec names them (each run records them)."""
        return []

    def index_target(self, pipeline: str, inputs: list[Link]) -> IndexTarget | None:
        """The table this step writes through the store lent to it, if it writes one."""
        return None

    def query_encoder(self, column: str, state: str | None = None) -> QueryEncoder | None:
        """How queries become vectors comparable with ``column``, when this step made it.
        ``state``: for a column marked ``made_with``, the fitted state the table's rows name
        (the searcher passes it only for such columns)."""
        return None

    def query_scorer(self, column: str, state: str | None = None) -> Scorer | None:
        """How to score a query against ``column``'s stored values in process, when this step
        made the column and the store cannot (or should not) compare them itself."""
        return None

    def upstream_query_encoder(self, column: str) -> QueryEncoder | None:
        """The query encoder for ``column`` of the nearest step upstream that supplies one
        (for a step whose own vectors derive from an upstream column)."""
        for step in self.reachable("upstream"):
            encoder = step.query_encoder(column)
            if encoder is not None:
                return encoder
        return None

    def reachable(self, direction: Literal["upstream", "downstream"]) -> list[Step]:
        """Every step this one reads from (``upstream``) or that reads it (``downstream``),
        directly or not, nearest first."""
        seen: list[Step] = []
        frontier = list(getattr(self, direction))
        while frontier:
            step = frontier.pop(0)
            if step not in seen:
                seen.append(step)
                frontier.extend(getattr(step, direction))
        return seen

    def query_stages(self) -> list[QueryStage]:
        """Stages this step adds to every search of an index it feeds or reads, in DAG order."""
        return []

    def artifacts(self, workspace: Path | None = None) -> Artifacts:
        """Where this step keeps its fitted state (a codec, an adapter, an exported model):
        ``artifacts/<step>/`` of the pipeline's workspace, or of ``workspace``."""
        from embedpipe.artifacts import Artifacts
        from embedpipe.errors import ArtifactError

        root = workspace or self.workspace
        if root is None:
            raise ArtifactError(f"step '{self.name}' has no workspace to keep its artifacts in")
        return Artifacts(root, self.name)

    def fit(self, ctx: FitContext) -> dict[str, Any]:
        """Fit a new version of the step's state (a trainable step; `pipe fit`) and return
        what to report: at least ``artifact`` (its id); metrics where there are some."""
        raise NotImplementedError(f"{type(self).__name__} is not trainable")

    def preflight(self) -> list[tuple[tuple[str, ...], str]]:
        """Checks against the outside world (do the sources exist?), for validate and run only:
        searching an existing index must work even when its sources are gone."""
        return []

    # -- running ------------------------------------------------------------------------------
    def setup(self, ctx: StepContext) -> None:
        """Load models, open files: the heavy work construction must not do."""

    def run(self, inputs: list[Iterable[pa.RecordBatch]], ctx: StepContext) -> Iterator[Event]:
        """Stream output: record batches, plus ``Skipped`` inputs and ``Stats`` as they happen.
        Each input is an iterable of record batches; iterating it again starts from its first
        batch. A row-wise step need not override this: it maps windows of its one input."""
        if not self.row_wise:
            raise NotImplementedError(f"{type(self).__name__} must implement run() or map()")
        for window in self.windows(inputs[0]):
            yield from self.map(window, ctx)

    def windows(self, rows: Iterable[pa.RecordBatch]) -> Iterator[pa.Table | pa.RecordBatch]:
        """How a row-wise step's input is cut into ``map()`` calls (an executor may send each
        window to another worker); default: tables of ``rows_per_window()`` rows."""
        return rebatch(iter(rows), self.rows_per_window())

    def window_rows(self) -> int:
        """The step's own rows per ``map()`` call of a row-wise step (default ``windows()``)."""
        return 4096

    def rows_per_window(self) -> int:
        """Rows per window: the step's own ``window_rows()``, or fewer where the executor
        asked for at most ``window_limit`` (e.g. ``runner.batch_size``: smaller tasks)."""
        own = self.window_rows()
        return min(own, self.window_limit) if self.window_limit else own

    def map(self, rows: pa.Table | pa.RecordBatch, ctx: StepContext) -> Iterator[Event]:
        """A row-wise step's work on one window of input rows (see ``row_wise``)."""
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


def rebatch_documents(rows: Iterable[pa.RecordBatch], size: int) -> Iterator[pa.Table]:
    """Tables of about ``size`` rows that never split a document's run of rows (rows of a
    ``doc_id`` arrive together, as a chunk step writes them)."""
    pending: list[pa.Table] = []
    n = 0
    for batch in rows:
        if not batch.num_rows:
            continue
        pending.append(pa.Table.from_batches([batch]))
        n += batch.num_rows
        if n < size:
            continue
        table = pa.concat_tables(pending)
        docs = table.column("doc_id").to_numpy(zero_copy_only=False)
        starts = np.flatnonzero(docs[1:] != docs[:-1]) + 1  # where a new document begins
        cut = int(starts[-1]) if len(starts) else 0
        if cut == 0:  # one document so far: keep gathering
            pending, n = [table], table.num_rows
            continue
        yield table.slice(0, cut)
        rest = table.slice(cut)
        pending, n = [rest], rest.num_rows
    if n:
        yield pa.concat_tables(pending)
