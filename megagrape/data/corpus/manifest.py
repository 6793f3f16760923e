"""``manifest.json``: what a prepared corpus directory holds and where every part came from."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import megagrape
from megagrape.errors import DataError
from megagrape.utils.atomic import write_atomic

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
TOOL_VERSION = f"megagrape {megagrape.__version__} corpus-builder 1"


def utc_now() -> str:
    """Current UTC time as ``YYYY-MM-DDTHH:MM:SSZ`` (the manifest's timestamps)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class SourceInfo:
    """Where one part of an entry came from.

    ``registry`` is pypi, debian, npm, stdlib or local (a user's directory); ``path`` is the
    file pattern(s) read inside the package; ``sha256`` is the digest of the downloaded
    archive (for stdlib: of the files read, path and content, in path order; for local: of
    the source file).
    """

    registry: str
    package: str
    version: str
    path: str
    licence: str
    sha256: str


@dataclass
class EntryInfo:
    """One domain or target file.

    ``kind``: "text" (training domain), "mc" (multiple-choice target) or "lm" (LM-text
    target). ``format``: "jsonl" (``file`` is the .jsonl path) or "indexed" (``file`` is a
    Megatron .bin/.idx prefix). ``count``: documents for a domain or LM target, items for an
    MC target. ``bytes``: size on disk (both files for indexed). ``dropped_contaminated``:
    documents removed by decontamination; ``skipped_lines``: bad lines dropped by
    ``--skip-bad-lines``; ``spec_hash`` identifies the definition the file was built from
    (a rerun with the same hash and an intact file skips it).
    """

    kind: str
    format: str
    file: str
    count: int
    bytes: int
    sources: list[SourceInfo] = field(default_factory=list)
    description: str = ""
    dropped_contaminated: int = 0
    skipped_lines: int = 0
    spec_hash: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EntryInfo:
        values = dict(data)
        values["sources"] = [SourceInfo(**s) for s in values.get("sources", [])]
        return cls(**values)


@dataclass
class Manifest:
    """Contents of ``manifest.json``: the preset (or ``from-dir``), versions, and entries.

    ``decontamination`` holds the n-gram settings and counts (empty when not run);
    ``max_mb_per_domain`` the size cap used (MB = 10^6 bytes of UTF-8 text), None for none.
    """

    preset: str
    created: str
    tool_version: str
    python_version: str
    max_mb_per_domain: float | None = None
    decontamination: dict[str, Any] = field(default_factory=dict)
    domains: dict[str, EntryInfo] = field(default_factory=dict)
    targets: dict[str, EntryInfo] = field(default_factory=dict)
    format: int = MANIFEST_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        values = dict(data)
        values["domains"] = {k: EntryInfo.from_dict(v) for k, v in data["domains"].items()}
        values["targets"] = {k: EntryInfo.from_dict(v) for k, v in data["targets"].items()}
        return cls(**values)

    def path_of(self, out_dir: Path, name: str) -> Path:
        """Absolute path (or prefix) of domain or target ``name`` inside ``out_dir``."""
        entry = self.domains.get(name) or self.targets.get(name)
        if entry is None:
            raise DataError(f"{Path(out_dir) / MANIFEST_NAME}: no domain or target {name!r}")
        return Path(out_dir) / entry.file


def write_manifest(out_dir: Path, manifest: Manifest) -> None:
    """Write ``out_dir/manifest.json`` atomically (temp file, then rename)."""
    text = json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False) + "\n"
    write_atomic(Path(out_dir) / MANIFEST_NAME, text)


def read_manifest(out_dir: Path) -> Manifest:
    """Read ``out_dir/manifest.json``; DataError naming the file and the fix if missing/corrupt."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise DataError(
            f"{path}: no manifest; prepare the directory with `python tools/prepare_corpus.py "
            "--preset NAME --out DIR` or `--from-dir SRC --out DIR`"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != MANIFEST_FORMAT:
            raise DataError(
                f"{path}: manifest format {data.get('format')!r}, this version reads "
                f"{MANIFEST_FORMAT}; re-run tools/prepare_corpus.py into a fresh directory"
            )
        return Manifest.from_dict(data)
    except DataError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(
            f"{path}: corrupt manifest ({exc}); delete it and re-run tools/prepare_corpus.py "
            "with the same --out (every file is then rebuilt)"
        ) from exc
