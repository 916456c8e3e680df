"""Streaming latency: the time imrelay adds between the backend's first token and the sender's first
platform call (worker → JetStream → sender → Discord edit), p50/p99 over 200 conversations, beside a
baseline measured in the same run: a minimal relay doing the same two JetStream hops and one HTTP call
with nothing else (no worker, no FastStream, no claims or limits). The first conversations after the
services start (opening their connections, loading code) are a warm-up, not measured; the minimal relay
is measured warm too. Both times are read on the simulator's
clock (when it sent the first token, when it received the first edit), so no clocks are compared.
The minimal relay is also measured one round per model piece (50 ms apart): then every process on its
path is asleep when a piece arrives, as imrelay's are, and each hop pays the machine's wake-up time.

Prints figures; never passes or fails on time.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import nats
import yaml
from _common import figure, free_port, record, stop_all, wait_http
from nats.js.api import StreamConfig

from imrelay.config import parse_settings
from imrelay.natsserver import EmbeddedNats
from imrelay.platforms.discord.sim import public_key_for
from imrelay_sim.client import build_request

CONVERSATIONS = int(os.environ.get("BENCH_CONVERSATIONS", "200"))
CONCURRENCY = 8
WARM_UP = 2 * CONCURRENCY
SEED = "11" * 32
TOKEN_DELAY = 0.05  # seconds between the model's pieces


def token_for(msg_id: str) -> str:  # as imrelay-sim builds interaction tokens
    return "aW50ZXJhY3Rpb24" + hashlib.sha256(msg_id.encode()).hexdigest()[:40]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def drive(config: dict[str, Any], ingress: str, sim: str, run: str, count: int = CONVERSATIONS) -> None:
    bot = parse_settings(config, {}).bot("dc")
    assert bot is not None
    sem = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(timeout=30) as client:

        async def one(i: int) -> None:
            async with sem:
                msg_id = f"{run}-{i}"
                _, headers, body = build_request(
                    bot, f"probe {run} {i}", f"user{i}", msg_id, time.time(), sim
                )
                r = await client.post(f"{ingress}/callback/dc", content=body, headers=headers)
                assert r.status_code == 200, r.text
                token = token_for(msg_id)
                while True:  # one conversation at a time per slot: wait for its final answer
                    msgs = (await client.get(f"{sim}/sim/messages", params={"token": token})).json()
                    if msgs and not msgs[0]["content"].endswith("▌"):
                        return
                    await asyncio.sleep(0.25)  # seldom: the simulator also times what is measured

        await asyncio.gather(*(one(i) for i in range(count)))


async def baseline(url: str, sim: str, pause: float = 0.0) -> list[float]:
    """Two JetStream hops and one HTTP edit, hand-written: the floor for any broker-based relay. With
    ``pause``, each round starts that long after the last, as a model's pieces come: every process on
    the path is idle (asleep) when the piece arrives, as in a real stream, instead of busy."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    name = f"BENCH{int(pause * 1000)}"
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name.lower()}.>"]))
    hop1 = await js.pull_subscribe(f"{name.lower()}.one", durable="hop1", stream=name)
    hop2 = await js.pull_subscribe(f"{name.lower()}.two", durable="hop2", stream=name)
    out: list[float] = []
    async with httpx.AsyncClient(timeout=10) as client:
        for i in range(WARM_UP + CONVERSATIONS):
            if pause:
                await asyncio.sleep(pause)
            started = time.time()
            await js.publish(f"{name.lower()}.one", b"delta")
            [m1] = await hop1.fetch(1, timeout=5)
            await js.publish(f"{name.lower()}.two", m1.data)
            await m1.ack()
            [m2] = await hop2.fetch(1, timeout=5)
            await client.patch(
                f"{sim}/api/v10/webhooks/4242/base{i}/messages/@original", json={"content": m2.data.decode()}
            )
            await m2.ack()
            if i >= WARM_UP:
                out.append(time.time() - started)
    await nc.close()
    return out


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="imrelay-latency-bench-"))
    server = EmbeddedNats(store_dir=tmp / "nats").start()
    procs: list[subprocess.Popen[bytes]] = []
    log = open(tmp / "servers.log", "wb")
    try:
        ports = {n: free_port() for n in ("sim", "ingress", "a1", "a2", "a3")}
        sim, ingress = f"http://127.0.0.1:{ports['sim']}", f"http://127.0.0.1:{ports['ingress']}"
        config: dict[str, Any] = {
            "backends": {
                "default": {"kind": "openai", "base_url": f"{sim}/v1", "api_key": "k", "model": "m"}
            },
            "memory": {"enabled": False},
            "bots": [
                {
                    "id": "dc",
                    "platform": "discord",
                    "api_base": sim,
                    "credentials": {
                        "application_id": "4242",
                        "public_key": public_key_for(SEED),
                        "bot_token": "x",
                    },
                }
            ],
        }
        (tmp / "imrelay.yaml").write_text(yaml.safe_dump(config))
        env = dict(
            os.environ,
            IMRELAY_CONFIG=str(tmp / "imrelay.yaml"),
            IMRELAY_NATS_URL=server.url,
            IMRELAY_PORT=str(ports["ingress"]),
            IMRELAY_LOG_LEVEL="WARNING",
            DISCORD_SIM_SEED=SEED,
        )
        os.environ["DISCORD_SIM_SEED"] = SEED
        for argv, admin in (
            (["imrelay_sim", "serve", "--port", str(ports["sim"])], None),
            (["imrelay_ingress"], "a1"),
            (["imrelay_worker"], "a2"),
            (["imrelay_sender"], "a3"),
        ):
            penv = dict(env, IMRELAY_ADMIN_PORT=str(ports[admin])) if admin else env
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", *argv], env=penv, stdout=log, stderr=subprocess.STDOUT
                )
            )
            wait_http(f"http://127.0.0.1:{ports[admin]}/readyz" if admin else f"{sim}/sim/stats")
        httpx.post(f"{sim}/sim/llm", json={"token_delay": TOKEN_DELAY}).raise_for_status()
        run = str(int(time.time()))
        print(
            f"{CONVERSATIONS} conversations, {CONCURRENCY} at a time, through ingress, worker, sender...",
            flush=True,
        )
        # warm-up, not measured: the services' first conversations open connections and load code
        asyncio.run(drive(config, ingress, sim, f"warm{run}", WARM_UP))
        asyncio.run(drive(config, ingress, sim, run))

        first_token = {q: t for q, t in httpx.get(f"{sim}/sim/llm/first-tokens").json()}
        added: list[float] = []
        for i in range(CONVERSATIONS):
            [msg] = httpx.get(f"{sim}/sim/messages", params={"token": token_for(f"{run}-{i}")}).json()
            added.append(msg["history"][0][0] - first_token[f"probe {run} {i}"])
        base = asyncio.run(baseline(server.url, sim))
        paced = asyncio.run(baseline(server.url, sim, pause=TOKEN_DELAY))

        print()
        print(f"{'':52}{'p50 ms':>9}{'p99 ms':>9}")
        print(
            f"{'first token -> first platform edit (imrelay)':52}{pct(added, 50) * 1e3:>9.1f}"
            f"{pct(added, 99) * 1e3:>9.1f}"
        )
        print(
            f"{'2 JetStream hops + 1 HTTP call (minimal relay)':52}{pct(base, 50) * 1e3:>9.1f}"
            f"{pct(base, 99) * 1e3:>9.1f}"
        )
        print(
            f"{'... the same, one round per piece (50 ms apart)':52}{pct(paced, 50) * 1e3:>9.1f}"
            f"{pct(paced, 99) * 1e3:>9.1f}"
        )
        print(
            f"\nimrelay / minimal relay (p50): {pct(added, 50) / pct(base, 50):.1f}   "
            f"(mean {statistics.mean(added) * 1e3:.1f} ms over {len(added)} conversations)"
        )
        minimal = "2 JetStream hops + 1 HTTP call"
        path = record(
            "stream",
            [
                figure(
                    "first token -> first platform edit, p50",
                    pct(added, 50) * 1e3,
                    "ms",
                    baseline=pct(base, 50) * 1e3,
                    baseline_name=minimal,
                    target="<= 3 ms",
                ),
                figure(
                    "minimal relay paced like the model, p50",
                    pct(paced, 50) * 1e3,
                    "ms",
                    baseline=pct(base, 50) * 1e3,
                    baseline_name="the minimal relay back to back",
                ),
                figure(
                    "first token -> first platform edit, p99",
                    pct(added, 99) * 1e3,
                    "ms",
                    baseline=pct(base, 99) * 1e3,
                    baseline_name=minimal,
                    target="<= 20 ms",
                ),
            ],
        )
        print(f"results: {path}")
    finally:
        stop_all(procs)
        log.close()
        server.cleanup()


if __name__ == "__main__":
    main()
