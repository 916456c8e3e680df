"""Three sender replicas, a fifth of the platform's answers transient faults, one replica SIGKILLed mid-burst:
every message shown exactly once; permanent failures go to the dead-letter stream and can be re-driven."""

from __future__ import annotations

import asyncio
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from imrelay import subjects
from imrelay.events import Chat, ChatType, ReplyChunk, Sender
from imrelay.natsserver import EmbeddedNats

from .stack import Stack

pytestmark = pytest.mark.nats

N, GHOSTS = 150, 5


@pytest.fixture(scope="module")
def faulty(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("faults")
    s = Stack.create(root, nats_server)
    s.config["sender"].update(
        {
            "http_timeout_seconds": 0.5,
            "ack_wait_seconds": 2,
            "claim_timeout_seconds": 2,
            "max_attempts": 6,
            "max_deliver": 20,
            "rate_limit_backoff_seconds": 0.1,
        }
    )
    s.add_replicas("sender", 2)
    with s.running("sim", "sender", "sender2", "sender3"):
        yield s


def chunk(run: str, i: int, user: str) -> ReplyChunk:
    return ReplyChunk(
        reply_id=f"{run}-{i:03d}",
        inbound_id=f"in-{run}-{i}",
        platform="wecom_app",
        bot_id="app",
        chat=Chat(id=user, type=ChatType.DIRECT),
        recipient=Sender(id=user),
        reply_handle={"touser": user, "agentid": "1000002"},
        seq=0,
        final=True,
        full_text=f"answer {i} for {user}",
    )


def partition(c: ReplyChunk) -> int:
    return subjects.partition_of(f"app:{c.chat.id}", 16)


def sentinel_chunks(run: str, partitions: set[int]) -> list[ReplyChunk]:
    """One reply to a fresh user in each of ``partitions``."""
    out: dict[int, ReplyChunk] = {}
    n = 0
    while len(out) < len(partitions):
        c = chunk(run, 2000 + n, f"s{run}{n:03d}")
        if partition(c) in partitions:
            out.setdefault(partition(c), c)
        n += 1
    return list(out.values())


async def publish(stack: Stack, chunks: list[ReplyChunk]) -> None:
    nc = await nats.connect(stack.nats.url)
    try:
        js = nc.jetstream()
        for c in chunks:
            subject = subjects.outbound_subject("wecom_app", "app", partition(c))
            await js.publish(subject, c.model_dump_json().encode(), headers={subjects.HDR_MSG_ID: c.msg_id})
    finally:
        await nc.close()


def imrelay(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imrelay.cli", *args, "--nats-url", stack.nats.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_faults_and_a_killed_replica_lose_nothing_and_show_nothing_twice(faulty: Stack) -> None:
    run = secrets.token_hex(3)
    users = [f"u{run}{i:03d}" for i in range(N)]
    ghosts = [f"ghost{run}{i}" for i in range(GHOSTS)]
    faulty.control(fault_rate=0.2, timeout_delay=1.0, seed=7, invalid_users=ghosts)
    before = faulty.sim_stats()
    chunks = [chunk(run, i, u) for i, u in enumerate(users)]
    chunks[::30] = [chunk(run, 1000 + j, g) for j, g in enumerate(ghosts)]  # permanent failures
    real = [c for c in chunks if not c.recipient.id.startswith("ghost")]
    asyncio.run(publish(faulty, chunks))

    faulty.wait_for(lambda: len(faulty.messages(bot="app")) > N // 3, timeout=60, what="a third")
    victim = faulty.services["sender2"]
    assert victim.proc is not None
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    victim.proc = None

    def delivered() -> int:
        mine = {m["touser"] for m in faulty.messages(bot="app") if m["touser"].startswith(f"u{run}")}
        return len(mine)

    faulty.wait_for(lambda: delivered() == len(real), timeout=120, what="every real message")
    # A late duplicate would be a redelivery of an earlier message; each partition hands out its next
    # message only after the previous one is settled, so once a sentinel sent last to every partition is
    # shown, nothing earlier can still come.
    faulty.control(fault_rate=0.0)
    sentinels = sentinel_chunks(run, {partition(c) for c in chunks})
    asyncio.run(publish(faulty, sentinels))
    faulty.wait_for(
        lambda: all(faulty.messages(touser=c.recipient.id) for c in sentinels),
        timeout=60,
        what="the sentinels",
    )
    shown = [m for m in faulty.messages(bot="app") if m["touser"].startswith(f"u{run}")]
    assert sorted(m["content"] for m in shown) == sorted(c.full_text or "" for c in real)
    stats = faulty.sim_stats()
    injected = stats["faults_injected"] - before.get("faults_injected", 0)
    suppressed = stats.get("duplicates_suppressed", 0) - before.get("duplicates_suppressed", 0)
    print(
        f"\n{len(real)} delivered exactly once through {injected} injected faults and a SIGKILL; "
        f"WeCom's duplicate check dropped {suppressed} reposts"
    )
    assert injected >= len(real) // 10

    # the permanent failures are dead letters, with the platform's code, and can be re-driven
    listing = faulty.wait_for(
        lambda: (
            (out := imrelay(faulty, "dlq", "list", "--stage", "sender").stdout).count("81013") >= GHOSTS
            and out
        ),
        what="dead letters",
    )
    assert "81013" in listing and "sender" in listing
    faulty.control(invalid_users=[])
    redriven = imrelay(faulty, "dlq", "redrive", "--all", "--stage", "sender")
    assert redriven.returncode == 0, redriven.stderr
    assert redriven.stdout.count("re-drove") >= GHOSTS
    faulty.wait_for(lambda: all(faulty.messages(touser=g) for g in ghosts), what="re-driven replies")
    assert all(len(faulty.messages(touser=g)) == 1 for g in ghosts)
    assert "no dead letters" in imrelay(faulty, "dlq", "list", "--stage", "sender").stdout
