"""A burst of 300 replies to one WeCom group-robot webhook, delivered by three sender replicas, with the
robot's limit scaled down to 20 messages per 2-second window in the config and in the simulator alike."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from imrelay import subjects
from imrelay.events import Chat, ChatType, ReplyChunk, Sender
from imrelay.natsserver import EmbeddedNats

from .stack import Stack

pytestmark = pytest.mark.nats

LIMIT, WINDOW, BURST = 20, 2.0, 300
SENTINEL = 999  # a reply published after the burst


@pytest.fixture(scope="module")
def burst_stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("burst")
    s = Stack.create(root, nats_server)
    s.config["sender"]["rate_limits"] = {
        "wecom_group_robot.per_webhook": {"limit": LIMIT, "window_seconds": WINDOW}
    }
    s.config["sender"]["rate_limit_margin_seconds"] = 0.1
    s.add_replicas("sender", 2)
    with s.running("sim", "sender", "sender2", "sender3"):
        s.control(webhook_limit=LIMIT, webhook_window=WINDOW)
        yield s


async def publish_burst(stack: Stack, chat: str, webhook: str) -> None:
    nc = await nats.connect(stack.nats.url)
    try:
        js = nc.jetstream()
        subject = subjects.outbound_subject(
            "wecom_group_robot", "robot", subjects.partition_of(f"robot:{chat}", 16)
        )
        # the sentinel last: the partition delivers in order, one message at a time, so once it is shown
        # every earlier reply has been acknowledged and none can be delivered again
        for i in [*range(BURST), SENTINEL]:
            chunk = ReplyChunk(
                reply_id=f"burst-{chat}-{i:03d}",
                inbound_id=f"in-{i}",
                platform="wecom_group_robot",
                bot_id="robot",
                chat=Chat(id=chat, type=ChatType.GROUP),
                recipient=Sender(id="zhangsan"),
                reply_handle={"chat_id": chat, "webhook_url": webhook},
                seq=0,
                final=True,
                full_text=f"answer {i:03d}",
            )
            await js.publish(
                subject, chunk.model_dump_json().encode(), headers={subjects.HDR_MSG_ID: chunk.msg_id}
            )
    finally:
        await nc.close()


def test_burst_keeps_the_webhook_limit_exactly_once_in_order(burst_stack: Stack) -> None:
    key = f"burst{secrets.token_hex(3)}"
    webhook = f"{burst_stack.sim_url}/cgi-bin/webhook/send?key={key}"
    before = burst_stack.sim_stats().get("rate_limited", 0)
    asyncio.run(publish_burst(burst_stack, f"wrk{key}", webhook))
    last = f"answer {SENTINEL:03d}"
    burst_stack.wait_for(
        lambda: any(m["content"] == last for m in burst_stack.messages(chat=key)),
        timeout=120,
        what=f"{BURST} deliveries and the sentinel",
    )
    msgs = burst_stack.messages(chat=key)
    assert [m["content"] for m in msgs] == [f"answer {i:03d}" for i in range(BURST)] + [last]
    msgs = msgs[:-1]
    assert burst_stack.sim_stats().get("rate_limited", 0) == before  # zero 45009
    at = [m["at"] for m in msgs]
    worst = max(sum(1 for u in at[i:] if u < t + WINDOW) for i, t in enumerate(at))
    assert worst <= LIMIT
    ideal = (BURST - LIMIT) / LIMIT * WINDOW  # first to last delivery at exactly the limit
    actual = at[-1] - at[0]
    print(
        f"\n{BURST} replies by 3 replicas in {actual:.1f}s; at the limit it takes {ideal:.1f}s: "
        f"throughput {ideal / actual:.2f} of the limit; busiest {WINDOW:g}s window held {worst}"
    )
