"""Conversation memory across turns, through real processes: the second question's backend request
carries the first turn (OpenAI-compatible), Dify's conversation_id, FastGPT's chatId; /reset forgets;
a failed answer is not remembered."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from imrelay.natsserver import EmbeddedNats

from .stack import AGENT, CORP, KEY, TOKEN, Stack
from .test_end_to_end import send

pytestmark = pytest.mark.nats


def wecom_bot(bot_id: str, agent: str, backend: str, sim: str) -> dict[str, Any]:
    return {
        "id": bot_id,
        "platform": "wecom_app",
        "backend": backend,
        "api_base": sim,
        "credentials": {
            "corp_id": CORP,
            "agent_id": agent,
            "secret": f"secret-{bot_id}",
            "token": TOKEN,
            "encoding_aes_key": KEY,
        },
    }


@pytest.fixture(scope="module")
def conv_stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("conversations")
    s = Stack.create(root, nats_server)
    sim = s.sim_url
    s.config["backends"] = {
        "openai": {
            "kind": "openai",
            "base_url": f"{sim}/v1",
            "api_key": "sk",
            "model": "m",
            "system_prompt": "Be brief.",
        },
        "dify": {"kind": "dify", "base_url": f"{sim}/v1", "api_key": "app-dify"},
        "fastgpt": {"kind": "fastgpt", "base_url": f"{sim}/api", "api_key": "fastgpt-k"},
    }
    s.config["bots"] = [
        wecom_bot("app", AGENT, "openai", sim),
        wecom_bot("dify", "1000003", "dify", sim),
        wecom_bot("fastgpt", "1000004", "fastgpt", sim),
    ]
    with s.running():
        yield s


def ask(stack: Stack, bot: str, who: str, text: str) -> str:
    before = len(stack.messages(bot=bot, touser=who))
    send(stack, text, who, bot_id=bot)
    msgs = stack.wait_for(
        lambda: (m := stack.messages(bot=bot, touser=who)) and len(m) > before and m,
        what=f"the answer to {text!r}",
    )
    return str(msgs[-1]["content"])


def backend_requests(stack: Stack, api: str, text: str) -> list[dict[str, Any]]:
    reqs = httpx.get(f"{stack.sim_url}/sim/llm").json()

    def question(r: dict[str, Any]) -> str:
        return str(r.get("query") or (r.get("messages") or [{}])[-1].get("content", ""))

    return [r for r in reqs if r["_api"] == api and question(r) == text]


def test_second_question_carries_the_first_turn(conv_stack: Stack) -> None:
    who = f"u{secrets.token_hex(4)}"
    assert ask(conv_stack, "app", who, "my name is Ada") == "You said: my name is Ada"
    ask(conv_stack, "app", who, "what is my name?")
    [req] = backend_requests(conv_stack, "openai", "what is my name?")
    assert req["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "content": "You said: my name is Ada"},
        {"role": "user", "content": "what is my name?"},
    ]


def test_reset_forgets_and_failed_answers_are_not_remembered(conv_stack: Stack) -> None:
    who = f"u{secrets.token_hex(4)}"
    ask(conv_stack, "app", who, "remember apples")
    assert ask(conv_stack, "app", who, "/reset").startswith("Conversation cleared")
    httpx.post(f"{conv_stack.sim_url}/sim/llm", json={"fail_next": [500]}).raise_for_status()
    assert "Sorry" in ask(conv_stack, "app", who, "this one fails")
    ask(conv_stack, "app", who, "fresh start?")
    [req] = backend_requests(conv_stack, "openai", "fresh start?")
    assert [m["content"] for m in req["messages"]] == ["Be brief.", "fresh start?"]


def test_dify_gets_its_conversation_id_back(conv_stack: Stack) -> None:
    who = f"u{secrets.token_hex(4)}"
    ask(conv_stack, "dify", who, "first dify question")
    ask(conv_stack, "dify", who, "second dify question")
    [first] = backend_requests(conv_stack, "dify", "first dify question")
    [second] = backend_requests(conv_stack, "dify", "second dify question")
    assert first["conversation_id"] == "" and second["conversation_id"]
    # one stable pseudonym per user: the provider never sees the platform's user id
    assert first["user"] == second["user"] and first["user"].startswith("u_") and who not in first["user"]


def test_fastgpt_keeps_one_chat_id(conv_stack: Stack) -> None:
    who = f"u{secrets.token_hex(4)}"
    ask(conv_stack, "fastgpt", who, "first fastgpt question")
    ask(conv_stack, "fastgpt", who, "second fastgpt question")
    [first] = backend_requests(conv_stack, "fastgpt", "first fastgpt question")
    [second] = backend_requests(conv_stack, "fastgpt", "second fastgpt question")
    assert first["chatId"] == second["chatId"] and who not in first["chatId"]
    assert second["messages"] == [{"role": "user", "content": "second fastgpt question"}]
