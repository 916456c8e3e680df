"""Series on a sender's ``/metrics`` with 50 bots and 16 partitions, after one reply on every bot and
partition (800 subjects): with FastStream's stock Prometheus middleware (its labels are the concrete
subjects) beside imrelay's (subscription patterns). Counts every sample line, and those of
``imrelay_faststream_*`` apart.

Prints figures; never passes or fails.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import nats
import yaml
from _common import free_port, stop_all, wait_http
from prometheus_client.parser import text_string_to_metric_families

from imrelay import subjects
from imrelay.config import NatsConfig
from imrelay.events import Chat, ChatType, ReplyChunk, Sender
from imrelay.jetstream import ensure_streams
from imrelay.natsserver import EmbeddedNats

BOTS = int(os.environ.get("BENCH_BOTS", "50"))
PARTITIONS = int(os.environ.get("BENCH_PARTITIONS", "16"))
KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
STOCK = (
    "import imrelay.broker as b; from faststream.nats.prometheus import NatsPrometheusMiddleware; "
    "b.PatternPrometheusMiddleware = NatsPrometheusMiddleware; "
    "from imrelay_sender.__main__ import main; main()"
)


async def publish(url: str, sim: str) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, NatsConfig(url=url, out_partitions=PARTITIONS))
        for b, k in itertools.product(range(BOTS), range(PARTITIONS)):
            bot = f"bot{b}"
            user = next(
                u
                for u in (f"u{i}" for i in itertools.count())
                if subjects.partition_of(f"{bot}:{u}", PARTITIONS) == k
            )
            chunk = ReplyChunk(
                reply_id=f"{bot}-{k}",
                inbound_id=f"in-{bot}-{k}",
                platform="wecom_group_robot",
                bot_id=bot,
                chat=Chat(id=user, type=ChatType.GROUP),
                recipient=Sender(id=user),
                reply_handle={"webhook_url": f"{sim}/cgi-bin/webhook/send?key={bot}", "chat_id": user},
                seq=0,
                final=True,
                full_text="hi",
            )
            await js.publish(
                subjects.outbound_subject("wecom_group_robot", bot, k),
                chunk.model_dump_json().encode(),
                headers={subjects.HDR_MSG_ID: chunk.msg_id},
            )
    finally:
        await nc.close()


def delivered(admin: str) -> float:
    text = httpx.get(f"{admin}/metrics", timeout=10).text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "imrelay_deliveries_total" and s.labels.get("outcome") == "ok"
    )


def count(sender_argv: list[str]) -> tuple[int, int]:
    """(all series, imrelay_faststream_* series) on a sender's /metrics once every reply is delivered."""
    tmp = Path(tempfile.mkdtemp(prefix="imrelay-series-bench-"))
    server = EmbeddedNats(store_dir=tmp / "nats").start()
    procs: list[subprocess.Popen[bytes]] = []
    log = open(tmp / "servers.log", "wb")
    try:
        sim_port, admin_port = free_port(), free_port()
        sim, admin = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{admin_port}"
        config: dict[str, Any] = {
            "nats": {"out_partitions": PARTITIONS},
            "bots": [
                {
                    "id": f"bot{b}",
                    "platform": "wecom_group_robot",
                    "api_base": sim,
                    "credentials": {"token": "t", "encoding_aes_key": KEY},
                }
                for b in range(BOTS)
            ],
        }
        (tmp / "imrelay.yaml").write_text(yaml.safe_dump(config))
        env = dict(
            os.environ,
            IMRELAY_CONFIG=str(tmp / "imrelay.yaml"),
            IMRELAY_NATS_URL=server.url,
            IMRELAY_ADMIN_PORT=str(admin_port),
            IMRELAY_LOG_LEVEL="WARNING",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "imrelay_sim", "serve", "--port", str(sim_port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        wait_http(f"{sim}/sim/stats")
        asyncio.run(publish(server.url, sim))
        procs.append(
            subprocess.Popen([sys.executable, *sender_argv], env=env, stdout=log, stderr=subprocess.STDOUT)
        )
        wait_http(f"{admin}/readyz", timeout=60)
        started = time.monotonic()
        while delivered(admin) < BOTS * PARTITIONS:
            if time.monotonic() - started > 600:
                sys.exit("the sender did not deliver everything in 10 minutes; see " + str(tmp))
            time.sleep(0.5)
        families = list(text_string_to_metric_families(httpx.get(f"{admin}/metrics", timeout=10).text))
        total = sum(len(f.samples) for f in families)
        faststream = sum(len(f.samples) for f in families if f.name.startswith("imrelay_faststream"))
        return total, faststream
    finally:
        stop_all(procs)
        log.close()
        server.cleanup()


def main() -> None:
    print(f"one sender, {BOTS} bots x {PARTITIONS} partitions, one reply on each subject...", flush=True)
    stock = count(["-c", STOCK])
    patterns = count(["-m", "imrelay_sender"])
    print()
    print(f"{'':44}{'all series':>12}{'faststream':>12}")
    print(f"{'FastStream stock middleware (subjects)':44}{stock[0]:>12}{stock[1]:>12}")
    print(f"{'imrelay middleware (subscription patterns)':44}{patterns[0]:>12}{patterns[1]:>12}")


if __name__ == "__main__":
    main()
