"""Sender guarantees that need a real NATS: delivery records stop a redelivered chunk from being posted
twice, and one token refresh is shared by every replica."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable

import nats
import pytest
from faststream.nats import NatsMessage
from nats.js.api import AckPolicy, ConsumerConfig

from imrelay import subjects
from imrelay.broker import durable_consumer, make_broker, update_consumers
from imrelay.config import NatsConfig
from imrelay.delivery.tokens import TokenCache
from imrelay.events import Chat, ChatType, ReplyChunk, Sender
from imrelay.jetstream import ensure_buckets, ensure_streams
from imrelay.natsserver import EmbeddedNats
from imrelay.platforms.wecom_app.handle import WeComAppHandle

from .stack import Stack

pytestmark = pytest.mark.nats


async def test_redelivered_final_chunk_is_not_posted_twice(stack: Stack) -> None:
    who = f"u{secrets.token_hex(4)}"
    chunk = ReplyChunk(
        reply_id=f"r-{secrets.token_hex(6)}",
        inbound_id="i",
        platform="wecom_app",
        bot_id="app",
        chat=Chat(id=who, type=ChatType.DIRECT),
        recipient=Sender(id=who),
        reply_handle={"touser": who, "agentid": "1000002"},
        seq=0,
        final=True,
        full_text="x" * 1500 + " " + "y" * 1500,
    )
    suppressed = stack.sim_stats().get("duplicates_suppressed", 0)
    nc = await nats.connect(stack.nats.url)
    try:
        js = nc.jetstream()
        # The same final chunk twice, as after a worker crash past the dedupe window or a replay; in two
        # partitions, so two consumers handle the copies at the same time.
        for attempt in range(2):
            await js.publish(
                subjects.outbound_subject("wecom_app", "app", attempt),
                chunk.model_dump_json().encode(),
                headers={subjects.HDR_MSG_ID: f"{chunk.msg_id}:{attempt}"},
            )
        await asyncio.to_thread(
            stack.wait_for, lambda: len(stack.messages(touser=who)) >= 2, what="both parts"
        )
        sentinel = f"s{secrets.token_hex(4)}"
        other = chunk.model_copy(
            update={
                "reply_id": f"r-{secrets.token_hex(6)}",
                "full_text": "done",
                "reply_handle": WeComAppHandle(touser=sentinel, agentid="1000002"),
            }
        )
        await js.publish(
            subjects.outbound_subject("wecom_app", "app", 0),
            other.model_dump_json().encode(),
            headers={subjects.HDR_MSG_ID: other.msg_id},
        )
        await asyncio.to_thread(stack.wait_for, lambda: stack.messages(touser=sentinel), what="sentinel")
    finally:
        await nc.close()
    msgs = stack.messages(touser=who)
    assert len(msgs) == 2, msgs
    # the sender itself posted each part once: WeCom's duplicate check never had to step in
    assert stack.sim_stats().get("duplicates_suppressed", 0) == suppressed
    # the second copy was recognized (claimed by the first, then found done): it posts nothing
    await asyncio.to_thread(
        stack.wait_for,
        lambda: stack.metric("sender", "imrelay_deliveries_total", {"outcome": "duplicate_skipped"}) >= 2,
        what="the second copy to be skipped",
    )
    assert len(stack.messages(touser=who)) == 2


async def test_token_refresh_is_single_flight_across_replicas(nats_server: EmbeddedNats) -> None:
    cfg = NatsConfig(url=nats_server.url)
    connections = [await nats.connect(nats_server.url) for _ in range(3)]
    try:
        js0 = connections[0].jetstream()
        await ensure_streams(js0, cfg)
        caches = [TokenCache((await ensure_buckets(c.jetstream(), cfg)).tokens) for c in connections]
        calls = 0
        concurrent = 0
        peak = 0

        async def fetch() -> tuple[str, float]:
            nonlocal calls, concurrent, peak
            calls += 1
            concurrent += 1
            peak = max(peak, concurrent)
            await asyncio.sleep(0.3)
            concurrent -= 1
            return f"token-{calls}", 7200.0

        key = f"test.{secrets.token_hex(4)}"
        tokens = await asyncio.gather(*(caches[i % 3].get(key, fetch) for i in range(30)))
        assert calls == 1 and peak == 1
        assert set(tokens) == {"token-1"}
        # the platform rejects it: invalidated once, refreshed once, even if every replica saw it
        await asyncio.gather(*(c.invalidate(key, "token-1") for c in caches))
        tokens = await asyncio.gather(*(caches[i % 3].get(key, fetch) for i in range(9)))
        assert calls == 2 and set(tokens) == {"token-2"}
    finally:
        for c in connections:
            await c.close()


async def test_a_failing_token_endpoint_is_left_alone_by_every_replica(nats_server: EmbeddedNats) -> None:
    """After a failure nobody calls again before the cooldown; then one call, and the token is shared."""
    from imrelay.errors import TokenUnavailable

    cfg = NatsConfig(url=nats_server.url)
    connections = [await nats.connect(nats_server.url) for _ in range(3)]
    try:
        await ensure_streams(connections[0].jetstream(), cfg)
        caches = [
            TokenCache((await ensure_buckets(c.jetstream(), cfg)).tokens, base_cooldown=0.5)
            for c in connections
        ]
        calls = 0

        async def broken() -> tuple[str, float]:
            nonlocal calls
            calls += 1
            raise ConnectionError("token endpoint down")

        async def healthy() -> tuple[str, float]:
            nonlocal calls
            calls += 1
            return "fresh", 7200.0

        key = f"test.{secrets.token_hex(4)}"
        results = await asyncio.gather(
            *(caches[i % 3].get(key, broken) for i in range(12)), return_exceptions=True
        )
        assert calls == 1  # one real attempt; everyone else was told to back off
        assert sum(isinstance(r, ConnectionError) for r in results) == 1
        cooling = [r for r in results if isinstance(r, TokenUnavailable)]
        assert len(cooling) == 11 and all(0 < (r.retry_after or 0) <= 0.5 for r in cooling)
        await asyncio.sleep(0.6)
        tokens = await asyncio.gather(*(caches[i % 3].get(key, healthy) for i in range(6)))
        assert set(tokens) == {"fresh"} and calls == 2
    finally:
        for c in connections:
            await c.close()


class _LateLocker:
    """A replica's bucket whose lock request is held back until ``go`` is set (a slow round trip)."""

    def __init__(self, kv: object, go: asyncio.Event) -> None:
        self._kv, self._go = kv, go

    def __getattr__(self, name: str) -> object:
        return getattr(self._kv, name)

    async def create(self, key: str, value: bytes) -> int:
        await self._go.wait()
        result: int = await self._kv.create(key, value)  # type: ignore[attr-defined]
        return result


async def test_a_replica_that_gets_the_lock_after_a_failure_backs_off_too(nats_server: EmbeddedNats) -> None:
    """Replica B saw no cooldown, then took the lock just after replica A's attempt failed: it must see
    A's cooldown under the lock instead of calling the failing endpoint again."""
    from imrelay.errors import TokenUnavailable

    cfg = NatsConfig(url=nats_server.url)
    nc = await nats.connect(nats_server.url)
    try:
        kv = (await ensure_buckets(nc.jetstream(), cfg)).tokens
        go = asyncio.Event()
        a = TokenCache(kv, base_cooldown=5.0)
        b = TokenCache(_LateLocker(kv, go), base_cooldown=5.0)  # type: ignore[arg-type]
        calls = 0

        async def broken() -> tuple[str, float]:
            nonlocal calls
            calls += 1
            raise ConnectionError("token endpoint down")

        key = f"test.{secrets.token_hex(4)}"
        late = asyncio.create_task(b.get(key, broken))  # past the cooldown check, waiting for the lock
        await asyncio.sleep(0.2)
        with pytest.raises(ConnectionError):
            await a.get(key, broken)  # A locks, fails, records the cooldown, unlocks
        go.set()
        with pytest.raises(TokenUnavailable):
            await late
        assert calls == 1
    finally:
        await nc.close()


async def test_a_watching_cache_follows_tokens_other_replicas_write_and_drop(
    nats_server: EmbeddedNats,
) -> None:
    cfg = NatsConfig(url=nats_server.url)
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, cfg)
        kv = (await ensure_buckets(js, cfg)).tokens
        key = f"wecom.ww{secrets.token_hex(4)}.1"
        writer, watching = TokenCache(kv), TokenCache(kv)
        issued = iter(["tokA", "tokB"])

        async def fetch() -> tuple[str, float]:
            return next(issued), 7200.0

        async def until(condition: Callable[[], bool]) -> None:
            for _ in range(500):
                if condition():
                    return
                await asyncio.sleep(0.01)
            raise AssertionError("the watch did not catch up")

        assert await writer.get(key, fetch) == "tokA"
        watch = asyncio.create_task(watching.watch())
        try:
            await until(lambda: watching._watching and key in watching._local)
            assert await watching.get(key, fetch) == "tokA"  # from the process, not the bucket
            await writer.invalidate(key, "tokA")  # the platform refused it
            await until(lambda: key not in watching._local)
            assert await watching.get(key, fetch) == "tokB"  # fetched anew
            await until(lambda: watching._local.get(key) is not None)
            assert await writer.get(key, fetch) == "tokB"  # written to the bucket for the others
        finally:
            watch.cancel()
    finally:
        await nc.close()


async def test_a_consumer_made_by_an_earlier_version_gets_the_new_ack_wait(nats_server: EmbeddedNats) -> None:
    cfg = NatsConfig(url=nats_server.url)
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, cfg)
        durable = f"old-{secrets.token_hex(4)}"
        subject = subjects.outbound_partition_filter(0)
        await js.add_consumer(
            subjects.STREAM_OUT,
            config=ConsumerConfig(
                durable_name=durable,
                name=durable,
                filter_subject=subject,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=60,
                max_deliver=9,
                max_ack_pending=1,
            ),
        )
        broker = make_broker(cfg, "sender", graceful_timeout=1.0)

        async def handler(msg: NatsMessage) -> None:
            await msg.ack()

        durable_consumer(
            broker,
            subject=subject,
            stream=subjects.STREAM_OUT,
            durable=durable,
            ack_wait=6.0,
            max_deliver=8,
            concurrency=1,
            max_ack_pending=1,
            handler=handler,
        )
        await update_consumers(js, broker)
        info = await js.consumer_info(subjects.STREAM_OUT, durable)
        assert (info.config.ack_wait, info.config.max_deliver) == (6.0, 9)  # max_deliver: one more, see there
        assert info.config.filter_subject == subject and info.config.max_ack_pending == 1
        await update_consumers(js, broker)  # already right: left alone
    finally:
        await nc.close()
