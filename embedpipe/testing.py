"""What a step plugin's tests are built on: a context factory, a fake store, ``run_step``, and
``StepContract``, the checks every step kind must pass (the built-in steps pass them too).

```python
from embedpipe.testing import StepContract, make_step, run_step

class TestMyStep(StepContract):
    step_type = "my_step"                    # registered through the embedpipe.steps group
    config = {"input": "vectors", "top": 4}

    def sample(self):                        # rows like those the step's input writes
        return pa.table({...})

def test_adds_a_column():
    out = run_step(make_step("my_step", {"input": "vectors"}), [sample_rows()])
    assert "my_column" in out.table.column_names
```
No LanceDB table, Prefect server or model is needed: ``FakeStore`` keeps what an index step
writes in memory, diffed by key and row hash as the Lance store does.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from embedpipe import registry
from embedpipe.engine.executors import LocalExecutor
from embedpipe.engine.lance import columns, compare, conform
from embedpipe.errors import NoRows
from embedpipe.results import Skipped, Stats
from embedpipe.schemas import mismatches
from embedpipe.steps.base import IndexTarget, Link, Step, StepContext, decides_output

__all__ = [
    "FakeStore",
    "StepContract",
    "StepOutput",
    "assert_same_rows",
    "make_context",
    "make_step",
    "run_step",
]


class FakeStore:
    """An in-memory stand-in for the Lance store: ``tables[name]`` holds what index steps
    wrote; ``write`` returns the same counts the real store does."""

    def __init__(self) -> None:
        self.tables: dict[str, pa.Table] = {}
        self.commits = 0

    def write(
        self, target: IndexTarget, batches: Callable[[], Iterator[pa.RecordBatch]]
    ) -> dict[str, int]:
        rows = [conform(b, target) for b in batches()]
        if not rows or not sum(b.num_rows for b in rows):
            raise NoRows(target.table)
        new = pa.Table.from_batches(rows)
        old = self.tables.get(target.table)
        if old is None:
            n = len(new)
            stats = {"computed": n, "new": n, "changed": 0, "deleted": 0}
        else:
            have = columns(old.to_batches(), [target.key, target.row_hash])
            come = columns(new.to_batches(), [target.key, target.row_hash])
            stats = compare(have, come, target.key, target.row_hash)
            for extra in ("incoming", "todo", "gone"):
                stats.pop(extra)
        changed = old is None or bool(stats["computed"] or stats["deleted"])
        if changed:
            self.tables[target.table] = new
            self.commits += 1
        out = {**stats, "rows_out": len(new), "cached": len(new) - stats["computed"]}
        return {**out, "commits": int(changed), **({"version": self.commits} if changed else {})}


def make_context(
    workspace: Path | None = None,
    *,
    pipeline: str = "test",
    store: Any = None,
    target: IndexTarget | None = None,
    base_dir: Path | None = None,
) -> StepContext:
    """A context like the one the engine builds, with a ``FakeStore`` unless given one."""
    root = workspace or Path(tempfile.mkdtemp(prefix="embedpipe-test-"))
    return StepContext(
        pipeline=pipeline,
        run_id="test-run",
        spec_hash="test-spec",
        base_dir=base_dir or root,
        workspace=root,
        store=store if store is not None else FakeStore(),
        target=target,
    )


def make_step(
    step_type: str, config: dict[str, Any], *, name: str = "step", base_dir: Path | None = None
) -> Step:
    """A step of a registered kind, its config validated as a spec's would be."""
    cls = registry.lookup(step_type)
    return cls(name, cls.Config(type=step_type, **config), base_dir=base_dir or Path.cwd())


@dataclass
class StepOutput:
    """Everything a step produced: its rows, the inputs it skipped, and the stats it reported."""

    batches: list[pa.RecordBatch]
    skipped: list[Skipped] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def table(self) -> pa.Table:
        if not self.batches:
            return pa.table({})
        return pa.Table.from_batches(self.batches)


def run_step(
    step: Step,
    inputs: list[pa.Table | Iterable[pa.RecordBatch]],
    ctx: StepContext | None = None,
    *,
    upstream: list[pa.Schema] | None = None,
) -> StepOutput:
    """Run ``step`` as the local executor does (``setup``, then ``run`` or ``map`` over its
    windows), and collect its events. An index step gets its declared target from the
    ``upstream`` schemas (default: the inputs' own)."""
    ctx = ctx or make_context()
    tables = [t if isinstance(t, pa.Table) else pa.Table.from_batches(list(t)) for t in inputs]
    if ctx.target is None:
        schemas = upstream or [t.schema for t in tables]
        links = [Link(f"in{i}", s) for i, s in enumerate(schemas)]
        ctx.target = step.index_target(ctx.pipeline, links)
    step.setup(ctx)
    out = StepOutput([])
    feeds = [_Replayable(t) for t in tables]
    for event in LocalExecutor(LocalExecutor.Config()).run(step, feeds, ctx):  # type: ignore[arg-type]
        if isinstance(event, Skipped):
            out.skipped.append(event)
        elif isinstance(event, Stats):
            out.stats.update(event.values)
        elif isinstance(event, pa.Table):
            out.batches.extend(event.to_batches())
        else:
            out.batches.append(event)
    return out


class _Replayable:
    """An input a step may iterate more than once, as the engine's staged files are."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        return iter(self.table.to_batches(max_chunksize=1000))


class StepContract:
    """Checks every step kind must pass; subclass it in a plugin's tests (pytest collects the
    ``test_*`` methods). Set ``step_type`` and ``config``; return input rows from ``sample()``
    (a source step returns None and needs a ``config`` that reads something)."""

    step_type: ClassVar[str]
    config: ClassVar[dict[str, Any]] = {}
    upstream: ClassVar[str] = "input"  # the upstream step's name in ``config['input']``
    volatile: ClassVar[tuple[str, ...]] = ()  # output columns that may differ run to run (times)
    # How far a float output may move with what shares its batch: padding changes an fp32
    # model's output by ~1e-6, a bf16 one's by ~1e-3 (cosine 0.99999).
    tolerance: ClassVar[float] = 1e-5

    def sample(self) -> pa.Table | None:
        return None

    def make(self, **changes: Any) -> Step:
        config = copy.deepcopy(self.config)
        for key, value in changes.items():
            config[key] = value
        return make_step(self.step_type, config, name=f"{self.step_type}_under_test")

    def _links(self) -> list[Link]:
        rows = self.sample()
        return [] if rows is None else [Link(self.upstream, rows.schema)]

    def _run(self, step: Step | None = None) -> StepOutput:
        rows = self.sample()
        return run_step(step or self.make(), [] if rows is None else [rows])

    # -- the contract ----------------------------------------------------------------------
    def test_registered(self) -> None:
        """The kind is found by its short name, through the entry-point group."""
        assert registry.lookup(self.step_type).type == self.step_type

    def test_config_forbids_unknown_keys(self) -> None:
        import pydantic

        cls = registry.lookup(self.step_type)
        try:
            cls.Config(type=self.step_type, **self.config, no_such_key_xyz=1)
        except pydantic.ValidationError as exc:
            assert "no_such_key_xyz" in str(exc)
        else:
            raise AssertionError(f"{cls.__name__}.Config accepted an unknown key")

    def test_documented(self) -> None:
        """The class docstring shows a YAML example (it is what `pipe schema` shows)."""
        doc = registry.lookup(self.step_type).__doc__ or ""
        assert "```yaml" in doc and f"type: {self.step_type}" in doc

    def test_reads_what_it_requires(self) -> None:
        """The sample input satisfies the step's declared requirement."""
        rows, required = self.sample(), self.make().requires()
        if rows is not None and required is not None:
            assert not mismatches(rows.schema, required), mismatches(rows.schema, required)

    def test_writes_its_declared_schema(self) -> None:
        """Every output row has the columns, with the types, ``output_schema`` declares."""
        step = self.make()
        declared = step.output_schema(self._links())
        out = self._run(step)
        for batch in out.batches:
            problems = mismatches(batch.schema, declared)
            assert not problems, f"output does not match output_schema(): {problems}"

    def test_deterministic(self) -> None:
        """The same input and config give the same rows (caches rely on it)."""
        first, second = self._run(), self._run()
        keep = [c for c in first.table.column_names if c not in self.volatile]
        assert first.table.select(keep).equals(second.table.select(keep))

    def test_row_wise_windows_are_independent(self) -> None:
        """A row-wise step gives the same rows whether its input comes whole or row by row,
        so an executor may split it anywhere."""
        step = self.make()
        rows = self.sample()
        if not step.row_wise or rows is None or len(rows) < 2:
            return
        whole = run_step(step, [rows]).table
        ctx = make_context()
        step.setup(ctx)
        parts = [b for i in range(len(rows)) for b in _batches(step.map(rows.slice(i, 1), ctx))]
        got = pa.Table.from_batches(parts, schema=whole.schema)
        assert_same_rows(got, whole, atol=self.tolerance)

    def test_speed_only_settings_change_no_identity(self) -> None:
        """Fields marked speed-only are out of the config identity (cache key, spec hash)."""
        step = self.make()
        identity = step.config.identity()
        for name, info in type(step.config).model_fields.items():
            if not decides_output(info):
                assert name not in identity

    def test_index_target_matches_output(self) -> None:
        """A step that writes a table declares columns that exist in what it writes."""
        step = self.make()
        target = step.index_target("test", self._links())
        if target is None:
            return
        names = set(target.schema.names)
        assert target.key in names and target.search in names
        assert all(v.name in names for v in target.vectors)
        vectors = {v.name for v in target.vectors}
        assert target.search in vectors, f"search column {target.search} is not a vector"
        assert target.rescore is None or target.rescore in vectors


def assert_same_rows(got: pa.Table, want: pa.Table, *, atol: float = 1e-5) -> None:
    """Equal tables, float vectors within ``atol`` (a model's output depends slightly on what
    else shares its batch: padding)."""
    assert got.column_names == want.column_names and len(got) == len(want)
    for name in want.column_names:
        a, b = got.column(name).combine_chunks(), want.column(name).combine_chunks()
        t = b.type
        if pa.types.is_fixed_size_list(t) and pa.types.is_floating(t.value_type):
            x = a.flatten().to_numpy(zero_copy_only=False)
            y = b.flatten().to_numpy(zero_copy_only=False)
            assert np.allclose(x, y, atol=atol), f"column {name}: vectors differ"
        else:
            assert a.equals(b), f"column {name} differs"


def _batches(events: Iterable[Any]) -> Iterator[pa.RecordBatch]:
    for event in events:
        if isinstance(event, pa.RecordBatch):
            yield event
        elif isinstance(event, pa.Table):
            yield from event.to_batches()
