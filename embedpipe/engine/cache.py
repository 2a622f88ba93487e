"""Step caches: a step's output rows, keyed by the input columns that determine them.

A cacheable step names ``cache_key`` columns present in both its input and its output rows
(chunk: ``doc_id, content_hash``; encode: ``chunk_id, content_hash, char_start, title, text``).
A run computes only the input rows whose key is not cached and reuses the rest. Each cache is a
Lance dataset under ``<workspace>/cache/<step>/<fingerprint>.lance``; the fingerprint covers the
step kind, its version, its config and its models' revisions, so a change to any of them starts
a new cache. Rows are appended one output batch at a time, after the step produced them: a
crash loses at most the batch in flight, never records work that was not done.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import lance
import pyarrow as pa
import pyarrow.compute as pc

from embedpipe.engine.crash import crash_point
from embedpipe.engine.workspace import LEAN_SCAN
from embedpipe.schemas import hash_rows
from embedpipe.steps.base import Step

KEY = "_key"


def fingerprint(step: Step, *, legacy: bool = False) -> str:
    """What decides the step's output: kind, version, config without speed-only settings,
    model revisions. ``legacy``: as embedpipe 0.1 made it, speed-only settings included."""
    if legacy:
        config = step.config.model_dump(mode="json", exclude={"input"})
    else:
        config = step.config.identity()
    blob = {"type": step.type, "version": step.version, "config": config, **step.fingerprint()}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


class StepCache:
    def __init__(self, root: Path, step: Step, *, writable: bool = True) -> None:
        self.columns = step.cache_key
        self.crash_point = step.type
        self.path = root / "cache" / step.name / f"{fingerprint(step)}.lance"
        # A cache an older version keyed with speed-only settings too: a run takes it over (it
        # holds the workspace lock), a plan reads it where it is, so an upgrade re-computes
        # nothing.
        legacy = root / "cache" / step.name / f"{fingerprint(step, legacy=True)}.lance"
        if legacy != self.path and legacy.is_dir() and not self.path.exists():
            if not writable:
                self.path = legacy
            else:
                with contextlib.suppress(OSError):
                    legacy.rename(self.path)

    def _dataset(self) -> lance.LanceDataset | None:
        if not self.path.is_dir():
            return None
        # A cache is read once per run, front to back: Lance's metadata cache (every data
        # file's, kept for the dataset's life, so growing with the corpus) would be of no use.
        return lance.dataset(str(self.path), metadata_cache_size_bytes=METADATA_CACHE)

    def schema(self) -> pa.Schema | None:
        """The cached rows' schema (without the key column); None while the cache is empty."""
        ds = self._dataset()
        return ds.schema.remove(ds.schema.get_field_index(KEY)) if ds is not None else None

    def snapshot(self, *, touch: bool = True) -> Snapshot:
        """The cache as it is now: its keys, and its rows read from that same version."""
        ds = self._dataset()
        if ds is not None and touch:  # most recently used: kept by prune(); a plan is no use
            os.utime(self.path)
        return Snapshot(ds)

    def keys(self, *, touch: bool = True) -> pa.Array:
        """Every cached key, as one Arrow string array (no Python object per key)."""
        return self.snapshot(touch=touch).keys

    def rows(self, keys: pa.Array, *, per_take: int = 4096) -> Iterator[pa.RecordBatch]:
        """The cached output rows of ``keys``, without the key column, in cache order."""
        snap = self.snapshot(touch=False)
        if not len(keys):
            return
        yield from snap.rows(pc.is_in(snap.keys, value_set=keys), per_take=per_take)

    def tee(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Pass ``batches`` through, appending each to the cache once it is produced."""
        for batch in batches:
            if batch.num_rows:
                keyed = batch.append_column(KEY, hash_rows(batch, self.columns))
                self.path.parent.mkdir(parents=True, exist_ok=True)
                mode = "append" if self.path.is_dir() else "create"
                lance.write_dataset(pa.Table.from_batches([keyed]), str(self.path), mode=mode)
                crash_point(self.crash_point)
            yield batch

    def prune(self, used: pa.Array, *, stale_share: float = 0.2, keep_others: int = 1) -> int:
        """Drop what the last successful run did not use: caches of other configs (all but
        the ``keep_others`` most recently used, so switching back once is still free), and,
        once they are over ``stale_share`` of this cache, rows of edited or deleted inputs.
        Returns the rows dropped. A crash here loses cached work, never correctness."""
        others = [p for p in self.path.parent.glob("*.lance") if p != self.path]
        for old in sorted(others, key=lambda p: p.stat().st_mtime, reverse=True)[keep_others:]:
            shutil.rmtree(old, ignore_errors=True)
        ds = self._dataset()
        if ds is None:
            return 0
        keys = _column(ds, KEY)
        wanted = used
        stale = len(keys) - pc.sum(pc.is_in(keys, value_set=wanted)).as_py()
        total = len(keys)
        del keys
        if stale <= stale_share * total:
            return 0
        fresh = self.path.with_suffix(".lance.tmp")
        shutil.rmtree(fresh, ignore_errors=True)

        def kept() -> Iterator[pa.RecordBatch]:
            for batch in ds.to_batches():
                yield batch.filter(pc.is_in(batch.column(KEY), value_set=wanted))

        reader = pa.RecordBatchReader.from_batches(ds.schema, kept())
        lance.write_dataset(reader, str(fresh))
        old = self.path.with_suffix(".lance.old")
        shutil.rmtree(old, ignore_errors=True)
        self.path.rename(old)
        fresh.rename(self.path)
        shutil.rmtree(old, ignore_errors=True)
        return stale


METADATA_CACHE = 4 << 20  # bytes
SCAN_SHARE = 0.25  # rows() scans when at least this share of the cache is wanted, else takes


def _column(ds: lance.LanceDataset, name: str) -> pa.Array:
    """One column of ``ds``, every row in scan order, as one array."""
    return ds.to_table(columns=[name], **LEAN_SCAN).column(name).combine_chunks()


class Snapshot:
    """One version of a step cache: ``keys`` (in cache order) and ``rows`` of that version,
    so that positions found in ``keys`` name the same rows when they are read."""

    def __init__(self, ds: lance.LanceDataset | None) -> None:
        self.ds = ds
        self.keys = _column(ds, KEY) if ds is not None else pa.array([], pa.string())

    def rows(self, wanted: pa.Array, *, per_take: int = 4096) -> Iterator[pa.RecordBatch]:
        """The rows where ``wanted`` (a boolean per key of ``keys``) is true, without the key
        column, in cache order. Most of the cache wanted (a re-run): one sequential scan,
        filtered; a few rows: taken by position, ``per_take`` at a time. Either way memory
        holds a few batches, never the whole cache."""
        ds = self.ds
        count = pc.sum(wanted).as_py() or 0
        if ds is None or not count:
            return
        if len(wanted) != len(self.keys):
            raise ValueError("wanted must hold one boolean per key of this snapshot")
        columns = [n for n in ds.schema.names if n != KEY]
        if count >= SCAN_SHARE * len(wanted):
            at = 0
            for batch in ds.to_batches(columns=columns, batch_size=per_take, **LEAN_SCAN):
                n = batch.num_rows
                part = batch if count == len(wanted) else batch.filter(wanted.slice(at, n))
                at += n
                if part.num_rows:
                    yield part
            return
        positions = pc.indices_nonzero(wanted)
        for start in range(0, len(positions), per_take):
            yield from ds.take(positions.slice(start, per_take), columns=columns).to_batches()
