"""walk: the files a source names (a path, a directory or a glob), found without surprises.

Patterns (a glob source, ``include``, ``exclude``) are matched by ``wcmatch.glob`` with
GLOBSTAR: glob.glob's rules (``**`` spans any number of directories, a wildcard matches a
leading '.' only where its pattern starts with one), plus ``\\`` to escape a wildcard.

The walk itself stays here: ``glob.glob``, ``os.walk`` and wcmatch's walkers (``glob`` with
FOLLOW, ``WcMatch`` on ``os.walk``) follow symlink loops until the kernel gives up, drop an
unreadable directory without a word, and read a named pipe like a file. This walker follows
directory symlinks once, reports loops, broken links and non-files with a reason instead of
failing, and yields files in a stable order. ``missing`` gives the same answer before a run
(``pipe validate``) as during it.
"""

from __future__ import annotations

import errno
import glob
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from wcmatch import glob as wcglob

from embedpipe.steps.sources.doc import brief


def resolve(source: str, base_dir: Path) -> Path:
    path = Path(source).expanduser()
    return path if path.is_absolute() else base_dir / path


def static_prefix(pattern: Path) -> Path:
    parts = []
    for part in pattern.parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return Path(*parts)


def missing(source: str, base_dir: Path) -> str | None:
    """Why ``source`` matches nothing, or None when it matches something."""
    path = resolve(source, base_dir)
    if glob.has_magic(source):
        if not any(why is None for _, why in glob_files(path)):
            return f"'{source}' matches no files (resolved to {path})"
        return None
    if path.is_symlink() and not path.exists():
        return f"'{source}' is a {_link_problem(path)} (resolved to {path})"
    if not path.exists():
        return f"'{source}' does not exist (resolved to {path})"
    return None


# Case-sensitive everywhere (as fnmatch.fnmatchcase was), no braces or extglobs: a pattern
# means what it meant with glob.glob.
_FLAGS = wcglob.GLOBSTAR | wcglob.CASE


def glob_files(pattern: Path) -> Iterator[tuple[Path, str | None]]:
    """Files matching ``pattern``, with glob.glob's rules, but walked with ``walk``:
    glob.glob follows symlink loops until the kernel gives up, exponentially long."""
    prefix = static_prefix(pattern)
    pats = pattern.parts[len(prefix.parts) :]
    if not pats or not prefix.is_dir():
        return
    keep = _matcher(["/".join(pats)])
    # A directory is worth entering when its path matches the pattern's first segments, some
    # left over for what is below it; a trailing '**' matches directories as well as files.
    heads = ["/".join(pats[:i]) for i in range(1, len(pats))]
    if pats[-1] == "**":  # 'a/**': every directory below a may hold more
        heads.append("/".join(pats))
    enter = _matcher(heads)
    yield from walk(prefix, enter=enter, keep=keep)


def _matcher(patterns: list[str]) -> Callable[[tuple[str, ...]], bool]:
    """Does a path, as its parts below the walk's top, match one of ``patterns``?"""
    if not patterns:
        return lambda parts: False
    compiled = wcglob.compile(patterns, flags=_FLAGS)
    return lambda parts: compiled.match("/".join(parts))


def walk(
    top: Path,
    enter: Callable[[tuple[str, ...]], bool],
    keep: Callable[[tuple[str, ...]], bool],
) -> Iterator[tuple[Path, str | None]]:
    """Every file below ``top`` that ``keep`` wants, in sorted order, with why it cannot be read
    (None when it can), and every directory ``enter`` wants that cannot be walked, with why.

    Directory symlinks are followed, but never into a directory already walked: a link back
    to its own parent would otherwise be a loop, and links between siblings a blow-up."""
    seen = {top.resolve()}

    def visit(
        folder: Path, rel: tuple[str, ...], ancestors: frozenset[Path]
    ) -> Iterator[tuple[Path, str | None]]:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            yield folder, f"cannot read directory: {exc.strerror or brief(exc)}"
            return
        for entry in entries:
            path, parts = Path(entry.path), (*rel, entry.name)
            try:
                mode = os.stat(path).st_mode  # follows symlinks
            except OSError as exc:
                if keep(parts):
                    yield path, _link_problem(path, exc)
                continue
            if not stat.S_ISDIR(mode):
                if keep(parts):
                    ok = stat.S_ISREG(mode)
                    yield path, None if ok else f"not a regular file ({file_kind(mode)})"
                continue
            if not enter(parts):
                continue
            real = path.resolve()
            if real in ancestors:  # only a symlink can lead back up
                yield path, f"symlink loop: it points back to {real.name}/, which contains it"
            elif real in seen and entry.is_symlink():
                yield path, f"symlink to a directory already read ({real}); not read twice"
            else:
                seen.add(real)
                yield from visit(path, parts, ancestors | {real})

    yield from visit(top, (), frozenset(seen))


def visible(parts: tuple[str, ...]) -> bool:
    return not parts[-1].startswith(".")


def _link_problem(path: Path, exc: OSError | None = None) -> str:
    try:
        target = os.readlink(path)
    except OSError:
        return f"cannot read: {(exc and exc.strerror) or 'unknown error'}"
    if exc is None:
        try:
            os.stat(path)
        except OSError as err:
            exc = err
    if exc is not None and exc.errno == errno.ELOOP:
        return f"symlink loop: following '{target}' leads back to the link, never to a file"
    if exc is not None and exc.errno == errno.ENOENT:
        return f"broken symlink: its target '{target}' does not exist"
    return f"cannot read: {(exc and exc.strerror) or 'unknown error'}"


def file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a file or directory"


def matches(rel: Path, pattern: str) -> bool:
    """Does ``pattern`` match ``rel`` from the right, as ``PurePath.match`` does (``*.md``
    matches ``sub/c.md``), with ``**`` spanning any number of directories (``build/**``
    matches anything below a directory named build)?"""
    pattern = PurePosixPath(pattern or "**").as_posix()  # no './' before, no '/' after
    if not pattern.startswith("**/"):
        pattern = f"**/{pattern}"  # matching from the right allows any directories before
    return wcglob.globmatch(rel.as_posix(), pattern, flags=_FLAGS)


def relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()
