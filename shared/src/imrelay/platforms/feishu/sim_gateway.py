"""The Feishu / Lark long connection, played by the simulator.

``POST /callback/ws/endpoint`` (``{"AppID", "AppSecret"}``) answers the socket URL (``/ws/feishu`` with
``device_id``, ``service_id`` and a one-time ``ticket``) and the ``ClientConfig``; wrong credentials get
code 10014 (the live endpoint's own code for them is not documented; any code but 0, 1 and 1000040343 is
the client's problem). The handshake is refused, with the ``handshake-*`` headers the live gateway sends,
for an unknown or used ticket (514) and when the app already has ``max_connections`` sockets (514,
autherrcode 1000040350; 50 by default).

Frames are ``pbbp2`` (:mod:`.frames`), decoded strictly: a frame lacking a required field closes the socket
(1002). A ping (on the URL's ``service_id``) is answered by a pong carrying the ``ClientConfig``.

``POST /sim/feishu/push`` delivers a user message to one of the app's sockets, taking them in turn (Feishu
spreads events over an app's connections); ``parts`` sends it in several frames. An event not acknowledged
(``{"code":200}`` on the frame that completed it) within ``ack_deadline`` (3 s) is pushed again, same
event id, to the next socket, up to ``max_repushes`` times. ``POST /sim/feishu/repush`` re-sends an earlier
message as Feishu does after reconnects: a new event id, the same message id (and the message's own
creation time; ``age`` backdates a push). ``POST /sim/feishu/close`` closes sockets from the server side;
``POST /sim/feishu/control`` sets the ``ClientConfig``, ``ack_deadline``, ``max_repushes`` and
``max_connections``; ``GET /sim/feishu/connections`` counts each app's sockets and what each was given and
acknowledged; ``GET /sim/feishu/deliveries`` lists every push with its acks.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..spec import SimMedia
from . import frames
from .config import FeishuBot
from .frames import ClientConfig, Frame, FrameError
from .sim import event_json

if TYPE_CHECKING:
    from imrelay_sim.server import SimState

WRONG_SECRET = 10014


@dataclass
class Socket:
    ws: WebSocket
    app_id: str
    service_id: int
    device_id: str
    pushed: int = 0
    acked: int = 0
    open: bool = True


@dataclass
class Delivery:
    """One event as pushed: every frame message id it went out under, and who acknowledged it."""

    app_id: str
    event: dict[str, Any]
    frame_ids: list[str] = field(default_factory=list)
    sockets: list[str] = field(default_factory=list)  # device ids, one per push
    acked_by: str = ""
    acked_at: float = 0.0
    repushes: int = 0


@dataclass
class Gateway:
    """Settings changed with ``POST /sim/feishu/control``."""

    config: ClientConfig = field(default_factory=ClientConfig)
    ack_deadline: float = 3.0
    max_repushes: int = 5
    max_connections: int = 50


def routes(state: SimState, clock: Callable[[], float] = time.time) -> list[Route | WebSocketRoute]:
    bots = {
        b.credentials.app_id: b
        for b in (state.settings.bots if state.settings else [])
        if isinstance(b, FeishuBot)
    }
    gw = Gateway()
    tickets: dict[str, tuple[str, int, str]] = {}  # ticket -> app id, service id, device id
    sockets: dict[str, list[Socket]] = {}  # app id -> open sockets
    turn: dict[str, int] = {}
    deliveries: dict[str, Delivery] = {}  # event id -> delivery
    by_frame: dict[str, str] = {}  # frame message id -> event id
    by_message: dict[str, str] = {}  # chat message id -> the first event id
    pending: set[asyncio.Task[None]] = set()

    async def endpoint(request: Request) -> Response:
        state.stats["feishu_ws_discover"] += 1
        body = json.loads(await request.body() or b"{}")
        bot = bots.get(str(body.get("AppID")))
        if bot is None or bot.credentials.app_secret.get_secret_value() != body.get("AppSecret"):
            return JSONResponse({"code": WRONG_SECRET, "msg": "app secret invalid"})
        service_id, device_id, ticket = secrets.randbelow(2**31), secrets.token_hex(8), secrets.token_hex(16)
        tickets[ticket] = (bot.credentials.app_id, service_id, device_id)
        base = str(request.base_url).rstrip("/").replace("http://", "ws://").replace("https://", "wss://")
        query = urlencode({"device_id": device_id, "service_id": service_id, "ticket": ticket})
        return JSONResponse(
            {
                "code": 0,
                "msg": "ok",
                "data": {"URL": f"{base}/ws/feishu?{query}", "ClientConfig": json.loads(gw.config.wire())},
            }
        )

    async def deny(ws: WebSocket, autherrcode: int | None, msg: str) -> None:
        headers = {frames.HANDSHAKE_STATUS: str(frames.AUTH_FAILED), frames.HANDSHAKE_MSG: msg}
        if autherrcode is not None:
            headers[frames.HANDSHAKE_AUTH_ERRCODE] = str(autherrcode)
        await ws.send_denial_response(Response(msg, status_code=400, headers=headers))

    async def socket(ws: WebSocket) -> None:
        found = tickets.pop(ws.query_params.get("ticket", ""), None)
        if found is None:
            state.stats["feishu_ws_refused"] += 1
            await deny(ws, None, "invalid ticket")
            return
        app_id, service_id, device_id = found
        mine = sockets.setdefault(app_id, [])
        if len(mine) >= gw.max_connections:
            state.stats["feishu_ws_too_many"] += 1
            await deny(ws, frames.TOO_MANY_CONNECTIONS, "exceed connection limit")
            return
        await ws.accept()
        conn = Socket(ws, app_id, service_id, device_id)
        mine.append(conn)
        state.stats["feishu_ws_connects"] += 1
        try:
            while True:
                raw = await ws.receive_bytes()
                try:
                    frame = frames.decode(raw)
                except FrameError:
                    state.stats["feishu_ws_bad_frames"] += 1
                    await ws.close(code=1002)
                    return
                if frame.method == frames.CONTROL:
                    if frame.header("type") == frames.PING:
                        if frame.service != service_id:
                            state.stats["feishu_ws_bad_frames"] += 1
                            continue
                        state.stats["feishu_ws_pings"] += 1
                        await ws.send_bytes(frames.encode(frames.pong(frame, gw.config)))
                    continue
                acked(conn, frame)
        except (WebSocketDisconnect, RuntimeError, KeyError):
            pass
        finally:
            conn.open = False
            if conn in mine:
                mine.remove(conn)

    def acked(conn: Socket, frame: Frame) -> None:
        """An ack counts on the socket its frame went out on, with code 200 (500: the client failed)."""
        frame_id = frame.header("message_id")
        delivery = deliveries.get(by_frame.get(frame_id, ""))
        if (
            delivery is None
            or frames.ack_code(frame) != 200
            or delivery.sockets[delivery.frame_ids.index(frame_id)] != conn.device_id
        ):
            state.stats["feishu_ws_bad_acks"] += 1
            return
        if frame_id != delivery.frame_ids[-1]:
            state.stats["feishu_ws_late_acks"] += 1  # after the deadline: pushed again meanwhile
        if delivery.acked_by:
            state.stats["feishu_ws_extra_acks"] += 1
            return
        delivery.acked_by, delivery.acked_at = conn.device_id, clock()
        conn.acked += 1
        state.stats["feishu_ws_acked"] += 1

    def next_socket(app_id: str) -> Socket | None:
        mine = [s for s in sockets.get(app_id, []) if s.open]
        if not mine:
            return None
        turn[app_id] = turn.get(app_id, -1) + 1
        return mine[turn[app_id] % len(mine)]

    async def send(delivery: Delivery, conn: Socket, parts: int = 1) -> None:
        frame_id = secrets.token_hex(8)
        delivery.frame_ids.append(frame_id)
        delivery.sockets.append(conn.device_id)
        by_frame[frame_id] = str(delivery.event["header"]["event_id"])
        payload = json.dumps(delivery.event, ensure_ascii=False).encode()
        trace = secrets.token_hex(8)
        conn.pushed += 1
        for seq, piece in enumerate(frames.split(payload, parts)):
            frame = Frame(
                seq_id=secrets.randbelow(2**40),
                log_id=secrets.randbelow(2**40),
                service=conn.service_id,
                method=frames.DATA,
                headers=(
                    ("type", frames.EVENT),
                    ("message_id", frame_id),
                    ("sum", str(parts)),
                    ("seq", str(seq)),
                    ("trace_id", trace),
                ),
                payload=piece,
            )
            await conn.ws.send_bytes(frames.encode(frame))
        watch(delivery, frame_id)

    def watch(delivery: Delivery, frame_id: str) -> None:
        """Push again, to the next socket, if not acknowledged within the deadline."""

        async def check() -> None:
            await asyncio.sleep(gw.ack_deadline)
            if delivery.acked_by or delivery.frame_ids[-1] != frame_id:
                return
            if delivery.repushes >= gw.max_repushes:
                state.stats["feishu_ws_given_up"] += 1
                return
            delivery.repushes += 1
            state.stats["feishu_ws_repushed"] += 1
            conn = next_socket(delivery.app_id)
            if conn is None:
                watch(delivery, frame_id)  # nobody connected: try again after another deadline
                return
            try:
                await send(delivery, conn)
            except Exception:
                watch(delivery, frame_id)

        task = asyncio.create_task(check())
        pending.add(task)
        task.add_done_callback(pending.discard)

    def pick(app_id: str, index: Any) -> Socket | None:
        if index is None:
            return next_socket(app_id)
        mine = [s for s in sockets.get(app_id, []) if s.open]
        return mine[int(index)] if 0 <= int(index) < len(mine) else None

    async def push(request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        bot = bots.get(str(body.get("app_id")))
        if bot is None:
            return JSONResponse({"error": "no such app"}, status_code=404)
        conn = pick(bot.credentials.app_id, body.get("socket"))
        if conn is None:
            return JSONResponse({"error": "no connection for this app"}, status_code=409)
        user, chat = str(body.get("user", "alice")), str(body.get("chat", ""))
        message_id = str(body.get("message_id") or f"om_{secrets.token_hex(8)}")
        event_id = str(body.get("event_id") or secrets.token_hex(16))
        created = clock() - float(body.get("age", 0))
        event = event_json(
            bot,
            str(body.get("text", "")),
            user,
            chat or f"oc_p2p_{user}",
            "group" if chat else "p2p",
            event_id,
            message_id,
            created,
            tuple(SimMedia(**m) for m in body.get("media") or [] if isinstance(m, dict)),
        )
        delivery = deliveries[event_id] = Delivery(bot.credentials.app_id, event)
        by_message.setdefault(message_id, event_id)
        state.stats["feishu_ws_pushed"] += 1
        await send(delivery, conn, max(1, int(body.get("parts", 1))))
        return JSONResponse({"event_id": event_id, "message_id": message_id, "socket": conn.device_id})

    async def repush(request: Request) -> Response:
        """The same message again under a new event id (as after a reconnect)."""
        body = json.loads(await request.body() or b"{}")
        first = deliveries.get(by_message.get(str(body.get("message_id")), ""))
        if first is None:
            return JSONResponse({"error": "no such message"}, status_code=404)
        conn = pick(first.app_id, body.get("socket"))
        if conn is None:
            return JSONResponse({"error": "no connection for this app"}, status_code=409)
        event = json.loads(json.dumps(first.event))
        event["header"]["event_id"] = event_id = secrets.token_hex(16)
        event["header"]["create_time"] = str(int(clock() * 1000))
        delivery = deliveries[event_id] = Delivery(first.app_id, event)
        state.stats["feishu_ws_pushed"] += 1
        await send(delivery, conn)
        return JSONResponse(
            {"event_id": event_id, "message_id": body.get("message_id"), "socket": conn.device_id}
        )

    async def close(request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        mine = [s for s in sockets.get(str(body.get("app_id")), []) if s.open]
        index = body.get("socket")
        chosen = mine if index is None else mine[int(index) : int(index) + 1]
        for s in chosen:
            s.open = False
            state.stats["feishu_ws_server_closes"] += 1
            await s.ws.close(code=int(body.get("code", 1001)))
        return JSONResponse({"closed": [s.device_id for s in chosen]})

    async def control(request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        if "config" in body:
            gw.config = ClientConfig.model_validate(json.loads(gw.config.wire()) | body["config"])
        for name, kind in (("ack_deadline", float), ("max_repushes", int), ("max_connections", int)):
            if name in body:
                setattr(gw, name, kind(body[name]))
        return JSONResponse(
            {
                "config": json.loads(gw.config.wire()),
                "ack_deadline": gw.ack_deadline,
                "max_repushes": gw.max_repushes,
                "max_connections": gw.max_connections,
            }
        )

    async def connections(_: Request) -> Response:
        return JSONResponse(
            {
                app: [
                    {"device_id": s.device_id, "pushed": s.pushed, "acked": s.acked} for s in mine if s.open
                ]
                for app, mine in sockets.items()
            }
        )

    async def list_deliveries(_: Request) -> Response:
        return JSONResponse(
            [
                {
                    "event_id": eid,
                    "message_id": d.event["event"]["message"]["message_id"],
                    "sockets": d.sockets,
                    "acked_by": d.acked_by,
                    "repushes": d.repushes,
                }
                for eid, d in deliveries.items()
            ]
        )

    return [
        Route("/callback/ws/endpoint", endpoint, methods=["POST"]),
        WebSocketRoute("/ws/feishu", socket),
        Route("/sim/feishu/push", push, methods=["POST"]),
        Route("/sim/feishu/repush", repush, methods=["POST"]),
        Route("/sim/feishu/close", close, methods=["POST"]),
        Route("/sim/feishu/control", control, methods=["POST"]),
        Route("/sim/feishu/connections", connections, methods=["GET"]),
        Route("/sim/feishu/deliveries", list_deliveries, methods=["GET"]),
    ]
