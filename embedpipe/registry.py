"""Step kinds and executors by their short names: the built-ins plus plugins.

A plugin package registers a step class through the ``embedpipe.steps`` entry-point group, and
an executor (``runner: {type: NAME}``) through ``embedpipe.executors``::

    [project.entry-points."embedpipe.steps"]
    my_step = "my_package.steps:MyStep"

    [project.entry-points."embedpipe.executors"]
    my_runner = "my_package.runner:MyExecutor"

Spec files never name import paths: only registered short names are accepted.
"""

from __future__ import annotations

import difflib
import functools
from importlib.metadata import entry_points
from typing import Any

from embedpipe.errors import PluginError
from embedpipe.steps.base import Step
from embedpipe.steps.chunk import Chunk
from embedpipe.steps.encode import Encode
from embedpipe.steps.index import Index
from embedpipe.steps.ingest import Ingest

BUILTINS: dict[str, type[Step]] = {cls.type: cls for cls in (Ingest, Chunk, Encode, Index)}
GROUP = "embedpipe.steps"


@functools.cache
def step_types() -> dict[str, type[Step]]:
    """Every registered step kind, built-ins first; a broken plugin is an error, not a skip."""
    found = dict(BUILTINS)
    for ep in entry_points(group=GROUP):
        if ep.name in BUILTINS:
            continue  # built-ins cannot be shadowed
        try:
            cls = ep.load()
        except Exception as exc:
            raise PluginError(
                f"step plugin '{ep.name}' ({ep.value}) failed to import: {exc}; reinstall "
                "or uninstall the package that registers it"
            ) from exc
        if not (isinstance(cls, type) and issubclass(cls, Step)):
            raise PluginError(
                f"step plugin '{ep.name}' ({ep.value}) is not an embedpipe Step; it must "
                "subclass embedpipe.steps.Step"
            )
        found[ep.name] = cls
    return found


def suggest(name: str, valid: list[str], what: str) -> str:
    """'; did you mean 'x'? Valid WHAT: a, b' (the hint only when a close match exists)."""
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ";"
    return f"{hint} valid {what}: {', '.join(sorted(valid))}"


def lookup(name: str) -> type[Step]:
    types = step_types()
    if name in types:
        return types[name]
    raise KeyError(f"unknown step type '{name}'{suggest(name, list(types), 'types')}")


EXECUTOR_GROUP = "embedpipe.executors"
# Executors registered in this process (a notebook, a test); entry points need no registering.
_EXECUTORS: dict[str, Any] = {}


def register_executor(name: str, cls: Any) -> None:
    """Make ``runner: {type: NAME}`` pick ``cls`` in this process."""
    _EXECUTORS[name] = cls


def executor_names() -> set[str]:
    """Every executor name a spec may use; loads no plugin (``pipe validate`` stays light)."""
    return {"local", *(ep.name for ep in entry_points(group=EXECUTOR_GROUP)), *_EXECUTORS}


def executor_class(name: str) -> Any:
    """The class registered as executor ``name`` (imported only now, when a run needs it)."""
    if name in _EXECUTORS:
        return _EXECUTORS[name]
    for ep in entry_points(group=EXECUTOR_GROUP):
        if ep.name == name:
            try:
                return ep.load()
            except Exception as exc:
                raise PluginError(
                    f"executor plugin '{name}' ({ep.value}) failed to import: {exc}; reinstall "
                    "or uninstall the package that registers it"
                ) from exc
    valid = sorted(executor_names())
    raise PluginError(f"unknown executor '{name}'{suggest(name, valid, 'executors')}")
