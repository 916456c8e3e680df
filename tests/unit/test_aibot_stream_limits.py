"""AI-bot answer streams and their limits: the simulator's gateway refuses what the live one refuses (over
20,480 bytes, an expired or finished stream, a reply to an event), and the sender cuts a long answer into
finished streams that each fit, finishing each one once; the connector keeps a silent stream alive."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import connect

from imrelay.config import ConnectorConfig, parse_settings
from imrelay.events import Chat, ChatType, ConnectionAnswer, ConnectionRequest, ReplyChunk, Sender
from imrelay.platforms.wecom_aibot.config import WeComAIBot
from imrelay.platforms.wecom_aibot.connection import AIBotConnection
from imrelay.platforms.wecom_aibot.delivery import WeComAIBotDelivery, part_stream_id, parts_of
from imrelay.platforms.wecom_aibot.handle import WeComAIBotHandle
from imrelay_sim.server import create_app

from ..helpers import FakeStreamStore, free_port

KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
LIMIT = 20480
SETTINGS = parse_settings(
    {
        "bots": [
            {
                "id": "ws",
                "platform": "wecom_aibot",
                "mode": "long_connection",
                "credentials": {"token": "t", "encoding_aes_key": KEY, "bot_id": "aib1", "secret": "s"},
            }
        ]
    },
    {},
)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def call(ws: Any, cmd: str, rid: str, body: dict[str, Any]) -> int:
    await ws.send(json.dumps({"cmd": cmd, "headers": {"req_id": rid}, "body": body}))
    ack = json.loads(await ws.recv())
    assert ack["headers"]["req_id"] == rid and "cmd" not in ack
    return int(ack["errcode"])


@contextlib.asynccontextmanager
async def serving(clock: Clock) -> AsyncIterator[str]:
    """The simulator as a real server on a free port; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(SETTINGS, clock=clock), port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
            await asyncio.sleep(0.02)
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_the_simulated_gateway_enforces_the_stream_limits() -> None:
    clock = Clock()
    async with (
        serving(clock) as host,
        httpx.AsyncClient(base_url=f"http://{host}") as client,
        connect(f"ws://{host}/ws/aibot") as ws,
    ):
        assert await call(ws, "aibot_subscribe", "sub", {"bot_id": "aib1", "secret": "s"}) == 0
        rid = (await client.post("/sim/aibot/push", json={"bot_id": "aib1", "text": "hi"})).json()["req_id"]
        assert json.loads(await ws.recv())["cmd"] == "aibot_msg_callback"

        async def stream(sid: str, content: str, finish: bool = False, req: str = rid) -> int:
            return await call(
                ws,
                "aibot_respond_msg",
                req,
                {"msgtype": "stream", "stream": {"id": sid, "finish": finish, "content": content}},
            )

        assert await stream("s1", "é" * (LIMIT // 2)) == 0  # exactly the limit, in two-byte characters
        assert await stream("s1", "é" * (LIMIT // 2) + "x") == 45002  # one byte over
        clock.t += 350
        assert await stream("s1", "kept alive") == 0  # within the default expiry (6 min) of the last update
        clock.t += 361
        assert await stream("s1", "too late") == 846608
        assert await stream("s1", "still too late", True) == 846608  # expired for good
        # one req_id carries several streams; a finished one takes nothing more
        assert await stream("s2", "the rest", True) == 0
        assert await stream("s2", "once more", True) == 846608
        # the expiry is configurable
        assert (await client.post("/sim/aibot/streams", json={"expiry_seconds": 20})).json() == {
            "expiry_seconds": 20.0
        }
        assert await stream("s3", "a") == 0
        clock.t += 21
        assert await stream("s3", "b") == 846608
        # a reply on an event's req_id is refused
        erid = (await client.post("/sim/aibot/event", json={"bot_id": "aib1"})).json()["req_id"]
        event = json.loads(await ws.recv())
        assert event["cmd"] == "aibot_event_callback" and event["body"]["event"]["eventtype"] == "enter_chat"
        assert await stream("s4", "hello", req=erid) == 846605
        # proactive messages keep the same size limit
        assert (
            await call(
                ws,
                "aibot_send_msg",
                "p1",
                {"chatid": "alice", "msgtype": "markdown", "markdown": {"content": "x" * (LIMIT + 1)}},
            )
            == 45002
        )
        seen = {m["stream_id"]: m for m in (await client.get("/sim/messages", params={"bot": "ws"})).json()}
    assert seen["s1"]["content"] == "kept alive" and seen["s1"]["finish"] is False and seen["s1"]["expired"]
    assert seen["s2"]["content"] == "the rest" and seen["s2"]["finish"] is True
    assert seen["s1"]["req_id"] == rid == seen["s2"]["req_id"]
    assert "s4" not in seen


def chunk(text: str, final: bool = False) -> ReplyChunk:
    return ReplyChunk(
        reply_id="r1",
        inbound_id="r1",
        platform="wecom_aibot",
        bot_id="ws",
        chat=Chat(id="alice", type=ChatType.DIRECT),
        recipient=Sender(id="alice"),
        seq=0,
        reply_handle={"stream_id": "sid", "req_id": "rq", "mode": "long_connection"},
        text=None if final else text,
        full_text=text if final else None,
        final=final,
    )


def paragraphs(size: int) -> str:
    out: list[str] = []
    while sum(len(p.encode()) + 2 for p in out) < size:
        out.append(f"第{len(out)}段 " + "word " * 40)
    return "\n\n".join(out)


async def test_a_long_answer_is_shown_as_finished_streams_each_finished_once() -> None:
    frames: list[dict[str, Any]] = []

    async def requester(req: ConnectionRequest) -> ConnectionAnswer:
        assert (req.platform, req.bot_id) == ("wecom_aibot", "ws")
        frames.append(req.payload)
        return ConnectionAnswer(ok=True)

    delivery = WeComAIBotDelivery(
        bot_id="ws", streams=FakeStreamStore(), client=httpx.AsyncClient(), timeout=1.0, requester=requester
    )
    whole = paragraphs(45_000)
    for size in (1000, 25_000, 30_000, 44_000):  # the answer growing
        await delivery.update(chunk(whole[:size]), whole[:size])
    final = chunk(whole, final=True)
    parts = delivery.render(final)
    for index, part in enumerate(parts):
        await delivery.send(final, part, index)

    assert len(parts) == 3 and "".join(parts) == whole
    assert all(len(f["content"].encode()) <= LIMIT for f in frames)
    assert all(f["req_id"] == "rq" for f in frames)
    finished = [(f["stream_id"], f["content"]) for f in frames if f["finish"]]
    assert finished == [(part_stream_id("sid", i), p) for i, p in enumerate(parts)]  # each once, in order
    # nothing is sent on a stream after it was finished
    for sid, _ in finished:
        last = max(i for i, f in enumerate(frames) if f["stream_id"] == sid)
        assert frames[last]["finish"]


def test_parts_fit_and_cut_on_paragraphs() -> None:
    text = paragraphs(50_000)
    parts = parts_of(text)
    assert "".join(parts) == text and all(len(p.encode()) <= LIMIT for p in parts)
    assert all(p.endswith("\n\n") for p in parts[:-1])
    assert parts_of("   ") == [""] and part_stream_id("s", 0) == "s" and part_stream_id("s", 2) == "s-2"
    # the first parts of an answer do not change as it grows: a part finished early stays right
    assert parts_of(text[:30_000])[0] == parts[0]


async def test_callback_polls_never_see_more_than_the_first_part() -> None:
    store = FakeStreamStore()
    delivery = WeComAIBotDelivery(bot_id="ws", streams=store, client=httpx.AsyncClient(), timeout=1.0)
    text = paragraphs(30_000)
    callback = chunk(text).model_copy(update={"reply_handle": WeComAIBotHandle(stream_id="sid")})
    await delivery.update(callback, text)
    record = store.records[("ws", "sid")]
    assert record.content == parts_of(text)[0] and not record.finish
    assert len(record.content.encode()) <= LIMIT


class FakeGateway:
    """Stands in for the bot's socket: records each frame and acknowledges it with ``codes`` by command."""

    def __init__(self, sock: AIBotConnection, codes: dict[str, list[int]] | None = None) -> None:
        self.sock, self.codes, self.frames = sock, codes or {}, list[dict[str, Any]]()

    async def send(self, raw: str) -> None:
        frame = json.loads(raw)
        self.frames.append(frame)
        queue = self.codes.get(frame["cmd"])
        code = queue.pop(0) if queue else 0
        self.sock._resolve({"headers": frame["headers"], "errcode": code})


def bot_socket(keepalive: float) -> AIBotConnection:
    bot = SETTINGS.bot("ws")
    assert isinstance(bot, WeComAIBot)
    cfg = ConnectorConfig(stream_keepalive_seconds=keepalive, ack_timeout_seconds=1)
    return AIBotConnection(bot, cfg)


async def reply(sock: AIBotConnection, sid: str, content: str, finish: bool) -> dict[str, Any]:
    answer = await sock.send(
        {"req_id": "rq", "stream_id": sid, "content": content, "finish": finish, "chatid": "alice"}
    )
    return answer.model_dump()


async def test_the_connector_keeps_an_open_stream_alive_until_it_is_finished() -> None:
    sock = bot_socket(keepalive=0.1)
    gateway = FakeGateway(sock)
    sock.ws = gateway  # type: ignore[assignment]
    keeper = asyncio.create_task(sock._keep_streams_alive())
    try:
        assert (await reply(sock, "sid", "so far", False))["ok"]
        async with asyncio.timeout(10):
            while len(gateway.frames) < 3:  # noqa: ASYNC110 - polling a fake's record
                await asyncio.sleep(0.05)
        assert all(
            f["body"]["stream"] == {"id": "sid", "finish": False, "content": "so far"} for f in gateway.frames
        )  # the same content, shown again while the model is silent
        assert (await reply(sock, "sid", "so far, and done", True))["ok"]
        sent = len(gateway.frames)
        await asyncio.sleep(0.5)  # several keepalive rounds
        assert len(gateway.frames) == sent  # a finished stream is not touched again
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper


async def test_a_part_finishing_an_expired_stream_is_sent_proactively() -> None:
    sock = bot_socket(keepalive=240)
    gateway = FakeGateway(sock, {"aibot_respond_msg": [846608, 846608]})
    sock.ws = gateway  # type: ignore[assignment]
    assert (await reply(sock, "sid", "partial", False))["ok"]  # moot: the stream is gone
    assert (await reply(sock, "sid", "the whole part", True))["ok"]
    assert [f["cmd"] for f in gateway.frames] == ["aibot_respond_msg", "aibot_respond_msg", "aibot_send_msg"]
    assert gateway.frames[-1]["body"] == {
        "chatid": "alice",
        "msgtype": "markdown",
        "markdown": {"content": "the whole part"},
    }
    assert not sock.open_streams


class LateGateway:
    """Holds back the ack of the first frame (it comes only when ``release`` is called); acks later frames
    at once with the codes given."""

    def __init__(self, sock: AIBotConnection, codes: list[int]) -> None:
        self.sock, self.codes, self.frames = sock, codes, list[dict[str, Any]]()
        self.held: dict[str, Any] | None = None

    async def send(self, raw: str) -> None:
        frame = json.loads(raw)
        self.frames.append(frame)
        if len(self.frames) == 1:
            self.held = frame
            return
        ack = {"headers": frame["headers"], "errcode": self.codes.pop(0)}
        asyncio.get_running_loop().call_later(0.05, self.sock._resolve, ack)  # WeCom answers a moment later

    def release(self) -> None:
        assert self.held is not None
        self.sock._resolve({"headers": self.held["headers"], "errcode": 0})


async def test_a_late_ack_is_not_taken_for_the_next_frame_of_the_same_message() -> None:
    """A frame whose ack timed out is retried; its ack arriving late (it names only the req_id) must not be
    read as the answer to the retry, which WeCom refused here."""
    sock = bot_socket(keepalive=240)
    gateway = LateGateway(sock, codes=[40058, 0])
    sock.ws = gateway  # type: ignore[assignment]
    with pytest.raises(TimeoutError):
        await sock.request("aibot_respond_msg", {"n": 1}, rid="rq")
    retry = asyncio.create_task(sock.request("aibot_respond_msg", {"n": 2}, rid="rq"))
    await asyncio.sleep(0.01)
    gateway.release()  # the first frame's ack, late: it comes before the retry's own
    assert (await retry)["errcode"] == 40058  # the retry's own answer, not the late "ok"
    assert (await sock.request("aibot_respond_msg", {"n": 3}, rid="rq"))["errcode"] == 0
    assert [f["body"]["n"] for f in gateway.frames] == [1, 2, 3]


async def test_a_lost_ack_holds_up_the_next_frame_once_then_is_forgotten() -> None:
    sock = bot_socket(keepalive=240)
    gateway = LateGateway(sock, codes=[0, 0])
    sock.ws = gateway  # type: ignore[assignment]
    with pytest.raises(TimeoutError):
        await sock.request("aibot_respond_msg", {"n": 1}, rid="rq")
    # the first ack never comes: the next frame waits one ack timeout for it, then goes out and is answered
    assert (await sock.request("aibot_respond_msg", {"n": 2}, rid="rq"))["errcode"] == 0
    assert (await sock.request("aibot_respond_msg", {"n": 3}, rid="rq"))["errcode"] == 0
    assert sock.late_acks == {}
