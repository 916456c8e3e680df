"""In-memory stand-ins for what the services use of NATS, so handlers run without a server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

__all__ = ["FakeKV"]


@dataclass
class _Latest:
    revision: int
    value: bytes | None  # None: a delete marker


class FakeKV(KeyValue):
    """The part of :class:`nats.js.kv.KeyValue` imrelay uses, in memory, with the server's rules: one revision
    sequence for the whole bucket, a delete leaves a marker (``create`` then succeeds again), ``update`` and a
    conditional ``delete`` succeed only at the key's latest revision, and the same errors as nats-py —
    :class:`KeyNotFoundError`, :class:`KeyWrongLastSequenceError` from ``create``/``update``, a plain
    :class:`APIError` (err_code 10071) from a conditional ``delete``.

    :meth:`before_next_write` runs a coroutine just before the next write, to stage a lost race; ``fail_with``
    makes every call raise (a bucket that cannot be reached)."""

    def __init__(self, name: str = "fake") -> None:  # no super().__init__: nothing to connect to
        self._name = name
        self._seq = 0
        self._latest: dict[str, _Latest] = {}
        self._interfere: list[Callable[[], Awaitable[None]]] = []
        self._interfering = False
        self.fail_with: Exception | None = None
        self.writes: list[tuple[str, str]] = []  # (operation, key), in order

    def before_next_write(self, action: Callable[[], Awaitable[None]]) -> None:
        self._interfere.append(action)

    async def _writing(self, op: str, key: str) -> None:
        self._check()
        if self._interfere and not self._interfering:
            self._interfering = True  # the staged writes themselves go straight through
            try:
                await self._interfere.pop(0)()
            finally:
                self._interfering = False
        self.writes.append((op, key))

    def _check(self) -> None:
        if self.fail_with is not None:
            raise self.fail_with

    def _store(self, key: str, value: bytes | None) -> int:
        self._seq += 1
        self._latest[key] = _Latest(self._seq, value)
        return self._seq

    def _revision(self, key: str) -> int:
        latest = self._latest.get(key)
        return 0 if latest is None else latest.revision

    async def get(self, key: str, revision: int | None = None, validate_keys: bool = True) -> KeyValue.Entry:
        self._check()
        latest = self._latest.get(key)
        if latest is None or latest.value is None or (revision is not None and revision != latest.revision):
            raise KeyNotFoundError
        return KeyValue.Entry(
            bucket=self._name,
            key=key,
            value=latest.value,
            revision=latest.revision,
            delta=None,
            created=None,
            operation=None,
        )

    async def put(self, key: str, value: bytes, validate_keys: bool = True) -> int:
        await self._writing("put", key)
        return self._store(key, value)

    async def create(
        self, key: str, value: bytes, validate_keys: bool = True, msg_ttl: float | None = None
    ) -> int:
        await self._writing("create", key)
        latest = self._latest.get(key)
        if latest is not None and latest.value is not None:
            raise KeyWrongLastSequenceError(description="wrong last sequence")
        return self._store(key, value)

    async def update(
        self, key: str, value: bytes, last: int | None = None, validate_keys: bool = True
    ) -> int:
        await self._writing("update", key)
        if self._revision(key) != (last or 0):
            raise KeyWrongLastSequenceError(description="wrong last sequence")
        return self._store(key, value)

    async def delete(
        self, key: str, last: int | None = None, validate_keys: bool = True, msg_ttl: float | None = None
    ) -> bool:
        await self._writing("delete", key)
        if last and last > 0 and self._revision(key) != last:
            raise APIError(code=400, err_code=10071, description="wrong last sequence")
        self._store(key, None)
        return True

    async def keys(self, filters: list[str] | None = None, **kwargs: object) -> list[str]:
        self._check()
        found = [
            k
            for k, v in self._latest.items()
            if v.value is not None and (not filters or any(f in k for f in filters))
        ]
        if not found:
            raise NoKeysError
        return found

    def value(self, key: str) -> bytes | None:
        """The current value of ``key`` (None: absent or deleted), read without going through the API."""
        latest = self._latest.get(key)
        return None if latest is None else latest.value
