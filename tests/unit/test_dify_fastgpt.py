"""Dify and FastGPT backends against streams in their formats, cut at awkward byte boundaries."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from imrelay.config import BackendConfig
from imrelay.errors import BackendError
from imrelay_worker.backends import ChatMessage, ChatRequest, Piece, Replace, Usage
from imrelay_worker.backends.dify import SESSION_KEY, DifyBackend
from imrelay_worker.backends.fastgpt import FastGPTBackend, chat_id

from .test_openai_backend import Pieces

FIXTURES = Path(__file__).parent.parent / "fixtures" / "sse"
CID = "45701982-8118-4bc5-8e9b-64562b4555f2"


def request(**kw: object) -> ChatRequest:
    return ChatRequest(
        messages=[
            ChatMessage("user", "earlier"),
            ChatMessage("assistant", "reply"),
            ChatMessage("user", "hi"),
        ],
        user="feishu:b:ou_1",
        conversation="conv.feishu.b.oc_1",
        **kw,  # type: ignore[arg-type]
    )


def serve(
    *answers: tuple[int, bytes], size: int = 7, seen: list[httpx.Request] | None = None
) -> Callable[[httpx.Request], httpx.Response]:
    queue = list(answers)

    def handler(req: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(req)
        status, body = queue.pop(0)
        if status != 200:
            return httpx.Response(status, json=json.loads(body))
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Pieces(body, size))

    return handler


def dify(handler: Callable[[httpx.Request], httpx.Response]) -> DifyBackend:
    cfg = BackendConfig.model_validate({"kind": "dify", "base_url": "http://dify/v1", "api_key": "app-k"})
    return DifyBackend("dify", cfg, httpx.AsyncClient(transport=httpx.MockTransport(handler)))


async def collect(backend: DifyBackend | FastGPTBackend, req: ChatRequest) -> list[Piece]:
    return [p async for p in backend.stream(req)]


@pytest.mark.parametrize("size", [1, 3, 64, 100000])
async def test_dify_answer_and_conversation_id(size: int) -> None:
    seen: list[httpx.Request] = []
    req = request()
    pieces = await collect(
        dify(serve((200, (FIXTURES / "dify_ok.sse").read_bytes()), size=size, seen=seen)), req
    )
    assert "".join(p for p in pieces if isinstance(p, str)) == "你好，世界！ Hello 😀 there."
    assert req.session[SESSION_KEY] == CID
    assert req.usage == Usage(input_tokens=12, output_tokens=6)  # message_end's metadata.usage
    body = json.loads(seen[0].content)
    assert body == {
        "inputs": {},
        "query": "hi",
        "response_mode": "streaming",
        "conversation_id": "",
        "user": "feishu:b:ou_1",
        "files": [],
    }
    assert str(seen[0].url) == "http://dify/v1/chat-messages"
    assert seen[0].headers["authorization"] == "Bearer app-k"


async def test_dify_sends_the_remembered_conversation_back() -> None:
    seen: list[httpx.Request] = []
    req = request(session={SESSION_KEY: CID})
    await collect(dify(serve((200, (FIXTURES / "dify_ok.sse").read_bytes()), seen=seen)), req)
    assert json.loads(seen[0].content)["conversation_id"] == CID


async def test_dify_starts_again_when_it_forgot_the_conversation() -> None:
    seen: list[httpx.Request] = []
    gone = json.dumps({"code": "not_found", "message": "Conversation Not Exists.", "status": 404})
    req = request(session={SESSION_KEY: "stale"})
    pieces = await collect(
        dify(serve((404, gone.encode()), (200, (FIXTURES / "dify_ok.sse").read_bytes()), seen=seen)), req
    )
    assert [json.loads(r.content)["conversation_id"] for r in seen] == ["stale", ""]
    assert pieces and req.session[SESSION_KEY] == CID


async def test_dify_agent_messages_and_replace() -> None:
    req = request()
    agent = await collect(dify(serve((200, (FIXTURES / "dify_agent.sse").read_bytes()))), req)
    assert agent == ["Agent ", "answer"]
    assert req.usage is None  # a message_end without metadata
    replaced = await collect(dify(serve((200, (FIXTURES / "dify_replace.sse").read_bytes()))), request())
    assert replaced == ["something unsafe", Replace("I can't help with that.")]


@pytest.mark.parametrize(
    ("name", "match"), [("dify_error.sse", "model overloaded"), ("dify_no_end.sse", "message_end")]
)
async def test_dify_failures(name: str, match: str) -> None:
    with pytest.raises(BackendError, match=match):
        await collect(dify(serve((200, (FIXTURES / name).read_bytes()))), request())


async def test_fastgpt_sends_only_the_new_message_with_a_stable_chat_id() -> None:
    seen: list[httpx.Request] = []
    cfg = BackendConfig.model_validate(
        {"kind": "fastgpt", "base_url": "http://fastgpt/api", "api_key": "fastgpt-k"}
    )
    backend = FastGPTBackend(
        "fg",
        cfg,
        httpx.AsyncClient(
            transport=httpx.MockTransport(serve((200, (FIXTURES / "openai_ok.sse").read_bytes()), seen=seen))
        ),
    )
    pieces = await collect(backend, request())
    assert "".join(p for p in pieces if isinstance(p, str)) == "你好，世界！ Hello 😀 there."
    body = json.loads(seen[0].content)
    assert str(seen[0].url) == "http://fastgpt/api/v1/chat/completions"
    assert body["chatId"] == "conv.feishu.b.oc_1" and body["stream"] is True and body["detail"] is False
    assert body["messages"] == [{"role": "user", "content": "hi"}]


def test_fastgpt_chat_id_is_short_and_stable() -> None:
    long = "conv." + "x" * 400
    assert len(chat_id(long)) <= 250 and chat_id(long) == chat_id(long) != chat_id(long + "y")
