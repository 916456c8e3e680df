"""Erasing a user: ``imrelay forget`` on real conversation memory in JetStream KV, and the pseudonyms
model providers see instead of platform user ids."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import nats
import pytest
import yaml

from imrelay.config import parse_settings
from imrelay.events import Chat, ChatType, InboundMessage, Sender
from imrelay.jetstream import ensure_memory_bucket
from imrelay.natsserver import EmbeddedNats
from imrelay_worker.memory import MemoryStore, Turn, conversation_key
from imrelay_worker.privacy import Pseudonyms

pytestmark = pytest.mark.nats

KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
BOTS = [
    {
        "id": "hr",
        "platform": "wecom_app",
        "credentials": {
            "corp_id": "ww1",
            "agent_id": "1",
            "secret": "s",
            "token": "t",
            "encoding_aes_key": KEY,
        },
    },
    {"id": "team", "platform": "wecom_group_robot", "credentials": {"token": "t2", "encoding_aes_key": KEY}},
]


def message(bot: str, platform: str, chat: str, chat_type: ChatType, user: str) -> InboundMessage:
    return InboundMessage(
        id=f"{bot}-{chat}-{user}",
        platform=platform,
        bot_id=bot,
        platform_message_id=f"{chat}:{user}",
        chat=Chat(id=chat, type=chat_type),
        sender=Sender(id=user),
        text="hi",
    )


async def test_forget_erases_a_users_memory_and_only_theirs(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    settings = parse_settings(
        {"bots": BOTS, "memory": {"per_user_in_groups": False}}, {"IMRELAY_NATS_URL": nats_server.url}
    )
    nc = await nats.connect(nats_server.url)
    try:
        kv = await ensure_memory_bucket(nc.jetstream(), settings.nats, 3600)
        store = MemoryStore(kv, settings.memory)
        alice_dm = conversation_key(message("hr", "wecom_app", "alice", ChatType.DIRECT, "alice"), False)
        bob_dm = conversation_key(message("hr", "wecom_app", "bob", ChatType.DIRECT, "bob"), False)
        group = conversation_key(message("team", "wecom_group_robot", "wrkG", ChatType.GROUP, "alice"), False)
        await store.remember(alice_dm, Turn("my salary is 10k", "noted", "alice"), {})
        await store.remember(bob_dm, Turn("bob's question", "answer", "bob"), {})
        await store.remember(group, Turn("alice in the group", "ok", "alice"), {})
        await store.remember(group, Turn("bob in the group", "ok", "bob"), {})

        config = tmp_path / "imrelay.yaml"
        config.write_text(yaml.safe_dump({"bots": BOTS, "memory": {"per_user_in_groups": False}}))
        env = dict(os.environ, IMRELAY_CONFIG=str(config), IMRELAY_NATS_URL=nats_server.url)
        for bot in ("hr", "team"):
            argv = [sys.executable, "-m", "imrelay.cli", "forget", "--bot", bot, "--user", "alice"]
            out = await asyncio.to_thread(
                subprocess.run, argv, env=env, capture_output=True, text=True, timeout=30
            )
            assert out.returncode == 0, out.stderr
            assert "1 conversation record(s)" in out.stdout

        assert (await store.load(alice_dm)).turns == []
        assert [t.user for t in (await store.load(bob_dm)).turns] == ["bob's question"]
        assert [t.sender for t in (await store.load(group)).turns] == ["bob"]
        values = b"".join([(await kv.get(k)).value or b"" for k in await kv.keys()])
        assert b"alice" not in values and b"salary" not in values
    finally:
        await nc.close()


def test_forget_names_an_unknown_bot(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    config = tmp_path / "imrelay.yaml"
    config.write_text(yaml.safe_dump({"bots": BOTS}))
    out = subprocess.run(
        [sys.executable, "-m", "imrelay.cli", "forget", "--bot", "nope", "--user", "x"],
        env=dict(os.environ, IMRELAY_CONFIG=str(config), IMRELAY_NATS_URL=nats_server.url),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "no bot 'nope'" in out.stderr


def test_pseudonyms_are_stable_per_user_and_bot_and_keyed() -> None:
    settings = parse_settings({"bots": BOTS}, {})
    hr, team = (Pseudonyms(settings.worker, b) for b in settings.bots)
    assert hr.user("wecom_app:hr:alice") == hr.user("wecom_app:hr:alice") != hr.user("wecom_app:hr:bob")
    assert "alice" not in hr.user("wecom_app:hr:alice") and hr.user("x") != team.user("x")
    assert "key" not in repr(hr).replace("key=***", "")
    keyed = parse_settings({"bots": BOTS, "worker": {"pseudonym_key": "rotate-safe"}}, {})
    rotated = [{**BOTS[0], "credentials": {**BOTS[0]["credentials"], "token": "new"}}]  # type: ignore[dict-item]
    again = parse_settings({"bots": rotated, "worker": {"pseudonym_key": "rotate-safe"}}, {})
    before, after = Pseudonyms(keyed.worker, keyed.bots[0]), Pseudonyms(again.worker, again.bots[0])
    assert before.user("a") == after.user("a")  # the configured key survives a credential rotation
    off = parse_settings({"bots": BOTS, "worker": {"pseudonymize_users": False}}, {})
    assert Pseudonyms(off.worker, off.bots[0]).user("wecom_app:hr:alice") == "wecom_app:hr:alice"
