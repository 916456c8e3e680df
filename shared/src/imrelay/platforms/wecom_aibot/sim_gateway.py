"""The WeCom AI-bot long connection, played by the simulator (``/ws/aibot``).

Frames are JSON ``{"cmd", "headers": {"req_id"}, "body"}``; every frame we receive is acknowledged by a
frame without ``cmd`` carrying the same ``req_id`` and an ``errcode``, ``ack_latency`` seconds later (the
live gateway takes 0.24-0.45 s). ``aibot_subscribe`` authenticates a bot (``bot_id`` + ``secret``); a wrong
one is answered 853000 and the socket is left open, as the live gateway does. A newer subscription for the
same bot kicks the older socket: it gets a ``disconnected_event`` callback at once, keeps working (pings
answered), and is dropped ``kick_drop_after`` seconds later without a close frame, unless its client
closed it first. ``/sim/stats`` reports the most sockets one bot ever had authenticated at once
(``aibot_ws_peak``), which must stay 1 while nobody else connects as the bot. ``POST /sim/aibot/push``
delivers a user message (with ``create_time`` and a ``response_url``) to the bot's current socket;
``aibot_respond_msg`` frames (stream updates) and ``aibot_send_msg`` (proactive) are what the user sees,
recorded in ``/sim/messages``. A ``req_id`` from an earlier connection is refused with 846605, as a reply
must travel on the socket its message came on. ``POST /sim/aibot/close`` closes a bot's socket from the
server side (a gateway restart); ``POST /sim/aibot/control`` sets ``ack_latency`` and ``kick_drop_after``;
``GET /sim/aibot/events`` lists what happened to the sockets (subscribed, refused, kicked, closed, dropped).

Stream updates are held to the live gateway's limits, as WeCom's SDKs and measurements of the live gateway
describe them, on the strict side where the live behaviour is not documented:

* ``content`` over 20,480 UTF-8 bytes is refused (45002, WeCom's "content size out of limit"); so is a
  proactive ``aibot_send_msg`` over the same size.
* a stream not updated for ``expiry_seconds`` (default 360, set with ``POST /sim/aibot/streams``) has
  expired: that update and every later one is refused with 846608, and the user keeps what was shown;
* a stream that was finished takes no more updates (846608);
* a reply to an event's ``req_id`` (``POST /sim/aibot/event``, e.g. ``enter_chat``) is refused with 846605.

One ``req_id`` may carry several streams (each its own id, each finished): that is how an answer over the
size limit is shown. Each stream is one entry in ``/sim/messages`` carrying its ``req_id``.

Media. ``POST /sim/aibot/push`` with ``media`` (files put into the simulator) pushes a picture, file, voice
or ``mixed`` message as :func:`.sim.message_body` makes it. A bot's upload is held to the limits of §12e,
strictly: ``aibot_upload_media_init`` needs a known ``type``, a ``filename``, ``total_size`` within the
type's limit (image 10 MB, voice 2 MB, video 10 MB, file 20 MB), ``total_chunks`` 1-100 and matching the
size in 512 KB chunks, and an ``md5``; each ``aibot_upload_media_chunk`` must be the next one in order,
valid base64 and at most 512 KB raw (the last one the rest); ``aibot_upload_media_finish`` needs every chunk
and the bytes' md5 and size to match, and answers a ``media_id`` (kept ``UPLOAD_SECONDS``, one bot's own). An
image, file, voice or video reply (``aibot_respond_msg`` on a message's ``req_id``, or ``aibot_send_msg``)
naming that ``media_id`` is recorded with ``msgtype`` and ``media`` (its size, sha256, md5).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from imrelay.media import simstore
from imrelay.platforms.spec import SimMedia
from imrelay.platforms.wecom_aibot.config import WeComAIBot

from .sim import message_body

if TYPE_CHECKING:
    from imrelay_sim.server import SimState


CONTENT_LIMIT_BYTES = 20480
TOO_LARGE, INVALID_REQ_ID, STREAM_EXPIRED = 45002, 846605, 846608
WRONG_SECRET = 853000
BAD_PARAM, BAD_SIZE, BAD_TYPE, BAD_MD5, BAD_MEDIA_ID = 40058, 40009, 40005, 301019, 40007
CHUNK_BYTES, MAX_CHUNKS = 512 * 1024, 100
UPLOAD_LIMITS = {"image": 10 << 20, "voice": 2 << 20, "video": 10 << 20, "file": 20 << 20}
UPLOAD_SECONDS = 3 * 24 * 3600  # a media_id's life


@dataclass
class Upload:
    bot: str
    type: str
    filename: str
    total_size: int
    total_chunks: int
    md5: str
    chunks: list[bytes] = field(default_factory=list)


def upload_refusal(body: dict[str, Any]) -> tuple[int, str] | None:
    """Why ``aibot_upload_media_init`` is refused, if it is."""
    kind, size, count = body.get("type"), body.get("total_size"), body.get("total_chunks")
    if kind not in UPLOAD_LIMITS:
        return BAD_TYPE, "invalid media type"
    if not body.get("filename") or not isinstance(body.get("md5"), str) or len(body["md5"]) != 32:
        return BAD_PARAM, "filename and md5 are required"
    if not isinstance(size, int) or not isinstance(count, int) or size <= 0:
        return BAD_PARAM, "total_size and total_chunks are required"
    if size > UPLOAD_LIMITS[kind]:
        return BAD_SIZE, "invalid media size"
    if not 1 <= count <= MAX_CHUNKS or count != -(-size // CHUNK_BYTES):
        return BAD_PARAM, "invalid total_chunks"
    return None


@dataclass
class Conn:
    ws: WebSocket
    bot: str = ""
    req_ids: set[str] = field(default_factory=set)  # messages pushed on this socket
    event_req_ids: set[str] = field(default_factory=set)  # events pushed on this socket
    kicked: bool = False
    open: bool = True


@dataclass
class StreamLimits:
    expiry_seconds: float = 360.0  # a stream not updated for this long has expired
    last_update: dict[str, float] = field(default_factory=dict)  # stream id -> when last updated
    closed: dict[str, int] = field(default_factory=dict)  # stream id -> why it takes no more updates

    def refusal(self, sid: str, now: float) -> int | None:
        """Why an update of stream ``sid`` is refused now, if it is."""
        if sid in self.closed:
            return self.closed[sid]
        last = self.last_update.get(sid)
        if last is not None and now - last > self.expiry_seconds:
            self.closed[sid] = STREAM_EXPIRED
            return STREAM_EXPIRED
        return None

    def updated(self, sid: str, finish: bool, now: float) -> None:
        self.last_update[sid] = now
        if finish:
            self.closed[sid] = STREAM_EXPIRED


@dataclass
class Gateway:
    """The gateway's timing, changed with ``POST /sim/aibot/control``."""

    ack_latency: float = 0.0  # seconds before each ack frame
    kick_drop_after: float = 30.0  # a kicked socket keeps working this long, then is dropped (no close)


def _transport(fn: object, depth: int = 0) -> asyncio.WriteTransport | None:
    """The TCP transport behind an ASGI ``send`` (uvicorn's protocol object, through Starlette's wrappers)."""
    found = getattr(getattr(fn, "__self__", None), "transport", None)
    if isinstance(found, asyncio.WriteTransport):
        return found
    for cell in (getattr(fn, "__closure__", None) or ()) if depth < 6 else ():
        try:
            inner = cell.cell_contents
        except ValueError:
            continue
        if callable(inner) and (t := _transport(inner, depth + 1)) is not None:
            return t
    return None


def routes(
    state: SimState, clock: Callable[[], float] = time.time, gateway: Gateway | None = None
) -> list[Route | WebSocketRoute]:
    secrets_by_bot = {
        b.credentials.bot_id: (b.credentials.secret.get_secret_value() if b.credentials.secret else "", b.id)
        for b in (state.settings.bots if state.settings else [])
        if isinstance(b, WeComAIBot) and b.credentials.bot_id
    }
    current: dict[str, Conn] = {}  # bot_id -> the authenticated socket
    authenticated: dict[str, int] = {}
    streams: dict[str, dict[str, Any]] = {}  # stream id -> the message the user sees
    limits = StreamLimits()
    gw = gateway or Gateway()
    events: list[dict[str, Any]] = []
    pending: set[asyncio.Task[None]] = set()
    uploads: dict[str, Upload] = {}  # upload_id -> what came of it so far
    media_ids: dict[str, tuple[str, str, float]] = {}  # media_id -> (bot, type, expires)

    def upload_chunk(conn: Conn, body: dict[str, Any]) -> tuple[int, str]:
        up = uploads.get(str(body.get("upload_id", "")))
        if up is None or up.bot != conn.bot:
            return BAD_PARAM, "invalid upload_id"
        if body.get("chunk_index") != len(up.chunks):
            return BAD_PARAM, f"chunk {len(up.chunks)} expected"
        try:
            piece = base64.b64decode(str(body.get("base64_data", "")), validate=True)
        except ValueError:
            return BAD_PARAM, "invalid base64_data"
        last = len(up.chunks) == up.total_chunks - 1
        expected = up.total_size - CHUNK_BYTES * (up.total_chunks - 1) if last else CHUNK_BYTES
        if len(piece) > CHUNK_BYTES or len(piece) != expected or len(up.chunks) >= up.total_chunks:
            return BAD_SIZE, "invalid chunk size"
        up.chunks.append(piece)
        return 0, "ok"

    def media_reply(conn: Conn, body: dict[str, Any], *, req_id: str = "", chat: str = "") -> tuple[int, str]:
        kind = str(body["msgtype"])
        media_id = str((body.get(kind) or {}).get("media_id", ""))
        known = media_ids.get(media_id)
        item = simstore.get(state, media_id)
        if known is None or item is None or known[0] != conn.bot or known[2] < clock():
            return BAD_MEDIA_ID, "invalid media_id"
        if known[1] != kind:
            return BAD_TYPE, "media type does not match msgtype"
        state.record(
            {
                "platform": "wecom_aibot",
                "bot": secrets_by_bot.get(conn.bot, ("", ""))[1],
                "via": "stream" if req_id else "send",
                "req_id": req_id,
                "chat": chat,
                "content": f"[{kind} {item.name}]",
                "msgtype": kind,
                "media": item.describe(),
                "finish": True,
            },
            clock(),
        )
        return 0, "ok"

    def log_event(conn: Conn, what: str, bot_id: str = "") -> None:
        events.append({"at": clock(), "bot_id": bot_id or conn.bot, "event": what, "socket": id(conn)})

    def later(delay: float, action: Callable[[], Awaitable[None]]) -> None:
        async def run() -> None:
            await asyncio.sleep(delay)
            await action()

        task = asyncio.create_task(run())
        pending.add(task)
        task.add_done_callback(pending.discard)

    async def ack(
        conn: Conn, req_id: str, errcode: int = 0, errmsg: str = "ok", body: dict[str, Any] | None = None
    ) -> None:
        answer: dict[str, Any] = {"headers": {"req_id": req_id}, "errcode": errcode, "errmsg": errmsg}
        if body is not None:
            answer["body"] = body
        text = json.dumps(answer)

        async def send() -> None:
            if conn.open:
                try:
                    await conn.ws.send_text(text)
                except Exception:  # gone meanwhile: nobody waits for this ack
                    state.stats["aibot_ws_ack_lost"] += 1

        if gw.ack_latency > 0:
            later(gw.ack_latency, send)
        else:
            await send()

    async def socket(ws: WebSocket) -> None:
        await ws.accept()
        conn = Conn(ws)
        try:
            while True:
                frame = json.loads(await ws.receive_text())
                cmd, req_id = frame.get("cmd"), str((frame.get("headers") or {}).get("req_id", ""))
                body = frame.get("body") or {}
                if cmd is None:
                    continue  # our own callbacks acknowledged
                if cmd == "aibot_subscribe":
                    found = secrets_by_bot.get(str(body.get("bot_id")))
                    if found is None or found[0] != body.get("secret"):
                        state.stats["aibot_ws_refused"] += 1  # the socket stays open, as live
                        log_event(conn, "refused", str(body.get("bot_id", "")))
                        await ack(conn, req_id, WRONG_SECRET, "invalid bot_id or secret")
                        continue
                    bot_id = str(body["bot_id"])
                    old = current.get(bot_id)
                    conn.bot = bot_id
                    current[bot_id] = conn
                    authenticated[bot_id] = authenticated.get(bot_id, 0) + 1
                    state.stats["aibot_ws_subscribes"] += 1
                    state.stats["aibot_ws_peak"] = max(state.stats["aibot_ws_peak"], authenticated[bot_id])
                    log_event(conn, "subscribed")
                    if old is not None:  # one socket per bot: the older one is told, then dropped
                        state.stats["aibot_ws_kicked"] += 1
                        await _kick(old)
                    await ack(conn, req_id)
                elif not conn.bot:
                    await ack(conn, req_id, 40014, "subscribe first")
                elif cmd == "ping":
                    state.stats["aibot_ws_pings"] += 1
                    await ack(conn, req_id)
                elif cmd == "aibot_respond_msg":
                    if req_id not in conn.req_ids:  # unknown, from another socket, or an event's
                        await ack(conn, req_id, INVALID_REQ_ID, "invalid req_id")
                        continue
                    if body.get("msgtype") in UPLOAD_LIMITS:
                        code, msg = media_reply(conn, body, req_id=req_id)
                        await ack(conn, req_id, code, msg)
                        continue
                    stream = body.get("stream") or {}
                    sid, content = str(stream.get("id", "")), str(stream.get("content", ""))
                    if len(content.encode()) > CONTENT_LIMIT_BYTES:
                        state.stats["aibot_ws_too_large"] += 1
                        await ack(conn, req_id, TOO_LARGE, "content size out of limit")
                        continue
                    refused = limits.refusal(sid, clock())
                    if refused is not None:
                        state.stats["aibot_ws_stream_refused"] += 1
                        if sid in streams:
                            streams[sid]["expired"] = True
                        await ack(conn, req_id, refused, "stream message update expired")
                        continue
                    limits.updated(sid, bool(stream.get("finish")), clock())
                    record(conn.bot, sid, content, bool(stream.get("finish")), "stream", req_id=req_id)
                    await ack(conn, req_id)
                elif cmd == "aibot_send_msg" and body.get("msgtype") in UPLOAD_LIMITS:
                    code, msg = media_reply(conn, body, chat=str(body.get("chatid", "")))
                    await ack(conn, req_id, code, msg)
                elif cmd == "aibot_send_msg":
                    content = str((body.get("markdown") or {}).get("content", ""))
                    if len(content.encode()) > CONTENT_LIMIT_BYTES:
                        state.stats["aibot_ws_too_large"] += 1
                        await ack(conn, req_id, TOO_LARGE, "content size out of limit")
                        continue
                    record(
                        conn.bot,
                        f"send-{secrets.token_hex(4)}",
                        content,
                        True,
                        "send",
                        chat=str(body.get("chatid", "")),
                    )
                    await ack(conn, req_id)
                elif cmd == "aibot_upload_media_init":
                    why = upload_refusal(body)
                    if why is not None:
                        state.stats["aibot_upload_refused"] += 1
                        await ack(conn, req_id, *why)
                        continue
                    upload_id = f"up{secrets.token_hex(8)}"
                    uploads[upload_id] = Upload(
                        conn.bot,
                        str(body["type"]),
                        str(body["filename"]),
                        int(body["total_size"]),
                        int(body["total_chunks"]),
                        str(body["md5"]).lower(),
                    )
                    await ack(conn, req_id, body={"upload_id": upload_id})
                elif cmd == "aibot_upload_media_chunk":
                    code, msg = upload_chunk(conn, body)
                    if code:
                        state.stats["aibot_upload_refused"] += 1
                    await ack(conn, req_id, code, msg)
                elif cmd == "aibot_upload_media_finish":
                    up = uploads.get(str(body.get("upload_id", "")))
                    if up is None or up.bot != conn.bot:
                        await ack(conn, req_id, BAD_PARAM, "invalid upload_id")
                        continue
                    data = b"".join(up.chunks)
                    del uploads[str(body["upload_id"])]
                    if len(up.chunks) != up.total_chunks or len(data) != up.total_size:
                        state.stats["aibot_upload_refused"] += 1
                        await ack(conn, req_id, BAD_PARAM, "chunks missing")
                        continue
                    if hashlib.md5(data).hexdigest() != up.md5:  # noqa: S324 - WeCom's checksum
                        state.stats["aibot_upload_refused"] += 1
                        await ack(conn, req_id, BAD_MD5, "md5 mismatch")
                        continue
                    item = simstore.put(
                        state,
                        data,
                        name=up.filename,
                        kind=up.type,
                        origin="upload",
                        id=f"media{secrets.token_hex(10)}",
                    )
                    media_ids[item.id] = (conn.bot, up.type, clock() + UPLOAD_SECONDS)
                    await ack(
                        conn,
                        req_id,
                        body={"type": up.type, "media_id": item.id, "created_at": int(clock())},
                    )
                else:
                    await ack(conn, req_id, 40058, "unsupported cmd")
        except (WebSocketDisconnect, RuntimeError, ValueError):
            pass
        finally:
            if conn.open:
                conn.open = False
                log_event(conn, "closed_by_client")
                if conn.kicked:
                    state.stats["aibot_ws_kick_closed_by_client"] += 1
            if conn.bot and current.get(conn.bot) is conn:
                del current[conn.bot]
            if conn.bot:
                authenticated[conn.bot] -= 1

    async def _kick(old: Conn) -> None:
        old.kicked = True
        log_event(old, "kicked")
        try:
            await old.ws.send_text(
                json.dumps(
                    {
                        "cmd": "aibot_event_callback",
                        "headers": {"req_id": f"kick_{secrets.token_hex(4)}"},
                        "body": {
                            "msgtype": "event",
                            "create_time": int(clock()),
                            "event": {"eventtype": "disconnected_event"},
                        },
                    }
                )
            )
        except Exception:  # already gone: nothing to kick
            state.stats["aibot_ws_kick_failed"] += 1
        later(gw.kick_drop_after, lambda: _drop(old))

    async def _drop(conn: Conn) -> None:
        """End a socket the way the live gateway ends a kicked one: the TCP connection, no close frame."""
        if not conn.open:
            return
        conn.open = False
        log_event(conn, "dropped")
        state.stats["aibot_ws_dropped"] += 1
        transport = _transport(conn.ws._send)
        if transport is not None:
            transport.abort()
        else:  # pragma: no cover - a server without a reachable transport: the closest we can do
            await conn.ws.close(code=1006)

    async def close(request: Request) -> Response:
        """The gateway ends a bot's socket (a restart on its side): a close frame, code 1001 by default."""
        body = json.loads(await request.body() or b"{}")
        conn = current.get(str(body.get("bot_id")))
        if conn is None:
            return JSONResponse({"error": "no connection for this bot"}, status_code=409)
        conn.open = False
        log_event(conn, "closed_by_server")
        state.stats["aibot_ws_server_closes"] += 1
        await conn.ws.close(code=int(body.get("code", 1001)))
        return JSONResponse({"ok": True})

    async def control(request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        for name in ("ack_latency", "kick_drop_after"):
            if name in body:
                setattr(gw, name, float(body[name]))
        return JSONResponse({"ack_latency": gw.ack_latency, "kick_drop_after": gw.kick_drop_after})

    async def list_events(_: Request) -> Response:
        return JSONResponse(events)

    def record(
        bot_id: str, sid: str, content: str, finish: bool, via: str, chat: str = "", req_id: str = ""
    ) -> None:
        bot = secrets_by_bot.get(bot_id, ("", ""))[1]
        entry = streams.get(sid)
        if entry is None:
            state.record(
                {
                    "platform": "wecom_aibot",
                    "bot": bot,
                    "via": via,
                    "stream_id": sid,
                    "req_id": req_id,
                    "chat": chat,
                    "content": content,
                    "finish": finish,
                    "history": [[clock(), content]],
                },
                clock(),
            )
            streams[sid] = state.messages[-1]
        else:
            entry["content"], entry["finish"] = content, finish
            entry["history"].append([clock(), content])

    async def push(request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        conn = current.get(str(body.get("bot_id")))
        if conn is None:
            return JSONResponse({"error": "no connection for this bot"}, status_code=409)
        req_id = f"msg_{secrets.token_hex(8)}"
        conn.req_ids.add(req_id)
        user, chat = str(body.get("user", "alice")), str(body.get("chat", ""))
        response_url = (
            f"{str(request.base_url).rstrip('/')}/cgi-bin/aibot/response?response_code={secrets.token_hex(8)}"
        )
        media = [SimMedia(**m) for m in body.get("media") or []]
        base = str(request.base_url).rstrip("/")
        msg: dict[str, Any] = {
            "msgid": str(body.get("msgid") or secrets.token_hex(16)),
            "aibotid": str(body["bot_id"]),
            "chattype": "group" if chat else "single",
            "from": {"userid": user},
            "create_time": int(clock()),
            "response_url": response_url,
            **message_body(str(body.get("text", "")), media, base, clock()),
        }
        if chat:
            msg["chatid"] = chat
        await conn.ws.send_text(
            json.dumps(
                {"cmd": "aibot_msg_callback", "headers": {"req_id": req_id}, "body": msg}, ensure_ascii=False
            )
        )
        return JSONResponse({"req_id": req_id, "msgid": msg["msgid"]})

    async def event(request: Request) -> Response:
        """Push an event (``eventtype``, default ``enter_chat``) to the bot's current socket."""
        body = json.loads(await request.body() or b"{}")
        conn = current.get(str(body.get("bot_id")))
        if conn is None:
            return JSONResponse({"error": "no connection for this bot"}, status_code=409)
        req_id = f"event_{secrets.token_hex(8)}"
        conn.event_req_ids.add(req_id)
        msg = {
            "msgid": secrets.token_hex(16),
            "aibotid": str(body["bot_id"]),
            "chattype": "single",
            "from": {"userid": str(body.get("user", "alice"))},
            "create_time": int(clock()),
            "msgtype": "event",
            "event": {"eventtype": str(body.get("eventtype", "enter_chat"))},
        }
        await conn.ws.send_text(
            json.dumps(
                {"cmd": "aibot_event_callback", "headers": {"req_id": req_id}, "body": msg},
                ensure_ascii=False,
            )
        )
        return JSONResponse({"req_id": req_id, "msgid": msg["msgid"]})

    async def stream_limits(request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        if "expiry_seconds" in body:
            limits.expiry_seconds = float(body["expiry_seconds"])
        return JSONResponse({"expiry_seconds": limits.expiry_seconds})

    async def connections(_: Request) -> Response:
        return JSONResponse(
            {b: authenticated.get(b, 0) for b in secrets_by_bot}
            | {"peak": state.stats.get("aibot_ws_peak", 0)}
        )

    return [
        WebSocketRoute("/ws/aibot", socket),
        Route("/sim/aibot/push", push, methods=["POST"]),
        Route("/sim/aibot/connections", connections, methods=["GET"]),
        Route("/sim/aibot/event", event, methods=["POST"]),
        Route("/sim/aibot/streams", stream_limits, methods=["POST"]),
        Route("/sim/aibot/close", close, methods=["POST"]),
        Route("/sim/aibot/control", control, methods=["POST"]),
        Route("/sim/aibot/events", list_events, methods=["GET"]),
    ]
