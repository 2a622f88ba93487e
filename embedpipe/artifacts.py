"""Fitted state kept in the workspace: codecs, adapters, exported models.

An artifact is a folder ``artifacts/<step>/<key>/v<N>/`` holding ``state.npz`` (named numpy
arrays), ``lineage.json`` (what it was fitted on and when) and any files of its own (an
exported model's). ``key`` is a digest of what
the state depends on (the step's config and the model that made its input): a config change
finds no artifact under its key and fits a new one; an incremental run finds the latest
version and reuses it, never re-fitting. ``pipe fit`` adds version N+1. Versions are written
to a temporary folder and renamed into place, so a crash never leaves half an artifact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from embedpipe.errors import ArtifactError


def key_of(blob: Any) -> str:
    """A short, stable digest of a JSON-able description of what an artifact depends on."""
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Artifact:
    """One fitted version: its arrays and lineage are read on demand."""

    step: str
    key: str
    version: int
    path: Path

    @property
    def id(self) -> str:
        """``<step>/<key>/v<N>``: what rows coded with it record as their lineage."""
        return f"{self.step}/{self.key}/v{self.version}"

    def arrays(self) -> dict[str, np.ndarray]:
        try:
            with np.load(self.path / "state.npz", allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise ArtifactError(
                f"artifact {self.path} is unreadable ({exc}); fit a new version with "
                f"`pipe fit SPEC --step {self.step}`, then run the pipeline"
            ) from None

    def lineage(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / "lineage.json").read_text())
        except (OSError, ValueError):
            return {}


class Artifacts:
    """The artifacts of one step in one workspace."""

    def __init__(self, workspace: Path, step: str) -> None:
        self.step = step
        self.root = Path(workspace) / "artifacts" / step

    def versions(self, key: str) -> list[Artifact]:
        folder = self.root / key
        found = []
        if folder.is_dir():
            for p in folder.iterdir():
                if p.name.startswith("v") and p.name[1:].isdigit() and (p / "state.npz").exists():
                    found.append(Artifact(self.step, key, int(p.name[1:]), p))
        return sorted(found, key=lambda a: a.version)

    def latest(self, key: str) -> Artifact | None:
        found = self.versions(key)
        return found[-1] if found else None

    def save(
        self,
        key: str,
        arrays: dict[str, np.ndarray],
        lineage: dict[str, Any],
        write: Callable[[Path], dict[str, Any]] | None = None,
    ) -> Artifact:
        """Write a new version under ``key`` (all or nothing) and return it. ``write`` puts
        files of its own in the version's folder (an exported model) and returns what to add to
        the lineage; when it raises, nothing is kept."""
        folder = self.root / key
        folder.mkdir(parents=True, exist_ok=True)
        latest = self.latest(key)
        version = (latest.version if latest else 0) + 1
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
        try:
            if write is not None:
                lineage = {**lineage, **write(tmp)}
                for path in tmp.rglob("*"):  # durable before the rename publishes them
                    if path.is_file():
                        with open(path, "rb") as f:
                            os.fsync(f.fileno())
            with open(tmp / "state.npz", "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            record = {
                "step": self.step,
                "key": key,
                "version": version,
                "fitted_at": datetime.now(UTC).isoformat(timespec="seconds"),
                **lineage,
            }
            with open(tmp / "lineage.json", "w") as f:
                f.write(json.dumps(record, indent=2, default=str) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, folder / f"v{version}")
            _fsync_dir(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Artifact(self.step, key, version, folder / f"v{version}")


def _fsync_dir(path: Path) -> None:
    """Make a rename into ``path`` durable (a power loss keeps it or the old state)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def all_artifacts(workspace: Path) -> list[Artifact]:
    """Every artifact version in a workspace, by step, key and version."""
    root = Path(workspace) / "artifacts"
    out: list[Artifact] = []
    if root.is_dir():
        for step in sorted(p.name for p in root.iterdir() if p.is_dir()):
            store = Artifacts(workspace, step)
            for key in sorted(p.name for p in store.root.iterdir() if p.is_dir()):
                out.extend(store.versions(key))
    with contextlib.suppress(Exception):
        out.sort(key=lambda a: (a.step, a.key, a.version))
    return out
