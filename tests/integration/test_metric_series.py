"""FastStream's metrics on a real sender's ``/metrics`` do not grow with bots × partitions: every reply
subject is counted under its subscription pattern. The same sender delivers one reply on every bot and
partition, once with 1 bot on 1 partition and once with 6 bots on 4 partitions."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import httpx
import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families

from imrelay import subjects
from imrelay.config import NatsConfig
from imrelay.events import Chat, ChatType, ReplyChunk, Sender
from imrelay.jetstream import ensure_streams
from imrelay.natsserver import EmbeddedNats

from ..helpers import free_port
from .stack import Stack

pytestmark = pytest.mark.nats


def user_in(bot: str, partition: int, partitions: int) -> str:
    """A user id whose conversation with ``bot`` falls in ``partition``."""
    return next(
        u
        for u in (f"u{i}" for i in itertools.count())
        if subjects.partition_of(f"{bot}:{u}", partitions) == partition
    )


async def publish_everywhere(url: str, sim: str, bots: list[str], partitions: int) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, NatsConfig(url=url, out_partitions=partitions))
        for bot, k in itertools.product(bots, range(partitions)):
            user = user_in(bot, k, partitions)
            webhook = f"{sim}/cgi-bin/webhook/send?key={bot}"
            chunk = ReplyChunk(
                reply_id=f"{bot}-{k}",
                inbound_id=f"in-{bot}-{k}",
                platform="wecom_group_robot",
                bot_id=bot,
                chat=Chat(id=user, type=ChatType.GROUP),
                recipient=Sender(id=user),
                reply_handle={"webhook_url": webhook, "chat_id": user},
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


def faststream_series(root: Path, bots: int, partitions: int) -> tuple[int, set[str]]:
    """(series of imrelay_faststream_*, their handler/destination labels) after one reply a subject."""
    server = EmbeddedNats(store_dir=root / "nats", port=free_port()).start()
    try:
        stack = Stack.create(root, server)
        stack.config["nats"] = {"out_partitions": partitions}
        robot = stack.config["bots"][1]
        names = [f"bot{i}" for i in range(bots)]
        stack.config["bots"] = [dict(robot, id=name) for name in names]
        with stack.running("sim", "sender"):
            asyncio.run(publish_everywhere(server.url, stack.sim_url, names, partitions))
            total = bots * partitions
            stack.wait_for(
                lambda: stack.metric("sender", "imrelay_deliveries_total", {"outcome": "ok"}) >= total,
                timeout=60,
                what=f"{total} deliveries",
            )
            text = httpx.get(f"{stack.admin_url('sender')}/metrics", timeout=5).text
    finally:
        server.cleanup()
    samples = [
        s
        for f in text_string_to_metric_families(text)
        if f.name.startswith("imrelay_faststream")
        for s in f.samples
    ]
    places = {s.labels.get("handler") or s.labels.get("destination", "") for s in samples} - {""}
    return len(samples), places


def test_faststream_series_do_not_grow_with_bots_and_partitions(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    small, small_places = faststream_series(tmp_path_factory.mktemp("one"), bots=1, partitions=1)
    large, large_places = faststream_series(tmp_path_factory.mktemp("many"), bots=6, partitions=4)
    assert small > 0 and large == small, (small, large)
    assert small_places == large_places and "imrelay.out.>" in large_places
