"""Three sender replicas sharing one NATS: one token fetch per token lifetime per app, never two at once."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imrelay.natsserver import EmbeddedNats

from .stack import Stack
from .test_end_to_end import send

pytestmark = pytest.mark.nats

LIFETIME = 2.0


@pytest.fixture(scope="module")
def replicas(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("replicas")
    s = Stack.create(root, nats_server)
    s.add_replicas("sender", 2)
    s.start()
    try:
        yield s
    finally:
        s.stop()


def test_token_endpoint_called_once_per_lifetime_never_concurrently(replicas: Stack) -> None:
    replicas.control(token_lifetime=LIFETIME, gettoken_delay=0.2, expire_tokens=True, user_limit=1000)
    before = replicas.sim_stats()
    users = [f"u{secrets.token_hex(3)}" for _ in range(60)]
    started = time.monotonic()
    for i, who in enumerate(users):  # steady traffic for about four token lifetimes
        send(replicas, f"message {i}", who)
        time.sleep(max(0.0, started + i * 0.14 - time.monotonic()))
    replicas.wait_for(
        lambda: all(replicas.messages(touser=u) for u in users), timeout=30, what="every answer"
    )
    after = replicas.sim_stats()
    calls = after["gettoken"] - before.get("gettoken", 0)
    issued = after["tokens_issued"] - before.get("tokens_issued", 0)
    # a token is needed while answers are being sent: from the first delivery to the last, as the
    # platform saw them (the time the test spends noticing the last answer needs no token)
    sent = [m["at"] for u in users for m in replicas.messages(touser=u)]
    lifetimes = (max(sent) - min(sent)) / LIFETIME
    print(
        f"answers sent over {lifetimes:.1f} token lifetimes: {calls} gettoken calls, {issued} tokens issued"
    )
    assert all(len(replicas.messages(touser=u)) == 1 for u in users)
    assert after["gettoken_peak_concurrency"] == 1
    # one call per lifetime in which something was sent: the first token, then one per expiry
    assert lifetimes - 1 <= calls <= lifetimes + 2, (calls, lifetimes)
    assert calls - issued <= 1  # no wasted calls that only got the old token back
