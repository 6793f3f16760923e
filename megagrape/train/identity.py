"""The run identity: what must not change between a checkpoint and the launch that resumes it.

Every checkpoint's ``megagrape_state.json`` holds the identity of the run that wrote it:

* ``data``: the tokenizer fingerprint, and per domain its ``.idx`` sha256 and token count
  (re-tokenised or edited data is another stream), and per target its file's sha256;
* ``config``: every resolved run-config field that shapes the trajectory (seed, model,
  mixture method and its options with defaults, batch sizes, lr schedule, optimizer,
  tensor/pipeline sizes, data budget, ...), as dotted names;
* ``layout``: the data-parallel size and the ZeRO stage.

A resume compares the saved identity with the launch's and stops, before any state is
loaded, with one line per changed field. ``checkpoint.allow_changes`` lists the dotted names
(or section prefixes such as ``train``) a user changes on purpose; each allowed change is
recorded in ``<run_dir>/launches.jsonl``. Fields that only affect what is logged, evaluated
or saved (``logging.*``, ``checkpoint.*``, evaluation sizes, ``train.exit_interval``, paths)
are not part of the identity and change freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megagrape.config import RunConfig, resolved_dict
from megagrape.data.domains import DomainSpec, count_tokens
from megagrape.errors import ConfigError
from megagrape.utils.hashing import sha256_file

FREE_FIELDS = (
    "name",
    "output_dir",
    "logging.",
    "checkpoint.",
    "data.corpus",
    "data.bin_dir",
    "data.prefixes",
    "data.tokenizer",
    "data.cache_dir",
    "data.loader_",
    "targets.dir",
    "targets.eval_interval",
    "targets.eval_max_items",
    "targets.eval_batch_size",
    "targets.eval_mode",
    "train.exit_interval",
    "train.exit_duration_minutes",
    "train.exit_signals",
    "train.divergence_",
    "parallel.backend",
    "parallel.timeout_minutes",
    "mixture.reference_checkpoint",
    "mixture.capture_device",
)
"""Dotted names (or prefixes ending in '.' or '_') outside the identity: where files are and
what is logged, evaluated or saved. Data files are identified by content, not by path."""


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and key != "options":
            flat.update(_flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _is_free(name: str) -> bool:
    return any(
        name == free or (free.endswith((".", "_")) and name.startswith(free))
        for free in FREE_FIELDS
    )


@dataclass(frozen=True)
class RunIdentity:
    """Plain-JSON description of a run's trajectory (see the module docstring)."""

    data: dict[str, Any]
    config: dict[str, Any]
    layout: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {"data": self.data, "config": self.config, "layout": self.layout}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> RunIdentity:
        return cls(data=state["data"], config=state["config"], layout=state["layout"])


def data_identity(
    tokenizer_fingerprint: str, domains: list[DomainSpec], target_files: dict[str, Path]
) -> dict[str, Any]:
    """Content fingerprints of the tokenizer, every domain (.idx) and every target file."""
    return {
        "tokenizer": tokenizer_fingerprint,
        "domains": {
            spec.name: {
                "idx_sha256": sha256_file(Path(spec.prefix + ".idx")),
                "tokens": count_tokens(spec.prefix),
            }
            for spec in domains
        },
        "targets": {name: sha256_file(Path(path)) for name, path in target_files.items()},
    }


def run_identity(
    cfg: RunConfig,
    tokenizer_fingerprint: str,
    domains: list[DomainSpec],
    target_files: dict[str, Path],
    data_parallel: int,
    zero_stage: int,
) -> RunIdentity:
    """The identity of a launch: its data's fingerprints, its config, its layout."""
    config = {k: v for k, v in _flatten(resolved_dict(cfg)).items() if not _is_free(k)}
    return RunIdentity(
        data=data_identity(tokenizer_fingerprint, domains, target_files),
        config=config,
        layout={"data_parallel": data_parallel, "zero_stage": zero_stage},
    )


def _allowed(name: str, allow: list[str]) -> bool:
    return any(name == a or name.startswith(a.rstrip(".") + ".") for a in allow)


def identity_changes(saved: RunIdentity, current: RunIdentity) -> dict[str, tuple[Any, Any]]:
    """{dotted name: (saved, current)} for every field that differs (data, config, layout)."""
    changes: dict[str, tuple[Any, Any]] = {}
    for section in ("data", "config", "layout"):
        before = (
            _flatten(getattr(saved, section), f"{section}.")
            if section == "data"
            else {f"{section}.{k}": v for k, v in getattr(saved, section).items()}
        )
        after = (
            _flatten(getattr(current, section), f"{section}.")
            if section == "data"
            else {f"{section}.{k}": v for k, v in getattr(current, section).items()}
        )
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                changes[key] = (before.get(key), after.get(key))
    return changes


def check_resume_identity(
    saved: RunIdentity, current: RunIdentity, allow: list[str], checkpoint: Path
) -> dict[str, tuple[Any, Any]]:
    """Raise ConfigError naming every change not in ``allow``; return the allowed ones.

    ``allow`` holds run-config names (``train.lr``, ``mixture.options.mu_a``, or a section such
    as ``train``). Data changes and a new data-parallel size under ZeRO >= 1 are never allowed:
    the sample stream or the partitioned optimizer state would no longer match.
    """
    changes = identity_changes(saved, current)
    refused, allowed = {}, {}
    for key, change in changes.items():
        name = key.removeprefix("config.")
        if key.startswith("config.") and _allowed(name, allow):
            allowed[name] = change
        elif key == "layout.data_parallel" and saved.layout.get("zero_stage", 0) == 0:
            allowed[key] = change  # ZeRO-0 keeps the whole optimizer state in every rank's files
        else:
            refused[key] = change
    if not refused:
        return allowed
    lines = [
        f"  {key.removeprefix('config.')}: {old!r} -> {new!r}"
        for key, (old, new) in refused.items()
    ]
    hints = []
    if any(k.startswith("config.") for k in refused):
        names = ", ".join(k.removeprefix("config.") for k in refused if k.startswith("config."))
        hints.append(f"to change them on purpose, relaunch with checkpoint.allow_changes=[{names}]")
    if any(k.startswith("data.") for k in refused):
        hints.append(
            "the data or tokenizer differ from the run that wrote the checkpoint: restore them, "
            "or start a new run (another name or checkpoint.resume=none)"
        )
    if "layout.data_parallel" in refused:
        hints.append(
            "ZeRO >= 1 partitions the optimizer state by data-parallel rank: relaunch with "
            f"{refused['layout.data_parallel'][0]} data-parallel ranks"
        )
    if "layout.zero_stage" in refused:
        hints.append("relaunch with the DeepSpeed config the run was started with")
    raise ConfigError(
        f"checkpoint {checkpoint} was written by a different run; changed:\n"
        + "\n".join(lines)
        + "\n"
        + "; ".join(hints)
    )
