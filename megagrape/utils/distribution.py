"""The one check that weights form a distribution over named items (domains).

Every weight must be a finite real number >= 0, and their sum must be within
``SUM_TOLERANCE`` of 1. The tolerance admits weights published to 4 decimals (GRAPE's
crisp.json sums to 1.0001); accepted weights are renormalised to sum to 1 exactly, so the
tolerance never reaches the maths.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

SUM_TOLERANCE = 1e-3
DEFAULT_SUM_HINT = (
    "divide each weight by their sum so that they form a distribution over the domains"
)


def checked_distribution(
    values: Sequence[Any],
    names: Sequence[str],
    *,
    what: str,
    error: type[Exception],
    sum_hint: str = DEFAULT_SUM_HINT,
    normalize: bool = False,
) -> list[float]:
    """``values`` [K] (one per domain in ``names``) divided by their sum, once checked.

    Raises ``error`` with a message that starts with ``what`` (the field or file the weights
    came from) and names the domain, its index and value for a bad entry, or the sum for a
    sum of 0 or away from 1 (then ending with ``sum_hint``). With ``normalize`` any positive
    sum is accepted. The caller checks that there is one value per name.
    """
    for index, (name, value) in enumerate(zip(names, values, strict=True)):
        number = not isinstance(value, bool) and isinstance(value, numbers.Real)
        if not number or not math.isfinite(value) or value < 0:
            shown = float(value) if number else value
            raise error(
                f"{what}: the weight of domain {name!r} (index {index}) is {shown!r}; every "
                "weight must be a finite number >= 0 (use 0 to leave a domain out)"
            )
    total = math.fsum(float(value) for value in values)
    if total <= 0.0:
        raise error(
            f"{what}: the weights sum to {total:.9g}; at least one domain needs a positive weight"
        )
    if not normalize and abs(total - 1.0) > SUM_TOLERANCE:
        raise error(
            f"{what}: the weights sum to {total:.9g}, not 1 (tolerance {SUM_TOLERANCE:g}); "
            f"{sum_hint}"
        )
    return [float(value) / total for value in values]
