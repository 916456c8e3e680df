"""The worker's and the sender's decisions for one JetStream message — ack, nak with a delay, dead-letter —
run in-process: FastStream's test broker instead of NATS, in-memory KV buckets."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from faststream.middlewares import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsMessage, TestNatsBroker
from faststream.nats.testing import PatchedMessage

from imrelay import subjects
from imrelay.config import Settings
from imrelay.errors import PermanentUpstreamError, TransientUpstreamError
from imrelay.events import Chat, ChatType, InboundMessage, ReplyChunk, Sender
from imrelay.jetstream import Buckets
from imrelay.media import MediaError, MediaKind, MediaProblem, MediaRef
from imrelay.media.store import MediaStore
from imrelay_sender.app import build_sender
from imrelay_worker.app import build_worker
from tests.conftest import make_settings, wecom_app_bot
from tests.fakes import FakeKV


@dataclass
class Acks:
    """What the handler told JetStream about each message, in order: ("ack",), ("nak", delay)."""

    seen: list[tuple[str, float | None]] = field(default_factory=list)


@pytest.fixture
def acks(monkeypatch: pytest.MonkeyPatch) -> Acks:
    record = Acks()

    async def ack(self: PatchedMessage) -> None:
        record.seen.append(("ack", None))

    async def nak(self: PatchedMessage, delay: float | None = None) -> None:
        record.seen.append(("nak", delay))

    monkeypatch.setattr(PatchedMessage, "ack", ack)
    monkeypatch.setattr(PatchedMessage, "nak", nak)
    return record


def delivery_number(n: int) -> str:
    """The reply subject of a JetStream message on its ``n``-th delivery (where nats-py reads metadata)."""
    return f"$JS.ACK.STREAM.consumer.{n}.{100 + n}.{100 + n}.1700000000000000000.0"


@dataclass
class Captured:
    dead: list[NatsMessage] = field(default_factory=list)
    replies: list[ReplyChunk] = field(default_factory=list)


def capture(broker: NatsBroker, captured: Captured) -> None:
    """Subscribers on the dead-letter and outbound streams, added before the test broker starts."""

    @broker.subscriber(
        subjects.DLQ_ALL, stream=JStream(subjects.STREAM_DLQ, declare=False), ack_policy=AckPolicy.MANUAL
    )
    async def dead(msg: NatsMessage) -> None:
        captured.dead.append(msg)

    @broker.subscriber(
        f"{subjects.OUT_PREFIX}.>",
        stream=JStream(subjects.STREAM_OUT, declare=False),
        ack_policy=AckPolicy.MANUAL,
    )  # the handler under test decides
    async def reply(msg: NatsMessage) -> None:
        captured.replies.append(ReplyChunk.model_validate_json(msg.raw_message.data))


def reason(msg: NatsMessage) -> str:
    return str(msg.headers[subjects.HDR_DLQ_REASON])


def inbound(bot_id: str = "app", text: str = "hello") -> InboundMessage:
    return InboundMessage(
        id="in-1",
        platform="wecom_app",
        bot_id=bot_id,
        platform_message_id="m1",
        chat=Chat(id="alice", type=ChatType.DIRECT),
        sender=Sender(id="alice"),
        text=text,
    )


# ---- worker -------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def worker_broker(settings: Settings, captured: Captured) -> AsyncIterator[TestNatsBroker[object]]:
    async with httpx.AsyncClient() as client:
        worker = build_worker(settings, client)
        capture(worker.broker, captured)
        async with TestNatsBroker(worker.broker) as broker:
            yield broker  # type: ignore[misc]


async def publish_inbound(broker: object, body: bytes, delivery: int) -> None:
    assert hasattr(broker, "publish")
    await broker.publish(
        body,
        subjects.inbound_subject("wecom_app", "app"),
        stream=subjects.STREAM_IN,
        reply_to=delivery_number(delivery),
    )


async def test_worker_dead_letters_an_unreadable_event_and_acks_it(acks: Acks) -> None:
    captured = Captured()
    async with worker_broker(make_settings([wecom_app_bot()]), captured) as broker:
        await publish_inbound(broker, b"{not json", 1)
    assert acks.seen == [("ack", None)]
    assert len(captured.dead) == 1 and reason(captured.dead[0]) == "invalid inbound event"


async def test_worker_naks_a_failed_attempt_with_a_growing_delay_then_dead_letters(acks: Acks) -> None:
    captured = Captured()
    settings = make_settings([wecom_app_bot()], worker={"max_deliver": 3})
    stranger = inbound(bot_id="not-configured").model_dump_json().encode()
    async with worker_broker(settings, captured) as broker:
        await publish_inbound(broker, stranger, 1)
        await publish_inbound(broker, stranger, 2)
        assert captured.dead == []
        await publish_inbound(broker, stranger, 3)
    assert acks.seen == [("nak", 2.0), ("nak", 4.0), ("ack", None)]
    assert len(captured.dead) == 1
    assert "NotConfiguredError" in reason(captured.dead[0])


# ---- sender -------------------------------------------------------------------------------------------


@dataclass
class FakeDelivery:
    """A platform that accepts or fails each post as told, and remembers what it showed."""

    platform: str = "wecom_app"
    bot_id: str = "app"
    failures: list[Exception] = field(default_factory=list)
    shown: list[tuple[str, int]] = field(default_factory=list)

    def render(self, chunk: ReplyChunk) -> list[str]:
        return [p for p in (chunk.full_text or "").split("|") if p]

    def limits(self, chunk: ReplyChunk) -> list[tuple[str, str]]:
        return []

    async def send(self, chunk: ReplyChunk, part: str, index: int) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.shown.append((part, index))


def final(text: str) -> bytes:
    return (
        ReplyChunk(
            reply_id="r-1",
            inbound_id="in-1",
            platform="wecom_app",
            bot_id="app",
            chat=Chat(id="alice", type=ChatType.DIRECT),
            recipient=Sender(id="alice"),
            seq=1,
            final=True,
            full_text=text,
        )
        .model_dump_json()
        .encode()
    )


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The sender's in-process backoff pauses, recorded instead of waited."""
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    monkeypatch.setattr("imrelay_sender.app.asyncio.sleep", sleep)
    return pauses


@contextlib.asynccontextmanager
async def sender_broker(
    settings: Settings,
    delivery: FakeDelivery,
    captured: Captured,
    deliveries: FakeKV,
    media: MediaStore | None = None,
) -> AsyncIterator[object]:
    buckets = Buckets(tokens=FakeKV("tokens"), deliveries=deliveries, ratelimits=FakeKV("ratelimits"))
    async with httpx.AsyncClient() as client:
        sender = build_sender(settings, buckets, client, answer_streams=None, media=media)  # type: ignore[arg-type]
        sender.deliveries["app"] = delivery
        capture(sender.broker, captured)
        async with TestNatsBroker(sender.broker) as broker:
            yield broker
        await sender.drain()  # what runs after an ack (the last part's delivery record)


async def publish_final(broker: object, body: bytes, delivery: int) -> None:
    assert hasattr(broker, "publish")
    await broker.publish(
        body,
        subjects.outbound_subject("wecom_app", "app", 0),
        stream=subjects.STREAM_OUT,
        reply_to=delivery_number(delivery),
    )


SENDER = {"max_attempts": 2, "max_deliver": 3, "backoff_base_seconds": 0.5, "backoff_max_seconds": 30.0}


async def test_sender_dead_letters_a_permanent_failure_and_acks(acks: Acks, slept: list[float]) -> None:
    captured = Captured()
    delivery = FakeDelivery(failures=[PermanentUpstreamError("wecom_app", 81013, "user not found")])
    async with sender_broker(
        make_settings([wecom_app_bot()], sender=SENDER), delivery, captured, FakeKV()
    ) as broker:
        await publish_final(broker, final("hello"), 1)
    assert acks.seen == [("ack", None)]
    assert slept == [] and delivery.shown == []  # not retried
    assert len(captured.dead) == 1 and captured.dead[0].headers[subjects.HDR_DLQ_CODE] == "81013"


async def test_sender_naks_a_transient_failure_with_a_delay(acks: Acks, slept: list[float]) -> None:
    captured = Captured()
    busy: list[Exception] = [TransientUpstreamError("wecom_app", -1, "system busy") for _ in range(2)]
    delivery = FakeDelivery(failures=busy)
    deliveries = FakeKV()
    async with sender_broker(
        make_settings([wecom_app_bot()], sender=SENDER), delivery, captured, deliveries
    ) as broker:
        await publish_final(broker, final("hello"), 1)
        assert len(slept) == 1  # retried in-process once (max_attempts 2), then handed back
        assert len(acks.seen) == 1 and acks.seen[0][0] == "nak"
        assert acks.seen[0][1] is not None and 0 < acks.seen[0][1] <= 30.0
        assert captured.dead == []
        await publish_final(broker, final("hello"), 2)  # JetStream redelivers it
    assert acks.seen[1] == ("ack", None)
    assert delivery.shown == [("hello", 0)]
    assert json.loads(deliveries.value("reply.r-1.0") or b"{}")["state"] == "done"


async def test_sender_does_not_post_a_part_again_on_redelivery(acks: Acks, slept: list[float]) -> None:
    captured = Captured()
    delivery = FakeDelivery(failures=[])
    async with sender_broker(
        make_settings([wecom_app_bot()], sender=SENDER), delivery, captured, FakeKV()
    ) as broker:
        await publish_final(broker, final("one|two"), 1)
        assert delivery.shown == [("one", 0), ("two", 1)]
        delivery.failures.append(PermanentUpstreamError("wecom_app", 1, "must not be called"))
        await publish_final(broker, final("one|two"), 2)  # e.g. the ack was lost
    assert delivery.shown == [("one", 0), ("two", 1)]
    assert acks.seen == [("ack", None), ("ack", None)]
    assert captured.dead == []


async def test_sender_dead_letters_after_the_last_delivery(acks: Acks, slept: list[float]) -> None:
    captured = Captured()
    busy: list[Exception] = [TransientUpstreamError("wecom_app", -1, "busy") for _ in range(2)]
    delivery = FakeDelivery(failures=busy)
    async with sender_broker(
        make_settings([wecom_app_bot()], sender=SENDER), delivery, captured, FakeKV()
    ) as broker:
        await publish_final(broker, final("hello"), 3)  # max_deliver 3: this was the last chance
    assert acks.seen == [("ack", None)]
    assert len(captured.dead) == 1 and "gave up after 3 deliveries" in reason(captured.dead[0])


@dataclass
class FakeMediaDelivery(FakeDelivery):
    """A platform that shows images: each upload accepted, or failed as told."""

    media_inline: bool = False
    media_failures: list[Exception] = field(default_factory=list)
    images: list[tuple[str, bytes, int]] = field(default_factory=list)

    async def send_media(self, chunk: ReplyChunk, media: MediaRef, data: bytes, index: int) -> None:
        if self.media_failures:
            raise self.media_failures.pop(0)
        self.images.append((media.name, data, index))


class MemoryMediaStore:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    async def find(self, key: str) -> MediaRef | None:
        return None

    async def put(self, key: str, data: bytes, *, kind: MediaKind, name: str, mime: str) -> MediaRef:
        self.objects[key] = data
        sha = hashlib.sha256(data).hexdigest()
        return MediaRef(kind=kind, key=key, name=name, size=len(data), sha256=sha, mime=mime)

    async def get(self, ref: MediaRef) -> bytes:
        return self.objects[ref.key]


def final_with(text: str, *refs: MediaRef) -> bytes:
    chunk = ReplyChunk.model_validate_json(final(text))
    return chunk.model_copy(update={"media": list(refs)}).model_dump_json().encode()


async def test_sender_shows_an_answers_images_after_its_text_once(acks: Acks, slept: list[float]) -> None:
    store = MemoryMediaStore()
    one = await store.put("out/r-1/0", b"\x89PNG one", kind=MediaKind.IMAGE, name="a.png", mime="image/png")
    two = await store.put("out/r-1/1", b"\x89PNG two", kind=MediaKind.IMAGE, name="b.png", mime="image/png")
    delivery = FakeMediaDelivery(media_failures=[TransientUpstreamError("wecom_app", -1, "busy")])
    captured = Captured()
    async with sender_broker(
        make_settings([wecom_app_bot()], sender=SENDER), delivery, captured, FakeKV(), media=store
    ) as broker:
        await publish_final(broker, final_with("look", one, two), 1)
        await publish_final(broker, final_with("look", one, two), 2)  # redelivered: nothing twice
    assert delivery.shown == [("look", 0)]
    assert delivery.images == [("a.png", b"\x89PNG one", 1), ("b.png", b"\x89PNG two", 2)]
    assert len(slept) == 1  # the busy upload was retried
    assert captured.dead == [] and acks.seen == [("ack", None), ("ack", None)]


async def test_an_image_the_platform_refuses_becomes_a_line(acks: Acks, slept: list[float]) -> None:
    store = MemoryMediaStore()
    ref = await store.put("out/r-1/0", b"\x89PNG", kind=MediaKind.IMAGE, name="a.png", mime="image/png")
    delivery = FakeMediaDelivery(media_failures=[MediaError(MediaProblem.OVERSIZE, "too big")])
    captured = Captured()
    async with sender_broker(
        make_settings([wecom_app_bot()], sender=SENDER), delivery, captured, FakeKV(), media=store
    ) as broker:
        await publish_final(broker, final_with("look", ref), 1)
    assert delivery.images == []
    [(text, first), (line, second)] = delivery.shown
    assert (text, first, second) == ("look", 0, 1)
    assert line.startswith("(A picture in this answer could not be shown: it is ")
    assert captured.dead == [] and acks.seen == [("ack", None)]


async def test_inline_platforms_show_images_themselves(acks: Acks, slept: list[float]) -> None:
    store = MemoryMediaStore()
    ref = await store.put("out/r-1/0", b"\x89PNG", kind=MediaKind.IMAGE, name="a.png", mime="image/png")
    delivery = FakeMediaDelivery(media_inline=True)
    async with sender_broker(
        make_settings([wecom_app_bot()], sender=SENDER), delivery, Captured(), FakeKV(), media=store
    ) as broker:
        await publish_final(broker, final_with("look", ref), 1)
    assert delivery.shown == [("look", 0)] and delivery.images == []
