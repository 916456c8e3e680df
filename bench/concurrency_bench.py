"""Concurrent conversations in one worker process: ``BENCH_STREAMS`` (1,000) inbound messages at once,
each answered by the simulator's fake model slowly (``token_delay`` between pieces, about half a minute an
answer), so they all stream at the same time. Measured on the simulator: the most answers streaming at
once; the time from an inbound message being stored to its model request (the worker's share of the
time to first token) at that load, beside the same for one conversation alone, measured first in the same
run; the worker's resident memory at the peak.

Prints figures; never passes or fails on time.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import nats
from _common import figure, free_port, record, rss_kib, service_env, start_service, stop_all, wecom_app_bot

from imrelay import subjects
from imrelay.config import NatsConfig
from imrelay.events import Chat, ChatType, InboundMessage, Sender
from imrelay.jetstream import ensure_streams
from imrelay.natsserver import EmbeddedNats

STREAMS = int(os.environ.get("BENCH_STREAMS", "1000"))
TOKEN_DELAY = float(os.environ.get("BENCH_TOKEN_DELAY", "1.0"))
ALONE = 5  # conversations measured one at a time for the baseline


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def message(run: str, i: int) -> InboundMessage:
    user = f"c{run}u{i}"
    return InboundMessage(
        id=f"in-{run}-{i}",
        platform="wecom_app",
        bot_id="app",
        platform_message_id=f"{run}-{i}",
        chat=Chat(id=user, type=ChatType.DIRECT),
        sender=Sender(id=user),
        text=f"load {run} {i} " + " ".join(f"w{k}" for k in range(25)),
        reply_handle={"touser": user, "agentid": "1000002"},
    )


async def publish(url: str, messages: list[InboundMessage]) -> dict[str, float]:
    """Store the messages in IMRELAY_IN; the time each was stored (its PubAck), by its question."""
    nc = await nats.connect(url)
    stored: dict[str, float] = {}
    try:
        js = nc.jetstream()
        await ensure_streams(js, NatsConfig(url=url))

        async def one(m: InboundMessage) -> None:
            await js.publish(
                subjects.inbound_subject(m.platform, m.bot_id),
                m.model_dump_json().encode(),
                headers={subjects.HDR_MSG_ID: f"{m.bot_id}:{m.platform_message_id}"},
            )
            stored[m.text] = time.time()

        for start in range(0, len(messages), 100):
            await asyncio.gather(*(one(m) for m in messages[start : start + 100]))
    finally:
        await nc.close()
    return stored


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="imrelay-concurrency-bench-"))
    server = EmbeddedNats(store_dir=tmp / "nats").start()
    procs: list[subprocess.Popen[bytes]] = []
    log = open(tmp / "servers.log", "wb")
    try:
        sim_port, admin = free_port(), free_port()
        sim = f"http://127.0.0.1:{sim_port}"
        config: dict[str, Any] = {
            "backends": {
                "default": {
                    "kind": "openai",
                    "base_url": f"{sim}/v1",
                    "api_key": "k",
                    "model": "m",
                    "timeout_seconds": 600,
                }
            },
            "memory": {"enabled": False},
            "worker": {"concurrency": max(STREAMS + 100, 256), "answer_timeout_seconds": 600},
            "bots": [wecom_app_bot("app", "wwconcurrency0001", sim)],
        }
        env = service_env(tmp, config, server.url)
        procs.append(
            start_service("imrelay_sim", env, log, f"{sim}/sim/stats", "serve", "--port", str(sim_port))
        )
        worker = start_service(
            "imrelay_worker",
            dict(env, IMRELAY_ADMIN_PORT=str(admin)),
            log,
            f"http://127.0.0.1:{admin}/readyz",
        )
        procs.append(worker)
        rss_idle, _ = rss_kib(worker.pid)

        def streams() -> dict[str, Any]:
            return dict(httpx.get(f"{sim}/sim/llm/streams", timeout=30).json())

        def began() -> dict[str, float]:
            return {q: at for q, at in streams()["started"]}

        run = str(int(time.time()))
        # the baseline: one conversation at a time, nothing else going on
        httpx.post(f"{sim}/sim/llm", json={"token_delay": 0.0}).raise_for_status()
        alone: list[float] = []
        for i in range(ALONE):
            m = message(f"{run}a", i)
            stored = asyncio.run(publish(server.url, [m]))
            deadline = time.monotonic() + 30
            while m.text not in (seen := began()):
                if time.monotonic() > deadline:
                    raise TimeoutError("the worker did not ask the model")
                time.sleep(0.01)
            alone.append(seen[m.text] - stored[m.text])
            time.sleep(0.2)

        httpx.post(f"{sim}/sim/llm", json={"token_delay": TOKEN_DELAY}).raise_for_status()
        print(
            f"{STREAMS} conversations at once, the model sending a piece every {TOKEN_DELAY:g}s...",
            flush=True,
        )
        load = [message(run, i) for i in range(STREAMS)]
        stored = asyncio.run(publish(server.url, load))
        peak_rss = 0
        deadline = time.monotonic() + 300
        while True:
            now = streams()
            rss, _ = rss_kib(worker.pid)
            peak_rss = max(peak_rss, rss)
            started = sum(1 for q, _ in now["started"] if q in stored)
            if started >= STREAMS and now["active"] == 0:
                break
            if time.monotonic() > deadline:
                print(f"gave up waiting: {started} of {STREAMS} begun, {now['active']} streaming")
                break
            time.sleep(0.5)
        final = streams()
        seen = {q: at for q, at in final["started"]}
        overhead = [seen[q] - at for q, at in stored.items() if q in seen]
        _, hwm = rss_kib(worker.pid)
        base50 = pct(alone, 50) * 1e3
        print()
        print(f"{'':58}{'value':>10}{'alone':>10}")
        print(f"{'answers streaming at once (peak, one worker process)':58}{final['peak']:>10}{1:>10}")
        print(
            f"{'stored -> model asked, p50 ms (worker share of TTFT)':58}"
            f"{pct(overhead, 50) * 1e3:>10.1f}{base50:>10.1f}"
        )
        print(
            f"{'stored -> model asked, p99 ms':58}{pct(overhead, 99) * 1e3:>10.1f}"
            f"{pct(alone, 99) * 1e3:>10.1f}"
        )
        print(
            f"{'worker resident memory at the peak, MiB':58}{peak_rss / 1024:>10.0f}{rss_idle / 1024:>10.0f}"
        )
        print(
            f"(worker peak RSS {hwm / 1024:.0f} MiB; {os.cpu_count()} cores shared with nats-server and the "
            "simulator; 'alone' for memory is the idle worker)"
        )
        path = record(
            "workload",
            [
                figure(
                    "answers streaming at once in one worker process",
                    final["peak"],
                    "streams",
                    baseline=1,
                    baseline_name="one conversation alone",
                    target=">= 1000",
                ),
                figure(
                    f"stored -> model asked at {STREAMS} streams, p50",
                    pct(overhead, 50) * 1e3,
                    "ms",
                    baseline=base50,
                    baseline_name="one conversation alone",
                ),
                figure(
                    f"stored -> model asked at {STREAMS} streams, p99",
                    pct(overhead, 99) * 1e3,
                    "ms",
                    baseline=pct(alone, 99) * 1e3,
                    baseline_name="one conversation alone",
                ),
                figure(
                    f"worker RSS at {STREAMS} streams",
                    peak_rss / 1024,
                    "MiB",
                    baseline=rss_idle / 1024,
                    baseline_name="the worker idle",
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
