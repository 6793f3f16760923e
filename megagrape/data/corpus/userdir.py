"""Validate a user's own corpus directory and write its manifest (``--from-dir``).

Accepted layout (any subset of formats, one name per domain/target)::

    SRC/domains/<name>.jsonl             {"text": "..."} one document a line
    SRC/domains/<name>.bin + <name>.idx  a Megatron IndexedDataset prefix (already tokenized)
    SRC/targets/<task>.jsonl             {"id", "context", "choices", "gold"} items (kind mc)
                                         or {"text": "..."} held-out documents (kind lm)
    SRC/targets/<task>.bin + .idx        a tokenized LM target

Blank lines are ignored (as the readers do). Every other line must be a JSON object of the
file's kind; the first bad line raises DataError naming file and line, unless
``skip_bad_lines`` is set, in which case bad lines are dropped from the copies written to
``out_dir`` and counted in the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import struct
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from tqdm import tqdm

from megagrape.data.corpus.manifest import (
    MANIFEST_NAME,
    TOOL_VERSION,
    EntryInfo,
    Manifest,
    SourceInfo,
    utc_now,
    write_manifest,
)
from megagrape.errors import DataError
from megagrape.utils.atomic import temporary_sibling

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_IDX_HEADER = b"MMIDIDX\x00\x00"
_DTYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 8, 7: 4, 8: 2}  # megatron-core DType codes


def _check_text(record: dict) -> str | None:
    text = record.get("text")
    if not isinstance(text, str):
        return 'missing string field "text"'
    if not text.strip():
        return 'field "text" is empty'
    return None


def _check_mc(record: dict) -> str | None:
    if not isinstance(record.get("id"), str) or not record["id"]:
        return 'field "id" must be a non-empty string'
    if not isinstance(record.get("context"), str):
        return 'field "context" must be a string'
    choices = record.get("choices")
    if not isinstance(choices, list) or len(choices) < 2:
        return 'field "choices" must be a list of at least 2 strings'
    if not all(isinstance(c, str) and c for c in choices):
        return 'every entry of "choices" must be a non-empty string'
    gold = record.get("gold")
    if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(choices):
        return f'field "gold" must be an integer index into choices (0..{len(choices) - 1})'
    return None


def _line_problem(line: bytes, kind: str | None) -> tuple[str | None, str | None, dict | None]:
    """(problem, kind, record) for one non-blank line; ``kind`` None means not yet known."""
    try:
        record = json.loads(line)
    except ValueError as exc:
        return f"not valid JSON ({exc.__class__.__name__}: {exc})", kind, None
    if not isinstance(record, dict):
        return "not a JSON object", kind, None
    line_kind = kind or ("mc" if "choices" in record else "text")
    check = _check_mc if line_kind == "mc" else _check_text
    return check(record), line_kind, record


def validate_jsonl(
    path: Path, target: bool, skip_bad_lines: bool, copy_to: Path | None
) -> tuple[str, int, int, str]:
    """Check every line of ``path``; optionally write the good lines to ``copy_to``.

    Returns (kind, records, skipped lines, sha256 of ``path``). ``kind`` is "text" for a
    domain, "mc" or "lm" for a target (decided by the first good line).
    """
    kind: str | None = None if target else "text"
    digest = hashlib.sha256()
    count = skipped = 0
    with ExitStack() as stack:
        out = stack.enter_context(open(copy_to, "wb")) if copy_to is not None else None
        stream = stack.enter_context(open(path, "rb"))
        for line_number, line in enumerate(stream, start=1):
            digest.update(line)
            if not line.strip():
                continue
            problem, new_kind, _ = _line_problem(line, kind)
            if problem is None:
                kind = new_kind
                count += 1
                if out is not None:
                    out.write(line if line.endswith(b"\n") else line + b"\n")
                continue
            if not skip_bad_lines:
                raise DataError(
                    f"{path}:{line_number}: {problem}; fix the line or pass "
                    "--skip-bad-lines to drop it"
                )
            skipped += 1
    if count == 0:
        raise DataError(f"{path}: no valid records; a domain or target needs at least one")
    if target and kind == "text":
        kind = "lm"
    return kind or "text", count, skipped, digest.hexdigest()


def indexed_documents(prefix: Path) -> int:
    """Documents in Megatron IndexedDataset ``prefix`` (.bin/.idx); DataError if malformed."""
    idx, bin_path = prefix.with_name(prefix.name + ".idx"), prefix.with_name(prefix.name + ".bin")
    for path in (idx, bin_path):
        if not path.is_file():
            raise DataError(f"{path}: missing; a Megatron prefix needs both .bin and .idx files")
    with open(idx, "rb") as stream:
        header = stream.read(34)
    if len(header) < 34 or header[:9] != _IDX_HEADER:
        raise DataError(f"{idx}: not a Megatron index (bad header); re-run preprocess_data.py")
    version, code = struct.unpack("<Q", header[9:17])[0], header[17]
    sequences, documents = struct.unpack("<QQ", header[18:34])
    if version != 1 or code not in _DTYPE_SIZES:
        raise DataError(f"{idx}: unsupported index version {version} / dtype code {code}")
    expected = 34 + sequences * (4 + 8) + documents * 8
    if idx.stat().st_size not in (expected, expected + sequences):
        raise DataError(
            f"{idx}: size {idx.stat().st_size} does not match its header ({expected} bytes "
            "expected); the file is truncated, re-run preprocess_data.py"
        )
    if sequences:
        lengths = np.memmap(idx, dtype=np.int32, mode="r", offset=34, shape=(sequences,))
        pointers = np.memmap(
            idx, dtype=np.int64, mode="r", offset=34 + 4 * sequences, shape=(sequences,)
        )
        end = int(pointers[-1]) + int(lengths[-1]) * _DTYPE_SIZES[code]
        if bin_path.stat().st_size != end:
            raise DataError(
                f"{bin_path}: size {bin_path.stat().st_size} but the index points to {end} "
                "bytes; the .bin is truncated or belongs to another .idx"
            )
    if documents < 2:
        raise DataError(f"{idx}: holds no documents; a domain or target needs at least one")
    return int(documents) - 1


def _entries(folder: Path) -> dict[str, tuple[str, Path]]:
    """name -> (format, path or prefix) for the .jsonl files and .bin/.idx prefixes in folder."""
    found: dict[str, tuple[str, Path]] = {}
    lowered: dict[str, str] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix == ".jsonl":
            name, entry = path.stem, ("jsonl", path)
        elif path.suffix in (".bin", ".idx"):
            name, entry = path.stem, ("indexed", path.with_suffix(""))
        else:
            continue
        if not NAME_PATTERN.match(name):
            raise DataError(
                f"{path}: name {name!r} is not file-name-safe; use letters, digits, '_', '-', "
                "'.' and start with a letter or digit"
            )
        if name in found and found[name] == entry:
            continue
        if name in found or name.lower() in lowered:
            other = found.get(name, (None, folder / lowered.get(name.lower(), name)))[1]
            raise DataError(
                f"{path}: name {name!r} is used twice in {folder} (also {other}); "
                "every domain/target needs a unique name (case-insensitive)"
            )
        found[name] = entry
        lowered[name.lower()] = name
    return found


def prepare_from_dir(
    src: Path, out_dir: Path, skip_bad_lines: bool = False, progress: bool = True
) -> Manifest:
    """Validate ``src`` (layout in the module docstring) and write ``out_dir/manifest.json``.

    With ``out_dir`` equal to ``src`` nothing is copied and bad lines are an error even with
    ``skip_bad_lines`` (the user's files are never rewritten); otherwise the files are
    copied to ``out_dir`` (good lines only). Nothing reaches ``out_dir`` before every entry
    has passed: the copies and the manifest are written to a hidden staging sibling
    (``.<out>.tmp-<pid>``) and moved in at the end, the manifest last. A failed run deletes
    the staging directory, so it leaves no ``out_dir`` behind and an earlier one as it was.
    """
    src, out_dir = Path(src), Path(out_dir)
    if not (src / "domains").is_dir():
        raise DataError(
            f"{src}: no domains/ folder; a corpus directory holds domains/<name>.jsonl "
            "(and targets/<task>.jsonl); see docs/corpora.md"
        )
    groups = {"domains": _entries(src / "domains")}
    if not groups["domains"]:
        raise DataError(f"{src / 'domains'}: no .jsonl files or .bin/.idx prefixes")
    groups["targets"] = _entries(src / "targets") if (src / "targets").is_dir() else {}
    if out_dir.resolve() == src.resolve():
        manifest = _validate_all(groups, src, None, skip_bad_lines, progress)
        write_manifest(src, manifest)
        return manifest
    staging = temporary_sibling(out_dir)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        manifest = _validate_all(groups, src, staging, skip_bad_lines, progress)
        write_manifest(staging, manifest)
        _publish(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _validate_all(
    groups: dict[str, dict[str, tuple[str, Path]]],
    src: Path,
    copy_dir: Path | None,
    skip_bad_lines: bool,
    progress: bool,
) -> Manifest:
    """The manifest of every entry of ``groups``, copied under ``copy_dir`` (None: in place)."""
    manifest = Manifest(
        preset="from-dir",
        created=utc_now(),
        tool_version=TOOL_VERSION,
        python_version=platform.python_version(),
    )
    total = sum(len(entries) for entries in groups.values())
    with tqdm(total=total, desc="validate", unit="file", disable=not progress) as bar:
        for group, entries in groups.items():
            if copy_dir is not None:
                (copy_dir / group).mkdir(parents=True, exist_ok=True)
            for name, (fmt, path) in entries.items():
                bar.set_postfix_str(f"{group}/{name}")
                entry = _validate_entry(group, name, fmt, path, src, copy_dir, skip_bad_lines)
                getattr(manifest, group)[name] = entry
                bar.update(1)
    return manifest


def _publish(staging: Path, out_dir: Path) -> None:
    """Move the finished ``staging`` tree into ``out_dir``: one rename, or file by file.

    An existing ``out_dir`` keeps whatever else it holds (e.g. bin/ and tokenizer/ written
    by later steps); its manifest is replaced last.
    """
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    files = [path for path in staging.rglob("*") if path.is_file()]
    for path in sorted(files, key=lambda path: (path == staging / MANIFEST_NAME, path)):
        destination = out_dir / path.relative_to(staging)
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, destination)


def _validate_entry(
    group: str,
    name: str,
    fmt: str,
    path: Path,
    src: Path,
    copy_dir: Path | None,
    skip_bad_lines: bool,
) -> EntryInfo:
    relative = f"{group}/{name}" + (".jsonl" if fmt == "jsonl" else "")
    if fmt == "indexed":
        count = indexed_documents(path)
        if copy_dir is not None:
            for suffix in (".bin", ".idx"):
                shutil.copyfile(path.with_name(name + suffix), copy_dir / group / (name + suffix))
        size = sum(path.with_name(name + s).stat().st_size for s in (".bin", ".idx"))
        kind, skipped, sha256 = ("text" if group == "domains" else "lm"), 0, ""
    else:
        target = group == "targets"
        if copy_dir is None:
            kind, count, skipped, sha256 = validate_jsonl(path, target, skip_bad_lines, None)
            if skipped:
                raise DataError(
                    f"{path}: {skipped} bad line(s) cannot be dropped in place; pass a different "
                    "--out to write cleaned copies there"
                )
            size = path.stat().st_size
        else:
            copy = copy_dir / relative
            kind, count, skipped, sha256 = validate_jsonl(path, target, skip_bad_lines, copy)
            size = copy.stat().st_size
    source = SourceInfo(
        registry="local",
        package=str(src.resolve()),
        version="",
        path=relative if fmt == "jsonl" else relative + ".bin/.idx",
        licence="unknown (user data)",
        sha256=sha256,
    )
    return EntryInfo(
        kind=kind,
        format=fmt,
        file=relative,
        count=count,
        bytes=size,
        sources=[source],
        skipped_lines=skipped,
    )
