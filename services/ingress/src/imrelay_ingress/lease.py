"""One owner per bot, cluster-wide: a lease record in the ``imrelay_leases`` KV bucket.

A replica takes a lease that is absent or expired with compare-and-set, renews it (again compare-and-set on
the revision it wrote) well before it expires, and gives it up when it stops. A replica that dies simply
stops renewing: the lease expires after ``ttl`` and another replica takes it. Two replicas never both
believe they hold it past a renewal: a refused renewal means the lease is lost and the socket is closed.

The broker may fail any call for a while (a leader election in a NATS cluster answers "no responders" or
times out for seconds). Such an error never ends anything: acquiring counts as "not taken, try again", and
renewing counts as "not renewed yet" for as long as the last write is still valid (with a margin for clock
skew between replicas), so a short election does not cost the socket.

The record also carries the owner's stand-down after a kick (``down_until``, wall-clock seconds): the next
owner reads it when it takes the lease (``inherited``) and keeps standing down, and a replica that stops
during a stand-down leaves the record to expire instead of deleting it. So neither a failover nor a
rolling restart takes the bot back from another instance before the hold-off is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from nats.js.kv import KeyValue

from imrelay import kv

__all__ = ["Lease", "lease_state"]

T = TypeVar("T")
VALID_SHARE = 0.8  # our write counts as held for this share of the ttl: the rest covers clock skew


def lease_state(value: bytes | None, now: float, owner: str) -> str:
    """``mine``, ``free`` (absent, unreadable or expired) or ``taken`` (another live owner)."""
    try:
        d = json.loads(value or b"{}")
        holder, expires = str(d["owner"]), float(d["expires"])
    except (ValueError, KeyError, TypeError):
        return "free"
    if now >= expires:
        return "free"
    return "mine" if holder == owner else "taken"


def _down_until(value: bytes | None) -> float:
    try:
        return float(json.loads(value or b"{}").get("down_until", 0.0))
    except (ValueError, TypeError, AttributeError):
        return 0.0


@dataclass
class Lease:
    kv: KeyValue
    key: str
    owner: str
    ttl: float
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    revision: int | None = None
    valid_until: float = 0.0  # monotonic time our last write stops counting as held
    error: str = ""  # the broker error of the last call, "" when it succeeded
    down_until: float = 0.0  # wall clock: the socket stays down until then (written into the record)
    inherited: float = 0.0  # the ``down_until`` of the record this replica took over

    @property
    def failing(self) -> bool:
        return bool(self.error)

    def _body(self) -> bytes:
        body: dict[str, Any] = {"owner": self.owner, "expires": self.clock() + self.ttl}
        if self.down_until > self.clock():
            body["down_until"] = self.down_until
        return json.dumps(body).encode()

    async def _call(self, call: Awaitable[T]) -> T:
        return await asyncio.wait_for(call, timeout=max(0.5, self.ttl / 5))

    async def _write(self, last: int | None) -> bool:
        """Write the lease if the record is still at ``last`` (None: still absent); False if it is not."""
        started = self.monotonic()
        revision = await self._call(kv.update_if_revision(self.kv, self.key, self._body(), last))
        if revision is None:
            return False
        self.revision = revision
        self.valid_until = started + self.ttl * VALID_SHARE
        self.error = ""
        return True

    async def peek(self) -> str:
        """The lease as the bucket shows it now: ``mine``, ``taken``, ``free``; raises on a broker error."""
        entry = await self._call(kv.read(self.kv, self.key))
        return "free" if entry is None else lease_state(entry.value, self.clock(), self.owner)

    async def acquire(self) -> bool:
        try:
            entry = await self._call(kv.read(self.kv, self.key))
            if entry is None:
                state, rev, previous = "free", None, None
            else:
                state, rev = lease_state(entry.value, self.clock(), self.owner), entry.revision
                previous = entry.value
            if state == "taken":
                self.error = ""
                return False
            self.down_until = max(self.down_until, _down_until(previous))
            if not await self._write(rev):
                self.error = ""
                return False  # someone else was quicker
            self.inherited = self.down_until
            return True
        except Exception as exc:  # the broker is away or electing a leader: not taken, try again
            self.revision, self.error = None, type(exc).__name__ or "error"
            return False

    async def renew(self) -> bool:
        """True while the lease is held: renewed now, or not renewable just now but still valid."""
        if self.revision is None:
            return False
        try:
            if await self._write(self.revision):
                return True
            # A write of ours may have gone through although its answer was lost: the record is still ours.
            with contextlib.suppress(Exception):
                entry = await self._call(kv.read(self.kv, self.key))
                if (
                    entry is not None
                    and entry.revision
                    and lease_state(entry.value, self.clock(), self.owner) == "mine"
                ):
                    if await self._write(entry.revision):
                        return True
            self.revision = None
            return False
        except Exception as exc:  # a broker error: held until the last write runs out
            self.error = type(exc).__name__ or "error"
            if self.monotonic() < self.valid_until:
                return True
            self.revision = None
            return False

    async def release(self) -> None:
        if self.revision is None or self.down_until > self.clock():  # a stand-down outlives us
            return
        with contextlib.suppress(Exception):  # not released: it expires on its own
            await kv.delete_if_unchanged(self.kv, self.key, self.revision)
        self.revision = None
