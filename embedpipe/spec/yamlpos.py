"""YAML loading that keeps where every key and value came from.

``load`` returns plain Python data plus a ``Positions`` map from a key path such as
``("steps", "vectors", "batch_size")`` to its 1-based line and column, so any error found later
(by pydantic, the DAG check or at run time) can be reported as ``file:line:col``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Path_ = tuple[str | int, ...]


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


def _build(node: yaml.Node, path: Path_, pos: Positions) -> Any:
    pos.values[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise yaml.MarkedYAMLError(
                    problem="YAML merge keys (<<) are not supported in specs",
                    problem_mark=key_node.start_mark,
                )
            key = yaml.SafeLoader.construct_object(_LOADER, key_node)
            if key in out:
                raise _DuplicateKey(
                    problem=f"duplicate key '{key}'", problem_mark=key_node.start_mark
                )
            child = (*path, key)
            pos.keys[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = _build(value_node, child, pos)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), pos) for i, item in enumerate(node.value)]
    return _LOADER.construct_object(node)


# A loader instance used only for constructing scalars (safe tags only).
_LOADER = yaml.SafeLoader("")


def load(text: str, file: str) -> tuple[Any, Positions]:
    """Parse ``text``; raise ``yaml.MarkedYAMLError`` with a position on bad YAML."""
    pos = Positions(file=file, lines=text.splitlines())
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is None:
        return None, pos
    return _build(node, (), pos), pos
