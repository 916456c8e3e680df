"""Delivery records in NATS KV: at most one replica posts a given reply part, and never twice.

States of a record (key ``reply.<reply id>.<part>``): absent -> ``pending`` (claimed with compare-and-set by
the replica about to post) -> ``done`` (the platform accepted it). A ``pending`` older than ``stale_after``
belongs to a replica that died mid-post and may be taken over; the replica posting keeps its claim fresh
(:meth:`DeliveryClaims.kept`: the ``at`` of its record rewritten three times per ``stale_after``), so a
slow post, retries included, is never taken for a dead one, and ``stale_after`` can be short. The bucket's
TTL forgets records after the dedupe window.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from nats.js.kv import KeyValue

from imrelay.heartbeat import every
from imrelay.kv import create_if_absent, delete_if_unchanged, read, update_if_revision

log = logging.getLogger("imrelay.sender.claims")


class Claim(enum.Enum):
    DONE = "done"
    BUSY = "busy"


@dataclass(slots=True)
class Held:
    """A claim this replica holds: the KV revision it wrote last (:meth:`DeliveryClaims.kept` moves it)."""

    revision: int


def refresh_interval(stale_after: float) -> float:
    """How often a held claim is rewritten: three times before it could be taken for a dead replica's."""
    return max(stale_after / 3, 0.1)


def busy_retry_delay(stale_after: float, backoff_max: float) -> float:
    """When to look again at a record another copy is posting: soon enough to take over a dead replica's
    claim about when it goes stale, not so often that a live one's long post is polled."""
    return min(backoff_max, max(stale_after / 2, 0.5))


def _state(value: bytes | None) -> tuple[str, float]:
    try:
        d = json.loads(value or b"{}")
        return str(d.get("state", "done")), float(d.get("at", 0))
    except (ValueError, TypeError, AttributeError):
        return "done", 0.0  # unreadable: assume delivered rather than risk a double post


class DeliveryClaims:
    def __init__(
        self, kv: KeyValue, *, stale_after: float = 300.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.kv = kv
        self.stale_after = stale_after
        self.clock = clock

    def _pending(self) -> bytes:
        return json.dumps({"state": "pending", "at": self.clock()}).encode()

    async def claim(self, record: str) -> Held | Claim:
        for _ in range(3):
            created = await create_if_absent(self.kv, record, self._pending())
            if created is not None:
                return Held(created)
            entry = await read(self.kv, record)
            if entry is None:
                continue  # released between our two calls: try to claim again
            state, at = _state(entry.value)
            if state != "pending":
                return Claim.DONE
            if self.clock() - at < self.stale_after:
                return Claim.BUSY
            taken = await update_if_revision(self.kv, record, self._pending(), entry.revision)
            return Claim.BUSY if taken is None else Held(taken)
        return Claim.BUSY

    async def refresh(self, record: str, held: Held) -> bool:
        """Show the claim is still being worked on (a new ``at``); False if it was taken over meanwhile."""
        taken = await update_if_revision(self.kv, record, self._pending(), held.revision)
        if taken is None:
            return False
        held.revision = taken
        return True

    @contextlib.asynccontextmanager
    async def kept(self, record: str, held: Held) -> AsyncIterator[None]:
        """While the block runs (a post, with its retries), keep ``held`` fresh so no other replica takes
        it over; a block shorter than :func:`refresh_interval` costs a timer, no KV call."""

        async def refresh() -> None:
            try:
                if not await self.refresh(record, held):
                    log.warning("delivery claim %s was taken over while posting", record)
            except Exception as exc:  # the next beat tries again
                log.info("could not refresh delivery claim %s (%s)", record, type(exc).__name__)

        # one refresh at a time (each needs the revision the previous one wrote), and the one in flight
        # is let finish: done() needs its revision
        async with every(refresh_interval(self.stale_after), refresh, finish=True):
            yield

    async def done(self, record: str, held: Held | Claim) -> None:
        assert isinstance(held, Held)
        body = json.dumps({"state": "done", "at": self.clock()}).encode()
        if await update_if_revision(self.kv, record, body, held.revision) is None:
            await self.kv.put(record, body)  # our stale claim was taken over; we did post it

    async def release(self, record: str, held: Held | Claim) -> None:
        if not isinstance(held, Held):
            return
        try:
            await delete_if_unchanged(self.kv, record, held.revision)
        except Exception as exc:  # a claim left behind goes stale and is taken over
            log.warning("could not release delivery claim %s (%s)", record, type(exc).__name__)

    async def first(self, record: str) -> bool:
        """True for the one caller, cluster-wide, that marks ``record`` first (e.g. "this reply was first
        shown"); False for every later one, and when the bucket cannot say (best effort)."""
        try:
            return await create_if_absent(self.kv, record, b"1") is not None
        except Exception as exc:
            log.info("could not mark %s (%s)", record, type(exc).__name__)
            return False
