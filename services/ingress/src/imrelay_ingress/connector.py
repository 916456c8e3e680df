"""``imrelay-connector``: holds the long connections of the bots with ``mode: long_connection``.

The connector knows no platform: for each such bot it asks the registry for the platform's connection
(``PlatformSpec.connection``, an :class:`imrelay.connections.Connection`) and supervises it. Who holds a
bot's connection is the platform's ownership policy (``capabilities.long_connection``):

* ``SINGLE_OWNER`` (the platform allows one live connection per bot): exactly one owner cluster-wide, the
  replica holding the bot's lease (:mod:`imrelay_ingress.lease`). When the owner dies its lease expires
  (``connector.lease_ttl_seconds``) and another replica takes the connection over. A broker error while
  taking or renewing the lease (a NATS leader election) only means "try again shortly".
* ``ACTIVE_ACTIVE`` (the platform spreads events over several connections): every replica holds its own
  connection, no lease.

Messages that arrive are stored in JetStream like callbacks (the connection's sink returns once stored).
Answers a platform takes over its connection come back from the sender as NATS requests
(:class:`imrelay.events.ConnectionRequest`) on ``imrelay.conn.<platform>.<bot>``, served while the
connection is up by the replica holding it. Each bot's task is supervised: an error is logged and the task
restarted, never lost silently.

A connection that ends is dialled again with exponential backoff and jitter (1 s doubling up to
``reconnect_max_seconds``), which starts anew after a connection that was up for ``healthy_seconds``. A
connection replaced by a newer one of the same bot (:class:`~imrelay.connections.Kicked`: another instance
runs the bot) stays down for ``kick_holdoff_seconds``; a single owner keeps the lease meanwhile and writes
the hold-off into it (a replica taking over waits out the rest), so it never kicks back in a loop. Refused
credentials (:class:`~imrelay.connections.CredentialsRefused`) are a configuration error: logged, retried
every ``refused_retry_seconds``. Both show in ``imrelay_connector_standing_down`` and in ``/readyz``, which
also says when a single-owner bot has no owner cluster-wide (``imrelay_connector_bot_owned``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from imrelay import subjects
from imrelay.bots import BotBase
from imrelay.config import ConnectorConfig, Settings, load_settings
from imrelay.connections import Connection, ConnectionContext, CredentialsRefused, Kicked, Sink
from imrelay.events import ConnectionAnswer, ConnectionRequest, InboundMessage
from imrelay.jetstream import connect_until_ready, ensure_leases_bucket
from imrelay.platforms import spec_for
from imrelay.platforms.spec import Ownership, PlatformSpec
from imrelay.redact import protect_settings
from imrelay.runtime import Connected, run_until_stopped, service_main
from imrelay.telemetry import (
    CONNECTOR_BOT_OWNED,
    CONNECTOR_CONNECTED,
    CONNECTOR_EVENTS,
    CONNECTOR_LAST_FRAME,
    CONNECTOR_LEASE,
    CONNECTOR_MESSAGES,
    CONNECTOR_STANDING_DOWN,
)

from .lease import Lease
from .publisher import JetStreamPublisher

log = logging.getLogger("imrelay.connector")
STAND_DOWN_REASONS = ("kicked", "refused")
OUTCOMES = ("connected", "kicked", "refused", "lease_lost", "reconnect", "crashed")
MESSAGE_OUTCOMES = ("stored", "duplicate", "failed")


@dataclass
class BotStatus:
    """What this replica knows about one bot: for ``/readyz`` and the metrics."""

    bot: str
    owner: bool = False  # this replica holds the bot's connection (its lease, for a single owner)
    socket: str = "down"  # connecting | up | down | kicked | refused
    detail: str = ""  # kicked: how the platform said so; refused: its answer; down: why
    until: float = 0.0  # monotonic end of a stand-down
    view: str = "unknown"  # the lease as the bucket shows it: mine | taken | free | unknown
    fix: str = ""  # refused: which credentials to check


def readiness(statuses: Iterable[BotStatus], now: float) -> list[str]:
    """Why the connector is not ready, one reason per bot that has no working connection."""
    out = []
    for st in statuses:
        if st.owner:
            left = max(0.0, st.until - now)
            if st.socket == "kicked":
                out.append(
                    f"bot {st.bot}: taken by another instance"
                    + (f" ({st.detail})" if st.detail else "")
                    + f"; standing down for {left:.0f}s"
                )
            elif st.socket == "refused":
                out.append(
                    f"bot {st.bot}: subscription refused ({st.detail}); "
                    f"{st.fix or 'check the bot credentials'}; next try in {left:.0f}s"
                )
            elif st.socket != "up":
                out.append(f"bot {st.bot}: socket {st.socket}" + (f" ({st.detail})" if st.detail else ""))
        elif st.view == "free":
            out.append(f"bot {st.bot}: no owner (no connector holds its lease)")
        elif st.view == "unknown":
            out.append(
                f"bot {st.bot}: owner unknown (lease bucket unreadable"
                + (f": {st.detail})" if st.detail else ")")
            )
    return out


def next_pause(
    outcome: str, up_for: float, attempt: int, cfg: ConnectorConfig, rand: Callable[[], float] = random.random
) -> tuple[float, int]:
    """(seconds to wait, attempt count) after a connection ended with ``outcome`` (``kicked``, ``refused``
    or ``ended``) having been up ``up_for`` seconds. Backoff 1 s x 2^(n-1) up to the cap, jitter down to
    half; the count starts anew after a healthy connection."""
    if outcome == "kicked":
        return cfg.kick_holdoff_seconds, 0
    if outcome == "refused":
        return cfg.refused_retry_seconds, 0
    if up_for >= cfg.healthy_seconds:
        attempt = 0
    attempt += 1
    base = min(2.0 ** (attempt - 1), cfg.reconnect_max_seconds)
    return base * (0.5 + 0.5 * rand()), attempt


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
        await _cancel(task)


async def _cancel(task: asyncio.Task[None]) -> None:
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def keep(lease: Lease, seconds: float, ttl: float) -> bool:
    """Wait ``seconds`` while renewing the lease; False if it was lost meanwhile."""
    return await guard(asyncio.create_task(asyncio.sleep(seconds)), lease, ttl)


class Tenure(Protocol):
    """The right to hold a bot's connection, as the platform's ownership policy grants it."""

    async def guard(self, task: asyncio.Task[None]) -> bool:
        """Wait for ``task``; cancel it and return False if the right is lost meanwhile."""
        ...

    async def keep(self, seconds: float) -> bool:
        """Wait ``seconds``; False if the right was lost meanwhile."""
        ...

    def inherited(self) -> float:
        """Seconds left of a stand-down the previous holder began."""
        ...

    async def stand_down(self, seconds: float) -> bool:
        """Record a stand-down of ``seconds`` (a kick) for whoever holds the connection next."""
        ...


@dataclass
class LeaseTenure:
    """``SINGLE_OWNER``: held while the bot's lease is ours."""

    lease: Lease
    ttl: float

    async def guard(self, task: asyncio.Task[None]) -> bool:
        return await guard(task, self.lease, self.ttl)

    async def keep(self, seconds: float) -> bool:
        return await keep(self.lease, seconds, self.ttl)

    def inherited(self) -> float:
        return self.lease.down_until - self.lease.clock()

    async def stand_down(self, seconds: float) -> bool:
        self.lease.down_until = self.lease.clock() + seconds  # in the lease record: a next owner waits too
        return await self.lease.renew()


class OwnTenure:
    """``ACTIVE_ACTIVE``: every replica holds its own connection; nothing to lose."""

    async def guard(self, task: asyncio.Task[None]) -> bool:
        try:
            await asyncio.wait({task})
            return True
        finally:
            await _cancel(task)

    async def keep(self, seconds: float) -> bool:
        await asyncio.sleep(seconds)
        return True

    def inherited(self) -> float:
        return 0.0

    async def stand_down(self, seconds: float) -> bool:
        return True


@dataclass
class Supervised:
    """One long-connection bot as this replica runs it."""

    bot: BotBase
    spec: PlatformSpec[Any]
    cfg: ConnectorConfig
    sink: Sink
    nc: NATS | None  # serves the sender's requests (None: the connection takes none)
    status: BotStatus
    lease: Lease | None = None  # the bot's lease, for a single owner

    @property
    def labels(self) -> dict[str, str]:
        return {"platform": self.bot.platform, "bot": self.bot.id}

    def connection(self) -> Connection:
        if self.spec.connection is None:
            raise ValueError(f"bot {self.bot.id}: platform {self.bot.platform} has no long connection")
        return self.spec.connection(self.bot, ConnectionContext(self.cfg))


@dataclass
class Attempt:
    """One connection attempt: its health, reported into the bot's status and the metrics (every frame it
    reports, its messages too, marks ``imrelay_connector_last_frame_timestamp_seconds``), and the sender's
    requests, served while it is up."""

    sup: Supervised
    conn: Connection
    subscribed_at: float | None = None  # monotonic
    sub: Subscription | None = None

    def up_for(self) -> float:
        return 0.0 if self.subscribed_at is None else time.monotonic() - self.subscribed_at

    async def up(self) -> None:
        self.subscribed_at = time.monotonic()
        st = self.sup.status
        st.socket, st.detail, st.fix = "up", "", ""
        for reason in STAND_DOWN_REASONS:
            CONNECTOR_STANDING_DOWN.labels(reason=reason, **self.sup.labels).set(0)
        CONNECTOR_EVENTS.labels(outcome="connected", **self.sup.labels).inc()
        CONNECTOR_CONNECTED.labels(**self.sup.labels).set(1)
        CONNECTOR_LAST_FRAME.labels(**self.sup.labels).set_to_current_time()
        if self.sup.nc is not None:
            self.sub = await self.sup.nc.subscribe(
                subjects.connector_subject(self.sup.bot.platform, self.sup.bot.id),
                queue="connector",
                cb=self._reply,
            )

    def event(self, outcome: str) -> None:
        CONNECTOR_EVENTS.labels(outcome=outcome, **self.sup.labels).inc()
        CONNECTOR_LAST_FRAME.labels(**self.sup.labels).set_to_current_time()

    async def sink(self, message: InboundMessage) -> bool:
        """The bot's sink, counting the message."""
        CONNECTOR_LAST_FRAME.labels(**self.sup.labels).set_to_current_time()
        try:
            stored_already = await self.sup.sink(message)
        except Exception:
            CONNECTOR_MESSAGES.labels(outcome="failed", **self.sup.labels).inc()
            raise
        CONNECTOR_MESSAGES.labels(
            outcome="duplicate" if stored_already else "stored", **self.sup.labels
        ).inc()
        return stored_already

    async def run(self) -> None:
        try:
            await self.conn.run(self.sink, self)
        finally:
            CONNECTOR_CONNECTED.labels(**self.sup.labels).set(0)
            if self.sub is not None:
                with contextlib.suppress(Exception):
                    await self.sub.unsubscribe()
                self.sub = None

    async def send(self, data: bytes) -> ConnectionAnswer:
        """Send a request of the sender's on the connection; never raises."""
        try:
            req = ConnectionRequest.parse(data, self.sup.bot.platform, self.sup.bot.id)
            if (req.platform, req.bot_id) != (self.sup.bot.platform, self.sup.bot.id):
                return ConnectionAnswer(ok=False, code="wrong_bot")
            async with asyncio.timeout(req.timeout_seconds):
                return await self.conn.send(req.payload)
        except Exception as exc:
            return ConnectionAnswer(ok=False, code=type(exc).__name__)

    async def _reply(self, msg: Msg) -> None:
        answer = await self.send(msg.data)
        with contextlib.suppress(Exception):
            await msg.respond(answer.model_dump_json().encode())


async def supervise(
    bot: str, make: Callable[[], Awaitable[None]], pause: float = 1.0, *, platform: str = ""
) -> None:
    """Run ``make()`` forever: an error or an unexpected end is logged, counted and restarted."""
    while True:
        try:
            await make()
            log.error("bot %s: connector task ended; restarting it", bot)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("bot %s: connector task failed; restarting it in %.0fs", bot, pause)
        CONNECTOR_EVENTS.labels(platform=platform, bot=bot, outcome="crashed").inc()
        await asyncio.sleep(pause)


async def hold(sup: Supervised) -> None:
    """Forever: hold the bot's connection as its platform's ownership policy allows."""
    if sup.lease is None:
        await hold_own(sup)
    else:
        await hold_lease(sup, sup.lease)


async def hold_own(sup: Supervised) -> None:
    """``ACTIVE_ACTIVE``: this replica's own connection, always."""
    sup.status.owner, sup.status.view = True, "mine"
    CONNECTOR_LEASE.labels(**sup.labels).set(1)
    CONNECTOR_BOT_OWNED.labels(**sup.labels).set(1)
    try:
        await own(sup, OwnTenure())
    finally:
        _not_owner(sup)


async def hold_lease(sup: Supervised, lease: Lease) -> None:
    """``SINGLE_OWNER``: take the bot's lease when free, and keep its connection up while holding it."""
    bot, status = sup.bot, sup.status
    reported = ""
    while True:
        if not await lease.acquire():
            if lease.error != reported:  # once per kind of trouble, not once a second
                reported = lease.error
                if reported:
                    log.warning("bot %s: lease bucket unavailable (%s); trying again", bot.id, reported)
            await asyncio.sleep(min(1.0, sup.cfg.lease_ttl_seconds / 5))
            continue
        reported = ""
        CONNECTOR_LEASE.labels(**sup.labels).set(1)
        status.owner, status.view = True, "mine"
        log.info("bot %s: this replica owns the socket", bot.id)
        try:
            await own(sup, LeaseTenure(lease, sup.cfg.lease_ttl_seconds))
        finally:
            _not_owner(sup)
        CONNECTOR_EVENTS.labels(outcome="lease_lost", **sup.labels).inc()
        log.warning(
            "bot %s: lease lost%s; socket closed",
            bot.id,
            f" (lease bucket: {lease.error})" if lease.error else "",
        )


def _not_owner(sup: Supervised) -> None:
    CONNECTOR_LEASE.labels(**sup.labels).set(0)
    sup.status.owner, sup.status.socket, sup.status.detail, sup.status.fix = False, "down", "", ""
    for reason in STAND_DOWN_REASONS:
        CONNECTOR_STANDING_DOWN.labels(reason=reason, **sup.labels).set(0)


async def own(sup: Supervised, tenure: Tenure) -> None:
    """While the tenure holds: run the connection, reconnect with backoff and jitter when it ends."""
    bot, cfg, status, labels = sup.bot, sup.cfg, sup.status, sup.labels
    attempt = 0
    left = tenure.inherited()
    if left > 0:  # the previous owner was standing down after a kick: the hold-off is the bot's, not ours
        CONNECTOR_STANDING_DOWN.labels(reason="kicked", **labels).set(1)
        status.socket, status.detail, status.until = "kicked", "", time.monotonic() + left
        log.error(
            "bot %s: taken by another instance (as the previous owner was told); standing down "
            "for %.0fs more",
            bot.id,
            left,
        )
        if not await tenure.keep(left):
            return
    while True:
        run = Attempt(sup, sup.connection())
        if status.socket not in STAND_DOWN_REASONS:
            status.socket, status.detail = "connecting", ""
        task = asyncio.create_task(run.run())
        if not await tenure.guard(task):
            return
        exc = task.exception() if not task.cancelled() else None
        outcome = (
            "kicked"
            if isinstance(exc, Kicked)
            else "refused"
            if isinstance(exc, CredentialsRefused)
            else "ended"
        )
        pause, attempt = next_pause(outcome, run.up_for(), attempt, cfg)
        if isinstance(exc, Kicked):
            # Another instance runs this bot. A single owner keeps the lease (so no other replica fights
            # back either) and stays down for the hold-off: one attempt per hold-off, cluster-wide.
            CONNECTOR_EVENTS.labels(outcome="kicked", **labels).inc()
            CONNECTOR_STANDING_DOWN.labels(reason="kicked", **labels).set(1)
            if not await tenure.stand_down(pause):
                return
            log.error(
                "bot %s: taken by another instance (the platform sent %s); socket closed, standing "
                "down for %.0fs. Stop the other instance running this bot.",
                bot.id,
                exc.signal or "a kick",
                pause,
            )
            status.detail = exc.signal
        elif isinstance(exc, CredentialsRefused):
            CONNECTOR_EVENTS.labels(outcome="refused", **labels).inc()
            CONNECTOR_STANDING_DOWN.labels(reason="refused", **labels).set(1)
            log.error(
                "bot %s: the platform refused the subscription (%s): %s; trying again in %.0fs",
                bot.id,
                exc.detail,
                exc.fix,
                pause,
            )
            status.detail, status.fix = exc.detail, exc.fix
        else:
            CONNECTOR_EVENTS.labels(outcome="reconnect", **labels).inc()
            log.warning(
                "bot %s: socket ended (%s) after %.1fs up; reconnecting in %.1fs",
                bot.id,
                type(exc).__name__ if exc else "closed",
                run.up_for(),
                pause,
            )
            status.detail = f"reconnecting: {type(exc).__name__ if exc else 'closed'}"
        status.socket = outcome if outcome != "ended" else "down"
        status.until = time.monotonic() + pause
        if not await tenure.keep(pause):
            return


async def watch_owners(watched: list[tuple[BotStatus, Lease, dict[str, str]]], interval: float) -> None:
    """Read every single-owner bot's lease now and then: the cluster-wide view behind ``/readyz`` and
    ``imrelay_connector_bot_owned``."""
    while True:
        for st, lease, labels in watched:
            try:
                st.view, detail = await lease.peek(), ""
            except Exception as exc:
                st.view, detail = "unknown", type(exc).__name__ or "error"
            if not st.owner:
                st.detail = detail
            owned = st.owner or st.view in ("mine", "taken")
            CONNECTOR_BOT_OWNED.labels(**labels).set(1 if owned else 0)
        await asyncio.sleep(interval)


def long_connection_bots(settings: Settings) -> list[tuple[BotBase, PlatformSpec[Any]]]:
    """The bots with ``mode: long_connection`` and their platforms; an error for a platform without one."""
    out = []
    for bot in settings.bots:
        if bot.mode != "long_connection":
            continue
        spec = spec_for(bot)
        if spec.connection is None:
            raise ValueError(
                f"bot {bot.id}: platform {bot.platform} has no long connection (mode: long_connection)"
            )
        out.append((bot, spec))
    if not out:
        raise ValueError("no bot with mode: long_connection in the config: nothing to connect")
    return out


def zero_series(sup: Supervised) -> None:
    """Every replica reports 0 until it holds a connection ("no owner" is a sum of 0); counters exist
    from 0."""
    CONNECTOR_LEASE.labels(**sup.labels).set(0)
    CONNECTOR_BOT_OWNED.labels(**sup.labels).set(0)
    CONNECTOR_CONNECTED.labels(**sup.labels).set(0)
    for reason in STAND_DOWN_REASONS:
        CONNECTOR_STANDING_DOWN.labels(reason=reason, **sup.labels).set(0)
    for outcome in (*OUTCOMES, *sup.spec.connection_events):
        CONNECTOR_EVENTS.labels(outcome=outcome, **sup.labels)
    for outcome in MESSAGE_OUTCOMES:
        CONNECTOR_MESSAGES.labels(outcome=outcome, **sup.labels)


async def run() -> None:
    settings = load_settings()
    protect_settings(settings)
    bots = long_connection_bots(settings)
    owner = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    ttl = settings.connector.lease_ttl_seconds
    single_owner = any(s.capabilities.long_connection is not Ownership.ACTIVE_ACTIVE for _, s in bots)
    statuses = [BotStatus(bot.id) for bot, _ in bots]
    tasks: list[asyncio.Task[None]] = []

    async def connect() -> Connected:
        publisher = JetStreamPublisher(settings.nats)
        await publisher.start()
        try:
            nc, js = await connect_until_ready(settings.nats, "imrelay-connector")
            kv = await ensure_leases_bucket(js, settings.nats) if single_owner else None
        except BaseException:
            await publisher.close()
            raise
        sups = []
        for (bot, spec), status in zip(bots, statuses, strict=True):
            single = spec.capabilities.long_connection is not Ownership.ACTIVE_ACTIVE
            lease = Lease(kv, subjects.kv_key(bot.platform, bot.id), owner, ttl) if single and kv else None
            sups.append(Supervised(bot, spec, settings.connector, publisher.publish, nc, status, lease))
        for sup in sups:
            zero_series(sup)

        def holder(sup: Supervised) -> Callable[[], Awaitable[None]]:
            return lambda: hold(sup)

        async def start() -> None:
            await publisher.connected()  # never take a connection whose messages could not be stored
            watched = [(s.status, s.lease, s.labels) for s in sups if s.lease is not None]
            if watched:
                tasks.append(asyncio.create_task(watch_owners(watched, min(1.0, ttl / 5))))
            tasks.extend(
                asyncio.create_task(supervise(s.bot.id, holder(s), platform=s.bot.platform)) for s in sups
            )
            log.info("connector for %d bot(s), owner %s", len(sups), owner)

        async def stop() -> None:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for s in sups:  # hand the connections over at once instead of after the lease expires
                if s.lease is not None:
                    await s.lease.release()
            await publisher.close()

        return Connected(nc, js, start, stop)

    await run_until_stopped(settings.admin, connect, reasons=lambda: readiness(statuses, time.monotonic()))


def main() -> None:
    service_main("connector", run)


if __name__ == "__main__":
    main()
