"""A message that waited for a free worker slot longer than the ack wait comes back to the worker as a
second copy (every slot was busy with long answers); the copy is not answered again: the model is asked
once, the user answered once."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from imrelay.natsserver import EmbeddedNats

from .stack import Stack
from .test_end_to_end import send

pytestmark = pytest.mark.nats

ACK_WAIT = 2.0
TOKEN_DELAY = 0.7  # seconds between the model's pieces (a piece a word)


@pytest.fixture(scope="module")
def two_slots(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("twoslots")
    s = Stack.create(root, nats_server)
    s.config["backends"] = {
        "default": {"kind": "openai", "base_url": f"{s.sim_url}/v1", "api_key": "sk-sim", "model": "sim"}
    }
    s.config["worker"].update(concurrency=2, ack_wait_seconds=ACK_WAIT, answer_timeout_seconds=30)
    with s.running():
        httpx.post(f"{s.sim_url}/sim/llm", json={"token_delay": TOKEN_DELAY}).raise_for_status()
        try:
            yield s
        finally:
            httpx.post(f"{s.sim_url}/sim/llm", json={"token_delay": 0}).raise_for_status()


def asked(stack: Stack, question: str) -> int:
    """How many times the model was asked ``question`` (as the conversation's last message)."""
    requests = httpx.get(f"{stack.sim_url}/sim/llm").json()
    return sum(1 for r in requests if r.get("messages") and r["messages"][-1].get("content") == question)


def test_a_copy_that_waited_past_the_ack_wait_is_not_answered_again(two_slots: Stack) -> None:
    busy = [f"u{secrets.token_hex(4)}" for _ in range(2)]
    second = f"u{secrets.token_hex(4)}"
    long_questions = [f"please count one two three four five six seven eight {who}" for who in busy]  # ~8 s
    short_question = f"and this one {secrets.token_hex(2)}"  # waits for a free slot meanwhile
    for who, question in zip(busy, long_questions, strict=True):
        assert send(two_slots, question, who).status_code == 200
    two_slots.wait_for(
        lambda: all(asked(two_slots, q) == 1 for q in long_questions), what="both slots answering"
    )
    assert send(two_slots, short_question, second).status_code == 200

    answers = two_slots.wait_for(lambda: two_slots.messages(touser=second), timeout=60, what="the answer")

    def skipped() -> bool:  # the copy came while the first was answered, or after
        log = (two_slots.root / "worker.log").read_text()
        return "is being answered by another copy" in log or "was answered before; not again" in log

    # the copy delivered again after the ack wait comes once the slot is free again: it is either
    # skipped, or (the defect) answered a second time
    two_slots.wait_for(
        lambda: skipped() or asked(two_slots, short_question) > 1, timeout=60, what="the copy delivered again"
    )
    for who in busy:
        two_slots.wait_for(lambda who=who: two_slots.messages(touser=who), timeout=60, what="a long answer")
    assert asked(two_slots, short_question) == 1
    assert skipped()
    assert len(answers) == 1 and answers[0]["content"] == f"You said: {short_question}"
    assert two_slots.messages(touser=second) == answers  # shown once
