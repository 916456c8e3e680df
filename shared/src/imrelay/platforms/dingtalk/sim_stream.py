"""DingTalk Stream mode, played by the simulator.

* ``POST /v1.0/gateway/connections/open`` takes ``clientId``/``clientSecret`` (an app's AppKey/AppSecret;
  wrong ones: HTTP 401 ``InvalidAuthentication``) and ``subscriptions``, and answers ``{endpoint, ticket}``:
  the ticket is good for one connection, within 90 s.
* ``/dingtalk/stream?ticket=…`` is the WebSocket: a missing, unknown, used or stale ticket is refused at
  the handshake (HTTP 403).
* ``POST /sim/dingtalk/push`` (``bot_id``, ``text``, ``user``, ``chat``, ``msgid``, optional
  ``connection``, ``session_minutes``: the session webhook's life, 90 by default, ``media``: files put in
  with ``POST /sim/media``, as ``SimMedia`` fields; voice, files and video in a group: HTTP 400) sends a
  robot message
  (a ``CALLBACK`` frame on ``/v1.0/im/bot/messages/get``, its ``data`` the same JSON as an HTTP-mode
  callback, with a session webhook) to one of the app's
  connections subscribed to robot messages: round robin over those not told to disconnect, else one told
  to disconnect that is still open; with none open the message is lost (HTTP 409). A robot message is
  **never sent again**, acked or not, as DingTalk does.
* Every connection gets a ``SYSTEM`` ``ping`` every ``ping_interval`` seconds, ``data {"opaque": …}``; an ack
  without the same opaque, or none within ``ping_timeout``, closes the socket (code 1008).
* ``POST /sim/dingtalk/disconnect`` (``bot_id``, optional ``connection``; default every connection of the
  app) sends the ``disconnect`` frame and closes that socket ``disconnect_grace`` seconds later (about 10 s
  on DingTalk); ``POST /sim/dingtalk/close`` closes sockets at once (code 1001).
* ``POST /sim/dingtalk/control`` sets ``ping_interval``, ``ping_timeout``, ``disconnect_grace``.
* ``GET /sim/dingtalk/connections`` lists the open connections by bot; ``GET /sim/dingtalk/acks`` counts
  the acks of each robot message (``messageId`` -> count, and which connection it went to);
  ``GET /sim/dingtalk/events`` lists what happened to the sockets (opened, refused, disconnect, closed…).
"""

from __future__ import annotations

import asyncio
import contextlib
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

from ..spec import SimMedia
from .config import DingTalkBot
from .frames import CALLBACK, SYSTEM, TOPIC_ROBOT
from .sim import callback

if TYPE_CHECKING:
    from imrelay_sim.server import SimState

TICKET_SECONDS = 90.0


@dataclass
class Gateway:
    """The gateway's timing, changed with ``POST /sim/dingtalk/control``."""

    ping_interval: float = 20.0
    ping_timeout: float = 10.0
    disconnect_grace: float = 10.0


@dataclass
class Conn:
    ws: WebSocket
    id: str
    app_key: str
    robot: bool  # subscribed to robot messages
    disconnecting: bool = False
    open: bool = True
    pings: dict[str, str] = field(default_factory=dict)  # messageId -> opaque, awaiting their acks


def routes(state: SimState, clock: Callable[[], float] = time.time) -> list[Route | WebSocketRoute]:
    apps: dict[str, tuple[str, DingTalkBot]] = {}  # app_key -> (secret, bot)
    for bot in state.settings.bots if state.settings else []:
        if isinstance(bot, DingTalkBot):
            apps[bot.credentials.app_key] = (bot.credentials.app_secret.get_secret_value(), bot)
    by_id = {bot.id: key for key, (_, bot) in apps.items()}
    tickets: dict[str, tuple[str, bool, float]] = {}  # ticket -> (app_key, robot subscribed, issued at)
    conns: dict[str, list[Conn]] = {}  # app_key -> open connections, oldest first
    turn: dict[str, int] = {}
    pushed: dict[str, dict[str, Any]] = {}  # messageId -> {connection, msgId, acks}
    events: list[dict[str, Any]] = []
    gw = Gateway()
    tasks: set[asyncio.Task[None]] = set()

    def log_event(conn_id: str, app_key: str, what: str) -> None:
        bot = apps[app_key][1].id if app_key in apps else ""
        events.append({"at": clock(), "bot": bot, "connection": conn_id, "event": what})

    def background(coro: Any) -> None:
        task = asyncio.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def frame(kind: str, topic: str, mid: str, data: dict[str, Any], conn: Conn) -> str:
        return json.dumps(
            {
                "specVersion": "1.0",
                "type": kind,
                "headers": {
                    "appId": conn.app_key,
                    "connectionId": conn.id,
                    "contentType": "application/json",
                    "messageId": mid,
                    "time": str(int(clock() * 1000)),
                    "topic": topic,
                },
                "data": json.dumps(data, ensure_ascii=False),
            },
            ensure_ascii=False,
        )

    async def close(conn: Conn, code: int, why: str) -> None:
        if not conn.open:
            return
        conn.open = False
        log_event(conn.id, conn.app_key, why)
        with contextlib.suppress(Exception):
            await conn.ws.close(code=code)

    async def open_connection(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return JSONResponse({"code": "InvalidParameter", "message": "invalid json"}, status_code=400)
        key = str(body.get("clientId", ""))
        app = apps.get(key)
        if app is None or app[0] != body.get("clientSecret"):
            state.stats["dingtalk_stream_refused"] += 1
            return JSONResponse(
                {"code": "InvalidAuthentication", "message": "clientId or clientSecret is invalid"},
                status_code=401,
            )
        subs = body.get("subscriptions") or []
        robot = any(
            isinstance(s, dict) and s.get("type") == CALLBACK and s.get("topic") == TOPIC_ROBOT for s in subs
        )
        ticket = secrets.token_urlsafe(24)
        tickets[ticket] = (key, robot, clock())
        state.issued.append(ticket)  # a credential: must never show in a log
        state.stats["dingtalk_stream_tickets"] += 1
        base = str(request.base_url).rstrip("/").replace("http://", "ws://").replace("https://", "wss://")
        return JSONResponse({"endpoint": f"{base}/dingtalk/stream", "ticket": ticket})

    async def pinger(conn: Conn) -> None:
        while conn.open:
            await asyncio.sleep(gw.ping_interval)
            if not conn.open:
                return
            mid, opaque = f"ping_{secrets.token_hex(6)}", secrets.token_hex(8)
            conn.pings[mid] = opaque
            try:
                await conn.ws.send_text(frame(SYSTEM, "ping", mid, {"opaque": opaque}, conn))
            except Exception:
                return
            await asyncio.sleep(gw.ping_timeout)
            if mid in conn.pings and conn.open:
                state.stats["dingtalk_stream_ping_unanswered"] += 1
                await close(conn, 1008, "ping_unanswered")
                return

    async def socket(ws: WebSocket) -> None:
        ticket = ws.query_params.get("ticket", "")
        found = tickets.pop(ticket, None)  # once
        if found is None or clock() - found[2] > TICKET_SECONDS:
            state.stats["dingtalk_stream_bad_ticket"] += 1
            events.append({"at": clock(), "bot": "", "connection": "", "event": "bad_ticket"})
            await ws.close(code=1008)  # before accept: the handshake is refused (HTTP 403)
            return
        await ws.accept()
        key, robot, _ = found
        conn = Conn(ws, f"conn_{secrets.token_hex(6)}", key, robot)
        conns.setdefault(key, []).append(conn)
        state.stats["dingtalk_stream_connections"] += 1
        log_event(conn.id, key, "opened")
        background(pinger(conn))
        try:
            while True:
                msg = json.loads(await ws.receive_text())
                headers = msg.get("headers") if isinstance(msg, dict) else None
                mid = str(headers.get("messageId", "")) if isinstance(headers, dict) else ""
                if mid in conn.pings:
                    opaque = conn.pings.pop(mid)
                    try:
                        echoed = json.loads(msg.get("data") or "{}").get("opaque")
                    except (ValueError, AttributeError):
                        echoed = None
                    if msg.get("code") != 200 or echoed != opaque:
                        state.stats["dingtalk_stream_bad_pong"] += 1
                        await close(conn, 1008, "bad_pong")
                        return
                    state.stats["dingtalk_stream_pongs"] += 1
                elif mid in pushed:
                    entry = pushed[mid]
                    entry["acks"] += 1
                    entry["ack_code"] = msg.get("code")
                    entry["acked_on"] = conn.id
                    state.stats["dingtalk_stream_acks"] += 1
                elif mid.startswith("disconnect_"):
                    state.stats["dingtalk_stream_disconnect_acks"] += 1
                else:
                    state.stats["dingtalk_stream_unknown_acks"] += 1
        except (WebSocketDisconnect, RuntimeError, ValueError):
            pass
        finally:
            if conn.open:
                conn.open = False
                log_event(conn.id, key, "closed_by_client")
            with contextlib.suppress(ValueError):
                conns[key].remove(conn)

    def app_of(body: dict[str, Any]) -> str | None:
        if "bot_id" in body:
            return by_id.get(str(body["bot_id"]))
        key = str(body.get("app_key", ""))
        return key if key in apps else None

    def chosen(key: str, wanted: str) -> list[Conn]:
        live = [c for c in conns.get(key, []) if c.open]
        return [c for c in live if c.id == wanted] if wanted else live

    async def push(request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        key = app_of(body)
        if key is None:
            return JSONResponse({"error": "unknown bot"}, status_code=404)
        candidates = [c for c in chosen(key, str(body.get("connection", ""))) if c.robot]
        active = [c for c in candidates if not c.disconnecting] or candidates
        if not active:
            state.stats["dingtalk_stream_lost"] += 1
            return JSONResponse({"error": "no connection for this app: the message is lost"}, status_code=409)
        n = turn.get(key, 0)
        turn[key] = n + 1
        conn = active[n % len(active)]
        bot = apps[key][1]
        user, chat = str(body.get("user", "alice")), str(body.get("chat", ""))
        msg_id = f"msg{body.get('msgid') or secrets.token_hex(8)}"
        sim_url = str(request.base_url).rstrip("/")
        try:
            media = tuple(SimMedia(**m) for m in body.get("media") or [])
            _, raw = callback(
                bot,
                str(body.get("text", "")),
                user,
                chat or f"cid_{user}",
                bool(chat),
                msg_id,
                clock(),
                sim_url,
                session_minutes=float(body.get("session_minutes", 90)),
                media=media,
            )
        except (TypeError, ValueError) as exc:  # voice, files and video are not sent in groups
            return JSONResponse({"error": str(exc)}, status_code=400)
        mid = f"robot_{secrets.token_hex(8)}"
        pushed[mid] = {"connection": conn.id, "msgId": msg_id, "acks": 0}
        try:
            await conn.ws.send_text(frame(CALLBACK, TOPIC_ROBOT, mid, json.loads(raw), conn))
        except Exception:
            state.stats["dingtalk_stream_lost"] += 1
            return JSONResponse({"error": "the connection failed: the message is lost"}, status_code=409)
        state.stats["dingtalk_stream_pushed"] += 1
        return JSONResponse({"messageId": mid, "msgId": msg_id, "connection": conn.id})

    async def disconnect(request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        key = app_of(body)
        if key is None:
            return JSONResponse({"error": "unknown bot"}, status_code=404)
        targets = [c for c in chosen(key, str(body.get("connection", ""))) if not c.disconnecting]
        grace = float(body.get("grace", gw.disconnect_grace))
        for conn in targets:
            conn.disconnecting = True
            log_event(conn.id, key, "disconnect")
            with contextlib.suppress(Exception):
                await conn.ws.send_text(
                    frame(
                        SYSTEM,
                        "disconnect",
                        f"disconnect_{secrets.token_hex(6)}",
                        {"reason": "rebalance"},
                        conn,
                    )
                )

            async def later(c: Conn = conn) -> None:
                await asyncio.sleep(grace)
                await close(c, 1000, "closed_after_disconnect")

            background(later())
        return JSONResponse({"connections": [c.id for c in targets]})

    async def close_route(request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        key = app_of(body)
        if key is None:
            return JSONResponse({"error": "unknown bot"}, status_code=404)
        targets = chosen(key, str(body.get("connection", "")))
        for conn in targets:
            state.stats["dingtalk_stream_server_closes"] += 1
            await close(conn, int(body.get("code", 1001)), "closed_by_server")
        return JSONResponse({"connections": [c.id for c in targets]})

    async def control(request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        for name in ("ping_interval", "ping_timeout", "disconnect_grace"):
            if name in body:
                setattr(gw, name, float(body[name]))
        return JSONResponse(
            {
                "ping_interval": gw.ping_interval,
                "ping_timeout": gw.ping_timeout,
                "disconnect_grace": gw.disconnect_grace,
            }
        )

    async def connections(_: Request) -> Response:
        return JSONResponse(
            {
                bot.id: [
                    {"id": c.id, "disconnecting": c.disconnecting, "robot": c.robot}
                    for c in conns.get(key, [])
                    if c.open
                ]
                for key, (_, bot) in apps.items()
            }
        )

    async def acks(_: Request) -> Response:
        return JSONResponse(pushed)

    async def list_events(_: Request) -> Response:
        return JSONResponse(events)

    return [
        Route("/v1.0/gateway/connections/open", open_connection, methods=["POST"]),
        WebSocketRoute("/dingtalk/stream", socket),
        Route("/sim/dingtalk/push", push, methods=["POST"]),
        Route("/sim/dingtalk/disconnect", disconnect, methods=["POST"]),
        Route("/sim/dingtalk/close", close_route, methods=["POST"]),
        Route("/sim/dingtalk/control", control, methods=["POST"]),
        Route("/sim/dingtalk/connections", connections, methods=["GET"]),
        Route("/sim/dingtalk/acks", acks, methods=["GET"]),
        Route("/sim/dingtalk/events", list_events, methods=["GET"]),
    ]
