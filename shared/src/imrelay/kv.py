"""Compare-and-set on NATS KV, written once for every bucket that needs it.

NATS KV revisions make optimistic concurrency possible, but nats-py reports a lost race differently per
call: :class:`KeyWrongLastSequenceError` from ``create``/``update``, a plain :class:`APIError` (error code
10071 or 10164) from a conditional ``delete``. These helpers turn every lost race into a return value:

* :func:`read` — the entry, or None when the key is absent (or deleted).
* :func:`create_if_absent` — write only if the key does not exist; its revision, or None if it does.
* :func:`update_if_revision` — write only if the key is still at ``revision`` (None: still absent).
* :func:`delete_if_unchanged` — delete only if the key is still at ``revision``.
* :func:`read_modify_write` — read, compute the new value, write it back with the revision read; start
  over when another writer got there first.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

__all__ = [
    "DELETE",
    "Delete",
    "create_if_absent",
    "delete_if_unchanged",
    "read",
    "read_modify_write",
    "update_if_revision",
]

# JSStreamWrongLastSequenceErrF, JSStreamWrongLastSequenceConstantErr
_WRONG_LAST_SEQUENCE = (10071, 10164)


def lost_race(exc: BaseException) -> bool:
    """The error a compare-and-set gets when the key is no longer at the expected revision."""
    return isinstance(exc, KeyWrongLastSequenceError) or (
        isinstance(exc, APIError) and exc.err_code in _WRONG_LAST_SEQUENCE
    )


async def read(kv: KeyValue, key: str) -> KeyValue.Entry | None:
    """The latest entry of ``key``; None when it is absent or deleted."""
    try:
        return await kv.get(key)
    except KeyNotFoundError:
        return None


async def create_if_absent(kv: KeyValue, key: str, value: bytes) -> int | None:
    """Write ``value`` only if ``key`` does not exist; the new revision, or None if the key exists."""
    try:
        return await kv.create(key, value)
    except KeyWrongLastSequenceError:
        return None


async def update_if_revision(kv: KeyValue, key: str, value: bytes, revision: int | None) -> int | None:
    """Write ``value`` only if ``key`` is still at ``revision`` (``None``: only if it is still absent); the
    new revision, or None if someone changed the key meanwhile."""
    if revision is None:
        return await create_if_absent(kv, key, value)
    try:
        return await kv.update(key, value, last=revision)
    except KeyWrongLastSequenceError:
        return None


async def delete_if_unchanged(kv: KeyValue, key: str, revision: int | None) -> bool:
    """Delete ``key`` only if its latest revision is ``revision``; False if someone changed it."""
    try:
        await kv.delete(key, last=revision)
        return True
    except APIError as exc:
        if lost_race(exc):
            return False
        raise


class Delete(enum.Enum):
    """What a :func:`read_modify_write` change returns to delete the key."""

    DELETE = "delete"


DELETE = Delete.DELETE

Change = Callable[[bytes | None], bytes | Delete | None]


async def read_modify_write(kv: KeyValue, key: str, change: Change, *, attempts: int = 10) -> bool:
    """Apply ``change`` to the current value of ``key`` (None when absent) and write the result back only
    if nobody wrote the key in between; on a lost race, read and apply again, up to ``attempts`` times.

    ``change`` returns the new value, :data:`DELETE` to delete the key, or None to leave it as it is.
    Returns True once a write went through; False when ``change`` left the key alone or every attempt
    lost its race.
    """
    for _ in range(attempts):
        entry = await read(kv, key)
        revision = None if entry is None else entry.revision
        new = change(None if entry is None else entry.value)
        if new is None:
            return False
        if new is DELETE:
            if revision is None:
                return False
            if await delete_if_unchanged(kv, key, revision):
                return True
            continue
        assert isinstance(new, bytes)
        if await update_if_revision(kv, key, new, revision) is not None:
            return True
    return False
