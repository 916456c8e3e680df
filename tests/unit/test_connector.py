"""The connector's pure parts and the lease against a fake bucket: the backoff starts anew after a healthy
socket, a kick and a refused secret wait long, /readyz names every bot without a working socket, a
broker error never ends a lease task (a renewal rides out an election while its last write is valid),
a stand-down after a kick passes to the next owner, and a connection's frames and messages show in the
metrics."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import httpx
import pytest
from nats.errors import NoRespondersError
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from prometheus_client import REGISTRY

from imrelay.admin import admin_app
from imrelay.bots import BotBase
from imrelay.config import ConnectorConfig
from imrelay.connections import Health, Sink
from imrelay.events import Chat, ChatType, ConnectionAnswer, InboundMessage, Sender
from imrelay.platforms.spec import PlatformSpec
from imrelay.sections import ConfigModel
from imrelay_ingress.connector import Attempt, BotStatus, Supervised, next_pause, readiness, supervise
from imrelay_ingress.lease import Lease

CFG = ConnectorConfig(
    reconnect_max_seconds=30, healthy_seconds=5, kick_holdoff_seconds=600, refused_retry_seconds=300
)


def test_backoff_doubles_to_the_cap_and_starts_anew_after_a_healthy_socket() -> None:
    attempt, pauses = 0, []
    for _ in range(7):  # sockets that never got healthy
        pause, attempt = next_pause("ended", 0.5, attempt, CFG, rand=lambda: 1.0)
        pauses.append(pause)
    assert pauses == [1, 2, 4, 8, 16, 30, 30]
    pause, attempt = next_pause("ended", 8.0, attempt, CFG, rand=lambda: 1.0)  # up 8 s: healthy
    assert (pause, attempt) == (1.0, 1)
    assert next_pause("ended", 8.0, 5, CFG, rand=lambda: 0.0)[0] == 0.5  # jitter only shortens


def test_a_kick_and_a_refused_secret_wait_long_and_reset_the_count() -> None:
    assert next_pause("kicked", 100.0, 4, CFG) == (600, 0)
    assert next_pause("refused", 0.0, 4, CFG) == (300, 0)


def test_readiness_names_every_bot_without_a_working_socket() -> None:
    now = 1000.0
    statuses = [
        BotStatus("up", owner=True, socket="up", view="mine"),
        BotStatus("elsewhere", view="taken"),
        BotStatus("kicked", owner=True, socket="kicked", detail="disconnected_event", until=now + 590),
        BotStatus(
            "refused",
            owner=True,
            socket="refused",
            detail="errcode 853000 invalid",
            until=now + 30,
            fix="check credentials.bot_id and credentials.secret",
        ),
        BotStatus("orphan", view="free"),
        BotStatus("electing", view="unknown", detail="TimeoutError"),
        BotStatus("flapping", owner=True, socket="down", detail="reconnecting: ConnectionClosedError"),
    ]
    reasons = readiness(statuses, now)
    assert reasons == [
        "bot kicked: taken by another instance (disconnected_event); standing down for 590s",
        "bot refused: subscription refused (errcode 853000 invalid); check credentials.bot_id and "
        "credentials.secret; next try in 30s",
        "bot orphan: no owner (no connector holds its lease)",
        "bot electing: owner unknown (lease bucket unreadable: TimeoutError)",
        "bot flapping: socket down (reconnecting: ConnectionClosedError)",
    ]
    assert readiness(statuses[:2], now) == []


async def test_readyz_answers_503_with_the_reasons() -> None:
    async def ok() -> bool:
        return True

    why: list[str] = []
    app = admin_app(ok, lambda: why)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin") as c:
        assert (await c.get("/readyz")).status_code == 200
        why.append("bot ws: no owner (no connector holds its lease)")
        resp = await c.get("/readyz")
    assert resp.status_code == 503
    assert resp.text == "not ready; bot ws: no owner (no connector holds its lease)"


@dataclass
class Entry:
    value: bytes
    revision: int


@dataclass
class FakeKV:
    """A one-key bucket with compare-and-set, that fails on demand like a cluster electing a leader."""

    entry: Entry | None = None
    failing: bool = False
    calls: list[str] = field(default_factory=list)

    def _check(self, op: str) -> None:
        self.calls.append(op)
        if self.failing:
            raise NoRespondersError

    async def get(self, key: str) -> Entry:
        self._check("get")
        if self.entry is None:
            raise KeyNotFoundError
        return self.entry

    async def create(self, key: str, value: bytes) -> int:
        self._check("create")
        if self.entry is not None:
            raise KeyWrongLastSequenceError
        self.entry = Entry(value, 1)
        return 1

    async def delete(self, key: str, last: int) -> None:
        self._check("delete")
        self.entry = None

    async def update(self, key: str, value: bytes, last: int) -> int:
        self._check("update")
        if self.entry is None or self.entry.revision != last:
            raise KeyWrongLastSequenceError
        self.entry = Entry(value, last + 1)
        return last + 1


def lease(kv: FakeKV, owner: str, clock: list[float]) -> Lease:
    return Lease(kv, "k", owner, ttl=10.0, clock=lambda: clock[0], monotonic=lambda: clock[0])  # type: ignore[arg-type]


async def test_a_broker_error_means_not_taken_and_never_raises() -> None:
    kv, now = FakeKV(failing=True), [100.0]
    a = lease(kv, "a", now)
    assert await a.acquire() is False and a.error == "NoRespondersError"
    kv.failing = False
    assert await a.acquire() is True and not a.failing


async def test_a_renewal_rides_out_an_election_while_its_last_write_is_valid() -> None:
    kv, now = FakeKV(), [100.0]
    a, b = lease(kv, "a", now), lease(kv, "b", now)
    assert await a.acquire()
    kv.failing = True
    now[0] += 7.9  # 79 % of the ttl: still held although the bucket does not answer
    assert await a.renew() is True and a.failing
    now[0] += 0.2  # past 80 %: given up, before anyone else could take it (at 100 %)
    assert await a.renew() is False and a.revision is None
    kv.failing = False
    assert await b.acquire() is False  # not expired yet for the others
    now[0] += 2.0
    assert await b.acquire() is True


async def test_a_renewal_whose_answer_was_lost_is_adopted() -> None:
    kv, now = FakeKV(), [100.0]
    a = lease(kv, "a", now)
    assert await a.acquire()
    assert kv.entry is not None
    kv.entry = Entry(json.dumps({"owner": "a", "expires": now[0] + 10}).encode(), kv.entry.revision + 1)
    assert await a.renew() is True and a.revision == kv.entry.revision  # our own write, answer lost
    kv.entry = Entry(json.dumps({"owner": "b", "expires": now[0] + 10}).encode(), kv.entry.revision + 1)
    assert await a.renew() is False  # someone else's: lost


async def test_a_task_that_fails_is_logged_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[Any] = []
    third = asyncio.Event()

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError("boom")
        third.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(supervise("ws", flaky, pause=0.01))
    await asyncio.wait_for(third.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(runs) == 3
    assert sum("connector task failed; restarting" in r.getMessage() for r in caplog.records) == 2


async def test_a_stand_down_passes_to_the_next_owner() -> None:
    kv, now = FakeKV(), [100.0]
    a, b = lease(kv, "a", now), lease(kv, "b", now)
    assert await a.acquire() and a.inherited == 0
    a.down_until = now[0] + 600  # kicked: down for ten minutes
    assert await a.renew()
    await a.release()  # stopping: the record stays, to expire
    assert kv.entry is not None and "delete" not in kv.calls
    now[0] += 10.0
    assert await b.acquire() and b.inherited == 700  # b waits out the rest (590 s more)
    now[0] += 600
    assert await b.renew() and b"down_until" not in kv.entry.value
    await b.release()
    assert kv.entry is None  # no stand-down: handed over at once


class FrameBot(BotBase):
    platform: Literal["framelink"]
    credentials: ConfigModel = ConfigModel()


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"platform": "framelink", "bot": "f1", **labels})


@dataclass
class ScriptedLink:
    """Comes up, hands over a new message, the same message again and one that cannot be stored, reports a
    platform event, then ends; ``seen`` is what the metrics said while it was up."""

    seen: dict[str, float | None] = field(default_factory=dict)

    async def run(self, sink: Sink, health: Health) -> None:
        await health.up()
        self.seen["connected"] = sample("imrelay_connector_connected")
        self.seen["after_up"] = sample("imrelay_connector_last_frame_timestamp_seconds")
        msg = InboundMessage(
            id="m1",
            platform="framelink",
            bot_id="f1",
            platform_message_id="p1",
            chat=Chat(id="c", type=ChatType.GROUP),
            sender=Sender(id="u"),
            text="hello",
        )
        assert await sink(msg) is False
        assert await sink(msg) is True
        with pytest.raises(ConnectionError):
            await sink(msg.model_copy(update={"id": "m2"}))
        health.event("framelink_ping")
        raise ConnectionError("socket closed")

    async def send(self, payload: dict[str, Any]) -> ConnectionAnswer:
        return ConnectionAnswer(ok=False, code="unused")


async def test_a_connections_frames_and_messages_show_in_the_metrics() -> None:
    stored: set[str] = set()

    async def sink(msg: InboundMessage) -> bool:
        if msg.id == "m2":
            raise ConnectionError("JetStream unavailable")
        there = msg.id in stored
        stored.add(msg.id)
        return there

    bot = FrameBot(id="f1", platform="framelink", mode="long_connection")
    # the attempt never asks the platform's spec: it only runs the connection it is given
    sup = Supervised(bot, cast(PlatformSpec[Any], None), CFG, sink, None, BotStatus("f1"))
    for outcome in ("stored", "duplicate", "failed"):
        assert sample("imrelay_connector_messages_total", outcome=outcome) in (None, 0.0)
    before = time.time()
    link = ScriptedLink()
    with pytest.raises(ConnectionError, match="socket closed"):
        await Attempt(sup, link).run()
    assert link.seen["connected"] == 1.0
    assert (link.seen["after_up"] or 0.0) >= before
    assert sample("imrelay_connector_connected") == 0.0  # the connection ended
    assert [
        sample("imrelay_connector_messages_total", outcome=o) for o in ("stored", "duplicate", "failed")
    ] == [
        1.0,
        1.0,
        1.0,
    ]
    assert sample("imrelay_connector_events_total", outcome="framelink_ping") == 1.0
    assert (sample("imrelay_connector_last_frame_timestamp_seconds") or 0.0) >= (link.seen["after_up"] or 0.0)
