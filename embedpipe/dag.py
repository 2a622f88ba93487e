"""The typed DAG: steps built from a spec, linked by their inputs, checked in one pass.

``build`` finds every unknown input, cycle and schema mismatch (vector dimensions included)
and raises one ``SpecError`` listing them all, each at the YAML line that caused it.
"""

from __future__ import annotations

import graphlib
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from embedpipe import registry
from embedpipe.errors import NoIndex, SpecError, SpecIssue, UsageError
from embedpipe.schemas import CATALOG_VIEWS, SQL_RESERVED, kind, mismatches
from embedpipe.spec import Spec
from embedpipe.spec import load as spec_load
from embedpipe.spec.load import dotted
from embedpipe.steps.base import IndexTarget, Link, Step


@dataclass
class Dag:
    spec: Spec
    steps: dict[str, Step]
    order: list[str]  # topological: every step after its inputs
    schemas: dict[str, pa.Schema]  # what each step writes
    # The tables steps write, by step, in DAG order: resolved once, here, for every command.
    targets: dict[str, IndexTarget] = field(default_factory=dict)

    def links(self, name: str) -> list[Link]:
        return [Link(u, self.schemas[u]) for u in self.steps[name].config.inputs()]

    def of_type(self, kind: str) -> list[Step]:
        """Steps of one kind, in DAG order (for scripts; the engine never asks by kind)."""
        return [self.steps[n] for n in self.order if self.steps[n].type == kind]

    @property
    def default_index(self) -> str | None:
        """The step whose table every command uses when none is named (``--step``): the last
        step in the spec file that writes a table."""
        return next((n for n in reversed(self.spec.steps) if n in self.targets), None)

    def index(self, step: str | None = None) -> tuple[str, IndexTarget]:
        """An index step by name (``--step``), or the default one, with its table."""
        if step is None:
            step = self.default_index
            if step is None:
                raise NoIndex(
                    f"pipeline '{self.spec.name}' has no index step (no step writes a table); "
                    "add one, e.g. `index: {type: index, input: vectors}`"
                )
        elif step not in self.targets:
            raise UsageError(
                f"--step {step}: not an index step of '{self.spec.name}'; "
                f"index steps: {', '.join(self.targets) or 'none'}"
            )
        return step, self.targets[step]

    def tables(self) -> list[str]:
        return [t.table for t in self.targets.values()]

    def descendants(self, name: str) -> list[Step]:
        """Every step that reads ``name``'s output, directly or not, nearest first."""
        return self.steps[name].reachable("downstream")

    def ancestors(self, name: str) -> list[Step]:
        """Every step ``name`` reads from, directly or not, nearest first."""
        return self.steps[name].reachable("upstream")


def load(
    path: str | Path,
    *,
    overrides: list[str] | None = None,
    workspace: str | Path | None = None,
    preflight: bool = False,
) -> Dag:
    """Load a spec and build its DAG, reporting every problem of both at once."""
    return build(
        spec_load(path, overrides=overrides, workspace=workspace, partial=True), preflight=preflight
    )


def build(spec: Spec, *, preflight: bool = False) -> Dag:
    """Build and check the DAG; ``preflight`` also checks the outside world (sources exist)."""
    issues: list[SpecIssue] = list(spec.issues)
    steps = {n: d.cls(n, d.config, base_dir=spec.base_dir) for n, d in spec.steps.items()}
    for step in steps.values():
        step.workspace, step.spec_path = spec.workspace, spec.path
    graph: dict[str, list[str]] = {}
    for name, step in steps.items():
        graph[name] = _check_inputs(spec, name, step, steps, issues)
    if spec.invalid:  # their bodies are already reported; check only what does not touch them
        broken = set(spec.invalid)
        while grown := {n for n, ups in graph.items() if n not in broken and set(ups) & broken}:
            broken |= grown  # everything downstream of a broken step, transitively
        graph = {n: ups for n, ups in graph.items() if n not in broken}
        steps = {n: s for n, s in steps.items() if n in graph}
    for name, ups in graph.items():
        steps[name].upstream = [steps[u] for u in ups]
        for u in ups:
            steps[u].downstream.append(steps[name])

    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        cycle: list[str] = exc.args[1]
        issues.append(
            spec.issue(
                ("steps", cycle[0], "input"),
                f"steps.{cycle[0]}.input: cycle {' → '.join(reversed(cycle))}; "
                "steps must not read their own output, directly or not",
            )
        )
        raise SpecError(issues) from None

    written: dict[str, pa.Schema] = {}
    targets: dict[str, IndexTarget] = {}
    for name in order:
        step = steps[name]
        links = [Link(u, written[u]) for u in graph[name] if u in written]
        required = step.requires()
        for i, link in enumerate(links):
            where = _input_path(step, name, i)
            problem = _mismatch(link, steps[link.step], step, required)
            if problem:
                issues.append(spec.issue(where, f"steps.{name}.input: {problem}"))
        for path, message in step.check(links) + (step.preflight() if preflight else []):
            full = ("steps", name, *path)
            issues.append(spec.issue(full, f"{dotted(full)}: {message}"))
        written[name] = step.output_schema(links)
        target = step.index_target(spec.name, links)
        if target is not None:
            targets[name] = target
    _check_tables(spec, steps, targets, issues)
    _check_stages(spec, steps, targets, written, issues)
    if preflight:
        _check_runner(spec, issues)
    if issues:
        raise SpecError(issues)
    return Dag(spec, steps, order, written, targets)


def _check_runner(spec: Spec, issues: list[SpecIssue]) -> None:
    """The executor can run here (e.g. the package it needs is installed): checked with the
    outside world, so that a spec made for a cluster still loads for search and SQL."""
    kind = spec.spec.runner.type
    if kind == "local":
        return
    try:
        problem = getattr(registry.executor_class(kind), "unavailable", lambda: None)()
    except Exception as exc:  # a plugin that fails to import
        problem = str(exc)
    if problem:
        issues.append(spec.issue(("runner", "type"), f"runner.type: {problem}"))


def _check_tables(
    spec: Spec, steps: dict[str, Step], targets: dict[str, IndexTarget], issues: list[SpecIssue]
) -> None:
    """Every table a step writes becomes a view of the same name in `pipe sql`, beside the
    catalog's views: it must not hide one of them, be a word SQL reserves, or be another step's.

    A step's config key ``table`` names its table, or else the pipeline's ``name`` does, and the
    problem is reported at whichever one it was."""
    owner: dict[str, str] = {}
    for name in sorted(targets, key=list(steps).index):  # in the spec's order
        step, table = steps[name], targets[name].table
        own = getattr(step.config, "table", None) is not None
        where: tuple[str, ...] = ("steps", name, "table") if own else ("name",)
        came = "" if own else f"step '{name}' ({step.type}) takes its table name from `name`: "
        low = table.lower()
        if low in CATALOG_VIEWS:
            why = (
                f"'{table}' is the name of a run catalog view in `pipe sql` "
                f"({', '.join(CATALOG_VIEWS)}), which a table of that name would hide"
            )
        elif low in SQL_RESERVED:
            why = (
                f"'{table}' is a reserved word in DuckDB SQL, so `pipe sql` could not name the "
                f"table as written (`select * from {table}` is a syntax error)"
            )
        elif low in owner:
            why = (
                f"table '{table}' is already written by step '{owner[low]}' (`pipe sql` "
                "compares table names case-insensitively); each step needs a table of its own"
            )
        else:
            owner[low] = name
            continue
        on = "" if own else f" on step '{name}'"
        eg = "" if low in owner else f", e.g. {table}_index"
        fix = f"set `table:`{on} to another name{eg}"
        issues.append(spec.issue(where, f"{dotted(where)}: {came}{why}; {fix}"))


def _check_stages(
    spec: Spec,
    steps: dict[str, Step],
    targets: dict[str, IndexTarget],
    written: dict[str, pa.Schema],
    issues: list[SpecIssue],
) -> None:
    """Every column a query stage reads from hits must be in the table it searches: a stage of
    a step upstream or downstream of an index step reads that step's table."""
    served: set[str] = set()
    for name in targets:
        kept = set(written[name].names)
        related = [steps[name], *steps[name].reachable("upstream")]
        related += steps[name].reachable("downstream")
        served |= {s.name for s in related}
        for step in related:
            for stage in step.query_stages():
                for column in [c for c in stage.columns if c not in kept]:
                    where = ("steps", name)
                    issues.append(spec.issue(where, (
                        f"{dotted(where)}: query stage '{stage.name}' of step '{step.name}' "
                        f"reads column '{column}' from the hits, but the table step '{name}' "
                        f"writes does not keep it (it keeps: {', '.join(sorted(kept))}); keep "
                        f"'{column}' in the table or drop the stage")))  # fmt: skip
    for name, step in steps.items():
        if name not in served and step.query_stages():
            where = ("steps", name, "input")
            issues.append(spec.issue(where, (
                f"{dotted(where)}: step '{name}' ({step.type}) acts on searches, but no index "
                "step reads from it or feeds it, so it would never apply; give it an index "
                "step as input (or put it upstream of one)")))  # fmt: skip


def _mismatch(link: Link, upstream: Step, step: Step, required: pa.Schema | None) -> str | None:
    problems = mismatches(link.schema, required) if required is not None else []
    if not problems:
        return None
    return (
        f"step '{link.step}' ({upstream.type}) writes {kind(link.schema)}, which {step.type} "
        f"cannot read: {'; '.join(problems)}"
    )


def _input_path(step: Step, name: str, i: int) -> tuple[str | int, ...]:
    return ("steps", name, "input") + ((i,) if isinstance(step.config.input, list) else ())


def _check_inputs(
    spec: Spec, name: str, step: Step, steps: dict[str, Step], issues: list[SpecIssue]
) -> list[str]:
    ins = step.config.inputs()
    where = ("steps", name)
    if step.max_inputs == 0:
        if ins:
            issues.append(
                spec.issue(
                    (*where, "input"),
                    f"steps.{name}.input: {step.type} steps read no input; remove `input`",
                )
            )
        return []
    if not ins:
        valid = ", ".join(n for n in steps if n != name)
        issues.append(
            spec.issue(
                where,
                f"steps.{name}: missing `input`; name the step it reads from, one of: {valid}",
                key=True,
            )
        )
        return []
    if len(ins) > step.max_inputs:
        issues.append(
            spec.issue(
                (*where, "input"),
                f"steps.{name}.input: {step.type} steps "
                f"read at most {step.max_inputs} input(s), got {len(ins)}",
            )
        )
    good = []
    for i, up in enumerate(ins):
        if up in spec.invalid:
            good.append(up)
            continue
        if up in steps and up != name:
            good.append(up)
            continue
        valid = [n for n in list(steps) + sorted(spec.invalid) if n != name]
        why = (
            "a step cannot read its own output"
            if up == name
            else (f"unknown step '{up}'{registry.suggest(up, valid, 'steps')}")
        )
        issues.append(spec.issue(_input_path(step, name, i), f"steps.{name}.input: {why}"))
    return good
