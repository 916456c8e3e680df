"""The connector's supervisor applies each platform's ownership policy, on a real NATS server with a fake
platform connection (two connector replicas in one process, each with its own NATS client): with
``ACTIVE_ACTIVE`` both replicas hold a connection of the same bot and no lease is written; with
``SINGLE_OWNER`` only the lease holder connects, and the other takes over when it stops. A kick keeps the
lease and records the hold-off in it, refused credentials are reported with the platform's fix, and the
sender's requests (typed, or the bare payload of earlier senders) reach the live connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from imrelay import subjects
from imrelay.bots import BotBase
from imrelay.config import ConnectorConfig, NatsConfig
from imrelay.connections import ConnectionContext, CredentialsRefused, Health, Kicked, Sink
from imrelay.events import Chat, ChatType, ConnectionAnswer, ConnectionRequest, InboundMessage, Sender
from imrelay.jetstream import ensure_leases_bucket
from imrelay.natsserver import EmbeddedNats
from imrelay.platforms.handle import ReplyHandleBase
from imrelay.platforms.spec import Capabilities, Ownership, PlatformSpec
from imrelay.sections import ConfigModel
from imrelay_ingress.connector import BotStatus, Supervised, hold, readiness
from imrelay_ingress.lease import Lease

pytestmark = pytest.mark.nats

CFG = ConnectorConfig(
    lease_ttl_seconds=3, healthy_seconds=0, kick_holdoff_seconds=3600, refused_retry_seconds=3600
)


class FakeBot(BotBase):
    platform: Literal["fakelink"]
    credentials: ConfigModel = ConfigModel()


@dataclass
class FakePlatform:
    """The platform's side: which replicas hold a connection now, the most ever at once, and how the next
    connection ends (``serve``, ``kick`` or ``refuse``)."""

    behaviour: str = "serve"
    live: set[str] = field(default_factory=set)
    peak: int = 0
    stop: dict[str, asyncio.Event] = field(default_factory=dict)


@dataclass
class FakeLink:
    platform: FakePlatform
    replica: str

    async def run(self, sink: Sink, health: Health) -> None:
        if self.platform.behaviour == "refuse":
            raise CredentialsRefused("code 40001 bad secret", "check credentials.fake_secret")
        self.platform.live.add(self.replica)
        self.platform.peak = max(self.platform.peak, len(self.platform.live))
        try:
            await health.up()
            await sink(
                InboundMessage(
                    id=f"m-{self.replica}",
                    platform="fakelink",
                    bot_id="b1",
                    platform_message_id=self.replica,
                    chat=Chat(id="c", type=ChatType.GROUP),
                    sender=Sender(id="u"),
                    text="hello",
                )
            )
            if self.platform.behaviour == "kick":
                raise Kicked("another_client")
            stop = self.platform.stop.setdefault(self.replica, asyncio.Event())
            await stop.wait()
            raise ConnectionError("closed by the platform")
        finally:
            self.platform.live.discard(self.replica)

    async def send(self, payload: dict[str, Any]) -> ConnectionAnswer:
        return ConnectionAnswer(ok=True, code=f"{self.replica}:{payload['n']}")


class FakeHandle(ReplyHandleBase):
    kind: Literal["fakelink"] = "fakelink"


def fake_spec(ownership: Ownership, platform: FakePlatform, replica: str) -> PlatformSpec[FakeBot]:
    def unused(*_: Any) -> Any:
        raise AssertionError("not used by the connector")

    def connection(bot: FakeBot, ctx: ConnectionContext) -> FakeLink:
        assert ctx.cfg is CFG
        return FakeLink(platform, replica)

    return PlatformSpec[FakeBot](
        tags=("fakelink",),
        title="Fake link",
        bot_model=FakeBot,
        api_base={"fakelink": "http://unused"},
        capabilities=Capabilities(callbacks=False, long_connection=ownership),
        adapter=unused,
        delivery=unused,
        connection=connection,
        reply_handle=FakeHandle,
    )


@dataclass
class Replica:
    name: str
    nc: NATS
    sup: Supervised
    stored: list[InboundMessage]
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(hold(self.sup))

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        if self.sup.lease is not None:
            await self.sup.lease.release()


@contextlib.asynccontextmanager
async def replicas(
    server: EmbeddedNats, ownership: Ownership, platform: FakePlatform, bot_id: str
) -> AsyncIterator[tuple[list[Replica], KeyValue]]:
    bot = FakeBot(id=bot_id, platform="fakelink", mode="long_connection")
    control = await nats.connect(server.url)
    kv = await ensure_leases_bucket(control.jetstream(), NatsConfig(url=server.url))
    out: list[Replica] = []
    try:
        for name in ("r1", "r2"):
            nc = await nats.connect(server.url)
            stored: list[InboundMessage] = []

            async def sink(msg: InboundMessage, stored: list[InboundMessage] = stored) -> bool:
                stored.append(msg)
                return False

            spec = fake_spec(ownership, platform, name)
            lease = (
                Lease(kv, subjects.kv_key("fakelink", bot_id), name, CFG.lease_ttl_seconds)
                if ownership is Ownership.SINGLE_OWNER
                else None
            )
            sup = Supervised(bot, spec, CFG, sink, nc, BotStatus(bot_id), lease)
            out.append(Replica(name, nc, sup, stored))
        yield out, kv
    finally:
        for r in out:
            if r.task is not None and not r.task.done():
                await r.stop()
            await r.nc.close()
        await control.close()


async def until(cond: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(20):
            while not cond():  # noqa: ASYNC110 - polling the fakes' state
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


async def ask(server: EmbeddedNats, bot_id: str, body: bytes) -> dict[str, Any]:
    nc = await nats.connect(server.url)
    try:
        msg = await nc.request(subjects.connector_subject("fakelink", bot_id), body, timeout=5)
        answer: dict[str, Any] = json.loads(msg.data)
        return answer
    finally:
        await nc.close()


async def test_active_active_every_replica_holds_its_own_connection_without_a_lease(
    nats_server: EmbeddedNats,
) -> None:
    platform = FakePlatform()
    async with replicas(nats_server, Ownership.ACTIVE_ACTIVE, platform, "aa1") as (reps, kv):
        for r in reps:
            r.start()
        await until(lambda: platform.live == {"r1", "r2"}, "both replicas connected")
        await until(lambda: all(r.sup.status.socket == "up" for r in reps), "both report up")
        assert all(r.sup.status.owner and r.sup.lease is None for r in reps)
        assert all(len(r.stored) == 1 for r in reps)  # each connection's messages reach the sink
        assert readiness([r.sup.status for r in reps], 0.0) == []
        with pytest.raises(KeyNotFoundError):
            await kv.get(subjects.kv_key("fakelink", "aa1"))  # no lease
        answers = [
            await ask(
                nats_server,
                "aa1",
                ConnectionRequest(platform="fakelink", bot_id="aa1", payload={"n": n})
                .model_dump_json()
                .encode(),
            )
            for n in range(6)
        ]
        assert all(a["ok"] for a in answers)
        assert {a["code"].split(":")[1] for a in answers} == {str(n) for n in range(6)}
        # a connection that ends is dialled again on the same replica
        platform.stop["r1"].set()
        platform.stop["r1"] = asyncio.Event()
        await until(lambda: len(reps[0].stored) == 2, "r1 reconnected")
        await until(lambda: platform.live == {"r1", "r2"}, "both replicas connected again")


async def test_single_owner_only_the_lease_holder_connects_and_the_other_takes_over(
    nats_server: EmbeddedNats,
) -> None:
    platform = FakePlatform()
    async with replicas(nats_server, Ownership.SINGLE_OWNER, platform, "so1") as (reps, kv):
        for r in reps:
            r.start()
        await until(lambda: len(platform.live) == 1, "one replica connected")
        holder = next(r for r in reps if r.name in platform.live)
        other = next(r for r in reps if r is not holder)
        await until(lambda: holder.sup.status.socket == "up", "the holder reports up")
        assert holder.sup.status.owner and not other.sup.status.owner
        entry = await kv.get(subjects.kv_key("fakelink", "so1"))
        assert entry.value is not None and json.loads(entry.value)["owner"] == holder.name
        assert other.sup.lease is not None and await other.sup.lease.peek() == "taken"
        assert other.stored == []
        # the sender's request reaches the holder, typed or as a bare payload of earlier senders
        typed = await ask(
            nats_server,
            "so1",
            ConnectionRequest(platform="fakelink", bot_id="so1", payload={"n": 1}).model_dump_json().encode(),
        )
        assert typed == {"ok": True, "code": f"{holder.name}:1"}
        assert await ask(nats_server, "so1", b'{"n": 2}') == {"ok": True, "code": f"{holder.name}:2"}
        wrong = await ask(
            nats_server,
            "so1",
            ConnectionRequest(platform="fakelink", bot_id="elsewhere", payload={"n": 3})
            .model_dump_json()
            .encode(),
        )
        assert wrong == {"ok": False, "code": "wrong_bot"}

        await holder.stop()  # the holder stops: the lease is handed over at once
        await until(lambda: platform.live == {other.name}, "the other replica took over")
        await until(lambda: other.sup.status.socket == "up", "the new holder reports up")
        assert platform.peak == 1  # never two connections of the bot at once
        assert len(other.stored) == 1


async def test_single_owner_a_kick_keeps_the_lease_and_stands_down(nats_server: EmbeddedNats) -> None:
    platform = FakePlatform(behaviour="kick")
    async with replicas(nats_server, Ownership.SINGLE_OWNER, platform, "so2") as (reps, kv):
        for r in reps:
            r.start()
        await until(lambda: any(r.sup.status.socket == "kicked" for r in reps), "a kick")
        holder = next(r for r in reps if r.sup.status.socket == "kicked")
        other = next(r for r in reps if r is not holder)
        entry = await kv.get(subjects.kv_key("fakelink", "so2"))
        assert entry.value is not None
        record = json.loads(entry.value)
        assert record["owner"] == holder.name and record["down_until"] > record["expires"]
        assert other.sup.lease is not None and not await other.sup.lease.acquire()  # nobody fights back
        assert platform.live == set() and len(holder.stored) == 1 and other.stored == []
        [reason] = readiness([r.sup.status for r in reps if r.sup.status.owner], 0.0)
        assert reason.startswith("bot so2: taken by another instance (another_client); standing down for ")


async def test_refused_credentials_are_reported_with_the_platforms_fix(nats_server: EmbeddedNats) -> None:
    platform = FakePlatform(behaviour="refuse")
    async with replicas(nats_server, Ownership.ACTIVE_ACTIVE, platform, "aa2") as (reps, _):
        reps[0].start()
        await until(lambda: reps[0].sup.status.socket == "refused", "the refusal")
        [reason] = readiness([reps[0].sup.status], 0.0)
        assert reason.startswith(
            "bot aa2: subscription refused (code 40001 bad secret); "
            "check credentials.fake_secret; next try in "
        )
        assert platform.peak == 0
