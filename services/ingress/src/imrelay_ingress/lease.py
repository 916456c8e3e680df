"""One owner per bot, cluster-wide: a lease record in the ``imrelay_leases`` KV bucket.

A replica takes a lease that is absent or expired with compare-and-set, renews it (again compare-and-set on
the revision it wrote) well before it expires, and gives it up when it stops. A replica that dies simply
stops renewing: the lease expires after ``ttl`` and another replica takes it. Two replicas never both
believe they hold it past a renewal: a failed renewal means the lease is lost and the socket is closed.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

__all__ = ["Lease", "lease_state"]


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


@dataclass
class Lease:
    kv: KeyValue
    key: str
    owner: str
    ttl: float
    clock: Callable[[], float] = time.time
    revision: int | None = None

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "expires": self.clock() + self.ttl}).encode()

    async def acquire(self) -> bool:
        try:
            entry = await self.kv.get(self.key)
            state, rev = lease_state(entry.value, self.clock(), self.owner), entry.revision
        except KeyNotFoundError:
            state, rev = "free", None
        if state == "taken":
            return False
        try:
            if rev is None:
                self.revision = await self.kv.create(self.key, self._body())
            else:
                self.revision = await self.kv.update(self.key, self._body(), last=rev)
            return True
        except (KeyWrongLastSequenceError, APIError):
            return False  # someone else was quicker

    async def renew(self) -> bool:
        if self.revision is None:
            return False
        try:
            self.revision = await self.kv.update(self.key, self._body(), last=self.revision)
            return True
        except (KeyWrongLastSequenceError, APIError):
            self.revision = None
            return False

    async def release(self) -> None:
        if self.revision is None:
            return
        with contextlib.suppress(Exception):  # not released: it expires on its own
            await self.kv.delete(self.key, last=self.revision)
        self.revision = None
