"""The AI bot's long connection on a three-node JetStream cluster (three real nats-servers, every stream and
bucket with three replicas, as the chart deploys them) when the node leading the ``imrelay_leases``
bucket is killed: the lease survives the leader election (or is taken again at once after it), the
bot's socket is back within 15 s, messages pushed afterwards are answered once, and ``/readyz`` says so
whenever the bot has no working socket."""

from __future__ import annotations

import asyncio
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from imrelay import subjects
from imrelay.natsserver import EmbeddedNats, nats_server_binary

from ..helpers import free_port
from .stack import KEY, Stack

pytestmark = [pytest.mark.nats, pytest.mark.timeout(300)]

BOT_ID, SECRET = "aibCluster01", "cluster-secret"
CONNECTORS = ("connector1", "connector2")


@dataclass
class Node:
    name: str
    port: int
    cluster_port: int
    root: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, routes: list[str]) -> None:
        with open(self.root / "nats.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    nats_server_binary(),
                    "-js",
                    "-a",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-n",
                    self.name,
                    "--cluster_name",
                    "imrelay-test",
                    "--cluster",
                    f"nats://127.0.0.1:{self.cluster_port}",
                    "--routes",
                    ",".join(routes),
                    "-sd",
                    str(self.root / "data"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _jetstream_ready(url: str) -> bool:
    import nats

    try:
        nc = await nats.connect(url, connect_timeout=1, max_reconnect_attempts=0)
    except Exception:
        return False
    try:
        await nc.jetstream(timeout=1).account_info()
        return True
    except Exception:
        return False
    finally:
        await nc.close()


async def _leases_leader(url: str) -> str:
    import nats

    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(f"KV_{subjects.KV_LEASES}")
        assert info.cluster is not None and info.config.num_replicas == 3
        return str(info.cluster.leader)
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Node]]:
    nodes = []
    for i in range(3):
        root = tmp_path_factory.mktemp(f"cluster-n{i}")
        nodes.append(Node(f"n{i}", free_port(), free_port(), root))
    try:
        for node in nodes:
            node.start([f"nats://127.0.0.1:{n.cluster_port}" for n in nodes if n is not node])
        deadline = time.monotonic() + 30
        while not all(asyncio.run(_jetstream_ready(n.url)) for n in nodes):
            assert time.monotonic() < deadline, "the NATS cluster did not form"
            time.sleep(0.3)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture(scope="module")
def cluster_stack(cluster: list[Node], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("cluster-stack")
    first = EmbeddedNats(store_dir=cluster[0].root, port=cluster[0].port)
    first.port = cluster[0].port  # the stack's own handle on the first node; all three are in the URL
    s = Stack.create(root, first, extra_env={"IMRELAY_NATS_URL": ",".join(n.url for n in cluster)})
    s.config["nats"] = {"replicas": 3}
    s.config["backends"] = {
        "default": {"kind": "openai", "base_url": f"{s.sim_url}/v1", "api_key": "k", "model": "m"}
    }
    s.config["bots"] = [
        {
            "id": "ws",
            "platform": "wecom_aibot",
            "mode": "long_connection",
            "ws_url": s.sim_url.replace("http://", "ws://") + "/ws/aibot",
            "credentials": {"token": "t", "encoding_aes_key": KEY, "bot_id": BOT_ID, "secret": SECRET},
        }
    ]
    s.config["connector"] = {"heartbeat_seconds": 2, "ack_timeout_seconds": 3, "healthy_seconds": 1}
    s.config["sender"]["max_attempts"] = 10
    for name in CONNECTORS:
        s.add_service(name, ["imrelay_ingress.connector"])
    with s.running("sim", "worker", "sender", *CONNECTORS):
        yield s


def sockets(stack: Stack) -> int:
    return int(httpx.get(f"{stack.sim_url}/sim/aibot/connections", timeout=5).json().get(BOT_ID, 0))


def readyz(stack: Stack, name: str) -> tuple[int, str]:
    try:
        resp = httpx.get(f"{stack.admin_url(name)}/readyz", timeout=3)
        return resp.status_code, resp.text
    except httpx.HTTPError as exc:
        return 0, repr(exc)


def answers(stack: Stack, final: str) -> list[dict[str, Any]]:
    return [m for m in stack.messages(bot="ws") if m["content"] == final and m["finish"]]


def test_killing_the_lease_buckets_leader_costs_the_socket_at_most_seconds(
    cluster: list[Node], cluster_stack: Stack
) -> None:
    stack = cluster_stack
    stack.wait_for(lambda: sockets(stack) == 1, what="the bot's socket")
    text = f"before the kill {secrets.token_hex(2)}"
    httpx.post(f"{stack.sim_url}/sim/aibot/push", json={"bot_id": BOT_ID, "text": text}).raise_for_status()
    stack.wait_for(lambda: answers(stack, f"You said: {text}"), what="an answer before the kill")

    leader = asyncio.run(_leases_leader(cluster[0].url))
    [victim] = [n for n in cluster if n.name == leader]
    assert victim.proc is not None
    killed_at = time.time()
    victim.proc.kill()
    victim.proc.wait()

    # watch both connectors' /readyz (each probe stamped when answered) until the socket is back for good
    probes: list[tuple[float, str, int, str]] = []
    stop = threading.Event()

    def probe(name: str) -> None:
        while not stop.is_set():
            code, body = readyz(stack, name)
            probes.append((time.time(), name, code, body))
            time.sleep(0.1)

    threads = [threading.Thread(target=probe, args=(n,), daemon=True) for n in CONNECTORS]
    for th in threads:
        th.start()
    try:
        time.sleep(20)
        stack.wait_for(lambda: sockets(stack) == 1, what="the bot's socket")
    finally:
        stop.set()
        for th in threads:
            th.join(10)
    events = [
        e
        for e in httpx.get(f"{stack.sim_url}/sim/aibot/events").json()
        if e["bot_id"] == BOT_ID and e["at"] > killed_at
    ]
    ends = [e["at"] for e in events if e["event"] in ("closed_by_client", "dropped")]
    backs = [e["at"] for e in events if e["event"] == "subscribed"]
    gap = (min(ends), max(backs)) if ends else None
    print(
        f"\nleases leader {leader} killed; "
        + (
            f"socket gone {gap[0] - killed_at:.1f}s after the kill, back {gap[1] - gap[0]:.1f}s later"
            if gap
            else "the socket stayed up"
        )
    )
    if gap is not None:
        assert backs and max(backs) - killed_at < 15.0, "the socket is not back within 15 s of the kill"
        # while the bot had no owner, /readyz said so (with the bot's name)
        said = [p for p in probes if gap[0] <= p[0] <= gap[1] + 0.5 and p[2] == 503 and "bot ws" in p[3]]
        assert said or gap[1] - gap[0] < 0.5, [p for p in probes if gap[0] <= p[0] <= gap[1] + 0.5]
        print("readyz during the gap: " + " | ".join(sorted({p[3] for p in said})))
    assert sockets(stack) == 1
    for name in CONNECTORS:
        assert stack.metric(name, "imrelay_connector_events_total", {"outcome": "crashed"}) == 0
    assert sum(stack.metric(n, "imrelay_connector_lease_held", {"bot": "ws"}) for n in CONNECTORS) == 1
    assert all(code == 200 for _, _, code, _ in probes[-4:])  # ready again

    texts = [f"after the kill {i} {secrets.token_hex(2)}" for i in range(5)]
    for t in texts:
        httpx.post(f"{stack.sim_url}/sim/aibot/push", json={"bot_id": BOT_ID, "text": t}).raise_for_status()
    for t in texts:
        stack.wait_for(lambda t=t: answers(stack, f"You said: {t}"), timeout=60, what=f"the answer to {t}")
    time.sleep(2.0)
    assert [len(answers(stack, f"You said: {t}")) for t in texts] == [1] * len(texts)
