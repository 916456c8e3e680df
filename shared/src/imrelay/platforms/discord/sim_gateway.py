"""The Discord Gateway and channel messages, played by the simulator.

``GET /api/v10/gateway/bot`` (``Authorization: Bot <token>``; 401 otherwise) answers the Gateway URL and
``session_start_limit``. The socket (``/discord/gateway``, resumes on ``/discord/gateway-resume``, both
with ``?v=10&encoding=json``, else close 4012) sends Hello (``heartbeat_interval``, default 41250 ms or
``DISCORD_SIM_HEARTBEAT_MS``), answers each heartbeat (op 1) with an ACK (op 11), and closes with 4009
(session timed out: the session is gone) when no heartbeat came for 1.5 intervals. Identify (op 2): a wrong
token closes 4004, privileged intents 4014, malformed intents 4013, a second Identify on a socket 4005,
anything but a heartbeat before it 4003, an unknown op 4001, a frame that is not JSON 4002, more than
120 frames a minute 4008; an Identify within ``identify_interval`` seconds of the bot's previous one is
answered Invalid Session (op 9, ``false``), as Discord does. READY carries ``session_id``,
``resume_gateway_url`` and the bot user (its id is the application id), then a GUILD_CREATE. Resume
(op 6): an unknown, ended or expired session is answered op 9 ``false``; a ``seq`` ahead of the session
closes 4007; otherwise every event after ``seq`` is sent again, then RESUMED. A socket that ends keeps its
session resumable for ``resume_window`` seconds (events meanwhile are kept for the resume) unless the
client closed it with 1000 or 1001.

Discord sends every event to every session of a bot, so a second session doubles them:
``/sim/discord/sessions`` reports the most sessions one bot ever had on open sockets at once (``peak``).

Control: ``POST /sim/discord/push`` (a user's message: in a guild channel mentioning the bot unless
``mention`` is false, or a DM when ``channel`` is empty; ``author_bot`` for another bot's message) goes to
every session of the bot (409 when it has none); ``POST /sim/discord/close`` closes the bot's socket
(``code``, default 1001: a Gateway restart); ``/sim/discord/reconnect`` sends op 7;
``/sim/discord/invalidate`` sends op 9 (``resumable``); ``/sim/discord/control`` sets
``heartbeat_interval_ms``, ``resume_window``, ``identify_interval``, ``ack_heartbeats`` (false: a zombie
connection), ``hello_paused`` (true: new sockets get no Hello until it is false again, a Gateway outage),
``create_limit``/``edit_limit`` per ``limit_window`` seconds; ``GET /sim/discord/events`` lists what
happened to the sockets.

Channel messages: ``POST /api/v10/channels/{id}/messages`` (bot token; ``content`` 1-2000 characters,
else 400 with 50035/50006; a ``message_reference`` to an unknown message is 400 50035 unless
``fail_if_not_exists`` is false; a repeated ``nonce`` with ``enforce_nonce`` within 5 minutes returns the
message already created) and ``PATCH /api/v10/channels/{id}/messages/{id}`` (404 10008 for an unknown
message, 403 50005 for another author's). Each route's bucket is per channel (default 5 calls per 5 s);
every answer carries ``X-RateLimit-*`` headers and an exceeded bucket answers 429 with ``retry_after``.
Replies and their edits are what the user sees, in ``/sim/messages`` (``reply_to`` = the question's id).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from imrelay.platforms.discord import gateway as gw
from imrelay.platforms.discord.config import DiscordBot
from imrelay.platforms.discord.sim import attachment_object, keep_uploads, message_flags, read_send
from imrelay.platforms.spec import SimMedia

if TYPE_CHECKING:
    from imrelay_sim.server import SimState

PRIVILEGED = (1 << 1) | (1 << 8) | (1 << 15)  # GUILD_MEMBERS, GUILD_PRESENCES, MESSAGE_CONTENT
SIM_GUILD = "900000000000000001"
CHAR_LIMIT = 2000


@dataclass
class GatewayKnobs:
    heartbeat_interval_ms: int = int(os.environ.get("DISCORD_SIM_HEARTBEAT_MS", "41250"))
    resume_window: float = 120.0
    identify_interval: float = 5.0  # max_concurrency 1: one Identify per 5 s
    ack_heartbeats: bool = True
    hello_paused: bool = False  # new sockets wait for their Hello until this is false again
    create_limit: int = 5
    edit_limit: int = 5
    limit_window: float = 5.0


@dataclass
class GwSession:
    sid: str
    bot: str  # config id
    seq: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    conn: Conn | None = None
    ended: bool = False
    detached_at: float = 0.0


@dataclass
class Conn:
    ws: WebSocket
    path: str
    session: GwSession | None = None
    last_beat: float = 0.0
    frames: deque[float] = field(default_factory=deque)
    open: bool = True


def _snowflake() -> str:
    return str((int(time.time() * 1000) - 1420070400000) << 22 | secrets.randbelow(1 << 22))


def routes(state: SimState, clock: Callable[[], float] = time.time) -> list[BaseRoute]:
    bots = {
        b.credentials.bot_token.get_secret_value(): b
        for b in (state.settings.bots if state.settings else [])
        if isinstance(b, DiscordBot)
    }
    by_id = {b.id: b for b in bots.values()}
    knobs = GatewayKnobs()
    sessions: dict[str, GwSession] = {}
    last_identify: dict[str, float] = {}
    starts_left: dict[str, int] = {}
    peak: dict[str, int] = {}
    log: list[dict[str, Any]] = []
    channel_messages: dict[str, dict[str, Any]] = {}  # id -> {channel, author, content, entry}
    nonces: dict[tuple[str, str], tuple[float, str]] = {}  # (bot, nonce) -> (when, message id)
    buckets: dict[tuple[str, str], deque[float]] = {}
    hello_gate = asyncio.Event()
    hello_gate.set()

    def event(what: str, bot: str, **more: Any) -> None:
        log.append({"at": clock(), "event": what, "bot": bot, **more})
        state.stats[f"discord_gw_{what}"] += 1

    def live(bot: str) -> list[GwSession]:
        """The bot's sessions Discord still sends events to (on a socket, or resumable)."""
        now = clock()
        out = []
        for s in sessions.values():
            if s.bot != bot or s.ended:
                continue
            if s.conn is None and now - s.detached_at > knobs.resume_window:
                s.ended = True
                continue
            out.append(s)
        return out

    def count_peak(bot: str) -> None:
        on_sockets = sum(1 for s in live(bot) if s.conn is not None)
        peak[bot] = max(peak.get(bot, 0), on_sockets)

    async def send(conn: Conn, payload: dict[str, Any]) -> None:
        if conn.open:
            try:
                await conn.ws.send_text(json.dumps(payload, ensure_ascii=False))
            except Exception:
                conn.open = False

    async def dispatch(s: GwSession, kind: str, d: dict[str, Any]) -> None:
        s.seq += 1
        frame = {"op": gw.DISPATCH, "t": kind, "s": s.seq, "d": d}
        s.events.append(frame)
        del s.events[:-1000]
        if s.conn is not None:
            await send(s.conn, frame)

    async def close(conn: Conn, code: int, reason: str = "") -> None:
        if conn.open:
            conn.open = False
            with contextlib.suppress(Exception):
                await conn.ws.close(code=code, reason=reason)

    def bot_user(bot: DiscordBot) -> dict[str, Any]:
        return {"id": bot.credentials.application_id, "username": bot.id, "bot": True}

    async def gateway_bot(request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        bot = bots.get(auth.removeprefix("Bot ")) if auth.startswith("Bot ") else None
        if bot is None:
            return JSONResponse({"message": "401: Unauthorized", "code": 0}, status_code=401)
        state.stats["discord_gateway_bot"] += 1
        base = str(request.base_url).rstrip("/").replace("http://", "ws://").replace("https://", "wss://")
        left = starts_left.get(bot.id, 1000)
        return JSONResponse(
            {
                "url": f"{base}/discord/gateway",
                "shards": 1,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": left,
                    "reset_after": 86_400_000,
                    "max_concurrency": 1,
                },
            }
        )

    async def socket(ws: WebSocket) -> None:
        await ws.accept()
        conn = Conn(ws, ws.url.path, last_beat=clock())
        if (
            ws.query_params.get("v") != str(gw.API_VERSION)
            or ws.query_params.get("encoding", "json") != "json"
        ):
            await close(conn, 4012, "Invalid API version")
            return
        await hello_gate.wait()
        conn.last_beat = clock()
        await send(
            conn, {"op": gw.HELLO, "d": {"heartbeat_interval": knobs.heartbeat_interval_ms}, "s": None}
        )
        try:
            while conn.open:
                deadline = conn.last_beat + 1.5 * knobs.heartbeat_interval_ms / 1000
                try:
                    raw = await asyncio.wait_for(ws.receive_text(), timeout=max(0.01, deadline - clock()))
                except TimeoutError:
                    if conn.session is not None:
                        conn.session.ended = True
                        event("timed_out", conn.session.bot, session=conn.session.sid)
                    await close(conn, 4009, "Session timed out")
                    return
                now = clock()
                conn.frames.append(now)
                while conn.frames and now - conn.frames[0] > 60:
                    conn.frames.popleft()
                if len(conn.frames) > 120:
                    await close(conn, 4008, "Rate limited")
                    return
                try:
                    msg = json.loads(raw)
                    op, d = msg["op"], msg.get("d")
                except (ValueError, KeyError, TypeError):
                    await close(conn, 4002, "Decode error")
                    return
                if op == gw.HEARTBEAT:
                    conn.last_beat = now
                    state.stats["discord_gw_heartbeats"] += 1
                    if knobs.ack_heartbeats:
                        await send(conn, {"op": gw.HEARTBEAT_ACK})
                elif op == gw.IDENTIFY:
                    await identify(conn, d if isinstance(d, dict) else {})
                elif op == gw.RESUME:
                    await resume(conn, d if isinstance(d, dict) else {})
                elif op in (3, 4, 8, 31):  # presence, voice, guild members, soundboard: accepted, unused
                    if conn.session is None:
                        await close(conn, 4003, "Not authenticated")
                else:
                    await close(conn, 4001, "Unknown opcode")
        except (WebSocketDisconnect, RuntimeError) as exc:
            code = getattr(exc, "code", None)
            s = conn.session
            if s is not None and s.conn is conn and conn.open and code in (1000, 1001):
                s.ended = True  # a client closing normally ends its session (not its echo of our close)
                event("ended_by_client", s.bot, session=s.sid, code=code)
            elif s is not None and conn.open:
                event("closed_by_client", s.bot, session=s.sid, code=code)
        finally:
            conn.open = False
            s = conn.session
            if s is not None and s.conn is conn:
                s.conn, s.detached_at = None, clock()

    async def identify(conn: Conn, d: dict[str, Any]) -> None:
        if conn.session is not None:
            await close(conn, 4005, "Already authenticated")
            return
        bot = bots.get(str(d.get("token", "")))
        if bot is None:
            event("refused", "", reason="token")
            await close(conn, 4004, "Authentication failed")
            return
        intents = d.get("intents")
        if not isinstance(intents, int) or isinstance(intents, bool) or intents < 0:
            await close(conn, 4013, "Invalid intent(s)")
            return
        if intents & PRIVILEGED:
            event("refused", bot.id, reason="intents")
            await close(conn, 4014, "Disallowed intent(s)")
            return
        now = clock()
        if now - last_identify.get(bot.id, -1e9) < knobs.identify_interval:
            event("identify_too_soon", bot.id)
            await send(conn, {"op": gw.INVALID_SESSION, "d": False})
            return
        last_identify[bot.id] = now
        starts_left[bot.id] = starts_left.get(bot.id, 1000) - 1
        s = GwSession(sid=secrets.token_hex(16), bot=bot.id, conn=conn)
        sessions[s.sid] = s
        conn.session = s
        event("identified", bot.id, session=s.sid, intents=intents, path=conn.path)
        count_peak(bot.id)
        base = str(conn.ws.base_url).rstrip("/").replace("http://", "ws://").replace("https://", "wss://")
        await dispatch(
            s,
            "READY",
            {
                "v": gw.API_VERSION,
                "user": bot_user(bot),
                "guilds": [{"id": SIM_GUILD, "unavailable": True}],
                "session_id": s.sid,
                "resume_gateway_url": f"{base}/discord/gateway-resume",
                "application": {"id": bot.credentials.application_id, "flags": 0},
            },
        )
        await dispatch(s, "GUILD_CREATE", {"id": SIM_GUILD, "name": "imrelay sim", "channels": []})

    async def resume(conn: Conn, d: dict[str, Any]) -> None:
        if conn.session is not None:
            await close(conn, 4005, "Already authenticated")
            return
        bot = bots.get(str(d.get("token", "")))
        if bot is None:
            await close(conn, 4004, "Authentication failed")
            return
        s = sessions.get(str(d.get("session_id", "")))
        if s is None or s.bot != bot.id or s not in live(bot.id):
            event("resume_refused", bot.id, session=str(d.get("session_id", "")))
            await send(conn, {"op": gw.INVALID_SESSION, "d": False})
            return
        seq = d.get("seq")
        after = seq if isinstance(seq, int) else 0
        if after > s.seq:
            await close(conn, 4007, "Invalid seq")
            return
        old = s.conn
        s.conn, conn.session = conn, s
        if old is not None and old is not conn:  # the session moves to the new socket
            await close(old, 4000, "Session resumed elsewhere")
        replay = [e for e in s.events if e["s"] > after]
        event("resumed", bot.id, session=s.sid, replayed=len(replay), path=conn.path)
        state.stats["discord_gw_replayed"] += len(replay)
        count_peak(bot.id)
        for frame in replay:
            await send(conn, frame)
        await dispatch(s, "RESUMED", {})

    def on_socket(bot: str) -> Conn | None:
        return next((s.conn for s in live(bot) if s.conn is not None), None)

    async def body_of(request: Request) -> dict[str, Any]:
        body = json.loads(await request.body() or b"{}")
        return body if isinstance(body, dict) else {}

    async def push(request: Request) -> Response:
        body = await body_of(request)
        bot = by_id.get(str(body.get("bot", "")))
        if bot is None:
            return JSONResponse({"error": "no such Discord bot"}, status_code=404)
        targets = live(bot.id)
        if not targets:
            return JSONResponse({"error": "no session for this bot"}, status_code=409)
        user = str(body.get("user", "alice"))
        channel = str(body.get("channel") or "")
        in_guild = bool(channel)
        msg_id = str(body.get("msg_id") or _snowflake())
        bot_id = bot.credentials.application_id
        mention = in_guild and body.get("mention", True)
        text = str(body.get("text", ""))
        content = f"<@{bot_id}> {text}".strip() if mention else text
        try:
            media = [SimMedia(**m) for m in body.get("media") or []]
        except TypeError:
            return JSONResponse({"error": "media: SimMedia objects expected"}, status_code=400)
        author: dict[str, Any] = {"id": str(body.get("user_id") or f"7{abs(hash(user)) % 10**17:017d}")}
        author |= {"username": user, "global_name": user}
        if body.get("author_bot"):
            author["bot"] = True
        message: dict[str, Any] = {
            "id": msg_id,
            "type": 0,
            "channel_id": channel or f"dm-{author['id']}",
            "author": author,
            # without the Message Content intent Discord blanks the content of guild messages that do not
            # mention the bot
            "content": content if (mention or not in_guild) else "",
            "mentions": [bot_user(bot)] if mention else [],
            "mention_roles": [],
            "attachments": [
                attachment_object(m, str(request.base_url), channel or f"dm-{author['id']}", clock())
                for m in media
            ],
            "flags": message_flags(media),
            "embeds": [],
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(clock())),
            "tts": False,
            "mention_everyone": False,
            "pinned": False,
        }
        if in_guild:
            message["guild_id"] = SIM_GUILD
            message["member"] = {"roles": []}
        channel_messages[msg_id] = {"channel": message["channel_id"], "author": author["id"], "entry": None}
        for s in targets:
            await dispatch(s, "MESSAGE_CREATE", message)
        state.stats["discord_gw_pushed"] += 1
        return JSONResponse(
            {
                "msg_id": msg_id,
                "channel_id": message["channel_id"],
                "sessions": len(targets),
                "on_socket": sum(1 for s in targets if s.conn is not None),
            }
        )

    async def server_close(request: Request) -> Response:
        body = await body_of(request)
        conn = on_socket(str(body.get("bot", "")))
        if conn is None:
            return JSONResponse({"error": "no socket for this bot"}, status_code=409)
        code = int(body.get("code", 1001))
        if conn.session is not None:
            event("closed_by_server", conn.session.bot, session=conn.session.sid, code=code)
            if code in (4007, 4009):
                conn.session.ended = True
        await close(conn, code, str(body.get("reason", "")))
        return JSONResponse({"ok": True})

    async def reconnect(request: Request) -> Response:
        body = await body_of(request)
        conn = on_socket(str(body.get("bot", "")))
        if conn is None:
            return JSONResponse({"error": "no socket for this bot"}, status_code=409)
        await send(conn, {"op": gw.RECONNECT, "d": None})
        return JSONResponse({"ok": True})

    async def invalidate(request: Request) -> Response:
        body = await body_of(request)
        conn = on_socket(str(body.get("bot", "")))
        if conn is None or conn.session is None:
            return JSONResponse({"error": "no socket for this bot"}, status_code=409)
        resumable = bool(body.get("resumable", False))
        if not resumable:
            conn.session.ended = True
        await send(conn, {"op": gw.INVALID_SESSION, "d": resumable})
        return JSONResponse({"ok": True})

    async def control(request: Request) -> Response:
        body = await body_of(request)
        for name, kind in GatewayKnobs.__annotations__.items():
            if name in body:
                setattr(knobs, name, {"int": int, "float": float, "bool": bool}[kind](body[name]))
        if knobs.hello_paused:
            hello_gate.clear()
        else:
            hello_gate.set()
        return JSONResponse(dict(knobs.__dict__))

    async def list_sessions(_: Request) -> Response:
        return JSONResponse(
            {
                b: {
                    "live": len(live(b)),
                    "on_socket": sum(1 for s in live(b) if s.conn is not None),
                    "peak": peak.get(b, 0),
                }
                for b in by_id
            }
        )

    async def list_events(_: Request) -> Response:
        return JSONResponse(log)

    # ---- channel messages --------------------------------------------------------------------------

    def limited(route: str, channel: str, limit: int) -> tuple[dict[str, str], float]:
        """The bucket's headers after this call, and the wait when it is exceeded (0: allowed)."""
        now = clock()
        calls = buckets.setdefault((route, channel), deque())
        while calls and now - calls[0] >= knobs.limit_window:
            calls.popleft()
        reset_after = knobs.limit_window - (now - calls[0]) if calls else knobs.limit_window
        if len(calls) >= limit:
            return _headers(route, channel, limit, 0, reset_after, now), reset_after
        calls.append(now)
        reset_after = knobs.limit_window - (now - calls[0])
        return _headers(route, channel, limit, limit - len(calls), reset_after, now), 0.0

    def author_of(request: Request) -> DiscordBot | None:
        auth = request.headers.get("authorization", "")
        return bots.get(auth.removeprefix("Bot ")) if auth.startswith("Bot ") else None

    def too_many(headers: dict[str, str], wait: float) -> Response:
        state.stats["discord_rate_limited"] += 1
        return JSONResponse(
            {"message": "You are being rate limited.", "retry_after": round(wait, 3), "global": False},
            status_code=429,
            headers=headers | {"Retry-After": str(math.ceil(wait))},
        )

    def bad_content(content: Any, headers: dict[str, str], files: int = 0) -> Response | None:
        if files and content in (None, ""):
            return None  # a message of files alone
        if not isinstance(content, str) or not content:
            return JSONResponse({"message": "Cannot send an empty message", "code": 50006}, 400, headers)
        if len(content) > CHAR_LIMIT:
            return JSONResponse(
                {
                    "message": "Invalid Form Body",
                    "code": 50035,
                    "errors": {"content": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH"}]}},
                },
                400,
                headers,
            )
        return None

    async def create_message(request: Request) -> Response:
        bot = author_of(request)
        if bot is None:
            return JSONResponse({"message": "401: Unauthorized", "code": 0}, status_code=401)
        channel = request.path_params["channel"]
        headers, wait = limited("create", channel, knobs.create_limit)
        if wait:
            return too_many(headers, wait)
        read = await read_send(request, headers=headers)
        if isinstance(read, Response):
            state.stats["discord_upload_refused"] += 1
            return read
        body, uploads = read
        if (refused := bad_content(body.get("content"), headers, len(uploads))) is not None:
            return refused
        nonce = str(body.get("nonce") or "")
        if nonce and body.get("enforce_nonce"):
            seen = nonces.get((bot.id, nonce))
            if seen is not None and clock() - seen[0] < 300:
                state.stats["discord_nonce_reused"] += 1
                existing = channel_messages[seen[1]]["entry"]
                return JSONResponse(_message(existing), headers=headers)
        ref = body.get("message_reference") or {}
        reply_to = str(ref.get("message_id") or "")
        if reply_to and reply_to not in channel_messages and ref.get("fail_if_not_exists", True):
            return JSONResponse(
                {
                    "message": "Invalid Form Body",
                    "code": 50035,
                    "errors": {"message_reference": {"_errors": [{"code": "REPLIES_UNKNOWN_MESSAGE"}]}},
                },
                400,
                headers,
            )
        msg_id = _snowflake()
        state.record(
            {
                "platform": "discord",
                "via": "gateway",
                "bot": bot.id,
                "id": msg_id,
                "chat": channel,
                "reply_to": reply_to,
                "content": body.get("content") or "",
                "edits": 0,
                "history": [[clock(), body.get("content") or ""]],
                **keep_uploads(state, uploads, str(body.get("content") or "")),
            },
            clock(),
        )
        entry = state.messages[-1]
        channel_messages[msg_id] = {
            "channel": channel,
            "author": bot.credentials.application_id,
            "entry": entry,
        }
        if nonce:
            nonces[(bot.id, nonce)] = (clock(), msg_id)
        state.stats["discord_channel_create"] += 1
        return JSONResponse(_message(entry), headers=headers)

    async def edit_message(request: Request) -> Response:
        bot = author_of(request)
        if bot is None:
            return JSONResponse({"message": "401: Unauthorized", "code": 0}, status_code=401)
        channel, msg_id = request.path_params["channel"], request.path_params["message"]
        headers, wait = limited("edit", channel, knobs.edit_limit)
        if wait:
            return too_many(headers, wait)
        found = channel_messages.get(msg_id)
        if found is None or found["channel"] != channel:
            return JSONResponse({"message": "Unknown Message", "code": 10008}, 404, headers)
        if found["author"] != bot.credentials.application_id or found["entry"] is None:
            return JSONResponse(
                {"message": "Cannot edit a message authored by another user", "code": 50005}, 403, headers
            )
        body = await body_of(request)
        if (refused := bad_content(body.get("content"), headers)) is not None:
            return refused
        entry = found["entry"]
        entry["content"], entry["edits"] = body["content"], entry["edits"] + 1
        entry["history"].append([clock(), body["content"]])
        state.stats["discord_channel_edit"] += 1
        return JSONResponse(_message(entry), headers=headers)

    async def delete_message(request: Request) -> Response:
        """A user deletes a message (the sim's own route): later edits of it answer 10008."""
        found = channel_messages.pop(request.path_params["message"], None)
        return JSONResponse({"ok": found is not None}, status_code=200 if found else 404)

    return [
        Route("/api/v10/gateway/bot", gateway_bot, methods=["GET"]),
        WebSocketRoute("/discord/gateway", socket),
        WebSocketRoute("/discord/gateway-resume", socket),
        Route("/api/v10/channels/{channel}/messages", create_message, methods=["POST"]),
        Route("/api/v10/channels/{channel}/messages/{message}", edit_message, methods=["PATCH"]),
        Route("/sim/discord/messages/{message}", delete_message, methods=["DELETE"]),
        Route("/sim/discord/push", push, methods=["POST"]),
        Route("/sim/discord/close", server_close, methods=["POST"]),
        Route("/sim/discord/reconnect", reconnect, methods=["POST"]),
        Route("/sim/discord/invalidate", invalidate, methods=["POST"]),
        Route("/sim/discord/control", control, methods=["POST"]),
        Route("/sim/discord/sessions", list_sessions, methods=["GET"]),
        Route("/sim/discord/events", list_events, methods=["GET"]),
    ]


def _headers(
    route: str, channel: str, limit: int, remaining: int, reset_after: float, now: float
) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": f"{now + reset_after:.3f}",
        "X-RateLimit-Reset-After": f"{reset_after:.3f}",
        "X-RateLimit-Bucket": f"{route}-{channel}"[:32],
        "X-RateLimit-Scope": "user",
    }


def _message(entry: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": entry["id"],
        "channel_id": entry["chat"],
        "content": entry["content"],
        "type": 19 if entry.get("reply_to") else 0,
    }
    if entry.get("reply_to"):
        out["message_reference"] = {"message_id": entry["reply_to"], "channel_id": entry["chat"]}
    return out
