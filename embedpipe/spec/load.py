"""Load a spec: YAML with positions (bounded: see ``yamlpos``) → --set overrides → env
interpolation of what was not overridden → two-stage validation. Every problem is collected and
reported at once as ``file:line:col: message``."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from embedpipe import registry
from embedpipe.errors import SpecError, SpecIssue
from embedpipe.spec.models import PipelineSpec, is_store_uri
from embedpipe.spec.yamlpos import MAX_SPEC_BYTES, Path_, Positions, SpecLimit
from embedpipe.spec.yamlpos import load as load_yaml
from embedpipe.steps.base import Step, StepConfig

_ENV = re.compile(r"\$(\$)?\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
M = TypeVar("M", bound=BaseModel)
_STEP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class StepDef:
    name: str
    cls: type[Step]
    config: StepConfig


@dataclass(frozen=True)
class Spec:
    """A validated spec: everything later stages need, positions included."""

    path: Path
    spec: PipelineSpec
    steps: dict[str, StepDef]
    positions: Positions
    workspace: Path
    hash: str
    # Stage-two problems, kept so the DAG check can report its own problems alongside them;
    # ``invalid`` names the steps whose bodies failed.
    issues: tuple[SpecIssue, ...] = ()
    invalid: frozenset[str] = frozenset()
    # Where the Lance tables live: a resolved folder, an object-store URI, or None (the
    # workspace's lance/ folder); see spec.tables.
    tables: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def issue(self, path: Path_, message: str, *, key: bool = False) -> SpecIssue:
        return _issue(self.positions, path, message, key=key)


def _issue(pos: Positions, path: Path_, message: str, *, key: bool = False) -> SpecIssue:
    line, col = pos.locate(path, key=key)
    return SpecIssue(pos.file, line, col, message, pos.line_text(line))


def dotted(path: Path_) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def load(
    path: str | Path,
    *,
    overrides: list[str] | None = None,
    workspace: str | Path | None = None,
    partial: bool = False,
) -> Spec:
    """Load and validate ``path``; raise ``SpecError`` listing every problem.

    With ``partial``, problems inside step bodies are returned on the ``Spec`` (``issues``,
    ``invalid``) instead, so the DAG check can add its own and report them all together.
    """
    path = Path(path)
    shown = str(path)
    text = _read(path, shown)
    try:
        data, pos = load_yaml(text, shown)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        lines = text.splitlines()
        where = ""
        if exc.context and exc.context_mark and exc.context_mark is not mark:
            cm = exc.context_mark
            where = f" ({exc.context} at {cm.line + 1}:{cm.column + 1})"
        what = exc.problem if isinstance(exc, SpecLimit) else f"invalid YAML: {exc.problem or exc}"
        raise SpecError(
            [
                SpecIssue(
                    shown,
                    line,
                    col,
                    f"{what}{where}",
                    lines[line - 1] if 0 < line <= len(lines) else None,
                )
            ]
        ) from exc
    if not isinstance(data, dict):
        raise SpecError(
            [SpecIssue(shown, 1, 1, "a spec must be a YAML mapping with `name` and `steps`")]
        )
    issues: list[SpecIssue] = []
    # Overrides first, so --set (and --workspace) can supply what an unset ${VAR} would have;
    # what they set is taken literally.
    overridden = {p for item in overrides or [] if (p := _override(data, item, pos, issues))}
    if workspace:
        overridden.add(("workspace",))
    unset: list[SpecIssue] = []
    data = _interpolate(data, (), pos, unset, overridden)
    if unset:  # an unexpanded ${VAR} would only cause confusing follow-on errors
        raise SpecError(issues + unset)

    spec = _validate(PipelineSpec, data, (), pos, issues)
    if spec is None:
        raise SpecError(issues)
    steps: dict[str, StepDef] = {}
    for name, body in spec.steps.items():
        step = _validate_step(name, body, pos, issues)
        if step is not None:
            steps[name] = step
    if issues and not partial:
        raise SpecError(issues)

    base = path.resolve().parent
    ws = Path(workspace) if workspace else Path(spec.workspace or f"workspace/{spec.name}")
    ws = ws if ws.is_absolute() else (Path.cwd() if workspace else base) / ws
    canonical = {
        "name": spec.name,
        # Speed-only settings (batch size, device, query-time knobs) are left out: changing
        # one must not look like another pipeline.
        "steps": {
            n: {**s.config.identity(), "input": s.config.input} for n, s in sorted(steps.items())
        },
    }
    digest = hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:16]
    invalid = frozenset(spec.steps) - frozenset(steps)
    tables = spec.tables.uri
    if tables is not None and not is_store_uri(tables):  # a folder: relative to the spec
        tables = str((base / Path(tables).expanduser()).resolve())
    return Spec(
        path.resolve(),
        spec,
        steps,
        pos,
        ws.resolve(),
        digest,
        tuple(issues),
        invalid,
        tables=tables,
    )


def _read(path: Path, shown: str) -> str:
    """The spec's text, as ``Path.read_text`` reads it, but never more than the cap from disk."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
        if len(raw) <= MAX_SPEC_BYTES:
            return io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SpecError([SpecIssue(shown, 1, 1, f"cannot read spec: {reason}")]) from exc
    raise SpecError(
        [
            SpecIssue(
                shown,
                1,
                1,
                f"spec file is larger than {MAX_SPEC_BYTES // 1024} KiB ({MAX_SPEC_BYTES:,} "
                "bytes), the most a spec may be; a spec names its sources (files, directories "
                "or globs) rather than holding data",
            )
        ]
    )


def _validate_step(
    name: str, body: dict[str, Any], pos: Positions, issues: list[SpecIssue]
) -> StepDef | None:
    where: Path_ = ("steps", name)
    if not _STEP_NAME.match(name):
        issues.append(
            _issue(
                pos,
                where,
                f"steps.{name}: step names must start with a letter and "
                "use only letters, digits, _ and -",
                key=True,
            )
        )
        return None
    kind = body.get("type")
    types = registry.step_types()
    if kind is None:
        issues.append(
            _issue(
                pos,
                where,
                f"steps.{name}: missing `type`; valid types: {', '.join(sorted(types))}",
                key=True,
            )
        )
        return None
    if kind not in types:
        issues.append(
            _issue(
                pos,
                (*where, "type"),
                f"steps.{name}.type: unknown step type "
                f"'{kind}'{registry.suggest(str(kind), list(types), 'types')}",
            )
        )
        return None
    cls = types[kind]
    config = _validate(cls.Config, body, where, pos, issues)
    return StepDef(name, cls, config) if config is not None else None


def _validate(
    model: type[M], data: Any, prefix: Path_, pos: Positions, issues: list[SpecIssue]
) -> M | None:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        merged: dict[tuple[Path_, bool], list[str]] = {}
        for err in exc.errors():
            path, at_key, msg = _describe(err, data, model)
            merged.setdefault(((*prefix, *path), at_key), []).append(msg)
        for (path, at_key), msgs in merged.items():
            unique = list(dict.fromkeys(msgs))
            issues.append(_issue(pos, path, f"{dotted(path)}: {' or '.join(unique)}", key=at_key))
        return None


def _describe(err: Any, data: Any, model: type[BaseModel]) -> tuple[Path_, bool, str]:
    """Map a pydantic error to (path in the YAML, point at the key?, message)."""
    path: list[str | int] = []
    node = data
    loc = list(err["loc"])
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and part < len(node)
        ):
            path.append(part)
            node = node[part]
        elif last and err["type"] == "missing":
            path.append(part)
    kind = err["type"]
    if kind == "extra_forbidden":
        valid = list(_fields_at(model, path[:-1]))
        return tuple(path), True, f"unknown key{registry.suggest(str(path[-1]), valid, 'keys')}"
    if kind == "missing":
        return tuple(path), True, "required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    if kind == "string_pattern_mismatch" and path and path[-1] == "name":
        msg = "must start with a letter and use only letters, digits, _ and -"
    return tuple(path), False, msg[0].lower() + msg[1:] if msg else msg


def _fields_at(model: type[BaseModel], path: list[str | int]) -> dict[str, Any]:
    fields: dict[str, Any] = model.model_fields
    for part in path:
        info = fields.get(part) if isinstance(part, str) else None
        ann = info.annotation if info else None
        sub = _model_in(ann)
        if sub is None:
            return fields
        fields = sub.model_fields
    return fields


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found:
            return found
    return None


def _interpolate(
    node: Any, path: Path_, pos: Positions, issues: list[SpecIssue], keep: set[Path_]
) -> Any:
    """Expand ``${VAR}`` in every string but those at (or under) a path in ``keep``."""
    if path in keep:
        return node
    if isinstance(node, dict):
        return {k: _interpolate(v, (*path, k), pos, issues, keep) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, (*path, i), pos, issues, keep) for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node

    def sub(m: re.Match[str]) -> str:
        escaped, var, default = m.groups()
        if escaped:
            return m.group(0)[1:]  # $${X} is a literal ${X}
        value = os.environ.get(var)
        if value is None and default is None:
            issues.append(
                _issue(
                    pos,
                    path,
                    f"{dotted(path)}: environment variable {var} is not "
                    f"set; set it or write ${{{var}:-default}}",
                )
            )
            return m.group(0)
        return value if value is not None else default

    return _ENV.sub(sub, node)


def _override(
    data: dict[str, Any], item: str, pos: Positions, issues: list[SpecIssue]
) -> Path_ | None:
    """Apply one ``dotted.key=value``; the value is read as YAML (``64`` is an int). Returns
    the path it set, or None (with an issue) when it could not."""
    key, sep, raw = item.partition("=")
    parts = [p for p in key.strip().split(".")]
    if not sep or not all(parts):
        issues.append(
            SpecIssue(
                "--set",
                1,
                1,
                f"'{item}': expected dotted.key=value, e.g. steps.chunks.max_tokens=128",
            )
        )
        return None
    try:
        value = _parse_value(raw)
    except SpecLimit as exc:
        issues.append(SpecIssue("--set", 1, 1, f"--set {key}: {exc.problem}"))
        return None
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part) if isinstance(node, dict) else None
        if nxt is None and isinstance(node, dict):
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            issues.append(
                _issue(
                    pos,
                    tuple(parts[: i + 1]),
                    f"--set {key}: {'.'.join(parts[: i + 1])} is not a mapping",
                )
            )
            return None
        node = nxt
    node[parts[-1]] = value
    return tuple(parts)


def _parse_value(raw: str) -> Any:
    """``64`` → int, ``true`` → bool, ``[a, b]`` → list; anything else stays a string
    (so ``query: `` is the prompt text, not a one-key mapping). Raises ``SpecLimit`` on a value
    past the spec's bounds (an alias bomb, deep nesting), like a spec file."""
    try:
        load_yaml(raw, "--set")  # only for its bounds: the value is read as it always was
    except SpecLimit:
        raise
    except yaml.YAMLError:
        pass
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw
    if isinstance(value, dict | list) and not raw.lstrip().startswith(("{", "[")):
        return raw
    return value
