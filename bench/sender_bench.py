"""Sender throughput on one replica against a platform with no effective limit: replies delivered per
second (claim + rate-limit window + token + message/send + delivery record + ack, for each reply), beside
baselines measured in the same run: the same sends posted straight to the simulator, with the sender's
parallelism (one request in flight per partition) and no NATS at all, once with the sender's own HTTP
client (the ratio's baseline) and once with plain httpx. Also the sender's CPU time per delivery.

Prints figures; never passes or fails on time.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import nats
from _common import cpu_seconds, figure, free_port, record, service_env, stop_all, wait_http, wecom_app_bot

from imrelay import subjects
from imrelay.events import Chat, ChatType, ReplyChunk, Sender
from imrelay.httpclient import async_client
from imrelay.jetstream import ensure_streams
from imrelay.natsserver import EmbeddedNats

N = int(os.environ.get("BENCH_REPLIES", "3000"))
PARTITIONS = 16


def delivered(sim: str) -> int:
    return int(httpx.get(f"{sim}/sim/stats", timeout=5).json().get("delivered", 0))


async def direct_baseline(sim: str, n: int, client: httpx.AsyncClient) -> float:
    """The same message/send calls straight to the simulator with ``client``, PARTITIONS at a time."""
    async with client:
        tok = (
            await client.get(
                f"{sim}/cgi-bin/gettoken", params={"corpid": "wwbench0000000001", "corpsecret": "s"}
            )
        ).json()
        token = tok["access_token"]
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(n):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                body = {
                    "touser": f"direct{i}",  # not user<i>: the sender's deliveries are told apart by it
                    "msgtype": "text",
                    "agentid": 1000002,
                    "text": {"content": f"answer {i}"},
                    "safe": 0,
                    "enable_duplicate_check": 1,
                    "duplicate_check_interval": 1800,
                }
                r = await client.post(
                    f"{sim}/cgi-bin/message/send", params={"access_token": token}, json=body
                )
                assert r.json()["errcode"] == 0

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(PARTITIONS)))
        return n / (time.perf_counter() - started)


async def publish(url: str, n: int) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        from imrelay.config import NatsConfig

        await ensure_streams(js, NatsConfig(url=url))
        for i in range(n):
            user = f"user{i}"
            chunk = ReplyChunk(
                reply_id=f"bench-{i}",
                inbound_id=f"in-{i}",
                platform="wecom_app",
                bot_id="bench",
                chat=Chat(id=user, type=ChatType.DIRECT),
                recipient=Sender(id=user),
                reply_handle={"touser": user, "agentid": "1000002"},
                seq=0,
                final=True,
                full_text=f"answer {i}",
            )
            await js.publish(
                subjects.outbound_subject(
                    "wecom_app", "bench", subjects.partition_of(f"bench:{user}", PARTITIONS)
                ),
                chunk.model_dump_json().encode(),
                headers={subjects.HDR_MSG_ID: chunk.msg_id},
            )
    finally:
        await nc.close()


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="imrelay-sender-bench-"))
    server = EmbeddedNats(store_dir=tmp / "nats").start()
    procs: list[subprocess.Popen[bytes]] = []
    log = open(tmp / "servers.log", "wb")
    try:
        sim_port, admin = free_port(), free_port()
        sim = f"http://127.0.0.1:{sim_port}"
        config: dict[str, Any] = {
            "nats": {"out_partitions": PARTITIONS},
            "bots": [wecom_app_bot("bench", "wwbench0000000001", sim)],
        }
        env = service_env(tmp, config, server.url, IMRELAY_ADMIN_PORT=str(admin))
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "imrelay_sim",
                    "serve",
                    "--port",
                    str(sim_port),
                    "--user-limit",
                    "1000000",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        wait_http(f"{sim}/sim/stats")

        print(
            f"baselines: {N} message/send calls straight to the simulator, {PARTITIONS} at a time, with "
            "plain httpx and with the sender's own HTTP client...",
            flush=True,
        )
        direct_httpx = asyncio.run(direct_baseline(sim, N, httpx.AsyncClient(timeout=10)))
        direct = asyncio.run(direct_baseline(sim, N, async_client(timeout=10)))
        base_count = delivered(sim)

        print(f"publishing {N} replies to IMRELAY_OUT, then starting one sender...", flush=True)
        asyncio.run(publish(server.url, N))
        started = time.perf_counter()
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "imrelay_sender"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        )
        # (deliveries, the sender's CPU seconds) when the first went out
        cpu_at_first: tuple[int, float] | None = None
        while (done := delivered(sim) - base_count) < N:
            if time.perf_counter() - started > 600:
                sys.exit("sender did not finish in 10 minutes; see " + str(tmp / "servers.log"))
            if cpu_at_first is None and done:
                cpu_at_first = (done, cpu_seconds(procs[-1].pid))
            time.sleep(0.02)
        first_done, first_cpu = cpu_at_first or (0, 0.0)
        cpu_per_delivery = (cpu_seconds(procs[-1].pid) - first_cpu) / max(N - first_done, 1)
        shown = httpx.get(f"{sim}/sim/messages", params={"bot": "bench"}, timeout=30).json()
        # the sender's deliveries only (the baselines' went to direct<i>): first to last, start-up excluded
        at = [m["at"] for m in shown if str(m.get("touser", "")).startswith("user")]
        if len(at) != N:
            sys.exit(f"expected {N} deliveries by the sender, the simulator shows {len(at)}")
        elapsed = max(at) - min(at)
        rate = (N - 1) / elapsed
        print()
        print(f"{'':48}{'msgs/s':>10}")
        print(f"{'message/send straight to the simulator, httpx':48}{direct_httpx:>10.0f}")
        print(f"{'... with the sender HTTP client (aiohttp)':48}{direct:>10.0f}")
        print(f"{'imrelay-sender, 1 replica':48}{rate:>10.0f}")
        print(
            f"\nsender / direct ratio: {rate / direct:.2f} against the same HTTP client, "
            f"{rate / direct_httpx:.2f} against plain httpx   ({N} replies, first to last in "
            f"{elapsed:.1f}s, {PARTITIONS} partitions, {os.cpu_count()} cores shared with nats-server "
            "and the simulator)"
        )
        print(f"sender CPU per delivery: {cpu_per_delivery * 1000:.2f} ms (start-up excluded)")
        path = record(
            "sender",
            [
                figure(
                    "sender deliveries/s, 1 replica",
                    rate,
                    "msgs/s",
                    baseline=direct,
                    baseline_name="message/send straight to the simulator, same HTTP client",
                ),
                figure(
                    "sender / direct ratio",
                    rate / direct,
                    "ratio",
                    baseline=1.0,
                    baseline_name="posting directly with the same HTTP client",
                    target=">= 0.6",
                ),
                figure(
                    "sender / direct ratio, plain httpx",
                    rate / direct_httpx,
                    "ratio",
                    baseline=1.0,
                    baseline_name=f"posting directly with httpx ({direct_httpx:.0f}/s)",
                ),
                figure("sender CPU per delivery", cpu_per_delivery * 1000, "ms"),
            ],
        )
        print(f"results: {path}")
    finally:
        stop_all(procs)
        log.close()
        server.cleanup()


if __name__ == "__main__":
    main()
