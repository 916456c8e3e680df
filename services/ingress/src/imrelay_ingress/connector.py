"""``imrelay-connector``: holds the WeCom AI-bot long connections (``mode: long_connection`` bots).

WeCom allows one live socket per bot, so each bot's socket has exactly one owner cluster-wide: the replica
holding the bot's lease (:mod:`imrelay_ingress.lease`). The owner dials the bot's WebSocket, subscribes
with bot id + secret, sends heartbeats, and reconnects with exponential backoff and jitter. Inbound
messages are normalized and stored in JetStream like callbacks; replies come back from the sender as
NATS requests on ``imrelay.conn.wecom_aibot.<bot>``, sent on the socket one frame at a time per message,
each waiting for WeCom's ack. When the owner dies its lease expires (``connector.lease_ttl_seconds``) and
another replica takes the socket over. A broker error while taking or renewing the lease (a NATS leader
election) only means "try again shortly"; each bot's task is supervised, so it is logged and restarted,
never lost silently.

The reconnect backoff (1 s doubling up to ``reconnect_max_seconds``, with jitter) starts anew after a
socket that was subscribed for ``healthy_seconds``. A socket replaced by a newer connection of the same bot
(``disconnected_event``: another instance runs the bot) is closed by us at once, and the replica keeps the
lease but stays down for ``kick_holdoff_seconds`` (written into the lease, so a replica taking over waits
out the rest), so it never kicks back in a loop. A subscription refused
with 853000 (wrong bot id or secret) is a configuration error: logged, retried every
``refused_retry_seconds``. Both show in ``imrelay_connector_standing_down`` and in ``/readyz``, which also
says when a bot has no owner cluster-wide (``imrelay_connector_bot_owned``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from websockets.asyncio.client import ClientConnection, connect

from imrelay import subjects
from imrelay.answer_streams import stream_id
from imrelay.config import ConnectorConfig, Settings, load_settings
from imrelay.jetstream import connect_until_ready, ensure_leases_bucket
from imrelay.platforms.wecom_aibot.config import WeComAIBot
from imrelay.platforms.wecom_aibot.ingress import normalize
from imrelay.redact import protect_settings
from imrelay.runtime import Connected, run_until_stopped, service_main
from imrelay.telemetry import (
    CONNECTOR_BOT_OWNED,
    CONNECTOR_EVENTS,
    CONNECTOR_LEASE,
    CONNECTOR_STANDING_DOWN,
)

from .lease import Lease
from .publisher import JetStreamPublisher

log = logging.getLogger("imrelay.connector")
PLATFORM = "wecom_aibot"
INVALID_REQ_ID = 846605
STREAM_EXPIRED = 846608
GONE = (INVALID_REQ_ID, STREAM_EXPIRED)  # the message's socket or stream is gone: later frames are moot
KEEPALIVE_GIVE_UP_SECONDS = 3600.0  # a stream the sender has not updated for this long is let go
WRONG_SECRET = 853000
STAND_DOWN_REASONS = ("kicked", "refused")


class Kicked(Exception):
    """WeCom replaced this socket with a newer connection of the same bot."""


class SubscribeRefused(Exception):
    """WeCom refused the bot id or secret (853000): a configuration error, not a network one."""

    def __init__(self, errcode: object, errmsg: object) -> None:
        super().__init__(f"errcode {errcode} {errmsg}")
        self.errcode = errcode


@dataclass
class BotStatus:
    """What this replica knows about one bot: for ``/readyz`` and the metrics."""

    bot: str
    owner: bool = False  # this replica holds the bot's lease
    socket: str = "down"  # connecting | up | down | kicked | refused
    detail: str = ""
    until: float = 0.0  # monotonic end of a stand-down
    view: str = "unknown"  # the lease as the bucket shows it: mine | taken | free | unknown


def readiness(statuses: Iterable[BotStatus], now: float) -> list[str]:
    """Why the connector is not ready, one reason per bot that has no working socket."""
    out = []
    for st in statuses:
        if st.owner:
            left = max(0.0, st.until - now)
            if st.socket == "kicked":
                out.append(f"bot {st.bot}: taken by another instance (disconnected_event); "
                           f"standing down for {left:.0f}s")
            elif st.socket == "refused":
                out.append(f"bot {st.bot}: subscription refused ({st.detail}); check credentials.bot_id "
                           f"and credentials.secret; next try in {left:.0f}s")
            elif st.socket != "up":
                out.append(f"bot {st.bot}: socket {st.socket}" + (f" ({st.detail})" if st.detail else ""))
        elif st.view == "free":
            out.append(f"bot {st.bot}: no owner (no connector holds its lease)")
        elif st.view == "unknown":
            out.append(f"bot {st.bot}: owner unknown (lease bucket unreadable"
                       + (f": {st.detail})" if st.detail else ")"))
    return out


def next_pause(outcome: str, up_for: float, attempt: int, cfg: ConnectorConfig,
               rand: Callable[[], float] = random.random) -> tuple[float, int]:
    """(seconds to wait, attempt count) after a socket ended with ``outcome`` (``kicked``, ``refused`` or
    ``ended``) having been subscribed ``up_for`` seconds. Backoff 1 s x 2^(n-1) up to the cap, jitter
    down to half; the count starts anew after a healthy socket."""
    if outcome == "kicked":
        return cfg.kick_holdoff_seconds, 0
    if outcome == "refused":
        return cfg.refused_retry_seconds, 0
    if up_for >= cfg.healthy_seconds:
        attempt = 0
    attempt += 1
    base = min(2.0 ** (attempt - 1), cfg.reconnect_max_seconds)
    return base * (0.5 + 0.5 * rand()), attempt


def req_id(kind: str) -> str:
    return f"{kind}_{int(time.time() * 1000)}_{secrets.token_hex(4)}"


def frame(cmd: str, rid: str, body: dict[str, Any] | None = None) -> str:
    out: dict[str, Any] = {"cmd": cmd, "headers": {"req_id": rid}}
    if body is not None:
        out["body"] = body
    return json.dumps(out, ensure_ascii=False)


@dataclass
class OpenStream:
    """An answer stream shown on this socket and not finished yet."""

    content: str
    updated_at: float  # when the sender last updated it (monotonic)
    sent_at: float  # when it was last sent to WeCom, update or keepalive (monotonic)


@dataclass
class BotSocket:
    """The socket of one bot, while this replica holds its lease."""

    bot: WeComAIBot
    cfg: ConnectorConfig
    publisher: JetStreamPublisher
    nc: NATS
    acks: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    reply_locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    open_streams: dict[tuple[str, str], OpenStream] = field(default_factory=dict)  # (req_id, stream id)
    ws: ClientConnection | None = None
    status: BotStatus | None = None
    subscribed_at: float | None = None  # monotonic

    def up_for(self) -> float:
        return 0.0 if self.subscribed_at is None else time.monotonic() - self.subscribed_at

    @property
    def labels(self) -> dict[str, str]:
        return {"platform": PLATFORM, "bot": self.bot.id}

    async def request(self, cmd: str, body: dict[str, Any], rid: str | None = None) -> dict[str, Any]:
        """Send one frame and wait for WeCom's ack frame (same req_id)."""
        ws = self.ws
        if ws is None:
            raise ConnectionError("no socket")
        rid = rid or req_id(cmd)
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        key = f"{rid}#{secrets.token_hex(3)}"  # several frames may share a message's req_id
        self.acks[key] = waiter
        try:
            async with self.send_lock:
                await ws.send(frame(cmd, rid, body))
            async with asyncio.timeout(self.cfg.ack_timeout_seconds):
                return await waiter
        finally:
            self.acks.pop(key, None)

    def _resolve(self, msg: dict[str, Any]) -> None:
        rid = str((msg.get("headers") or {}).get("req_id", ""))
        for key, waiter in list(self.acks.items()):
            if key.split("#", 1)[0] == rid and not waiter.done():
                waiter.set_result(msg)
                return

    async def run(self) -> None:
        """Dial, subscribe, and serve until the socket ends (raises Kicked when replaced)."""
        async with connect(self.bot.ws_url, open_timeout=10, ping_interval=None,
                           max_size=4 * 1024 * 1024) as ws:
            self.ws = ws
            reader = asyncio.create_task(self._read(ws))
            try:
                c = self.bot.credentials
                ack = await self.request("aibot_subscribe", {
                    "bot_id": c.bot_id, "secret": c.secret.get_secret_value() if c.secret else ""})
                if ack.get("errcode") == WRONG_SECRET:
                    raise SubscribeRefused(ack.get("errcode"), ack.get("errmsg"))
                if ack.get("errcode") != 0:
                    raise PermissionError(f"subscribe refused: {ack.get('errcode')} {ack.get('errmsg')}")
                log.info("bot %s: long connection up", self.bot.id)
                self.subscribed_at = time.monotonic()
                if self.status is not None:
                    self.status.socket, self.status.detail = "up", ""
                for reason in STAND_DOWN_REASONS:
                    CONNECTOR_STANDING_DOWN.labels(reason=reason, **self.labels).set(0)
                CONNECTOR_EVENTS.labels(outcome="connected", **self.labels).inc()
                sub = await self.nc.subscribe(subjects.connector_subject(PLATFORM, self.bot.id),
                                              queue="connector", cb=self._reply)
                beat = asyncio.create_task(self._heartbeat())
                keep = asyncio.create_task(self._keep_streams_alive())
                try:  # whichever ends first (each ends only by raising) ends the socket
                    done, _ = await asyncio.wait({reader, beat, keep}, return_when=asyncio.FIRST_COMPLETED)
                    for t in done:
                        t.result()
                finally:
                    for task in (beat, keep):
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await task
                    await sub.unsubscribe()
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
                self.ws = None

    async def _heartbeat(self) -> None:
        missed = 0
        while True:
            await asyncio.sleep(self.cfg.heartbeat_seconds)
            try:
                await self.request("ping", {})
                missed = 0
            except TimeoutError:
                missed += 1
                if missed >= 2:
                    raise ConnectionError("heartbeat unanswered") from None

    async def _keep_streams_alive(self) -> None:
        """Show each open stream again, unchanged, once it has not been sent for
        ``stream_keepalive_seconds``, so that a model pausing longer than WeCom's expiry loses nothing."""
        every = self.cfg.stream_keepalive_seconds
        while True:
            await asyncio.sleep(min(every / 4, 5.0))
            now = time.monotonic()
            for key, stream in list(self.open_streams.items()):
                if now - stream.updated_at > KEEPALIVE_GIVE_UP_SECONDS:
                    self.open_streams.pop(key, None)
                elif now - stream.sent_at >= every:
                    await self._keepalive(key, stream)

    async def _keepalive(self, key: tuple[str, str], stream: OpenStream) -> None:
        rid, sid = key
        async with self.reply_locks.setdefault(rid, asyncio.Lock()):
            if self.open_streams.get(key) is not stream:
                return  # updated or finished meanwhile
            try:
                ack = await self.request("aibot_respond_msg", {"msgtype": "stream", "stream": {
                    "id": sid, "finish": False, "content": stream.content}}, rid=rid)
            except Exception as exc:  # the next round tries again; a dead socket ends the loop anyway
                log.info("bot %s: stream keepalive not sent (%s)", self.bot.id, type(exc).__name__)
                return
        if ack.get("errcode") == 0:
            stream.sent_at = time.monotonic()
            CONNECTOR_EVENTS.labels(outcome="stream_keepalive", **self.labels).inc()
        else:
            self.open_streams.pop(key, None)
            log.info("bot %s: stream keepalive refused (%s); letting it go", self.bot.id,
                     ack.get("errcode"))

    async def _read(self, ws: ClientConnection) -> None:
        async for raw in ws:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            cmd = msg.get("cmd")
            if cmd is None:
                self._resolve(msg)
            elif cmd == "aibot_event_callback" and \
                    ((msg.get("body") or {}).get("event") or {}).get("eventtype") == "disconnected_event":
                raise Kicked
            elif cmd in ("aibot_msg_callback", "aibot_event_callback"):
                await self._inbound(msg)
        raise ConnectionError("socket closed")

    async def _inbound(self, msg: dict[str, Any]) -> None:
        body = msg.get("body") or {}
        rid = str((msg.get("headers") or {}).get("req_id", ""))
        try:
            inbound = normalize(body, self.bot.id, time.time(),
                                stream_id(self.bot.id, str(body.get("msgid", ""))))
        except Exception as exc:
            log.warning("bot %s: unreadable frame (%s)", self.bot.id, type(exc).__name__)
            return
        handle = dict(inbound.reply_handle, mode="long_connection", req_id=rid,
                      chatid=str(body.get("chatid") or (body.get("from") or {}).get("userid", "")))
        try:
            await self.publisher.publish(inbound.model_copy(update={"reply_handle": handle}))
        except Exception as exc:
            log.error("bot %s: message %s not stored (%s)", self.bot.id, inbound.platform_message_id,
                      type(exc).__name__)

    async def _reply(self, nats_msg: Msg) -> None:
        """A reply from the sender: send it on the socket, answer whether WeCom took it."""
        try:
            req = json.loads(nats_msg.data)
            rid, content, finish = str(req["req_id"]), str(req["content"]), bool(req["finish"])
            key = (rid, str(req["stream_id"]))
            lock = self.reply_locks.setdefault(rid, asyncio.Lock())
            async with lock:  # one message's frames go one at a time, each acked
                ack = await self.request("aibot_respond_msg", {"msgtype": "stream", "stream": {
                    "id": key[1], "finish": finish, "content": content}}, rid=rid)
                if ack.get("errcode") == 0 and not finish:
                    now = time.monotonic()
                    self.open_streams[key] = OpenStream(content, updated_at=now, sent_at=now)
                elif ack.get("errcode") == 0 or ack.get("errcode") in GONE:
                    self.open_streams.pop(key, None)
                if ack.get("errcode") in GONE and finish:
                    # the message came on a socket that is gone, or its stream expired: send this
                    # part of the answer proactively
                    ack = await self.request("aibot_send_msg", {
                        "chatid": req.get("chatid", ""), "msgtype": "markdown",
                        "markdown": {"content": content}})
            if finish:
                self.reply_locks.pop(rid, None)
            ok = ack.get("errcode") == 0 or ack.get("errcode") in GONE  # an update of a lost stream is moot
            await nats_msg.respond(json.dumps({"ok": ok, "code": ack.get("errcode")}).encode())
        except Exception as exc:
            with contextlib.suppress(Exception):
                await nats_msg.respond(json.dumps({"ok": False, "code": type(exc).__name__}).encode())


async def guard(task: asyncio.Task[None], lease: Lease, ttl: float) -> bool:
    """Renew the lease while ``task`` runs; cancel it and return False when the lease is lost. Renewal is
    retried every half second while the broker fails, up to the lease's end."""
    try:
        while not task.done():
            done, _ = await asyncio.wait({task}, timeout=min(0.5, ttl / 10) if lease.failing else ttl / 3)
            if not done and not await lease.renew():
                return False
        return True
    finally:  # lost, or we are cancelled ourselves: the task never outlives the lease
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def keep(lease: Lease, seconds: float, ttl: float) -> bool:
    """Wait ``seconds`` while renewing the lease; False if it was lost meanwhile."""
    return await guard(asyncio.create_task(asyncio.sleep(seconds)), lease, ttl)


async def supervise(bot: str, make: Callable[[], Awaitable[None]], pause: float = 1.0) -> None:
    """Run ``make()`` forever: an error or an unexpected end is logged, counted and restarted."""
    while True:
        try:
            await make()
            log.error("bot %s: connector task ended; restarting it", bot)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("bot %s: connector task failed; restarting it in %.0fs", bot, pause)
        CONNECTOR_EVENTS.labels(platform=PLATFORM, bot=bot, outcome="crashed").inc()
        await asyncio.sleep(pause)


async def hold(bot: WeComAIBot, settings: Settings, lease: Lease, publisher: JetStreamPublisher,
               nc: NATS, status: BotStatus | None = None) -> None:
    """Forever: take the bot's lease when free, and keep its socket up while holding it."""
    cfg = settings.connector
    status = status or BotStatus(bot.id)
    labels = {"platform": PLATFORM, "bot": bot.id}
    reported = ""
    while True:
        if not await lease.acquire():
            if lease.error != reported:  # once per kind of trouble, not once a second
                reported = lease.error
                if reported:
                    log.warning("bot %s: lease bucket unavailable (%s); trying again", bot.id, reported)
            await asyncio.sleep(min(1.0, cfg.lease_ttl_seconds / 5))
            continue
        reported = ""
        CONNECTOR_LEASE.labels(**labels).set(1)
        status.owner, status.view = True, "mine"
        log.info("bot %s: this replica owns the socket", bot.id)
        try:
            await own(bot, cfg, lease, publisher, nc, status)
        finally:
            CONNECTOR_LEASE.labels(**labels).set(0)
            status.owner, status.socket, status.detail = False, "down", ""
            for reason in STAND_DOWN_REASONS:
                CONNECTOR_STANDING_DOWN.labels(reason=reason, **labels).set(0)
        CONNECTOR_EVENTS.labels(outcome="lease_lost", **labels).inc()
        log.warning("bot %s: lease lost%s; socket closed", bot.id,
                    f" (lease bucket: {lease.error})" if lease.error else "")


async def own(bot: WeComAIBot, cfg: ConnectorConfig, lease: Lease, publisher: JetStreamPublisher,
              nc: NATS, status: BotStatus) -> None:
    """While the lease holds: run the socket, reconnect with backoff and jitter when it ends."""
    labels = {"platform": PLATFORM, "bot": bot.id}
    attempt = 0
    left = lease.down_until - lease.clock()
    if left > 0:  # the previous owner was standing down after a kick: the hold-off is the bot's, not ours
        CONNECTOR_STANDING_DOWN.labels(reason="kicked", **labels).set(1)
        status.socket, status.detail, status.until = "kicked", "", time.monotonic() + left
        log.error("bot %s: taken by another instance (as the previous owner was told); standing down "
                  "for %.0fs more", bot.id, left)
        if not await keep(lease, left, cfg.lease_ttl_seconds):
            return
    while True:
        sock = BotSocket(bot, cfg, publisher, nc, status=status)
        if status.socket not in STAND_DOWN_REASONS:
            status.socket, status.detail = "connecting", ""
        task = asyncio.create_task(sock.run())
        if not await guard(task, lease, cfg.lease_ttl_seconds):
            return
        exc = task.exception() if not task.cancelled() else None
        outcome = "kicked" if isinstance(exc, Kicked) else \
            "refused" if isinstance(exc, SubscribeRefused) else "ended"
        pause, attempt = next_pause(outcome, sock.up_for(), attempt, cfg)
        if outcome == "kicked":
            # Another instance runs this bot. Keep the lease (so no other replica fights back either) and
            # stay down for the hold-off: one attempt per hold-off, cluster-wide.
            CONNECTOR_EVENTS.labels(outcome="kicked", **labels).inc()
            CONNECTOR_STANDING_DOWN.labels(reason="kicked", **labels).set(1)
            lease.down_until = lease.clock() + pause  # in the lease record: a next owner waits too
            if not await lease.renew():
                return
            log.error("bot %s: taken by another instance (WeCom sent disconnected_event); socket closed, "
                      "standing down for %.0fs. Stop the other instance running this bot.", bot.id, pause)
        elif outcome == "refused":
            CONNECTOR_EVENTS.labels(outcome="refused", **labels).inc()
            CONNECTOR_STANDING_DOWN.labels(reason="refused", **labels).set(1)
            log.error("bot %s: WeCom refused the subscription (%s): check credentials.bot_id and "
                      "credentials.secret; trying again in %.0fs", bot.id, exc, pause)
        else:
            CONNECTOR_EVENTS.labels(outcome="reconnect", **labels).inc()
            log.warning("bot %s: socket ended (%s) after %.1fs up; reconnecting in %.1fs", bot.id,
                        type(exc).__name__ if exc else "closed", sock.up_for(), pause)
        status.socket = outcome if outcome != "ended" else "down"
        status.detail = str(exc) if outcome == "refused" else \
            f"reconnecting: {type(exc).__name__ if exc else 'closed'}" if outcome == "ended" else ""
        status.until = time.monotonic() + pause
        if not await keep(lease, pause, cfg.lease_ttl_seconds):
            return


async def watch_owners(statuses: list[BotStatus], leases: list[Lease], interval: float) -> None:
    """Read every bot's lease now and then: the cluster-wide view behind ``/readyz`` and
    ``imrelay_connector_bot_owned``."""
    while True:
        for st, lease in zip(statuses, leases, strict=True):
            try:
                st.view, detail = await lease.peek(), ""
            except Exception as exc:
                st.view, detail = "unknown", type(exc).__name__ or "error"
            if not st.owner:
                st.detail = detail
            owned = st.owner or st.view in ("mine", "taken")
            CONNECTOR_BOT_OWNED.labels(platform=PLATFORM, bot=st.bot).set(1 if owned else 0)
        await asyncio.sleep(interval)


async def run() -> None:
    settings = load_settings()
    protect_settings(settings)
    bots = [b for b in settings.bots if isinstance(b, WeComAIBot) and b.mode == "long_connection"]
    if not bots:
        raise ValueError("no bot with mode: long_connection in the config: nothing to connect")
    owner = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    ttl = settings.connector.lease_ttl_seconds
    statuses = [BotStatus(b.id) for b in bots]
    tasks: list[asyncio.Task[None]] = []

    for b in bots:  # every replica reports 0 until it owns a socket: "no owner" is a sum of 0
        CONNECTOR_LEASE.labels(platform=PLATFORM, bot=b.id).set(0)
        CONNECTOR_BOT_OWNED.labels(platform=PLATFORM, bot=b.id).set(0)
        for reason in STAND_DOWN_REASONS:
            CONNECTOR_STANDING_DOWN.labels(platform=PLATFORM, bot=b.id, reason=reason).set(0)
        for outcome in ("connected", "kicked", "refused", "lease_lost", "reconnect", "crashed",
                        "stream_keepalive"):
            CONNECTOR_EVENTS.labels(platform=PLATFORM, bot=b.id, outcome=outcome)  # series exist from 0

    async def connect() -> Connected:
        publisher = JetStreamPublisher(settings.nats)
        await publisher.start()
        try:
            nc, js = await connect_until_ready(settings.nats, "imrelay-connector")
            kv = await ensure_leases_bucket(js, settings.nats)
        except BaseException:
            await publisher.close()
            raise
        leases = [Lease(kv, subjects.kv_key("wecom_aibot", b.id), owner, ttl) for b in bots]

        def holder(b: WeComAIBot, lease: Lease, st: BotStatus) -> Callable[[], Awaitable[None]]:
            return lambda: hold(b, settings, lease, publisher, nc, st)

        async def start() -> None:
            await publisher.connected()  # never take a socket whose messages could not be stored
            tasks.append(asyncio.create_task(watch_owners(statuses, leases, min(1.0, ttl / 5))))
            tasks.extend(asyncio.create_task(supervise(b.id, holder(b, lease, st)))
                         for b, lease, st in zip(bots, leases, statuses, strict=True))
            log.info("connector for %d bot(s), owner %s", len(bots), owner)

        async def stop() -> None:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for lease in leases:  # hand the sockets over at once instead of after the lease expires
                await lease.release()
            await publisher.close()

        return Connected(nc, js, start, stop)

    await run_until_stopped(settings.admin, connect,
                            reasons=lambda: readiness(statuses, time.monotonic()))


def main() -> None:
    service_main("connector", run)


if __name__ == "__main__":
    main()
