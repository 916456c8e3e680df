"""Retry delays: exponential backoff with full jitter, honouring a platform's retry-after."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(
    attempt: int,
    base: float,
    cap: float,
    *,
    retry_after: float | None = None,
    rand: Callable[[], float] = random.random,
) -> float:
    """Delay before retry number ``attempt`` (1-based): uniform in [0, min(cap, base * 2**(attempt-1))],
    but never less than ``retry_after`` when the platform gave one."""
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    ceiling = min(cap, base * 2.0 ** (attempt - 1))
    delay: float = ceiling * rand()
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay
