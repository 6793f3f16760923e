"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

The content goes to a hidden temporary sibling ``.<name>.tmp-<pid>`` (same directory, so the
rename cannot cross file systems; the pid keeps concurrent writers apart), which then replaces
the target with ``os.replace``. With ``fsync=True`` the data reach the disk before the rename,
so a crash right after cannot leave an empty file under the final name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def temporary_sibling(path: Path) -> Path:
    """The temporary path this process writes ``path``'s new content to."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to (by any means, e.g. a library).

    When the block ends normally the temporary file replaces ``path``; when it raises, the
    temporary file is deleted and ``path`` is left as it was. The parent directory is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    try:
        yield temporary
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)


@contextmanager
def atomic_open(
    path: Path, mode: str = "w", *, fsync: bool = False, encoding: str | None = "utf-8"
) -> Iterator[IO]:
    """``open(path, mode)`` for a streaming write that replaces ``path`` only once complete.

    ``mode`` is "w" (text, ``encoding``, newlines written as "\\n") or "wb". ``fsync``
    flushes the data to disk before the rename.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    text = mode == "w"
    with (
        atomic_path(path) as temporary,
        open(
            temporary, mode, encoding=encoding if text else None, newline="\n" if text else None
        ) as stream,
    ):
        yield stream
        if fsync:
            stream.flush()
            os.fsync(stream.fileno())


def write_atomic(path: Path, data: str | bytes, *, fsync: bool = False) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically."""
    if isinstance(data, bytes):
        with atomic_open(path, "wb", fsync=fsync) as stream:
            stream.write(data)
    else:
        with atomic_open(path, "w", fsync=fsync) as stream:
            stream.write(data)


def write_json_atomic(path: Path, data: Any, *, indent: int = 1, fsync: bool = False) -> None:
    """Write ``data`` as JSON (``indent`` spaces, no trailing newline) to ``path`` atomically."""
    write_atomic(path, json.dumps(data, indent=indent), fsync=fsync)
