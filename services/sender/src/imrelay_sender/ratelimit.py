"""Platform rate limits that hold across every sender replica: a sliding-window log per limit scope, kept
in the ``imrelay_ratelimits`` KV bucket and updated with compare-and-set.

* :func:`admit` is the pure rule: given the send times of the last window, may one more go now, and if not,
  how long until it may.
* :class:`RateLimiter` applies it to a KV record: read, decide, write back with the revision read; a
  replica that lost the race reads again. It remembers what it last wrote (revision and send times) and
  decides on that without reading: while no other replica wrote meanwhile, a send costs one write (a
  scope never seen costs one create); when one did, the write fails on the revision and the record is
  read. A message that may not go yet *waits* (the caller keeps its
  JetStream message alive meanwhile) instead of failing.

The window is widened by ``margin`` seconds: the platform counts a message when it arrives, which is a
little after we decided to send it, and replicas' clocks differ slightly.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from nats.js.kv import KeyValue

from imrelay.kv import read, update_if_revision

__all__ = ["Limit", "RateLimiter", "admit"]


@dataclass(frozen=True, slots=True)
class Limit:
    limit: int
    window: float


def admit(times: Sequence[float], now: float, limit: int, window: float) -> tuple[bool, list[float], float]:
    """``(allowed, times to store, seconds to wait)`` for one more send at ``now``."""
    recent = sorted(t for t in times if now - window < t <= now + window)
    if len(recent) < limit:
        return True, [*recent, now], 0.0
    # the send that must leave the window before another may go
    blocker = recent[len(recent) - limit]
    return False, recent, max(blocker + window - now, 0.0)


class RateLimiter:
    def __init__(
        self,
        kv: KeyValue,
        *,
        margin: float = 1.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.kv = kv
        self.margin = margin
        self.clock = clock
        self._sleep = sleep
        self._known: dict[str, tuple[int, list[float]]] = {}  # key -> what this process wrote last

    def _remember(self, key: str, revision: int, times: list[float]) -> None:
        self._known[key] = (revision, times)
        if len(self._known) > 10_000:  # scopes not used for a while: forget the oldest
            for stale in list(self._known)[:1000]:
                del self._known[stale]

    async def acquire(self, key: str, limit: Limit) -> float:
        """Wait until one more send under ``key`` keeps within ``limit``; return the seconds waited."""
        started = self.clock()
        window = limit.window + self.margin
        known = self._known.pop(key, None)
        # first, what this process wrote last (or, for a scope it never wrote, an absent record)
        revision, times = known if known is not None else (None, [])
        while True:
            now = self.clock()
            allowed, new_times, wait = admit(times, now, limit.limit, window)
            if allowed:
                written = await update_if_revision(self.kv, key, json.dumps(new_times).encode(), revision)
                if written is not None:
                    self._remember(key, written, new_times)
                    return now - started
                # another replica sent meanwhile (or the guess was stale): decide again on the record
            else:
                # jitter spreads the waiters that a freed slot wakes at once
                await self._sleep(wait + random.uniform(0, min(0.05, limit.window / 20)))  # noqa: S311
            entry = await read(self.kv, key)
            revision, times = (None, []) if entry is None else (entry.revision, _times(entry.value))


def _times(value: bytes | None) -> list[float]:
    try:
        data = json.loads(value or b"[]")
        return [float(t) for t in data] if isinstance(data, list) else []
    except (ValueError, TypeError):
        return []
