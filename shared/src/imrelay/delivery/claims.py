"""Delivery records in NATS KV: at most one replica posts a given reply part, and never twice.

States of a record (key ``reply.<reply id>.<part>``): absent -> ``pending`` (claimed with compare-and-set by
the replica about to post) -> ``done`` (the platform accepted it). A ``pending`` older than ``stale_after``
belongs to a replica that died mid-post and may be taken over; the bucket's TTL forgets records after the
dedupe window.
"""

from __future__ import annotations

import enum
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.js.kv import KeyValue

from imrelay.kv import create_if_absent, delete_if_unchanged, read, update_if_revision

log = logging.getLogger("imrelay.sender.claims")


class Claim(enum.Enum):
    DONE = "done"
    BUSY = "busy"


@dataclass(frozen=True, slots=True)
class Held:
    """A claim this replica holds: the KV revision it wrote."""

    revision: int


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
