"""YAML loading that keeps where every key and value came from.

``load`` returns plain Python data plus a ``Positions`` map from a key path such as
``("steps", "vectors", "batch_size")`` to its 1-based line and column, so any error found later
(by pydantic, the DAG check or at run time) can be reported as ``file:line:col``.

Parsing is bounded, so a small hostile file cannot hang or exhaust memory: a spec file holds at
most ``MAX_SPEC_BYTES``, builds at most ``MAX_VALUES`` keys and values (each use of an alias
counts everything it repeats, so a "billion laughs" stops early), and nests at most
``MAX_DEPTH`` levels. Crossing a bound raises ``SpecLimit`` at the node (or alias) that crossed it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Path_ = tuple[str | int, ...]

# Real specs are about 1 KiB, 50 keys and values, 4 levels deep. Measured with the pure-Python
# PyYAML parser used here, on a busy 2-core machine: a 128 KiB spec parses in 0.05-0.2 s whatever
# its shape (blank lines are the slowest per byte), and 5,000 values take about 0.15 s however
# they are written (5 MB used to take 10 s; 10,000 values at 256 KiB, 0.4 s).
MAX_SPEC_BYTES = 128 * 1024
MAX_VALUES = 5_000
MAX_DEPTH = 32


class SpecLimit(yaml.MarkedYAMLError):
    """The spec crosses one of the bounds above; ``problem`` says which and what is valid."""


@dataclass
class Positions:
    """Where each path's value (and, for mapping entries, its key) starts in the file."""

    file: str
    lines: list[str]
    values: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: Path_, *, key: bool = False) -> tuple[int, int]:
        """Position of ``path``, or of its nearest ancestor that exists in the file."""
        table = self.keys if key else self.values
        probe = tuple(path)
        while probe:
            if probe in table:
                return table[probe]
            if not key and probe in self.keys:
                return self.keys[probe]
            probe = probe[:-1]
        return self.values.get((), (1, 1))

    def line_text(self, line: int) -> str | None:
        return self.lines[line - 1] if 0 < line <= len(self.lines) else None


class _DuplicateKey(yaml.MarkedYAMLError):
    pass


@dataclass(frozen=True)
class _Alias:
    """A use of ``*name``: the anchored node it repeats, and where the alias is written."""

    node: yaml.Node
    anchor: str
    mark: yaml.Mark


def _too_many(mark: yaml.Mark | None, alias: _Alias | None) -> SpecLimit:
    why = (
        f"alias *{alias.anchor} here repeats so much that the spec passes {MAX_VALUES:,} "
        "keys and values (each use of an alias counts everything it repeats)"
        if alias
        else f"the spec passes {MAX_VALUES:,} keys and values here"
    )
    return SpecLimit(
        problem=f"spec too large: {why}; a spec may hold at most {MAX_VALUES:,} in all",
        problem_mark=alias.mark if alias else mark,
    )


def _too_deep(mark: yaml.Mark | None, alias: _Alias | None) -> SpecLimit:
    via = f" (through alias *{alias.anchor})" if alias else ""
    return SpecLimit(
        problem=f"spec nested too deeply: more than {MAX_DEPTH} levels of lists and mappings "
        f"here{via}; a spec may nest at most {MAX_DEPTH} levels",
        problem_mark=alias.mark if alias else mark,
    )


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, composing with bounds and keeping where each alias is used."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.depth = 0  # lists and mappings around the node being composed
        self.count = 0  # nodes composed (aliases not expanded: that is ``_Builder``'s count)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)  # raises on an undefined alias
            return _Alias(node, event.anchor, event.start_mark)
        mark = self.peek_event().start_mark
        self.count += 1
        if self.count > MAX_VALUES:
            raise _too_many(mark, None)
        if self.depth > MAX_DEPTH:
            raise _too_deep(mark, None)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _Builder:
    """Node graph → plain data and positions; aliases are expanded (copied) and counted."""

    def __init__(self, loader: _Loader, pos: Positions) -> None:
        self.loader = loader
        self.pos = pos
        self.count = 0
        self.alias: _Alias | None = None  # the outermost alias being expanded, if any
        self.open: set[int] = set()  # collections being built: a cycle runs into one of them

    def build(self, node: yaml.Node | _Alias, path: Path_) -> Any:
        if isinstance(node, _Alias):
            if id(node.node) in self.open:
                raise SpecLimit(
                    problem=f"alias *{node.anchor} is used inside the value it names, which "
                    "would repeat forever; an alias may only repeat a value defined before it",
                    problem_mark=node.mark,
                )
            if self.alias is not None:
                return self.build(node.node, path)
            self.alias = node
            try:
                return self.build(node.node, path)
            finally:
                self.alias = None
        self.count += 1
        if self.count > MAX_VALUES:
            raise _too_many(node.start_mark, self.alias)
        if len(path) > MAX_DEPTH:
            raise _too_deep(node.start_mark, self.alias)
        self.pos.values[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.ScalarNode):
            return self.loader.construct_object(node)
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        finally:
            self.open.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for key_item, value_node in node.value:
            key_node = key_item.node if isinstance(key_item, _Alias) else key_item
            at = key_item.mark if isinstance(key_item, _Alias) else key_node.start_mark
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise yaml.MarkedYAMLError(
                    problem="YAML merge keys (<<) are not supported in specs", problem_mark=at
                )
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.MarkedYAMLError(
                    problem="a mapping key must be a plain value (a name or a number), "
                    "not a list or a mapping",
                    problem_mark=at,
                )
            self.count += 1
            if self.count > MAX_VALUES:
                raise _too_many(at, self.alias)
            key = self.loader.construct_object(key_node)
            if key in out:
                raise _DuplicateKey(problem=f"duplicate key '{key}'", problem_mark=at)
            child = (*path, key)
            self.pos.keys[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = self.build(value_node, child)
        return out


def load(text: str, file: str) -> tuple[Any, Positions]:
    """Parse ``text``; raise ``yaml.MarkedYAMLError`` with a position on bad YAML, and its
    subclass ``SpecLimit`` on a spec past ``MAX_VALUES`` or ``MAX_DEPTH`` (``text`` is assumed
    already within ``MAX_SPEC_BYTES``)."""
    pos = Positions(file=file, lines=text.splitlines())
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, pos
        return _Builder(loader, pos).build(node, ()), pos
    except RecursionError:  # the bounds above should prevent it; never a traceback regardless
        raise SpecLimit(
            problem=f"spec nested too deeply to parse; a spec may nest at most {MAX_DEPTH} "
            "levels of lists and mappings"
        ) from None
    finally:
        loader.dispose()
