"""Hints for unknown names: the closest valid one, as "did you mean ...?"."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

NEAREST_CUTOFF = 0.5
"""Smallest difflib similarity ratio (0..1) for a candidate to be suggested."""


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``"did you mean 'X'?"`` for the candidate X closest to ``name``; "" when none is close."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=NEAREST_CUTOFF)
    return f"did you mean {match[0]!r}?" if match else ""
