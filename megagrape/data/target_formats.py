"""Target files: the formats a target task is read from, as multiple-choice items or documents.

One JSON object per line, ``.jsonl`` or ``.jsonl.gz``:

* plain multiple choice: ``{"id": "q1", "context": "...", "choices": [" a", " b"], "gold": 0}``
  (``id`` optional, the line number is used without it);
* plain LM text: ``{"text": "..."}`` (optional ``id``);
* olmo-eval ``requests.jsonl.gz``: one record per (document, choice) with ``doc``,
  ``request.context``, ``request.continuation``, ``idx`` (the choice), ``doc_id`` and the gold
  index in ``doc.gold`` or ``label``. Records are grouped by ``doc_id``; the unconditional
  requests olmo-eval adds for acc_uncond (``doc_id`` >= ``uncond_docid_offset`` from the
  sibling config.json, default 1,000,000) are skipped. Per-choice contexts (winogrande's
  partial scoring) are kept.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from megagrape.errors import DataError
from megagrape.utils.jsonl import iter_jsonl

DEFAULT_UNCOND_DOCID_OFFSET = 1_000_000
TargetKind = Literal["mc", "lm"]


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice item. ``choice_contexts``, when not empty, gives each choice its own
    context (olmo-eval's partial scoring); otherwise every choice follows ``context``."""

    id: str
    context: str
    choices: tuple[str, ...]
    gold: int
    choice_contexts: tuple[str, ...] = ()

    def context_for(self, choice: int) -> str:
        return self.choice_contexts[choice] if self.choice_contexts else self.context


@dataclass(frozen=True)
class LMDocument:
    """One held-out text document of an LM target."""

    id: str
    text: str


def read_target_file(name: str, path: Path) -> tuple[TargetKind, list[MCItem] | list[LMDocument]]:
    """The kind and items of target ``name``'s file (plain mc, plain LM, or olmo-eval).

    Raises DataError naming the file and line for an empty file, an unknown format, a malformed
    item or a repeated item id.
    """
    records = list(iter_jsonl(path))
    if not records:
        raise DataError(f"target {name!r}: {path} has no items; check the file or drop the target")
    first = records[0][1]
    if "request" in first and "doc" in first:
        kind: TargetKind = "mc"
        items: list = _olmo_eval_items(path, records)
    elif "choices" in first:
        kind, items = "mc", _plain_mc_items(path, records)
    elif "text" in first:
        kind, items = "lm", _lm_documents(path, records)
    else:
        raise DataError(
            f"{path}:{records[0][0]}: unknown target format (keys {sorted(first)}); expected "
            '{"context", "choices", "gold"}, {"text"}, or an olmo-eval requests.jsonl.gz record'
        )
    _check_unique_ids(path, items)
    return kind, items


def target_name(path: str | Path) -> str:
    """``arc.jsonl`` -> ``arc``; ``.../arc_easy/rc_5shot/requests.jsonl.gz`` -> ``arc_easy_rc_5shot``."""
    path = Path(path)
    stem = path.name.removesuffix(".gz").removesuffix(".jsonl")
    if stem == "requests" and path.parent.parent.name:
        return f"{path.parent.parent.name}_{path.parent.name}"
    return stem


def _plain_mc_items(path: Path, records: list[tuple[int, dict]]) -> list[MCItem]:
    items = []
    for line, record in records:
        item_id = str(record.get("id", line))
        context, choices, gold = record.get("context"), record.get("choices"), record.get("gold")
        if not isinstance(context, str):
            raise DataError(f"{path}:{line} (item {item_id}): 'context' missing or not a string")
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise DataError(f"{path}:{line} (item {item_id}): 'choices' must be a list of strings")
        items.append(_checked_item(path, line, item_id, context, tuple(choices), gold))
    return items


def _olmo_eval_items(path: Path, records: list[tuple[int, dict]]) -> list[MCItem]:
    offset = _uncond_docid_offset(path)
    grouped: dict[object, list[tuple[int, dict]]] = {}
    for line, record in records:
        doc_id = record.get("doc_id")
        if not isinstance(doc_id, int) or "idx" not in record or "request" not in record:
            raise DataError(f"{path}:{line}: olmo-eval record without doc_id/idx/request")
        if doc_id >= offset:
            continue
        grouped.setdefault(doc_id, []).append((line, record))
    items = []
    for doc_id, group in grouped.items():
        line = group[0][0]
        by_choice = {int(record["idx"]): record for _, record in group}
        if sorted(by_choice) != list(range(len(by_choice))):
            raise DataError(
                f"{path}:{line} (doc_id {doc_id}): choice indices {sorted(by_choice)} are not 0..n-1"
            )
        ordered = [by_choice[i] for i in range(len(by_choice))]
        contexts = tuple(str(r["request"]["context"]) for r in ordered)
        choices = tuple(str(r["request"]["continuation"]) for r in ordered)
        doc = ordered[0].get("doc", {})
        gold = doc.get("gold") if isinstance(doc.get("gold"), int) else ordered[0].get("label")
        item = _checked_item(path, line, str(doc_id), contexts[0], choices, gold)
        if len(set(contexts)) > 1:
            item = MCItem(item.id, contexts[0], choices, item.gold, choice_contexts=contexts)
        items.append(item)
    return items


def _checked_item(
    path: Path, line: int, item_id: str, context: str, choices: tuple[str, ...], gold: object
) -> MCItem:
    where = f"{path}:{line} (item {item_id})"
    if any(not choice for choice in choices):
        raise DataError(f"{where}: an empty choice cannot be scored; every choice needs text")
    if len(choices) < 2:
        raise DataError(
            f"{where}: {len(choices)} choice(s); a multiple-choice item needs at least 2 "
            "(single-continuation tasks such as olmo-eval's bpb variants are not multiple choice: "
            'write their gold text as an LM target {"text": ...} instead)'
        )
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise DataError(f"{where}: gold {gold!r} is not an index into its {len(choices)} choices")
    return MCItem(id=item_id, context=context, choices=choices, gold=gold)


def _lm_documents(path: Path, records: list[tuple[int, dict]]) -> list[LMDocument]:
    documents = []
    for line, record in records:
        text = record.get("text")
        if not isinstance(text, str):
            raise DataError(f"{path}:{line}: 'text' missing or not a string in an LM target")
        if text:
            documents.append(LMDocument(id=str(record.get("id", line)), text=text))
    if not documents:
        raise DataError(f"{path}: every 'text' is empty; an LM target needs text")
    return documents


def _check_unique_ids(path: Path, items: Sequence[MCItem] | Sequence[LMDocument]) -> None:
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise DataError(f"{path}: item id {item.id!r} appears twice; ids must be unique")
        seen.add(item.id)


def _uncond_docid_offset(path: Path) -> int:
    config_path = path.parent / "config.json"
    try:
        config = json.loads(config_path.read_text())
        return int(config["task_config"]["metric_kwargs"]["uncond_docid_offset"])
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_UNCOND_DOCID_OFFSET
