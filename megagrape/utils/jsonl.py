"""Reading JSON-lines files (``.jsonl`` or gzip-compressed ``.jsonl.gz``), one object a line.

Every error is a DataError naming the file and the line. :func:`iter_jsonl` streams
``(line_number, record)`` pairs; :func:`read_jsonl` returns all the records of a small file.
"""

from __future__ import annotations

import gzip
import json
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from megagrape.errors import DataError


def open_binary(path: Path) -> IO[bytes]:
    """Open ``path`` for reading bytes; ``*.gz`` files are decompressed on the fly."""
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def iter_jsonl(path: Path, skip_bad_lines: bool = False) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` for every JSON object in ``path`` (line numbers from 1).

    Blank lines are ignored. A line that is not a JSON object raises DataError naming the file
    and line, unless ``skip_bad_lines`` is set: then such lines are skipped and one warning with
    their count is issued when the file has been read.
    """
    for line_number, record, _ in iter_jsonl_with_sizes(path, skip_bad_lines):
        yield line_number, record


def read_jsonl(path: Path) -> list[dict]:
    """Every JSON object in ``path``, in file order (blank lines ignored; bad lines raise)."""
    return [record for _, record in iter_jsonl(path)]


def iter_jsonl_with_sizes(
    path: Path, skip_bad_lines: bool = False
) -> Iterator[tuple[int, dict, int]]:
    """Like :func:`iter_jsonl`, also yielding the line's size in (uncompressed) bytes.

    The sizes of the yielded and skipped lines add up to the uncompressed file size, which is
    what progress bars count.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: no such file; check the path (expected a .jsonl or .jsonl.gz file)"
        )
    bad_lines: list[int] = []
    line_number = 0
    try:
        with open_binary(path) as stream:
            for line_number, line in enumerate(stream, start=1):
                record = _parse_line(path, line_number, line, skip_bad_lines)
                if record is None:
                    if line.strip():
                        bad_lines.append(line_number)
                    continue
                yield line_number, record, len(line)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(
            f"{path}: compressed stream is corrupt after line {line_number} ({exc}); "
            "re-create or re-download the file"
        ) from exc
    if bad_lines:
        shown = ", ".join(map(str, bad_lines[:5])) + (" ..." if len(bad_lines) > 5 else "")
        warnings.warn(
            f"{path}: skipped {len(bad_lines)} line(s) that were not JSON objects (lines {shown})",
            stacklevel=3,
        )


def _parse_line(path: Path, line_number: int, line: bytes, skip_bad_lines: bool) -> dict | None:
    """The JSON object on ``line``; None for a blank line or (with skip) a bad one."""
    if not line.strip():
        return None
    try:
        record = json.loads(line.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        if skip_bad_lines:
            return None
        raise DataError(
            f"{path}:{line_number}: not valid UTF-8 JSON ({_describe(exc)}); "
            "fix the line or pass --skip-bad-lines to skip such lines"
        ) from exc
    if not isinstance(record, dict):
        if skip_bad_lines:
            return None
        raise DataError(
            f"{path}:{line_number}: expected a JSON object per line, got "
            f"{type(record).__name__}; fix the line or pass --skip-bad-lines"
        )
    return record


def _describe(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at column {exc.colno}"
    return f"invalid UTF-8 byte at offset {exc.start}"
