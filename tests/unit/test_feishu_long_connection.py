"""The Feishu long connection against the simulator's gateway, in one process (real sockets, a fake sink):
an event is acknowledged only after it is stored, one that could not be stored is not (and comes again),
a stale event is acknowledged and not stored, multi-part payloads are put together, pongs' ClientConfig is
applied, and the handshake's refusals are configuration errors saying what to fix."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr

from imrelay.config import parse_settings
from imrelay.connections import CredentialsRefused
from imrelay.events import InboundMessage
from imrelay.platforms.feishu.config import FeishuBot
from imrelay.platforms.feishu.connection import FeishuConnection, Redial
from imrelay.platforms.feishu.handle import FeishuHandle
from imrelay.sections import ConnectorConfig
from imrelay_sim.server import create_app

from ..helpers import free_port

APP_ID, SECRET = "cli_unit0001", "unit-secret"


@dataclass
class Recorder:
    """The connector's side: health reports and the sink."""

    stored: list[InboundMessage] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    failures: int = 0  # the next this many stores fail (JetStream unavailable)
    is_up: asyncio.Event = field(default_factory=asyncio.Event)

    async def up(self) -> None:
        self.is_up.set()

    def event(self, outcome: str) -> None:
        self.outcomes.append(outcome)

    async def sink(self, message: InboundMessage) -> bool:
        await self.gate.wait()
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("JetStream unavailable")
        duplicate = any(m.platform_message_id == message.platform_message_id for m in self.stored)
        self.stored.append(message)
        return duplicate


@dataclass
class Sim:
    url: str
    bot: FeishuBot
    client: httpx.AsyncClient

    async def post(self, path: str, **body: Any) -> Any:
        resp = await self.client.post(f"{self.url}{path}", json=body)
        assert resp.status_code == 200, resp.text
        return resp.json()

    async def delivery(self, event_id: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = [
            d
            for d in (await self.client.get(f"{self.url}/sim/feishu/deliveries")).json()
            if d["event_id"] == event_id
        ]
        return found[0]


async def until(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool], what: str, within: float = 10
) -> None:
    try:
        async with asyncio.timeout(within):
            while True:
                result = check()
                if asyncio.iscoroutine(result):
                    result = await result
                if result:
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = parse_settings(
        {
            "bots": [
                {
                    "id": "fs",
                    "platform": "feishu",
                    "mode": "long_connection",
                    "api_base": url,
                    "credentials": {"app_id": APP_ID, "app_secret": SECRET},
                }
            ]
        },
        {},
    )
    [bot] = settings.bots
    assert isinstance(bot, FeishuBot)
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    await until(lambda: server.started, "the simulator to start")
    async with httpx.AsyncClient(timeout=5) as client:
        yield Sim(url, bot, client)
    server.should_exit = True
    await task


@contextlib.asynccontextmanager
async def connected(sim: Sim, rec: Recorder, bot: FeishuBot | None = None) -> AsyncIterator[FeishuConnection]:
    conn = FeishuConnection(bot or sim.bot, ConnectorConfig(), sim.url, Redial())
    task = asyncio.create_task(conn.run(rec.sink, rec))
    await until(lambda: rec.is_up.is_set() or task.done(), "the connection to come up")
    if task.done():
        task.result()
    try:
        yield conn
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def test_an_event_is_acknowledged_only_once_stored(sim: Sim) -> None:
    rec = Recorder()
    async with connected(sim, rec):
        pushed = await sim.post("/sim/feishu/push", app_id=APP_ID, text="hello", user="ou_alice")
        await asyncio.sleep(0.3)  # the event is there, the store has not answered: no ack
        assert (await sim.delivery(pushed["event_id"]))["acked_by"] == ""
        rec.gate.set()

        async def acked() -> bool:
            return bool((await sim.delivery(pushed["event_id"]))["acked_by"])

        await until(acked, "the ack")
    [msg] = rec.stored
    assert msg.text == "hello" and msg.platform_message_id == f"feishu:message:{pushed['message_id']}"
    assert isinstance(msg.reply_handle, FeishuHandle) and msg.reply_handle.message_id == pushed["message_id"]


async def test_an_event_not_stored_gets_no_ack_and_comes_again(sim: Sim) -> None:
    await sim.post("/sim/feishu/control", ack_deadline=0.5, max_repushes=3)
    rec = Recorder(failures=1)
    rec.gate.set()
    async with connected(sim, rec):
        pushed = await sim.post("/sim/feishu/push", app_id=APP_ID, text="again", user="ou_bob")

        async def acked() -> bool:
            return bool((await sim.delivery(pushed["event_id"]))["acked_by"])

        await until(acked, "the ack of the re-pushed event")
    d = await sim.delivery(pushed["event_id"])
    assert d["repushes"] >= 1 and "not_stored" in rec.outcomes
    assert [m.text for m in rec.stored] == ["again"]


async def test_a_stale_event_is_acknowledged_counted_and_not_stored(sim: Sim) -> None:
    rec = Recorder()
    rec.gate.set()
    async with connected(sim, rec):
        pushed = await sim.post("/sim/feishu/push", app_id=APP_ID, text="old", user="ou_carol", age=3600)

        async def acked() -> bool:
            return bool((await sim.delivery(pushed["event_id"]))["acked_by"])

        await until(acked, "the ack")
    assert rec.stored == [] and rec.outcomes == ["stale"]


async def test_a_repush_with_the_same_message_id_is_a_duplicate(sim: Sim) -> None:
    rec = Recorder()
    rec.gate.set()
    async with connected(sim, rec):
        pushed = await sim.post("/sim/feishu/push", app_id=APP_ID, text="once", user="ou_dan", parts=3)
        again = await sim.post("/sim/feishu/repush", message_id=pushed["message_id"])
        assert again["event_id"] != pushed["event_id"]
        await until(lambda: len(rec.stored) == 2, "both pushes stored")
    assert {m.platform_message_id for m in rec.stored} == {f"feishu:message:{pushed['message_id']}"}
    assert rec.stored[0].text == "once" and rec.outcomes == ["duplicate"]


async def test_the_servers_client_config_is_applied_from_discovery_and_pongs(sim: Sim) -> None:
    await sim.post("/sim/feishu/control", config={"PingInterval": 0.2, "ReconnectInterval": 7})
    rec = Recorder()
    async with connected(sim, rec) as conn:
        assert conn.redial.config is not None and conn.redial.config.reconnect_interval == 7
        await sim.post("/sim/feishu/control", config={"ReconnectNonce": 3})

        def applied() -> bool:
            return conn.redial.config is not None and conn.redial.config.reconnect_nonce == 3

        await until(applied, "the pong's config")
        pings = (await sim.client.get(f"{sim.url}/sim/stats")).json()["feishu_ws_pings"]
        assert pings >= 2


async def test_refusals_are_configuration_errors_saying_what_to_fix(sim: Sim) -> None:
    await sim.post("/sim/feishu/control", max_connections=0)
    with pytest.raises(CredentialsRefused) as too_many:
        async with connected(sim, Recorder()):
            pass
    assert "1000040350" in too_many.value.detail and "replicas" in too_many.value.fix
    wrong = sim.bot.model_copy(
        update={"credentials": sim.bot.credentials.model_copy(update={"app_secret": SecretStr("nope")})}
    )
    with pytest.raises(CredentialsRefused) as refused:
        async with connected(sim, Recorder(), wrong):
            pass
    assert "10014" in refused.value.detail and "app_secret" in refused.value.fix
