"""Platform access tokens: pure expiry math, and a cache in NATS KV shared by every replica.

* :func:`needs_refresh` / :func:`is_usable` / :func:`renew_after` are pure functions of (record, now, skew).
* Platforms differ: some hand out a new token when asked near expiry (``renew_early``: refresh ``skew``
  seconds ahead while the old one keeps working), others return the *same* token until it expires (so a
  refresh happens at expiry, once per lifetime). A refresh that returns the token we already had is not
  retried before that token expires.
* :class:`TokenCache` keeps one record per app in the ``imrelay_tokens`` bucket. A refresh is single-flight
  inside the process (a lock per key) and across replicas (a ``<key>.lock`` entry created with
  compare-and-set; a lock older than ``lock_stale_seconds`` is broken). While one replica refreshes early,
  the others keep using the still-valid token; when none is valid they wait for the refresh.
* When the token endpoint itself fails, every replica backs off together: a ``<key>.cooldown`` entry holds
  the time before which nobody asks again (exponential, up to ``max_cooldown``), and callers get a
  :class:`TokenUnavailable` at once instead of hammering the endpoint.
* Every token the cache hands out, fetched here or by another replica, is masked in this process's logs
  and traces from then on (:func:`imrelay.redact.protect_obtained`).
* With :meth:`TokenCache.watch` running, the records are kept in the process, fresh from a watch on the
  bucket, and a send costs no KV call; a refresh still reads the bucket itself.
* :meth:`TokenCache.invalidate` drops a token the platform rejected (40014/42001), only if the record
  still holds that very token, so one bad answer causes one refresh cluster-wide.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.js.kv import KeyValue

from imrelay.errors import TokenUnavailable
from imrelay.hints import platform_hint
from imrelay.kv import create_if_absent, delete_if_unchanged, read
from imrelay.redact import protect_obtained

log = logging.getLogger("imrelay.sender.tokens")

Fetch = Callable[[], Awaitable[tuple[str, float]]]  # -> (token, expires_in seconds)


@dataclass(frozen=True, slots=True)
class TokenRecord:
    token: str
    expires_at: float
    fetched_at: float
    renew_at: float | None = None  # when to fetch again; None: derive from skew

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "token": self.token,
                "expires_at": self.expires_at,
                "fetched_at": self.fetched_at,
                "renew_at": self.renew_at,
            }
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> TokenRecord | None:
        try:
            d = json.loads(data)
            renew = d.get("renew_at")
            return cls(
                token=str(d["token"]),
                expires_at=float(d["expires_at"]),
                fetched_at=float(d.get("fetched_at", 0)),
                renew_at=None if renew is None else float(renew),
            )
        except (ValueError, KeyError, TypeError):
            return None

    def __repr__(self) -> str:
        return (
            f"TokenRecord(token=***, expires_at={self.expires_at}, fetched_at={self.fetched_at}, "
            f"renew_at={self.renew_at})"
        )


def renew_at(
    token: str, expires_in: float, now: float, previous: TokenRecord | None, *, renew_early: bool, skew: float
) -> TokenRecord:
    """The record for a token just fetched: when it expires, and when to ask again."""
    expires = now + expires_in
    if previous is not None and previous.token == token:
        # The platform gave back the token we had: it will not renew it before it expires.
        return TokenRecord(
            token=token,
            expires_at=min(expires, previous.expires_at),
            fetched_at=previous.fetched_at,
            renew_at=previous.expires_at,
        )
    fresh = TokenRecord(token=token, expires_at=expires, fetched_at=now)
    when = expires - effective_skew(fresh, skew) if renew_early else expires
    return TokenRecord(token=token, expires_at=expires, fetched_at=now, renew_at=when)


def effective_skew(record: TokenRecord, skew: float) -> float:
    """Refresh ``skew`` seconds early, but never earlier than half the token's lifetime."""
    lifetime = max(record.expires_at - record.fetched_at, 0.0)
    return min(skew, lifetime / 2)


def is_usable(record: TokenRecord | None, now: float, margin: float = 5.0) -> bool:
    """The token may still be used for a call (not expired, a small margin for the call itself)."""
    if record is None:
        return False
    lifetime = max(record.expires_at - record.fetched_at, 0.0)
    return now < record.expires_at - min(margin, lifetime / 10)


def needs_refresh(record: TokenRecord | None, now: float, skew: float) -> bool:
    """Time to fetch a new token: none cached, past its renew time, or inside the early-refresh window."""
    if record is None:
        return True
    if record.renew_at is not None:
        return now >= record.renew_at
    return now >= record.expires_at - effective_skew(record, skew)


def cooldown_after(failures: int, base: float, cap: float) -> float:
    """Seconds to leave the token endpoint alone after ``failures`` consecutive failures."""
    return float(min(cap, base * 2.0 ** max(failures - 1, 0)))


class TokenCache:
    def __init__(
        self,
        kv: KeyValue,
        *,
        skew: float = 300.0,
        lock_stale_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
        poll_interval: float = 0.05,
        base_cooldown: float = 1.0,
        max_cooldown: float = 60.0,
    ) -> None:
        self.kv = kv
        self.skew = skew
        self.base_cooldown = base_cooldown
        self.max_cooldown = max_cooldown
        self.lock_stale_seconds = lock_stale_seconds
        self.clock = clock
        self.poll_interval = poll_interval
        self._locks: dict[str, asyncio.Lock] = {}
        self._owner = f"{os.getpid()}-{id(self)}"
        self._local: dict[str, TokenRecord] = {}  # the bucket's records, while the watch is live
        self._watching = False

    async def read(self, key: str) -> TokenRecord | None:
        entry = await read(self.kv, key)
        if entry is None:
            return None
        rec = TokenRecord.from_json(entry.value or b"")
        if rec is not None:
            protect_obtained(rec.token)
        return rec

    def seen(self, key: str, value: bytes | None, deleted: bool) -> None:
        """One update of the bucket, from the watch: keep the token records, forget deleted ones."""
        rec = None if deleted else TokenRecord.from_json(value or b"")
        if rec is None:
            self._local.pop(key, None)
            return
        protect_obtained(rec.token)
        self._local[key] = rec

    async def watch(self, retry_seconds: float = 1.0) -> None:
        """Keep the bucket's token records in the process until cancelled; :meth:`get` then reads them
        from here. While the watch is down (NATS unreachable), :meth:`get` reads the bucket again."""
        while True:
            watcher = None
            try:
                watcher = await self.kv.watchall()
                async for entry in watcher:
                    if entry is None:  # the records there were at the start have all come
                        self._watching = True
                        continue
                    self.seen(entry.key, entry.value, entry.operation in ("DEL", "PURGE"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("token bucket watch interrupted (%s); reading the bucket meanwhile", exc)
            finally:
                self._watching = False
                self._local.clear()
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()  # type: ignore[no-untyped-call]
            await asyncio.sleep(retry_seconds)

    async def _cached(self, key: str) -> TokenRecord | None:
        if self._watching:
            return self._local.get(key)
        return await self.read(key)

    async def get(self, key: str, fetch: Fetch, *, renew_early: bool = True) -> str:
        rec = await self._cached(key)
        if rec is not None and not needs_refresh(rec, self.clock(), self.skew):
            return rec.token
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            return await self._refresh_or_wait(key, fetch, renew_early)

    async def _cooldown(self, key: str) -> tuple[float, int]:
        """(until, consecutive failures) of the token endpoint for ``key``."""
        entry = await read(self.kv, f"{key}.cooldown")
        if entry is None:
            return 0.0, 0
        try:
            d = json.loads(entry.value or b"{}")
            return float(d.get("until", 0)), int(d.get("failures", 0))
        except (ValueError, TypeError, AttributeError):
            return 0.0, 0

    async def _look(self, key: str) -> tuple[TokenRecord | None, int, str | None]:
        """(record, consecutive failures of the endpoint, a token to use now): a fresh one, or the old one
        while the endpoint cools down; None means fetch. Raises :class:`TokenUnavailable` while the
        endpoint cools down and no token works."""
        rec = await self.read(key)
        now = self.clock()
        if rec is not None and not needs_refresh(rec, now, self.skew):
            return rec, 0, rec.token
        until, failures = await self._cooldown(key)
        if now < until:
            if rec is not None and is_usable(rec, now, margin=0.0):
                return rec, failures, rec.token
            raise TokenUnavailable(
                "token", "cooldown", "token endpoint failing; backing off", retry_after=until - now
            )
        return rec, failures, None

    async def _refresh_or_wait(self, key: str, fetch: Fetch, renew_early: bool) -> str:
        while True:
            rec, _, ready = await self._look(key)
            if ready is not None:
                return ready
            if await self._try_lock(key):
                try:
                    # again under the lock: what the previous holder left, a token or a failure
                    rec, failures, ready = await self._look(key)
                    if ready is not None:
                        return ready
                    try:
                        token, expires_in = await fetch()
                        protect_obtained(token)
                    except Exception as exc:
                        pause = cooldown_after(failures + 1, self.base_cooldown, self.max_cooldown)
                        body = {"until": self.clock() + pause, "failures": failures + 1}
                        await self.kv.put(f"{key}.cooldown", json.dumps(body).encode())
                        code = getattr(exc, "code", type(exc).__name__)
                        log.warning(
                            "token endpoint for %s failed (%s, %d in a row); pausing %.1fs%s",
                            key,
                            code,
                            failures + 1,
                            pause,
                            platform_hint(key.split(".", 1)[0], code),
                        )
                        raise
                    if failures:
                        await self.kv.delete(f"{key}.cooldown")
                    fresh = renew_at(
                        token, expires_in, self.clock(), rec, renew_early=renew_early, skew=self.skew
                    )
                    await self.kv.put(key, fresh.to_json())
                    if self._watching:
                        self._local[key] = fresh
                    return token
                finally:
                    await self._unlock(key)
            # Another replica is refreshing. An early refresh leaves the old token usable.
            if is_usable(rec, self.clock(), margin=0.0):
                assert rec is not None
                return rec.token
            await asyncio.sleep(self.poll_interval)

    async def _try_lock(self, key: str) -> bool:
        lock_key = f"{key}.lock"
        body = json.dumps({"owner": self._owner, "at": self.clock()}).encode()
        if await create_if_absent(self.kv, lock_key, body) is not None:
            return True
        entry = await read(self.kv, lock_key)
        if entry is None:
            return False  # released meanwhile; the caller loops
        try:
            at = float(json.loads(entry.value or b"{}").get("at", 0))
        except (ValueError, TypeError):
            at = 0.0
        if self.clock() - at > self.lock_stale_seconds:
            log.warning("breaking a stale token-refresh lock for %s", key)
            await delete_if_unchanged(self.kv, lock_key, entry.revision)
        return False

    async def _unlock(self, key: str) -> None:
        try:
            await self.kv.delete(f"{key}.lock")
        except Exception:
            log.warning("could not release the token-refresh lock for %s", key)

    async def invalidate(self, key: str, token: str) -> None:
        """Forget ``token`` if it is still the cached one (the platform said it is invalid)."""
        local = self._local.get(key)
        if local is not None and local.token == token:
            del self._local[key]
        entry = await read(self.kv, key)
        if entry is None:
            return
        rec = TokenRecord.from_json(entry.value or b"")
        if rec is None or rec.token == token:
            await delete_if_unchanged(self.kv, key, entry.revision)  # False: already replaced
