"""TokenCache and DeliveryClaims on an in-memory bucket: several caches on one bucket stand for replicas."""

from __future__ import annotations

import asyncio
import json

import pytest
from nats.errors import NoRespondersError
from nats.js.kv import KeyValue

from imrelay.delivery.claims import Claim, DeliveryClaims, Held, busy_retry_delay, refresh_interval
from imrelay.delivery.tokens import TokenCache, TokenRecord
from imrelay.errors import TokenUnavailable, TransientUpstreamError
from tests.fakes import FakeKV


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Endpoint:
    """A token endpoint: hands out tok1, tok2, … (valid ``lifetime`` seconds), or fails while told to."""

    def __init__(self, lifetime: float = 7200.0) -> None:
        self.lifetime = lifetime
        self.calls = 0
        self.failing = False
        self.gate: asyncio.Event | None = None
        self.asked = asyncio.Event()

    async def __call__(self) -> tuple[str, float]:
        self.calls += 1
        self.asked.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise TransientUpstreamError("wecom_app", "token", "ConnectTimeout")
        return f"tok{self.calls}", self.lifetime


async def test_one_fetch_for_many_callers_across_replicas() -> None:
    kv, clock, endpoint = FakeKV(), Clock(), Endpoint()
    endpoint.gate = asyncio.Event()
    replicas = [TokenCache(kv, clock=clock, poll_interval=0.001) for _ in range(3)]
    waiting = [asyncio.create_task(c.get("wecom.ww1.1", endpoint)) for c in replicas for _ in range(3)]
    await endpoint.asked.wait()
    endpoint.gate.set()
    assert await asyncio.gather(*waiting) == ["tok1"] * 9
    assert endpoint.calls == 1
    assert kv.value("wecom.ww1.1.lock") is None  # released


async def test_a_cached_token_is_used_until_its_refresh_time() -> None:
    kv, clock, endpoint = FakeKV(), Clock(), Endpoint(lifetime=1000.0)
    cache = TokenCache(kv, clock=clock, skew=100.0)
    assert await cache.get("k", endpoint) == "tok1"
    clock.now += 850
    assert await cache.get("k", endpoint) == "tok1"
    clock.now += 100  # inside the early-refresh window
    assert await cache.get("k", endpoint) == "tok2"
    assert endpoint.calls == 2


async def test_a_failing_endpoint_cools_down_for_every_replica_then_is_asked_again() -> None:
    kv, clock, endpoint = FakeKV(), Clock(), Endpoint()
    a = TokenCache(kv, clock=clock, base_cooldown=10.0, max_cooldown=60.0)
    b = TokenCache(kv, clock=clock, base_cooldown=10.0, max_cooldown=60.0)
    endpoint.failing = True
    with pytest.raises(TransientUpstreamError):
        await a.get("k", endpoint)
    with pytest.raises(TokenUnavailable) as err:
        await b.get("k", endpoint)  # the other replica does not ask during the cooldown
    assert endpoint.calls == 1 and err.value.retry_after == pytest.approx(10.0)
    clock.now += 11
    with pytest.raises(TransientUpstreamError):
        await b.get("k", endpoint)
    assert endpoint.calls == 2
    assert json.loads(kv.value("k.cooldown") or b"{}")["failures"] == 2  # the next pause is longer
    clock.now += 21
    endpoint.failing = False
    assert await a.get("k", endpoint) == "tok3"
    assert kv.value("k.cooldown") is None


async def test_a_cooling_endpoint_leaves_a_still_valid_token_in_use() -> None:
    kv, clock, endpoint = FakeKV(), Clock(), Endpoint(lifetime=1000.0)
    cache = TokenCache(kv, clock=clock, skew=300.0, base_cooldown=30.0)
    assert await cache.get("k", endpoint) == "tok1"
    clock.now += 800  # time to renew early
    endpoint.failing = True
    with pytest.raises(TransientUpstreamError):
        await cache.get("k", endpoint)
    assert await cache.get("k", endpoint) == "tok1"  # cooling down, and tok1 has 200 s left
    assert endpoint.calls == 2


async def test_invalidate_drops_only_the_token_that_was_rejected() -> None:
    kv, clock, endpoint = FakeKV(), Clock(), Endpoint()
    a, b = TokenCache(kv, clock=clock), TokenCache(kv, clock=clock)
    assert await a.get("k", endpoint) == "tok1"
    await a.invalidate("k", "tok1")
    assert await b.get("k", endpoint) == "tok2"
    await a.invalidate("k", "tok1")  # a late report about the old token: tok2 stays
    record = TokenRecord.from_json(kv.value("k") or b"")
    assert record is not None and record.token == "tok2"
    assert await a.get("k", endpoint) == "tok2" and endpoint.calls == 2


async def test_a_stale_refresh_lock_is_broken() -> None:
    kv, clock, endpoint = FakeKV(), Clock(), Endpoint()
    await kv.put("k.lock", json.dumps({"owner": "dead", "at": clock.now}).encode())
    cache = TokenCache(kv, clock=clock, lock_stale_seconds=30.0, poll_interval=0.001)
    clock.now += 31
    assert await cache.get("k", endpoint) == "tok1"


# ---- delivery claims ----------------------------------------------------------------------------------


async def test_a_part_is_claimed_by_one_and_skipped_once_done() -> None:
    kv, clock = FakeKV(), Clock()
    a, b = DeliveryClaims(kv, clock=clock), DeliveryClaims(kv, clock=clock)
    held = await a.claim("reply.r.0")
    assert isinstance(held, Held)
    assert await b.claim("reply.r.0") is Claim.BUSY
    await a.done("reply.r.0", held)
    assert await b.claim("reply.r.0") is Claim.DONE


async def test_a_released_claim_may_be_taken_again() -> None:
    claims = DeliveryClaims(FakeKV())
    held = await claims.claim("reply.r.0")
    await claims.release("reply.r.0", held)
    assert isinstance(await claims.claim("reply.r.0"), Held)


async def test_a_stale_claim_is_taken_over_and_the_late_owner_still_marks_it_done() -> None:
    kv, clock = FakeKV(), Clock()
    dead = DeliveryClaims(kv, stale_after=300, clock=clock)
    alive = DeliveryClaims(kv, stale_after=300, clock=clock)
    first = await dead.claim("reply.r.0")
    clock.now += 299
    assert await alive.claim("reply.r.0") is Claim.BUSY
    clock.now += 2
    second = await alive.claim("reply.r.0")
    assert isinstance(second, Held)
    await dead.release("reply.r.0", first)  # its revision is no longer the latest: nothing happens
    assert await DeliveryClaims(kv, clock=clock).claim("reply.r.0") is Claim.BUSY
    await dead.done("reply.r.0", first)  # it did post after all: recorded as done
    assert await alive.claim("reply.r.0") is Claim.DONE


async def test_first_is_true_once_and_false_when_the_bucket_cannot_say() -> None:
    kv = FakeKV()
    claims = DeliveryClaims(kv)
    assert await claims.first("reply.r.shown") is True
    assert await claims.first("reply.r.shown") is False
    kv.fail_with = NoRespondersError()
    assert await claims.first("reply.s.shown") is False


async def test_a_claim_kept_fresh_is_never_taken_for_a_dead_replicas() -> None:
    kv, clock = FakeKV(), Clock()
    posting = DeliveryClaims(kv, stale_after=0.3, clock=clock)
    other = DeliveryClaims(kv, stale_after=0.3, clock=clock)
    held = await posting.claim("reply.r.0")
    assert isinstance(held, Held)
    first_revision = held.revision
    async with posting.kept("reply.r.0", held):
        for _ in range(3):  # a slow post: much longer than stale_after, each step past it
            clock.now += 0.25
            await asyncio.sleep(0.15)  # a refresh (every 0.1 s) writes the time the clock now says
            assert await other.claim("reply.r.0") is Claim.BUSY
    assert held.revision > first_revision  # refreshed, and done() uses the latest revision
    await posting.done("reply.r.0", held)
    assert await other.claim("reply.r.0") is Claim.DONE


async def test_a_claim_left_unrefreshed_is_taken_over_after_stale_after() -> None:
    kv, clock = FakeKV(), Clock()
    dead = DeliveryClaims(kv, stale_after=6.0, clock=clock)
    held = await dead.claim("reply.r.0")
    assert isinstance(held, Held)
    clock.now += 6.5
    taker = DeliveryClaims(kv, stale_after=6.0, clock=clock)
    assert isinstance(await taker.claim("reply.r.0"), Held)
    assert await dead.refresh("reply.r.0", held) is False  # it was taken over


def test_claim_timings() -> None:
    assert refresh_interval(6.0) == 2.0
    assert refresh_interval(0.01) == 0.1
    assert busy_retry_delay(6.0, 30.0) == 3.0  # a dead replica's claim is looked at again about when stale
    assert busy_retry_delay(600.0, 30.0) == 30.0
    assert busy_retry_delay(0.1, 30.0) == 0.5


class NoReads(FakeKV):
    """A bucket whose reads fail: a cache that needs them is noticed."""

    async def get(self, key: str, revision: int | None = None, validate_keys: bool = True) -> KeyValue.Entry:
        raise AssertionError(f"read {key} from the bucket")


async def test_a_watched_token_is_used_without_a_bucket_read() -> None:
    kv, clock, endpoint = NoReads(), Clock(), Endpoint(lifetime=1000.0)
    cache = TokenCache(kv, clock=clock, skew=100.0)
    cache._watching = True  # as once the watch has seen the bucket's records
    cache.seen("k", TokenRecord("tokA", clock.now + 1000, clock.now).to_json(), deleted=False)
    assert await cache.get("k", endpoint) == "tokA"
    assert endpoint.calls == 0
    cache.seen("k.lock", b'{"owner": "x", "at": 1}', deleted=False)  # not a token: not kept
    assert set(cache._local) == {"k"}
    cache.seen("k", None, deleted=True)  # another replica dropped it (the platform refused it)
    assert "k" not in cache._local
