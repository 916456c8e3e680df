"""Recovery after ``kill -9``, with real processes (nats-server, the simulator, workers, senders):

* worker: two workers stream slow answers; one is killed. Measured: from the kill until the last of its
  conversations is being answered again (the model asked anew by the other worker).
* sender: one sender holds a reply in every partition, each stuck on a platform call that hangs; a second
  sender is started, the first killed, the platform healed. Measured: from the kill until the last held
  reply is shown.

Each reply must be shown exactly once (checked on the simulator, whose duplicate check must not have had
to step in). Beside each figure, as its baseline, the wait the old defaults implied (the ack wait, and the
claim takeover). Prints figures; never passes or fails on time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import nats
from _common import figure, free_port, record, service_env, start_service, stop_all, wecom_app_bot

from imrelay import subjects
from imrelay.config import NatsConfig
from imrelay.events import Chat, ChatType, InboundMessage, ReplyChunk, Sender
from imrelay.jetstream import ensure_streams
from imrelay.natsserver import EmbeddedNats
from imrelay.sections import SenderConfig, WorkerConfig

CONVERSATIONS = int(os.environ.get("BENCH_RECOVERY_CONVERSATIONS", "24"))
PARTITIONS = 16
# what a killed worker's / sender's replies waited for before (the ack wait; the claim takeover)
OLD_WORKER_WAIT, OLD_SENDER_WAIT = 30.0, 120.0


def question(run: str, i: int) -> str:
    return f"recovery {run} {i} " + " ".join(f"w{k}" for k in range(20))  # about 25 pieces


def inbound(run: str, i: int) -> InboundMessage:
    user = f"wk{run}u{i}"
    return InboundMessage(
        id=f"in-{run}-{i}",
        platform="wecom_app",
        bot_id="app",
        platform_message_id=f"{run}-{i}",
        chat=Chat(id=user, type=ChatType.DIRECT),
        sender=Sender(id=user),
        text=question(run, i),
        reply_handle={"touser": user, "agentid": "1000002"},
    )


def reply(run: str, k: int) -> ReplyChunk:
    user = f"sd{run}u{k}"
    return ReplyChunk(
        reply_id=f"held-{run}-{k}",
        inbound_id=f"in-{k}",
        platform="wecom_app",
        bot_id="app",
        chat=Chat(id=user, type=ChatType.DIRECT),
        recipient=Sender(id=user),
        reply_handle={"touser": user, "agentid": "1000002"},
        seq=0,
        final=True,
        full_text=f"held answer {k}",
    )


async def publish_inbound(url: str, messages: list[InboundMessage]) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, NatsConfig(url=url))
        for m in messages:
            await js.publish(
                subjects.inbound_subject(m.platform, m.bot_id),
                m.model_dump_json().encode(),
                headers={subjects.HDR_MSG_ID: f"{m.bot_id}:{m.platform_message_id}"},
            )
    finally:
        await nc.close()


async def publish_replies(url: str, chunks: list[ReplyChunk]) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for k, chunk in enumerate(chunks):  # one in each partition
            await js.publish(
                subjects.outbound_subject("wecom_app", "app", k % PARTITIONS),
                chunk.model_dump_json().encode(),
                headers={subjects.HDR_MSG_ID: chunk.msg_id},
            )
    finally:
        await nc.close()


def wait_until(check: Any, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="imrelay-recovery-bench-"))
    server = EmbeddedNats(store_dir=tmp / "nats").start()
    procs: list[subprocess.Popen[bytes]] = []
    log = open(tmp / "servers.log", "wb")
    try:
        ports = {n: free_port() for n in ("sim", "w1", "w2", "s1", "s2")}
        sim = f"http://127.0.0.1:{ports['sim']}"
        config: dict[str, Any] = {
            "nats": {"out_partitions": PARTITIONS},
            "backends": {
                "default": {"kind": "openai", "base_url": f"{sim}/v1", "api_key": "k", "model": "m"}
            },
            "memory": {"enabled": False},
            "sender": {"backoff_base_seconds": 0.2, "backoff_max_seconds": 2.0},
            "bots": [wecom_app_bot("app", "wwrecovery0000001", sim)],
        }
        env = service_env(tmp, config, server.url)

        def service(module: str, admin: str) -> subprocess.Popen[bytes]:
            proc = start_service(
                module,
                dict(env, IMRELAY_ADMIN_PORT=str(ports[admin])),
                log,
                f"http://127.0.0.1:{ports[admin]}/readyz",
            )
            procs.append(proc)
            return proc

        procs.append(
            start_service(
                "imrelay_sim",
                env,
                log,
                f"{sim}/sim/stats",
                "serve",
                "--port",
                str(ports["sim"]),
                "--user-limit",
                "1000000",
            )
        )
        run = str(int(time.time()))

        def shown() -> Counter[str]:
            msgs = httpx.get(f"{sim}/sim/messages", params={"bot": "app"}, timeout=30).json()
            return Counter(str(m.get("touser", "")) for m in msgs)

        def stats() -> dict[str, int]:
            return dict(httpx.get(f"{sim}/sim/stats", timeout=10).json())

        # ---- a worker killed while answering -----------------------------------------------------
        service("imrelay_sender", "s1")
        doomed = service("imrelay_worker", "w1")
        service("imrelay_worker", "w2")
        httpx.post(f"{sim}/sim/llm", json={"token_delay": 0.4}).raise_for_status()
        asyncio.run(publish_inbound(server.url, [inbound(run, i) for i in range(CONVERSATIONS)]))

        def streams() -> dict[str, Any]:
            return dict(httpx.get(f"{sim}/sim/llm/streams", timeout=10).json())

        wait_until(lambda: streams()["active"] >= CONVERSATIONS, "every conversation streaming")
        time.sleep(1.0)
        killed_at = time.time()
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
        print(
            f"worker: {CONVERSATIONS} conversations streaming on 2 workers; one killed with SIGKILL",
            flush=True,
        )
        wait_until(lambda: sum(shown().values()) >= CONVERSATIONS, "every answer shown", timeout=180)
        begun: dict[str, list[float]] = {}
        for q, at in streams()["started"]:
            begun.setdefault(q, []).append(at)
        resumed = [max(times) - killed_at for times in begun.values() if max(times) > killed_at]
        worker_resume = max(resumed) if resumed else float("nan")
        counts = shown()
        worker_twice = sum(1 for c in counts.values() if c > 1)
        print(
            f"  {len(resumed)} of its conversations resumed on the other worker, the last "
            f"{worker_resume:.1f}s after the kill; answers shown twice: {worker_twice}",
            flush=True,
        )

        # ---- a sender killed while posting -------------------------------------------------------
        for p in procs[2:]:  # the workers: not needed now
            if p.poll() is None:
                p.terminate()
                p.wait(30)
        holder = procs[1]
        suppressed = stats().get("duplicates_suppressed", 0)
        httpx.post(
            f"{sim}/sim/control",
            json={"fault_rate": 1.0, "fault_kinds": ["timeout"], "timeout_delay": 2.0},
        ).raise_for_status()
        before = stats().get("fault_timeout", 0)
        asyncio.run(publish_replies(server.url, [reply(run, k) for k in range(PARTITIONS)]))
        wait_until(
            lambda: stats().get("fault_timeout", 0) - before >= PARTITIONS, "a post begun in every partition"
        )
        service("imrelay_sender", "s2")
        killed_at = time.time()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        httpx.post(f"{sim}/sim/control", json={"fault_rate": 0.0}).raise_for_status()
        print(
            f"sender: a reply held in each of {PARTITIONS} partitions (its post hanging); a second sender "
            "started, the first killed with SIGKILL",
            flush=True,
        )
        held = {f"sd{run}u{k}" for k in range(PARTITIONS)}
        wait_until(lambda: held <= set(shown()), "every held reply shown", timeout=300)
        msgs = httpx.get(f"{sim}/sim/messages", params={"bot": "app"}, timeout=30).json()
        last = max(float(m["at"]) for m in msgs if m.get("touser") in held)
        sender_resume = last - killed_at
        counts = shown()
        sender_twice = sum(1 for u in held if counts[u] > 1)
        platform_dedupe = stats().get("duplicates_suppressed", 0) - suppressed
        print(
            f"  the last held reply shown {sender_resume:.1f}s after the kill; shown twice: {sender_twice}; "
            f"stopped by the platform's duplicate check: {platform_dedupe}",
            flush=True,
        )
        wcfg, scfg = WorkerConfig(), SenderConfig()
        print()
        print(f"{'':58}{'seconds':>9}{'before':>9}")
        print(
            f"{'worker killed -> its conversations resumed':58}{worker_resume:>9.1f}{OLD_WORKER_WAIT:>9.0f}"
        )
        print(f"{'sender killed -> its held replies shown':58}{sender_resume:>9.1f}{OLD_SENDER_WAIT:>9.0f}")
        print(
            f"(defaults: worker.ack_wait_seconds {wcfg.ack_wait_seconds:g}, sender.ack_wait_seconds "
            f"{scfg.ack_wait_seconds:g}, sender.claim_timeout_seconds {scfg.claim_timeout_seconds:g}; "
            "'before' is the wait the earlier defaults gave)"
        )
        path = record(
            "recovery",
            [
                figure(
                    "worker kill -9 -> its conversations resumed",
                    worker_resume,
                    "s",
                    baseline=OLD_WORKER_WAIT,
                    baseline_name="the earlier ack wait (30 s)",
                    target="<= 10 s",
                ),
                figure(
                    "sender kill -9 -> its held replies shown",
                    sender_resume,
                    "s",
                    baseline=OLD_SENDER_WAIT,
                    baseline_name="the earlier claim takeover (120 s)",
                    target="<= 15 s",
                ),
                figure(
                    "replies shown twice after the kills",
                    worker_twice + sender_twice + platform_dedupe,
                    "count",
                    target="0",
                ),
            ],
        )
        print(f"results: {path}")
    finally:
        stop_all([p for p in procs if p.poll() is None])
        log.close()
        server.cleanup()


if __name__ == "__main__":
    main()
