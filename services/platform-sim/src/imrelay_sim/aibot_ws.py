"""The WeCom AI-bot long connection, played by the simulator (``/ws/aibot``).

Frames are JSON ``{"cmd", "headers": {"req_id"}, "body"}``; every frame we receive is acknowledged by a
frame without ``cmd`` carrying the same ``req_id`` and an ``errcode``. ``aibot_subscribe`` authenticates a
bot (``bot_id`` + ``secret``); a newer subscription for the same bot kicks the older socket (a
``disconnected_event`` callback, then close) — so ``/sim/stats`` can report the most sockets one bot ever
had authenticated at once (``aibot_ws_peak``), which must stay 1. ``POST /sim/aibot/push`` delivers a user
message to the bot's current socket; ``aibot_respond_msg`` frames (stream updates) and ``aibot_send_msg``
(proactive) are what the user sees, recorded in ``/sim/messages``. A ``req_id`` from an earlier connection
is refused with 846605, as a reply must travel on the socket its message came on.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from imrelay.config import WeComAIBot

if TYPE_CHECKING:
    from .server import SimState


@dataclass
class Conn:
    ws: WebSocket
    bot: str = ""
    req_ids: set[str] = field(default_factory=set)  # messages pushed on this socket


def routes(state: SimState, clock: Callable[[], float] = time.time) -> list[Route | WebSocketRoute]:
    secrets_by_bot = {b.credentials.bot_id: (b.credentials.secret.get_secret_value()
                                             if b.credentials.secret else "", b.id)
                      for b in (state.settings.bots if state.settings else [])
                      if isinstance(b, WeComAIBot) and b.credentials.bot_id}
    current: dict[str, Conn] = {}  # bot_id -> the authenticated socket
    authenticated: dict[str, int] = {}
    streams: dict[str, dict[str, Any]] = {}  # stream id -> the message the user sees

    async def ack(conn: Conn, req_id: str, errcode: int = 0, errmsg: str = "ok") -> None:
        await conn.ws.send_text(json.dumps({"headers": {"req_id": req_id}, "errcode": errcode,
                                            "errmsg": errmsg}))

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
                        await ack(conn, req_id, 40001, "invalid bot_id or secret")
                        continue
                    bot_id = str(body["bot_id"])
                    old = current.get(bot_id)
                    conn.bot = bot_id
                    current[bot_id] = conn
                    authenticated[bot_id] = authenticated.get(bot_id, 0) + 1
                    state.stats["aibot_ws_subscribes"] += 1
                    state.stats["aibot_ws_peak"] = max(state.stats["aibot_ws_peak"], authenticated[bot_id])
                    if old is not None:  # one socket per bot: the older one is told, then closed
                        state.stats["aibot_ws_kicked"] += 1
                        await _kick(old)
                    await ack(conn, req_id)
                elif not conn.bot:
                    await ack(conn, req_id, 40014, "subscribe first")
                elif cmd == "ping":
                    state.stats["aibot_ws_pings"] += 1
                    await ack(conn, req_id)
                elif cmd == "aibot_respond_msg":
                    if req_id not in conn.req_ids:
                        await ack(conn, req_id, 846605, "invalid req_id")
                        continue
                    stream = body.get("stream") or {}
                    record(conn.bot, str(stream.get("id", "")), str(stream.get("content", "")),
                           bool(stream.get("finish")), "stream")
                    await ack(conn, req_id)
                elif cmd == "aibot_send_msg":
                    content = (body.get("markdown") or {}).get("content", "")
                    record(conn.bot, f"send-{secrets.token_hex(4)}", str(content), True, "send",
                           chat=str(body.get("chatid", "")))
                    await ack(conn, req_id)
                else:
                    await ack(conn, req_id, 40058, "unsupported cmd")
        except (WebSocketDisconnect, RuntimeError, ValueError):
            pass
        finally:
            if conn.bot and current.get(conn.bot) is conn:
                del current[conn.bot]
            if conn.bot:
                authenticated[conn.bot] -= 1

    async def _kick(old: Conn) -> None:
        try:
            await old.ws.send_text(json.dumps({
                "cmd": "aibot_event_callback", "headers": {"req_id": f"kick_{secrets.token_hex(4)}"},
                "body": {"msgtype": "event", "event": {"eventtype": "disconnected_event"}}}))
            await old.ws.close(code=1000)
        except Exception:  # already gone: nothing to kick
            state.stats["aibot_ws_kick_failed"] += 1

    def record(bot_id: str, sid: str, content: str, finish: bool, via: str, chat: str = "") -> None:
        bot = secrets_by_bot.get(bot_id, ("", ""))[1]
        entry = streams.get(sid)
        if entry is None:
            state.record({"platform": "wecom_aibot", "bot": bot, "via": via, "stream_id": sid,
                          "chat": chat, "content": content, "finish": finish,
                          "history": [[clock(), content]]}, clock())
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
        msg: dict[str, Any] = {"msgid": str(body.get("msgid") or secrets.token_hex(16)),
                               "aibotid": str(body["bot_id"]), "chattype": "group" if chat else "single",
                               "from": {"userid": user}, "msgtype": "text",
                               "text": {"content": str(body.get("text", ""))}}
        if chat:
            msg["chatid"] = chat
        await conn.ws.send_text(json.dumps({"cmd": "aibot_msg_callback", "headers": {"req_id": req_id},
                                            "body": msg}, ensure_ascii=False))
        return JSONResponse({"req_id": req_id, "msgid": msg["msgid"]})

    async def connections(_: Request) -> Response:
        return JSONResponse({b: authenticated.get(b, 0) for b in secrets_by_bot} | {
            "peak": state.stats.get("aibot_ws_peak", 0)})

    return [
        WebSocketRoute("/ws/aibot", socket),
        Route("/sim/aibot/push", push, methods=["POST"]),
        Route("/sim/aibot/connections", connections, methods=["GET"]),
    ]
