"""A bot answered through the `openai` backend: the worker streams from an OpenAI-compatible server (the
simulator's) and the user gets the model's answer; a failing model gets the user a polite message."""

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


@pytest.fixture(scope="module")
def llm_stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("llm")
    s = Stack.create(root, nats_server)
    s.config["backends"] = {
        "default": {
            "kind": "openai",
            "base_url": f"{s.sim_url}/v1",
            "api_key": "${SIM_OPENAI_KEY:-sk-sim}",
            "model": "sim-model",
            "system_prompt": "You are the HR helper.",
            "idle_timeout_seconds": 2,
            "error_message": "Sorry, the assistant is unavailable right now.",
        }
    }
    slow = dict(s.config["bots"][0], id="slowpoke", thinking_message="Thinking…", thinking_after_seconds=0.5)
    slow["credentials"] = dict(slow["credentials"], agent_id="1000009", secret="slow-secret")
    s.config["bots"].append(slow)
    s.config["worker"]["answer_timeout_seconds"] = 20
    s.config["worker"]["ack_wait_seconds"] = 2  # answers below take longer than this
    with s.running():
        yield s


def test_answer_comes_from_the_model(llm_stack: Stack) -> None:
    tokens = {"backend": "default", "model": "sim-model"}

    def used() -> list[float]:
        return [
            llm_stack.metric("worker", "imrelay_llm_tokens_total", dict(tokens, type=t))
            for t in ("input", "output")
        ]

    before = used()
    who = f"u{secrets.token_hex(4)}"
    send(llm_stack, "how many vacation days?", who)
    msgs = llm_stack.wait_for(lambda: llm_stack.messages(touser=who), what="the model's answer")
    assert [m["content"] for m in msgs] == ["You said: how many vacation days?"]
    req = httpx.get(f"{llm_stack.sim_url}/sim/llm").json()[-1]
    assert req["model"] == "sim-model" and req["stream"] is True
    assert req["messages"] == [
        {"role": "system", "content": "You are the HR helper."},
        {"role": "user", "content": "how many vacation days?"},
    ]
    assert llm_stack.metric("worker", "imrelay_llm_time_to_first_token_seconds_count", tokens) >= 1
    assert req["stream_options"] == {"include_usage": True}
    # the simulator's usage chunk: a token a word of the prompt (9), a token a piece of the answer (6)
    llm_stack.wait_for(lambda: used()[1] > before[1], what="the token counts")
    assert [a - b for a, b in zip(used(), before, strict=True)] == [9, 6]


@pytest.mark.parametrize("control", [{"fail_next": [500]}, {"stall_after": 1}])
def test_a_failing_model_gets_the_user_a_polite_message(llm_stack: Stack, control: dict[str, object]) -> None:
    httpx.post(f"{llm_stack.sim_url}/sim/llm", json=control).raise_for_status()
    try:
        who = f"u{secrets.token_hex(4)}"
        before = llm_stack.metric("worker", "imrelay_llm_duration_seconds_count", {"outcome": "error"})
        send(llm_stack, "hello?", who)
        msgs = llm_stack.wait_for(lambda: llm_stack.messages(touser=who), what="the polite reply")
        assert len(msgs) == 1
        assert msgs[0]["content"].endswith("Sorry, the assistant is unavailable right now.")
        assert (
            llm_stack.metric("worker", "imrelay_llm_duration_seconds_count", {"outcome": "error"})
            == before + 1
        )
    finally:
        httpx.post(f"{llm_stack.sim_url}/sim/llm", json={"stall_after": None}).raise_for_status()


def requests_for(stack: Stack, text: str) -> int:
    reqs = httpx.get(f"{stack.sim_url}/sim/llm").json()
    return sum(1 for r in reqs if r["messages"][-1]["content"] == text)


def test_a_slow_model_is_not_redelivered_meanwhile(llm_stack: Stack) -> None:
    """The answer takes longer than the consumer's ack wait: in-progress acks keep it with one worker."""
    httpx.post(f"{llm_stack.sim_url}/sim/llm", json={"token_delay": 0.6}).raise_for_status()
    try:
        who, text = f"u{secrets.token_hex(4)}", f"slow question {secrets.token_hex(2)} please"
        send(llm_stack, text, who)
        msgs = llm_stack.wait_for(lambda: llm_stack.messages(touser=who), timeout=30, what="the slow answer")
        assert [m["content"] for m in msgs] == [f"You said: {text}"]
        assert requests_for(llm_stack, text) == 1
    finally:
        httpx.post(f"{llm_stack.sim_url}/sim/llm", json={"token_delay": 0}).raise_for_status()


def test_sigterm_lets_the_worker_finish_its_answer(llm_stack: Stack) -> None:
    httpx.post(f"{llm_stack.sim_url}/sim/llm", json={"token_delay": 0.5}).raise_for_status()
    worker = llm_stack.services["worker"]
    try:
        who, text = f"u{secrets.token_hex(4)}", f"answer me before you go {secrets.token_hex(2)}"
        send(llm_stack, text, who)
        llm_stack.wait_for(lambda: requests_for(llm_stack, text) == 1, what="the model call")
        assert worker.stop() == 0  # SIGTERM mid-answer; exits cleanly once the answer is stored
        msgs = llm_stack.wait_for(lambda: llm_stack.messages(touser=who), what="the answer")
        assert [m["content"] for m in msgs] == [f"You said: {text}"]
        assert requests_for(llm_stack, text) == 1
    finally:
        httpx.post(f"{llm_stack.sim_url}/sim/llm", json={"token_delay": 0}).raise_for_status()
        if worker.proc is None:
            worker.start()


def test_slow_first_words_are_preceded_by_a_placeholder(llm_stack: Stack) -> None:
    httpx.post(f"{llm_stack.sim_url}/sim/llm", json={"token_delay": 1.5}).raise_for_status()
    try:
        who = f"u{secrets.token_hex(4)}"
        send(llm_stack, "take your time", who, bot_id="slowpoke")
        msgs = llm_stack.wait_for(
            lambda: (m := llm_stack.messages(bot="slowpoke", touser=who)) and len(m) == 2 and m,
            timeout=30,
            what="placeholder + answer",
        )
        assert [m["content"] for m in msgs] == ["Thinking…", "You said: take your time"]
    finally:
        httpx.post(f"{llm_stack.sim_url}/sim/llm", json={"token_delay": 0}).raise_for_status()
