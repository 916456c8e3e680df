"""DingTalk Stream mode (``mode: long_connection``), as the connector runs it (:mod:`imrelay.connections`).

DingTalk spreads an app's robot messages over all of its Stream connections (``Ownership.ACTIVE_ACTIVE``):
every connector replica holds its own. A connection is opened in two steps: ``POST
{api_base}/v1.0/gateway/connections/open`` with the AppKey/AppSecret (a refusal is
:class:`~imrelay.connections.CredentialsRefused`) answers an endpoint and a single-use ticket; the WebSocket
``endpoint?ticket=…`` is the connection. Every robot message (a ``CALLBACK`` frame) is normalized like an
HTTP-mode callback, stored, and acked with its ``messageId`` only once JetStream has stored it: a message
that could not be stored is not acked (DingTalk does not send a robot message again either way, so the
loss is logged and counted as ``not_stored``). ``ping`` frames are answered with their ``opaque``.

DingTalk never re-sends a robot message, so a gap between two sockets loses what was pushed in it. A
``disconnect`` frame (DingTalk closes that socket about ten seconds later) therefore opens the replacement
**before** the old socket goes: the old one is still read (and its messages acked) until DingTalk closes
it. A socket that brings no frame for ``stream_idle_seconds`` (a silent gateway) is replaced the same way,
then closed. A socket that ends without a ``disconnect`` ends the attempt: the connector reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

from ...connections import CredentialsRefused, Health, Sink
from ...errors import ParseError
from ...events import ConnectionAnswer
from ...redact import protect_obtained
from ...sections import ConnectorConfig
from .config import DingTalkBot
from .frames import OPEN_PATH, Frame, ack, open_request, parse_frame, robot_message
from .ingress import normalize

log = logging.getLogger("imrelay.connector")
FIX = "check credentials.app_key and credentials.app_secret, and that the robot uses Stream mode"
REPLACE_ATTEMPTS = 5  # tries to open a replacement while the old socket still serves
REPLACE_PAUSE_SECONDS = 1.0
DRAIN_SECONDS = 15.0  # a socket told to disconnect is closed by us after this, if DingTalk has not
STORE_GRACE_SECONDS = 5.0  # messages being stored when the attempt ends are given this long


class Socket(Protocol):
    """What the connection needs of a WebSocket (websockets' client connection has it)."""

    async def recv(self) -> str | bytes: ...

    async def send(self, message: str) -> None: ...

    async def close(self) -> None: ...


Dial = Callable[[], Awaitable[Socket]]


@dataclass
class Link:
    """One socket of the attempt, and what happened to it."""

    sock: Socket
    number: int
    reader: asyncio.Task[None] | None = None
    rotate: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""  # why it is being replaced: disconnect | idle
    retired: bool = False  # a replacement serves now


async def open_endpoint(bot: DingTalkBot, api_base: str, http_timeout: float = 10.0) -> tuple[str, str]:
    """(endpoint, ticket) from ``connections/open``; the ticket is masked in every log from now on."""
    import httpx

    c = bot.credentials
    body = open_request(c.app_key, c.app_secret.get_secret_value())
    async with httpx.AsyncClient(timeout=http_timeout) as client:
        resp = await client.post(f"{api_base}{OPEN_PATH}", json=body)
    try:
        answer: Any = resp.json()
    except ValueError:
        answer = None
    if resp.status_code in (400, 401, 403):
        code = answer.get("code", "") if isinstance(answer, dict) else ""
        msg = str(answer.get("message", ""))[:200] if isinstance(answer, dict) else ""
        raise CredentialsRefused(f"HTTP {resp.status_code} {code} {msg}".strip(), FIX)
    if resp.status_code != 200 or not isinstance(answer, dict):
        raise ConnectionError(f"connections/open answered HTTP {resp.status_code}")
    endpoint, ticket = answer.get("endpoint"), answer.get("ticket")
    if not isinstance(endpoint, str) or not isinstance(ticket, str) or not endpoint or not ticket:
        raise ConnectionError("connections/open answered no endpoint or ticket")
    protect_obtained(ticket)
    protect_obtained(quote(ticket, safe=""))
    return endpoint, ticket


def ws_url(endpoint: str, ticket: str) -> str:
    return f"{endpoint}{'&' if '?' in endpoint else '?'}ticket={quote(ticket, safe='')}"


@dataclass
class StreamConnection:
    """One attempt of one bot (the connector builds a new one to reconnect); it may hold two sockets
    while one replaces the other."""

    bot: DingTalkBot
    cfg: ConnectorConfig
    api_base: str = ""
    dial: Dial | None = None  # opens one socket (tests give their own)
    idle_seconds: float = 0.0  # 0: the bot's stream_idle_seconds
    drain_seconds: float = DRAIN_SECONDS
    replace_pause: float = REPLACE_PAUSE_SECONDS
    links: list[Link] = field(default_factory=list)
    pending: set[asyncio.Task[None]] = field(default_factory=set)
    closers: set[asyncio.Task[None]] = field(default_factory=set)
    opened: int = 0
    health: Health | None = None

    def __post_init__(self) -> None:
        if not self.idle_seconds:
            self.idle_seconds = self.bot.stream_idle_seconds
        if self.dial is None:
            self.dial = self._dial

    async def _dial(self) -> Socket:
        from websockets.asyncio.client import connect

        endpoint, ticket = await open_endpoint(self.bot, self.api_base)
        ws = await connect(
            ws_url(endpoint, ticket),
            open_timeout=10,
            ping_interval=self.cfg.heartbeat_seconds,
            ping_timeout=self.cfg.ack_timeout_seconds,
            max_size=4 * 1024 * 1024,
        )
        return ws

    def _prune(self) -> None:
        """Forget the sockets that were replaced and have ended."""
        keep = []
        for link in self.links:
            if link.retired and link.reader is not None and link.reader.done():
                if not link.reader.cancelled():
                    link.reader.exception()  # seen: its end was planned
                continue
            keep.append(link)
        self.links = keep

    async def _open(self, sink: Sink) -> Link:
        assert self.dial is not None
        self._prune()
        sock = await self.dial()
        self.opened += 1
        link = Link(sock, self.opened)
        link.reader = asyncio.create_task(self._read(link, sink))
        self.links.append(link)
        return link

    async def run(self, sink: Sink, health: Health) -> None:
        """Open a socket, serve it, replace it when DingTalk says ``disconnect`` (or it falls silent);
        ends by raising when the serving socket ends unannounced."""
        self.health = health
        try:
            current = await self._open(sink)
            log.info("bot %s: stream connection up", self.bot.id)
            await health.up()
            while True:
                assert current.reader is not None
                waiter = asyncio.create_task(current.rotate.wait())
                try:
                    await asyncio.wait({current.reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                if not current.rotate.is_set():
                    exc = current.reader.exception() if not current.reader.cancelled() else None
                    raise ConnectionError("stream socket closed") from exc
                current = await self._replace(current, sink)
        finally:
            await self._end()

    async def _replace(self, old: Link, sink: Sink) -> Link:
        """Open the replacement of ``old`` while it still serves; then let it go (a silent socket is
        closed at once, one told to disconnect is read until DingTalk closes it)."""
        last: Exception | None = None
        new: Link | None = None
        for attempt in range(REPLACE_ATTEMPTS):
            try:
                new = await self._open(sink)
                break
            except CredentialsRefused:
                raise
            except Exception as exc:
                last = exc
                log.warning(
                    "bot %s: replacement socket not opened (%s); attempt %d",
                    self.bot.id,
                    type(exc).__name__,
                    attempt + 1,
                )
                assert old.reader is not None
                if old.reader.done() and attempt >= 1:
                    break
                await asyncio.sleep(self.replace_pause)
        if new is None:
            raise ConnectionError("no replacement socket") from last
        old.retired = True
        if self.health is not None:
            self.health.event(old.reason)
        log.info(
            "bot %s: socket %d replaced by socket %d (%s)", self.bot.id, old.number, new.number, old.reason
        )
        if old.reason == "idle":
            await self._close(old)
        else:
            self._later(self.drain_seconds, old)
        return new

    def _later(self, delay: float, link: Link) -> None:
        async def close() -> None:
            await asyncio.sleep(delay)
            await self._close(link)

        task = asyncio.create_task(close())
        self.closers.add(task)
        task.add_done_callback(self.closers.discard)

    async def _close(self, link: Link) -> None:
        with contextlib.suppress(Exception):
            await link.sock.close()

    async def _end(self) -> None:
        """Finish storing (and acking) what arrived, then close every socket."""
        if self.pending:
            await asyncio.wait(set(self.pending), timeout=STORE_GRACE_SECONDS)
        for task in [*self.pending, *self.closers]:
            task.cancel()
        for link in self.links:
            await self._close(link)
            if link.reader is not None:
                link.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await link.reader
        self.links.clear()

    async def _read(self, link: Link, sink: Sink) -> None:
        """Read one socket until it closes; ask for its replacement on ``disconnect`` or silence."""
        while True:
            try:
                async with asyncio.timeout(self.idle_seconds):
                    raw = await link.sock.recv()
            except TimeoutError:
                if link.retired:
                    return  # replaced already and still silent: let it go
                log.warning(
                    "bot %s: no frame on socket %d for %.0fs; replacing it",
                    self.bot.id,
                    link.number,
                    self.idle_seconds,
                )
                self._ask_replace(link, "idle")
                continue
            except Exception:
                if link.retired:
                    return  # DingTalk closed a socket it had told to disconnect: as planned
                raise
            try:
                frame = parse_frame(raw)
            except ParseError as exc:
                log.warning("bot %s: unreadable frame (%s)", self.bot.id, exc)
                continue
            if frame.is_ping:
                await self._send(link, ack(frame))
            elif frame.is_disconnect:
                log.info("bot %s: DingTalk asked socket %d to disconnect", self.bot.id, link.number)
                self._ask_replace(link, "disconnect")
                await self._send(link, ack(frame))
            elif frame.is_robot_message:
                task = asyncio.create_task(self._deliver(link, frame, sink))
                self.pending.add(task)
                task.add_done_callback(self.pending.discard)
            else:  # not subscribed to: taken, so that DingTalk does not push it again
                await self._send(link, ack(frame))

    def _ask_replace(self, link: Link, reason: str) -> None:
        if not link.rotate.is_set() and not link.retired:
            link.reason = reason
            link.rotate.set()

    async def _send(self, link: Link, text: str) -> bool:
        try:
            await link.sock.send(text)
            return True
        except Exception as exc:
            log.info("bot %s: ack not sent on socket %d (%s)", self.bot.id, link.number, type(exc).__name__)
            return False

    async def _deliver(self, link: Link, frame: Frame, sink: Sink) -> None:
        """Store one robot message; ack it only once stored."""
        try:
            inbound = normalize(robot_message(frame), self.bot.id, time.time())
        except Exception as exc:
            log.warning("bot %s: unreadable robot message (%s); acked", self.bot.id, type(exc).__name__)
            await self._send(link, ack(frame))
            return
        try:
            await sink(inbound)
        except Exception as exc:
            log.error(
                "bot %s: message %s not stored (%s); not acked, and DingTalk does not send it again",
                self.bot.id,
                inbound.platform_message_id,
                type(exc).__name__,
            )
            if self.health is not None:
                self.health.event("not_stored")
            return
        await self._send(link, ack(frame))

    async def send(self, payload: dict[str, Any]) -> ConnectionAnswer:
        """Answers go out over HTTP (session webhook or robot API), never on the socket."""
        return ConnectionAnswer(ok=False, code="unsupported")
