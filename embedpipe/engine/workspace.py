"""A pipeline's workspace on disk: its layout, the run lock, and staging folders.

<workspace>/lance/<table>.lance     LanceDB tables (every run is a new table version)
<workspace>/catalog.duckdb          runs, step runs, skipped inputs
<workspace>/staging/<run_id>/       step outputs of a run in progress (Arrow IPC)
<workspace>/.lock                   held by the run in progress

The spec's ``tables: {uri}`` may put the tables elsewhere: another folder (one every node of a
cluster mounts) or an object store (``s3://``, ``gs://``, ``az://``), reached through Lance's
own object-store layer with the spec's ``storage_options``. Everything else stays local.

The tool owns only what it created: a run's staging folder carries a marker file, and only
folders with it are ever removed, so a workspace shared with other files (``workspace: .``
beside the sources) loses nothing of theirs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lance
import lancedb
import pyarrow as pa

from embedpipe.errors import IndexDamaged, WorkspaceBusy, WorkspaceNotWritable
from embedpipe.spec.models import is_store_uri

if TYPE_CHECKING:
    from embedpipe.spec.load import Spec

SERVER_PID = ".prefect-server.pid"  # see orchestrator.stop_orphaned_server
STAGING_MARKER = ".embedpipe-run"  # in each run's staging folder: this folder is ours
_RUN_ID = re.compile(r"^\d{8}T\d{6}-[0-9a-f]{6}$")  # catalog.new_run_id, for older folders
# errno values that mean "this cannot be written", whoever runs the command.
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)
# Whole-column reads of a table or step cache (keys, hashes): read-ahead kept to a few batches
# in order. Lance's defaults let a scan queue decoded data up to gigabytes, so that memory
# grew with the number of fragments, i.e. with the corpus.
LEAN_SCAN: dict[str, Any] = {
    "batch_readahead": 2,
    "fragment_readahead": 1,
    "io_buffer_size": 32 << 20,
    "scan_in_order": True,
}


class Workspace:
    def __init__(
        self,
        root: Path,
        spec: Path | str | None = None,
        *,
        tables: str | None = None,
        storage_options: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.spec = spec or "SPEC"  # named in the recovery commands errors print
        self.store_uri = tables if is_store_uri(tables) else None
        self._tables = Path(tables) if tables is not None and self.store_uri is None else None
        self.storage_options = dict(storage_options or {})

    @classmethod
    def of(cls, spec: Spec) -> Workspace:
        """The workspace a loaded spec names, with where its tables live."""
        options = spec.spec.tables.storage_options
        return cls(spec.workspace, spec.path, tables=spec.tables, storage_options=options)

    @property
    def lance_dir(self) -> Path:
        """The folder of the tables (not for an object store: see ``table_uri``)."""
        assert self.store_uri is None, "the tables live in an object store"
        return self._tables or self.root / "lance"

    def table_uri(self, table: str) -> str:
        """The table's dataset, as Lance opens it: a path or an object-store URI."""
        return str(self.table_path(table))

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.duckdb"

    def staging(self, run_id: str) -> Path:
        return self.root / "staging" / run_id

    def table_exists(self, table: str) -> bool:
        """A committed table: its folder holds at least one version manifest. A folder without
        one is what a first write killed before its commit leaves behind."""
        if self.store_uri is not None:
            return self._stored(table)
        versions = self.lance_dir / f"{table}.lance" / "_versions"
        return versions.is_dir() and any(versions.iterdir())

    def _stored(self, table: str) -> bool:
        """A committed table in the object store: Lance finds a version of it. Any other
        failure (credentials, network) is raised, not taken for 'no table'."""
        try:
            lance.dataset(self.table_uri(table), storage_options=self.storage_options or None)
        except ValueError as exc:
            if "was not found" in str(exc):
                return False
            raise
        return True

    def table_path(self, table: str) -> Path | str:
        """The table's folder, or its URI in an object store (named in messages)."""
        if self.store_uri is not None:
            return f"{self.store_uri.rstrip('/')}/{table}.lance"
        return self.lance_dir / f"{table}.lance"

    @contextlib.contextmanager
    def reading(self, table: str) -> Iterator[None]:
        """Turn Lance's errors about missing or corrupt files of ``table`` into IndexDamaged."""
        try:
            yield
        except Exception as exc:
            hurt = damaged(exc, table, self.table_path(table), self.spec)
            if hurt is None:
                raise
            raise hurt from exc

    def tables(self) -> list[str]:
        if self.store_uri is not None:
            names, token = [], None
            while True:
                page = self.connect().list_tables(page_token=token)
                names += page.tables
                token = page.page_token
                if not token:
                    break
            return sorted(n for n in names if self.table_exists(n))
        if not self.lance_dir.is_dir():
            return []
        return sorted(p.stem for p in self.lance_dir.glob("*.lance") if self.table_exists(p.stem))

    def remove_uncommitted_tables(self) -> list[str]:
        """Delete table folders with no committed version (called under the lock). In an
        object store they are left: no version names their files, and the next first write
        of the table commits over them."""
        if self.store_uri is not None or not self.lance_dir.is_dir():
            return []
        gone = [p for p in self.lance_dir.glob("*.lance") if not self.table_exists(p.stem)]
        for path in gone:
            shutil.rmtree(path, ignore_errors=True)
        return [p.stem for p in gone]

    def versions_since(self, tables: list[str], since: datetime) -> int | None:
        """The newest version of ``tables`` committed at or after ``since``, if any."""
        newest = None
        for table in tables:
            if self.table_exists(table):
                with self.reading(table):
                    listed = self.connect().open_table(table).list_versions()
                for v in listed:
                    at = v["timestamp"]
                    at = at if at.tzinfo else at.replace(tzinfo=UTC)  # Lance stamps in UTC
                    if at >= since and (newest is None or v["version"] > newest):
                        newest = v["version"]
        return newest

    def table_version(self, table: str) -> int:
        """The live version of ``table``; 0 when it does not exist."""
        if not self.table_exists(table):
            return 0
        with self.reading(table):
            return int(self.connect().open_table(table).version)

    def documents(self, table: str) -> pa.Table | None:
        """The distinct (doc_id, content_hash) pairs ``table`` holds; None when it does not
        exist or has no such columns."""
        if not self.table_exists(table):
            return None
        with self.reading(table):
            ds = self.connect().open_table(table).to_lance()
            if any(c not in ds.schema.names for c in ("doc_id", "content_hash")):
                return None
            pairs = ds.to_table(columns=["doc_id", "content_hash"], **LEAN_SCAN)
        return pairs.group_by(["doc_id", "content_hash"], use_threads=False).aggregate([])

    def connect(self) -> Any:
        if self.store_uri is not None:
            return lancedb.connect(self.store_uri, storage_options=self.storage_options or None)
        return lancedb.connect(str(self.lance_dir))

    @contextlib.contextmanager
    def lock(self, pipeline: str) -> Iterator[None]:
        """One run per workspace at a time: a second run fails at once with a clear message.
        The workspace must be writable: checked here, before anything is read or changed."""
        path = self.root / ".lock"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fh = path.open("a+")
        except OSError as exc:
            raise WorkspaceNotWritable(self.root, _why(exc)) from None
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                raise WorkspaceBusy(
                    f"pipeline '{pipeline}' is already running in {self.root} ({holder}); "
                    "wait for it to finish, then run again"
                ) from None
            try:
                fh.truncate(0)
                fh.write(f"pid {os.getpid()}")
                fh.flush()
                self.check_writable()
            except OSError as exc:
                fcntl.flock(fh, fcntl.LOCK_UN)
                raise WorkspaceNotWritable(self.root, _why(exc)) from None
            try:
                yield
            finally:
                with contextlib.suppress(OSError):
                    fh.truncate(0)
                fcntl.flock(fh, fcntl.LOCK_UN)

    def check_writable(self) -> None:
        """Raise OSError unless files can be created in the workspace and in each folder of
        it a run writes to."""
        tables = [] if self.store_uri is not None else [self.lance_dir]
        for folder in (self.root, *tables, self.root / "cache", self.root / "staging"):
            if folder.is_dir():
                with tempfile.TemporaryFile(dir=folder, prefix=".embedpipe-probe-"):
                    pass

    def owned(self) -> tuple[Path, ...]:
        """Everything of the workspace's that the tool made (resolved paths): sources must not
        read it as documents, even when the workspace sits inside a source folder."""
        root = self.root.resolve()
        names = ("lance", "cache", "artifacts", "sweep", ".catalog-pending", ".lock", SERVER_PID)
        named = [root / n for n in names]
        if self._tables is not None and self._tables.is_dir():  # tables in a folder of their own
            named += [p.resolve() for p in self._tables.glob("*.lance")]  # not its other files
        named += [root / f"catalog.duckdb{s}" for s in ("", ".wal", ".tmp")]
        staging = root / "staging"
        if staging.is_dir():
            named += [p for p in staging.iterdir() if p.is_dir() and _ours(p)]
        return tuple(named)

    def new_staging(self, run_id: str) -> Path:
        """Create the run's staging folder, marked as ours (see ``clear_staging``)."""
        path = self.staging(run_id)
        path.mkdir(parents=True, exist_ok=True)
        (path / STAGING_MARKER).write_text(f"staged step outputs of run {run_id}\n")
        return path

    def clear_staging(self) -> None:
        """Remove the staging folders of runs (called under the lock, so none is live); never
        anything else a user keeps in ``staging/``, and the folder only when it is empty."""
        top = self.root / "staging"
        if not top.is_dir():
            return
        for entry in top.iterdir():
            if entry.is_dir() and not entry.is_symlink() and _ours(entry):
                shutil.rmtree(entry, ignore_errors=True)
        with contextlib.suppress(OSError):
            top.rmdir()  # only when empty


def _ours(folder: Path) -> bool:
    """A run's staging folder: it carries our marker, or (from before markers) is named like
    a run id and holds nothing but staged Arrow files."""
    if (folder / STAGING_MARKER).is_file():
        return True
    return bool(_RUN_ID.match(folder.name)) and all(
        p.is_file() and p.suffix == ".arrow" for p in folder.iterdir()
    )


def _why(exc: OSError) -> str:
    where = f": {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def not_writable(exc: BaseException, root: Path) -> bool:
    """Whether ``exc`` (or what caused it) says a file in the workspace ``root`` could not be
    written (a source or model file that cannot be read is another matter)."""
    seen: set[int] = set()
    top = root.resolve()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _NOT_WRITABLE and exc.filename:
            where = Path(os.path.realpath(os.fsdecode(exc.filename)))
            if where == top or top in where.parents:
                return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


_MISSING = re.compile(r"Not found: (\S+?)(?:,|\s|$)")


def damaged(exc: BaseException, table: str, path: Path | str, spec: object) -> IndexDamaged | None:
    """IndexDamaged when ``exc`` is Lance (or DuckDB reading Lance) failing on missing or
    corrupt files of ``table``; None for any other error."""
    text = str(exc)
    m = _MISSING.search(text)
    if m is not None and re.search(rf"(^|/){re.escape(table)}\.lance/", m.group(1)):
        missing = "/" + m.group(1).lstrip("/")  # Lance may drop the leading slash
        return IndexDamaged(table, path, f"its file {missing} is missing", spec)
    if "LanceError(Corrupt" in text:
        return IndexDamaged(table, path, "a file of it is corrupt", spec)
    return None
