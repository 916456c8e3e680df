"""The Feishu / Lark long connection (``mode: long_connection``, 事件与回调 → 使用长连接接收事件), as the
connector runs it (:mod:`imrelay.connections`). No public URL: the connector dials out.

Feishu gives each event to one of an app's connections (up to 50 per app), so every connector replica holds
its own (``Ownership.ACTIVE_ACTIVE``, no lease). One attempt:

1. endpoint discovery: ``POST {api_base}/callback/ws/endpoint`` with the app id and secret → the socket URL
   and the server's ``ClientConfig`` (codes 1 and 1000040343 are the server's trouble: reconnect; any other
   code is a configuration error: :class:`~imrelay.connections.CredentialsRefused`);
2. the WebSocket; a refused handshake says why in its headers (``handshake-status`` 514 with
   ``handshake-autherrcode`` 1000040350: the app has too many connections);
3. a ping (``pbbp2`` control frame on the URL's ``service_id``) at once, then every ``PingInterval`` s; a
   pong may carry a new ``ClientConfig``, applied at once; a socket silent for two ping intervals is dead;
4. events (data frames, multi-part payloads put together) are handled concurrently: each is stored in
   JetStream and acknowledged (``{"code":200}``) only after its PubAck. An event that could not be stored
   gets no ack: Feishu re-pushes it after 3 s. The JetStream message id is the chat message's id, so a
   re-push (a new event id, the same message id, sometimes hours later) is dropped for the whole duplicate
   window; an event created more than ``stale_after_seconds`` ago is acknowledged and counted ("stale"),
   not answered.

Reconnecting follows the server's settings on top of the connector's backoff: the first attempt after a
connection that was up waits ``random() * ReconnectNonce`` s, each later one ``ReconnectInterval`` s
(counted from when the previous attempt ended). ``ReconnectCount`` is not obeyed: the connector never
gives a bot up. Answers go out over the HTTP API (:mod:`.delivery`), never on the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from ...connections import CredentialsRefused, Health, Sink
from ...errors import ParseError
from ...events import ConnectionAnswer
from ...redact import protect_obtained
from ...sections import ConnectorConfig
from . import frames
from .config import FeishuBot
from .frames import ClientConfig, Frame, FrameError, Reassembly
from .ingress import Envelope, normalize

log = logging.getLogger("imrelay.connector")
FIX = (
    "check credentials.app_id and credentials.app_secret, and that the app's events are set to arrive "
    "over a long connection"
)
TOO_MANY_FIX = (
    "the app has its 50 long connections already: run fewer connector replicas, or stop other clients "
    "of the same app (another deployment, the vendor SDK)"
)
ACK_DEADLINE_SECONDS = 3.0  # Feishu re-pushes an event not acknowledged within this
STALE, DUPLICATE, NOT_STORED = "stale", "duplicate", "not_stored"
EVENTS = (STALE, DUPLICATE, NOT_STORED)


@dataclass
class Redial:
    """What one bot's attempts share in this process: the server's settings and how the last one ended."""

    config: ClientConfig | None = None  # None until the server sent its settings
    ended_at: float | None = None  # monotonic
    was_up: bool = False

    def pause(self, now: float, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before dialling: nothing the first time; after a connection that was up, a jitter
        of up to ``ReconnectNonce``; after a failed attempt, ``ReconnectInterval`` (the connector's own
        pause counts)."""
        if self.ended_at is None or self.config is None:
            return 0.0  # the server has told us nothing yet: the connector's backoff alone
        wait = rand() * self.config.reconnect_nonce if self.was_up else self.config.reconnect_interval
        return max(0.0, wait - (now - self.ended_at))


_REDIAL: dict[str, Redial] = {}


def redial_for(bot_id: str) -> Redial:
    return _REDIAL.setdefault(bot_id, Redial())


def handshake_refusal(headers: Any, status: int) -> Exception:
    """The exception for a refused WebSocket handshake, from its ``handshake-*`` headers: the connection
    limit and 403 are configuration errors, anything else the server's (reconnect)."""
    code = headers.get(frames.HANDSHAKE_STATUS)
    msg = headers.get(frames.HANDSHAKE_MSG) or ""
    auth = headers.get(frames.HANDSHAKE_AUTH_ERRCODE)
    if code is None:
        return ConnectionError(f"handshake refused: HTTP {status}")
    detail = (
        f"handshake-status {code}" + (f", autherrcode {auth}" if auth else "") + (f": {msg}" if msg else "")
    )
    if str(code) == str(frames.AUTH_FAILED) and str(auth) == str(frames.TOO_MANY_CONNECTIONS):
        return CredentialsRefused(detail, TOO_MANY_FIX)
    if str(code) == str(frames.FORBIDDEN):
        return CredentialsRefused(detail, FIX)
    return ConnectionError(detail)  # e.g. 514 for a stale ticket: discover again


def discovery_result(status: int, body: Any) -> tuple[str, ClientConfig | None]:
    """(socket URL, the server's settings) from the endpoint discovery's answer, or the exception to end
    the attempt with."""
    if status != 200 or not isinstance(body, dict):
        raise ConnectionError(f"endpoint discovery: HTTP {status}")
    code, msg = body.get("code"), body.get("msg", "")
    if code in frames.RETRYABLE_CODES:
        raise ConnectionError(f"endpoint discovery: code {code} {msg}")
    if code not in frames.OK_CODES:
        raise CredentialsRefused(f"endpoint discovery: code {code} {msg}", FIX)
    data = body.get("data") or {}
    url = data.get("URL") if isinstance(data, dict) else None
    if not isinstance(url, str) or not url:
        raise ConnectionError("endpoint discovery: no URL")
    raw = data.get("ClientConfig")
    try:
        config = ClientConfig.model_validate(raw) if isinstance(raw, dict) else None
    except ValueError:
        config = None
    return url, config


def message_time(event: Any) -> Any:
    """The chat message's ``create_time`` inside an event, if it has one."""
    message = event.get("message") if isinstance(event, dict) else None
    return message.get("create_time") if isinstance(message, dict) else None


@dataclass
class FeishuConnection:
    """One socket of one app (the connector builds a new one to reconnect)."""

    bot: FeishuBot
    cfg: ConnectorConfig
    api_base: str
    redial: Redial
    clock: Callable[[], float] = time.time
    ws: ClientConnection | None = None
    service_id: int = 0
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    parts: Reassembly = field(default_factory=Reassembly)
    handling: set[asyncio.Task[None]] = field(default_factory=set)
    last_heard: float = 0.0  # monotonic

    async def run(self, sink: Sink, health: Health) -> None:
        """Discover, dial, and serve until the socket ends."""
        pause = self.redial.pause(time.monotonic())
        if pause > 0:
            log.info("bot %s: reconnecting in %.1fs as the server asks", self.bot.id, pause)
            await asyncio.sleep(pause)
        up = False
        try:
            url = await self._discover()
            query = dict(parse_qsl(urlsplit(url).query))
            for key, value in query.items():  # the URL's ticket and keys are credentials
                if key not in ("device_id", "service_id"):
                    protect_obtained(value)
            try:
                self.service_id = int(query.get("service_id", ""))
            except ValueError:
                raise ConnectionError("endpoint URL without a service_id") from None
            try:
                ws = await connect(url, open_timeout=10, ping_interval=None, max_size=16 * 1024 * 1024)
            except InvalidStatus as exc:
                raise handshake_refusal(exc.response.headers, exc.response.status_code) from None
            async with ws:
                self.ws, up = ws, True
                self.last_heard = time.monotonic()
                log.info("bot %s: long connection up (device %s)", self.bot.id, query.get("device_id", "?"))
                await health.up()
                reader = asyncio.create_task(self._read(ws, sink, health))
                beat = asyncio.create_task(self._ping())
                try:
                    done, _ = await asyncio.wait({reader, beat}, return_when=asyncio.FIRST_COMPLETED)
                    for t in done:
                        t.result()
                finally:
                    for task in (reader, beat, *self.handling):
                        task.cancel()
                    for task in (reader, beat, *self.handling):
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await task
                    self.ws = None
        finally:
            self.redial.ended_at, self.redial.was_up = time.monotonic(), up

    async def _discover(self) -> str:
        c = self.bot.credentials
        async with httpx.AsyncClient(timeout=10) as client:
            try:
                resp = await client.post(
                    f"{self.api_base}/callback/ws/endpoint",
                    json={"AppID": c.app_id, "AppSecret": c.app_secret.get_secret_value()},
                    headers={"locale": "zh"},
                )
            except httpx.HTTPError as exc:
                raise ConnectionError(f"endpoint discovery: {type(exc).__name__}") from None
        try:
            body = resp.json()
        except ValueError:
            body = None
        url, config = discovery_result(resp.status_code, body)
        protect_obtained(url)
        if config is not None:
            self.redial.config = config
        return url

    async def _write(self, frame: Frame) -> None:
        ws = self.ws
        if ws is None:
            raise ConnectionError("no socket")
        async with self.send_lock:
            await ws.send(frames.encode(frame))

    async def _ping(self) -> None:
        while True:
            await self._write(frames.ping(self.service_id))
            every = (self.redial.config or ClientConfig()).ping_interval
            await asyncio.sleep(every)
            if time.monotonic() - self.last_heard > 2 * every + 10:
                raise ConnectionError("no pong for two ping intervals")

    async def _read(self, ws: ClientConnection, sink: Sink, health: Health) -> None:
        async for raw in ws:
            self.last_heard = time.monotonic()
            if isinstance(raw, str):
                continue
            try:
                frame = frames.decode(raw)
            except FrameError as exc:
                log.warning("bot %s: unreadable frame (%s)", self.bot.id, exc)
                continue
            kind = frame.header("type")
            if frame.method == frames.CONTROL:
                if kind == frames.PONG and (config := frames.parse_client_config(frame.payload)) is not None:
                    self.redial.config = config
                continue
            if frame.method != frames.DATA:
                continue
            try:
                payload = self.parts.add(
                    frame.header("message_id"),
                    int(frame.header("sum", "1") or 1),
                    int(frame.header("seq", "0") or 0),
                    frame.payload or b"",
                    time.monotonic(),
                )
            except (FrameError, ValueError) as exc:
                log.warning("bot %s: bad multi-part frame (%s)", self.bot.id, exc)
                continue
            if payload is None:
                continue  # more parts to come; only the completing frame is acknowledged
            task = asyncio.create_task(self._handle(frame, kind, payload, sink, health))
            self.handling.add(task)
            task.add_done_callback(self.handling.discard)
        raise ConnectionError("socket closed")

    async def _handle(self, frame: Frame, kind: str, payload: bytes, sink: Sink, health: Health) -> None:
        """Store one event and acknowledge it once stored (or when there is nothing to store)."""
        started = time.monotonic()
        if kind == frames.EVENT:
            try:
                await self._store(payload, sink, health)
            except Exception as exc:  # not stored: no ack, Feishu re-pushes it
                health.event(NOT_STORED)
                log.error("bot %s: event not stored, not acknowledged (%s)", self.bot.id, type(exc).__name__)
                return
        spent = time.monotonic() - started
        if spent > ACK_DEADLINE_SECONDS:
            log.warning(
                "bot %s: event acknowledged after %.1fs (Feishu re-pushes after 3s)", self.bot.id, spent
            )
        try:
            await self._write(frames.ack(frame, 200, int(spent * 1000)))
        except Exception as exc:
            log.info("bot %s: ack not sent (%s); Feishu will re-push", self.bot.id, type(exc).__name__)

    async def _store(self, payload: bytes, sink: Sink, health: Health) -> None:
        """Returns once the event is in JetStream or has nothing to store (ack it); raises when not stored."""
        try:
            envelope = Envelope.model_validate(json.loads(payload))
            header = envelope.header
            if header is None or (header.app_id and header.app_id != self.bot.credentials.app_id):
                log.warning("bot %s: event without a header or for another app; dropped", self.bot.id)
                return
            now = self.clock()
            created = message_time(envelope.event) or header.create_time  # the chat message's time first
            if frames.is_stale(created, now, self.bot.stale_after_seconds):
                health.event(STALE)
                log.info("bot %s: stale event %s acknowledged, not answered", self.bot.id, header.event_id)
                return
            inbound = normalize(envelope, self.bot.platform, self.bot.id, now, by_message_id=True)
        except (ValueError, ParseError) as exc:
            log.warning("bot %s: unreadable event (%s); acknowledged", self.bot.id, type(exc).__name__)
            return
        if inbound is None:
            return  # an event type the relay does not answer
        if await sink(inbound):
            health.event(DUPLICATE)

    async def send(self, payload: dict[str, Any]) -> ConnectionAnswer:
        """Answers go out over the HTTP API, never on this socket."""
        return ConnectionAnswer(ok=False, code="not_on_socket")
