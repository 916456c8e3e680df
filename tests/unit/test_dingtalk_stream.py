"""DingTalk Stream mode: the frames (parsing, acks, the open request) and the connection's logic with fake
sockets: acks only after the message is stored, pings answered with their opaque, a ``disconnect`` or a
silent socket replaced by a new one opened before the old one goes, and an unannounced close ending the
attempt."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from imrelay.config import ConnectorConfig
from imrelay.errors import ParseError
from imrelay.events import InboundMessage
from imrelay.platforms.dingtalk.config import DingTalkBot
from imrelay.platforms.dingtalk.connection import StreamConnection, ws_url
from imrelay.platforms.dingtalk.frames import TOPIC_ROBOT, ack, open_request, parse_frame, robot_message

BOT = DingTalkBot.model_validate(
    {
        "id": "ding",
        "platform": "dingtalk",
        "mode": "long_connection",
        "credentials": {"app_key": "dingkey", "app_secret": "dingsecret"},
    }
)


def frame(kind: str, topic: str, mid: str, data: dict[str, Any]) -> str:
    return json.dumps(
        {
            "specVersion": "1.0",
            "type": kind,
            "headers": {"topic": topic, "messageId": mid, "contentType": "application/json", "time": "1"},
            "data": json.dumps(data),
        }
    )


def robot(mid: str, msg_id: str, text: str = "hi") -> str:
    return frame(
        "CALLBACK",
        TOPIC_ROBOT,
        mid,
        {
            "msgId": msg_id,
            "msgtype": "text",
            "text": {"content": text},
            "conversationId": "cid1",
            "conversationType": "1",
            "senderStaffId": "u1",
            "senderNick": "U",
            "robotCode": "dingkey",
            "sessionWebhook": "https://oapi.dingtalk.com/robot/sendBySession?session=s",
            "sessionWebhookExpiredTime": 4_102_444_800_000,
        },
    )


# ---- frames ------------------------------------------------------------------------------------


def test_parse_a_robot_message_frame() -> None:
    f = parse_frame(robot("m1", "msgA", "hello"))
    assert f.is_robot_message and not f.is_ping and f.message_id == "m1"
    assert robot_message(f)["text"]["content"] == "hello"


def test_parse_system_frames() -> None:
    ping = parse_frame(frame("SYSTEM", "ping", "p1", {"opaque": "xyz"}))
    assert ping.is_ping and not ping.is_disconnect
    assert parse_frame(frame("SYSTEM", "disconnect", "d1", {})).is_disconnect


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[]",
        json.dumps({"type": "CALLBACK"}),
        json.dumps({"type": "CALLBACK", "headers": {"topic": TOPIC_ROBOT}}),
        json.dumps({"type": "WEIRD", "headers": {"topic": "t", "messageId": "m"}}),
    ],
)
def test_not_a_frame(raw: str) -> None:
    with pytest.raises(ParseError):
        parse_frame(raw)


def test_robot_data_not_an_object() -> None:
    f = parse_frame(
        json.dumps({"type": "CALLBACK", "headers": {"topic": TOPIC_ROBOT, "messageId": "m"}, "data": "1"})
    )
    with pytest.raises(ParseError):
        robot_message(f)


def test_ping_ack_echoes_the_opaque() -> None:
    out = json.loads(ack(parse_frame(frame("SYSTEM", "ping", "p1", {"opaque": "xyz"}))))
    assert out["code"] == 200 and out["headers"]["messageId"] == "p1"
    assert json.loads(out["data"]) == {"opaque": "xyz"}


def test_robot_and_event_acks() -> None:
    out = json.loads(ack(parse_frame(robot("m9", "x"))))
    assert out == {
        "code": 200,
        "headers": {"messageId": "m9", "contentType": "application/json"},
        "message": "OK",
        "data": json.dumps({"response": None}),
    }
    ev = json.loads(ack(parse_frame(frame("EVENT", "chat_update", "e1", {}))))
    assert json.loads(ev["data"])["status"] == "SUCCESS"


def test_open_request_subscribes_to_robot_messages() -> None:
    body = open_request("key", "secret")
    assert body["clientId"] == "key" and body["clientSecret"] == "secret"
    assert {"type": "CALLBACK", "topic": TOPIC_ROBOT} in body["subscriptions"]


def test_ticket_is_url_encoded() -> None:
    assert ws_url("wss://gw/connect", "a+b/c=") == "wss://gw/connect?ticket=a%2Bb%2Fc%3D"
    assert ws_url("wss://gw/connect?x=1", "t") == "wss://gw/connect?x=1&ticket=t"


# ---- the connection, with fake sockets ---------------------------------------------------------


@dataclass
class FakeSocket:
    number: int
    log: list[str]
    incoming: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    sent: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False

    async def recv(self) -> str:
        item = await self.incoming.get()
        if item is None:
            raise ConnectionError("closed")
        return item

    async def send(self, message: str) -> None:
        if self.closed:
            raise ConnectionError("closed")
        self.sent.append(json.loads(message))

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.log.append(f"close {self.number}")
            self.incoming.put_nowait(None)

    def server_close(self) -> None:
        self.closed = True
        self.log.append(f"server closed {self.number}")
        self.incoming.put_nowait(None)

    def acked(self) -> list[str]:
        return [s["headers"]["messageId"] for s in self.sent]


@dataclass
class FakeGateway:
    log: list[str] = field(default_factory=list)
    sockets: list[FakeSocket] = field(default_factory=list)
    failures: int = 0  # the next dials that fail

    async def dial(self) -> FakeSocket:
        if self.failures:
            self.failures -= 1
            self.log.append("dial failed")
            raise OSError("gateway away")
        sock = FakeSocket(len(self.sockets) + 1, self.log)
        self.sockets.append(sock)
        self.log.append(f"open {sock.number}")
        return sock


@dataclass
class FakeHealth:
    ups: int = 0
    events: list[str] = field(default_factory=list)

    async def up(self) -> None:
        self.ups += 1

    def event(self, outcome: str) -> None:
        self.events.append(outcome)


@dataclass
class FakeSink:
    stored: list[InboundMessage] = field(default_factory=list)
    gate: asyncio.Event | None = None
    fail: bool = False

    async def __call__(self, message: InboundMessage) -> bool:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise RuntimeError("JetStream unavailable")
        self.stored.append(message)
        return False


async def until(cond: Callable[[], object], what: str) -> None:
    """Wait (up to 5 s) for ``cond``."""
    for _ in range(1000):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def connection(gw: FakeGateway, **kw: Any) -> StreamConnection:
    dial: Callable[[], Awaitable[Any]] = gw.dial
    return StreamConnection(BOT, ConnectorConfig(), dial=dial, **kw)


async def test_ack_only_after_the_message_is_stored() -> None:
    gw, health, sink = FakeGateway(), FakeHealth(), FakeSink(gate=asyncio.Event())
    task = asyncio.create_task(connection(gw).run(sink, health))
    await until(lambda: health.ups == 1, "up")
    sock = gw.sockets[0]
    await sock.incoming.put(robot("m1", "msgA"))
    await asyncio.sleep(0.05)
    assert sock.sent == []  # not stored yet: no ack
    sink.gate.set()  # type: ignore[union-attr]
    await until(lambda: sock.acked() == ["m1"], "the ack")
    assert [m.platform_message_id for m in sink.stored] == ["dingtalk:msg:msgA"]
    assert sink.stored[0].reply_handle is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_message_not_stored_is_not_acked() -> None:
    gw, health, sink = FakeGateway(), FakeHealth(), FakeSink(fail=True)
    task = asyncio.create_task(connection(gw).run(sink, health))
    await until(lambda: health.ups == 1, "up")
    sock = gw.sockets[0]
    await sock.incoming.put(robot("m1", "msgA"))
    await until(lambda: "not_stored" in health.events, "the failure")
    await sock.incoming.put(frame("SYSTEM", "ping", "p1", {"opaque": "o"}))
    await until(lambda: sock.acked() == ["p1"], "the pong")  # the ping answered, the message not
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_ping_answered_with_its_opaque_while_a_store_is_slow() -> None:
    gw, health, sink = FakeGateway(), FakeHealth(), FakeSink(gate=asyncio.Event())
    task = asyncio.create_task(connection(gw).run(sink, health))
    await until(lambda: health.ups == 1, "up")
    sock = gw.sockets[0]
    await sock.incoming.put(robot("m1", "msgA"))
    await sock.incoming.put(frame("SYSTEM", "ping", "p1", {"opaque": "op-1"}))
    await until(lambda: sock.acked() == ["p1"], "the pong")
    assert json.loads(sock.sent[0]["data"]) == {"opaque": "op-1"}
    sink.gate.set()  # type: ignore[union-attr]
    await until(lambda: sock.acked() == ["p1", "m1"], "the message's ack")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_disconnect_opens_the_replacement_before_the_old_socket_goes() -> None:
    gw, health, sink = FakeGateway(), FakeHealth(), FakeSink()
    conn = connection(gw, drain_seconds=30)
    task = asyncio.create_task(conn.run(sink, health))
    await until(lambda: health.ups == 1, "up")
    old = gw.sockets[0]
    await old.incoming.put(frame("SYSTEM", "disconnect", "d1", {}))
    await until(lambda: len(gw.sockets) == 2, "the replacement")
    assert gw.log == ["open 1", "open 2"]  # the old one still open
    new = gw.sockets[1]
    # DingTalk still pushes on the old socket during its grace period: stored and acked there
    await old.incoming.put(robot("m1", "during"))
    await new.incoming.put(robot("m2", "after"))
    await until(lambda: "m1" in old.acked() and new.acked() == ["m2"], "both acks")
    old.server_close()  # DingTalk closes the old socket: as planned, the attempt goes on
    await asyncio.sleep(0.05)
    assert not task.done() and health.events == ["disconnect"] and health.ups == 1
    await new.incoming.put(robot("m3", "later"))
    await until(lambda: new.acked() == ["m2", "m3"], "served by the replacement")
    assert [m.platform_message_id.rsplit(":", 1)[1] for m in sink.stored] == ["during", "after", "later"]
    new.server_close()  # an unannounced close ends the attempt: the connector reconnects
    with pytest.raises(ConnectionError):
        await task
    assert gw.log == ["open 1", "open 2", "server closed 1", "server closed 2"]


async def test_disconnected_socket_closed_by_us_if_dingtalk_does_not() -> None:
    gw, health, sink = FakeGateway(), FakeHealth(), FakeSink()
    task = asyncio.create_task(connection(gw, drain_seconds=0.1).run(sink, health))
    await until(lambda: health.ups == 1, "up")
    await gw.sockets[0].incoming.put(frame("SYSTEM", "disconnect", "d1", {}))
    await until(lambda: "close 1" in gw.log, "the old socket closed")
    assert gw.log == ["open 1", "open 2", "close 1"]
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gw.sockets[1].closed


async def test_silent_socket_replaced_then_closed() -> None:
    gw, health, sink = FakeGateway(), FakeHealth(), FakeSink()
    task = asyncio.create_task(connection(gw, idle_seconds=0.2).run(sink, health))
    await until(lambda: "close 1" in gw.log, "the silent socket replaced")
    assert gw.log[:3] == ["open 1", "open 2", "close 1"]  # the new one first
    assert "idle" in health.events and not task.done()
    await gw.sockets[1].incoming.put(robot("m1", "x"))
    await until(lambda: gw.sockets[1].acked() == ["m1"], "served by the replacement")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_replacement_retried_while_the_old_socket_serves() -> None:
    gw, health, sink = FakeGateway(), FakeHealth(), FakeSink()
    task = asyncio.create_task(connection(gw, replace_pause=0.01, drain_seconds=30).run(sink, health))
    await until(lambda: health.ups == 1, "up")
    gw.failures = 2
    await gw.sockets[0].incoming.put(frame("SYSTEM", "disconnect", "d1", {}))
    await until(lambda: len(gw.sockets) == 2, "the replacement")
    assert gw.log == ["open 1", "dial failed", "dial failed", "open 2"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_no_replacement_ends_the_attempt() -> None:
    gw, health, sink = FakeGateway(), FakeHealth(), FakeSink()
    task = asyncio.create_task(connection(gw, replace_pause=0.01, drain_seconds=30).run(sink, health))
    await until(lambda: health.ups == 1, "up")
    gw.failures = 100
    await gw.sockets[0].incoming.put(frame("SYSTEM", "disconnect", "d1", {}))
    with pytest.raises(ConnectionError):
        await task
    assert gw.sockets[0].closed  # nothing left open


async def test_an_unannounced_close_ends_the_attempt_after_storing_what_came() -> None:
    gw, health, sink = FakeGateway(), FakeHealth(), FakeSink(gate=asyncio.Event())
    task = asyncio.create_task(connection(gw).run(sink, health))
    await until(lambda: health.ups == 1, "up")
    sock = gw.sockets[0]
    await sock.incoming.put(robot("m1", "msgA"))
    await asyncio.sleep(0.02)
    sock.server_close()
    await asyncio.sleep(0.02)
    assert not task.done()  # still storing what arrived
    sink.gate.set()  # type: ignore[union-attr]
    with pytest.raises(ConnectionError):
        await task
    assert len(sink.stored) == 1
