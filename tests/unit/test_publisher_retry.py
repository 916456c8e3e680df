"""The ingress publisher's retry within its deadline (JetStream faked: only the retry logic is tested
here; tests/integration/test_helm_rendered.py loses a real NATS node)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from imrelay.config import NatsConfig
from imrelay.errors import PublishUnavailable
from imrelay.events import Chat, ChatType, InboundMessage, Sender
from imrelay_ingress.publisher import JetStreamPublisher


class FlakyJetStream:
    def __init__(self, failures: int, duplicate: bool = False) -> None:
        self.failures, self.duplicate = failures, duplicate
        self.calls: list[dict[str, Any]] = []

    async def publish(self, subject: str, payload: bytes, **kw: Any) -> SimpleNamespace:
        self.calls.append({"subject": subject, "payload": payload, **kw})
        if len(self.calls) <= self.failures:
            await asyncio.sleep(0.01)
            raise TimeoutError("no PubAck")
        return SimpleNamespace(duplicate=self.duplicate)


def publisher(js: FlakyJetStream, deadline: float) -> JetStreamPublisher:
    cfg = NatsConfig(publish_timeout_seconds=1.0, ingress_publish_deadline_seconds=deadline)
    pub = JetStreamPublisher(cfg)
    pub.js = js  # type: ignore[assignment]
    pub.nc = SimpleNamespace(is_closed=False)  # type: ignore[assignment]
    return pub


def message() -> InboundMessage:
    return InboundMessage(
        id="m1",
        platform="wecom_app",
        bot_id="b",
        platform_message_id="k1",
        chat=Chat(id="u", type=ChatType.DIRECT),
        sender=Sender(id="u"),
        text="hi",
    )


async def test_a_lost_puback_is_retried_with_the_same_message_id() -> None:
    js = FlakyJetStream(failures=2, duplicate=True)
    assert await publisher(js, deadline=2.0).publish(message()) is True
    assert len(js.calls) == 3
    ids = {c["headers"]["Nats-Msg-Id"] for c in js.calls}
    assert len(ids) == 1 and len({c["payload"] for c in js.calls}) == 1
    assert all(0 < c["timeout"] <= 1.0 for c in js.calls)


async def test_past_the_deadline_the_callback_gets_unavailable() -> None:
    js = FlakyJetStream(failures=1000)
    with pytest.raises(PublishUnavailable, match="TimeoutError after"):
        await publisher(js, deadline=0.5).publish(message())
    assert 2 <= len(js.calls)


async def test_without_a_connection_nothing_is_sent() -> None:
    pub = JetStreamPublisher(NatsConfig(ingress_publish_deadline_seconds=0.3))
    with pytest.raises(PublishUnavailable, match="not connected"):
        await pub.publish(message())
