"""A Discord bot's Gateway connection (``mode: long_connection``), as the connector runs it
(:mod:`imrelay.connections`): mentions of the bot and DMs, without a public URL.

Discord delivers every event to every session of a bot, so one owner per bot (``Ownership.SINGLE_OWNER``)
holds the session. Each :class:`GatewayConnection` is one socket; the :class:`~.gateway.Session` outlives it
(per bot, in this process) so that the next socket **resumes** it: Discord replays every event after the
last sequence stored, including those sent while no socket was open. The first socket asks
``GET /api/v10/gateway/bot`` (with the bot token) where the Gateway is and Identifies with the intents
``GUILD_MESSAGES | DIRECT_MESSAGES``; a 401 there, or close code 4004 or 4010-4014, is a configuration
error (:class:`~imrelay.connections.CredentialsRefused`, with what to fix).

Ordering and storage: dispatches are handled in sequence order by one task. A ``MESSAGE_CREATE`` for the
bot is stored (the sink returns after JetStream's PubAck) before its sequence counts as handled; when it
cannot be stored the socket is closed (keeping the session) and the next one resumes from the last stored
sequence, so Discord sends the event again. Discord wants no per-event acknowledgement: the sequence the
session resumes from is the acknowledgement. A replayed message already stored is dropped by JetStream's
duplicate window (its id is the Discord message id).

Answers go out over HTTP (the sender's delivery), not over this connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ...connections import CredentialsRefused, Health, Sink
from ...events import ConnectionAnswer
from ...sections import ConnectorConfig
from . import gateway as gw
from .config import DiscordBot

log = logging.getLogger("imrelay.connector")
HELLO_TIMEOUT = 10.0
REFUSED_FIX = gw.FATAL_CLOSES[4004].split(": ", 1)[1]  # what to check after a 401

SESSIONS: dict[str, gw.Session] = {}  # bot id -> its Gateway session, resumed by the next socket


class Reconnect(ConnectionError):
    """End this socket and dial again (resuming when the session allows)."""


@dataclass
class GatewayConnection:
    """One Gateway socket of one bot (the connector builds a new one to reconnect)."""

    bot: DiscordBot
    cfg: ConnectorConfig
    api_base: str
    session: gw.Session
    beats: gw.Beats = field(default_factory=gw.Beats)
    ws: ClientConnection | None = None
    rand: Any = random.random

    @property
    def token(self) -> str:
        return self.bot.credentials.bot_token.get_secret_value()

    async def gateway_url(self) -> str:
        """``GET /api/v10/gateway/bot``: where to connect, and whether an Identify is allowed now."""
        async with httpx.AsyncClient(timeout=10) as client:
            resp = await client.get(
                f"{self.api_base}/api/v{gw.API_VERSION}/gateway/bot",
                headers={"Authorization": f"Bot {self.token}"},
            )
        if resp.status_code == 401:
            raise CredentialsRefused("GET /gateway/bot: 401 Unauthorized", REFUSED_FIX)
        if resp.status_code != 200:
            raise ConnectionError(f"GET /gateway/bot answered {resp.status_code}")
        body = resp.json()
        limit = body.get("session_start_limit") or {}
        if limit.get("remaining") == 0:
            raise ConnectionError(
                f"no session starts left today (resets in {float(limit.get('reset_after', 0)) / 1000:.0f}s)"
            )
        return str(body["url"])

    async def run(self, sink: Sink, health: Health) -> None:
        resuming = self.session.resumable
        url = self.session.resume_url if resuming else await self.gateway_url()
        async with connect(
            gw.gateway_socket_url(url), open_timeout=10, ping_interval=None, max_size=8 * 1024 * 1024
        ) as ws:
            self.ws = ws
            try:
                await self._serve(ws, sink, health, resuming)
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
                reason = exc.rcvd.reason if exc.rcvd else ""
                nxt = gw.after_close(code, self.session)
                if nxt is gw.Next.STOP:
                    raise CredentialsRefused(
                        f"close {code} {reason}".strip(), gw.FATAL_CLOSES[code or 0]
                    ) from None
                if nxt is gw.Next.IDENTIFY:
                    self.session.forget()
                raise Reconnect(f"closed by Discord ({code} {reason})".strip()) from None
            finally:
                self.ws = None
                # 1000 would end the session; closing otherwise keeps it resumable, also when stopped or
                # when the lease was lost meanwhile (a detached session delivers to nobody, and the next
                # socket of this process resumes it, receiving whatever was not stored yet)
                with contextlib.suppress(Exception):
                    await ws.close(code=gw.RESUMABLE_CLOSE)

    async def _serve(self, ws: ClientConnection, sink: Sink, health: Health, resuming: bool) -> None:
        async with asyncio.timeout(HELLO_TIMEOUT):
            hello = json.loads(await ws.recv())
        if hello.get("op") != gw.HELLO:
            raise Reconnect(f"expected Hello, got op {hello.get('op')}")
        interval = float(hello["d"]["heartbeat_interval"]) / 1000
        if resuming:
            await ws.send(gw.resume(self.token, self.session.session_id, self.session.seq))
        else:
            await ws.send(gw.identify(self.token))
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        tasks = {
            asyncio.create_task(self._heartbeat(ws, interval)),
            asyncio.create_task(self._read(ws, queue)),
            asyncio.create_task(self._dispatch(queue, sink, health)),
        }
        try:  # whichever ends first (each ends only by raising) ends the socket
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    async def _heartbeat(self, ws: ClientConnection, interval: float) -> None:
        await asyncio.sleep(gw.first_beat_delay(interval, self.rand))
        while True:
            if not self.beats.may_beat():
                raise Reconnect("heartbeat not acknowledged")  # a zombie connection: resume elsewhere
            self.beats.beat()
            await ws.send(gw.heartbeat(self.session.seq))
            await asyncio.sleep(interval)

    async def _read(self, ws: ClientConnection, queue: asyncio.Queue[dict[str, Any]]) -> None:
        async for raw in ws:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            op = msg.get("op")
            if op == gw.DISPATCH:
                queue.put_nowait(msg)
            elif op == gw.HEARTBEAT_ACK:
                self.beats.ack()
            elif op == gw.HEARTBEAT:  # Discord asks for one now
                await ws.send(gw.heartbeat(self.session.seq))
            elif op == gw.RECONNECT:
                raise Reconnect("Discord asked to reconnect (op 7)")
            elif op == gw.INVALID_SESSION:
                nxt = gw.after_invalid_session(bool(msg.get("d")), self.session)
                if nxt is gw.Next.IDENTIFY:
                    self.session.forget()
                    await asyncio.sleep(1 + 4 * self.rand())  # Discord asks for 1-5 s before identifying
                raise Reconnect(f"invalid session ({nxt.value} next)")
        raise ConnectionError("socket closed")  # unreachable: the iterator raises ConnectionClosed

    async def _dispatch(self, queue: asyncio.Queue[dict[str, Any]], sink: Sink, health: Health) -> None:
        while True:
            msg = await queue.get()
            kind, seq, d = msg.get("t"), msg.get("s"), msg.get("d") or {}
            if kind == "READY":
                self.session.session_id = str(d.get("session_id", ""))
                self.session.resume_url = str(d.get("resume_gateway_url", ""))
                self.session.bot_user_id = str((d.get("user") or {}).get("id", ""))
                self.session.seq = None
                log.info("bot %s: Discord gateway session ready", self.bot.id)
                await health.up()
            elif kind == "RESUMED":
                log.info("bot %s: Discord gateway session resumed", self.bot.id)
                await health.up()
            elif kind == "MESSAGE_CREATE" and gw.for_bot(d, self.session.bot_user_id):
                await self._store(d, sink, health)
            self.session.stored(seq if isinstance(seq, int) else None)

    async def _store(self, d: dict[str, Any], sink: Sink, health: Health) -> None:
        try:
            inbound = gw.normalize(
                d, self.bot.id, self.bot.credentials.application_id, self.session.bot_user_id, time.time()
            )
        except Exception as exc:  # unreadable: nothing to answer, the sequence moves on
            log.warning("bot %s: unreadable MESSAGE_CREATE (%s)", self.bot.id, type(exc).__name__)
            return
        try:
            duplicate = await sink(inbound)
        except Exception as exc:
            log.error(
                "bot %s: message %s not stored (%s); reconnecting to have it replayed",
                self.bot.id,
                inbound.platform_message_id,
                type(exc).__name__,
            )
            raise Reconnect("message not stored") from exc
        health.event("replayed_duplicate" if duplicate else "message")

    async def send(self, payload: dict[str, Any]) -> ConnectionAnswer:
        """Nothing is sent on the Gateway: answers go over HTTP."""
        return ConnectionAnswer(ok=False, code="not_supported")


def session_for(bot_id: str) -> gw.Session:
    return SESSIONS.setdefault(bot_id, gw.Session())
