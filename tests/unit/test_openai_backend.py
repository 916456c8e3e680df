"""The OpenAI-compatible backend against recorded-format streams served by httpx.MockTransport, cut into
pieces at every awkward byte boundary (inside UTF-8 characters, inside CRLF, inside "data:")."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from imrelay.config import BackendConfig
from imrelay.errors import BackendError
from imrelay_worker.backends import ChatMessage, ChatRequest, Usage
from imrelay_worker.backends.openai import OpenAIBackend

FIXTURES = Path(__file__).parent.parent / "fixtures" / "sse"
EXPECTED = "你好，世界！ Hello 😀 there."
REQUEST = ChatRequest(
    messages=[ChatMessage("system", "be brief"), ChatMessage("user", "hi")],
    user="wecom_app:b:u",
    conversation="wecom_app:b:u",
)


class Pieces(httpx.AsyncByteStream):
    def __init__(self, data: bytes, size: int, stall: float = 0.0) -> None:
        self.data, self.size, self.stall = data, size, stall

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self.data), self.size):
            yield self.data[i : i + self.size]
        if self.stall:
            await asyncio.sleep(self.stall)


def backend(handler: Callable[[httpx.Request], httpx.Response], **cfg: object) -> OpenAIBackend:
    conf = BackendConfig.model_validate(
        {
            "kind": "openai",
            "base_url": "http://llm/v1",
            "model": "gpt-4o-mini",
            "api_key": "sk-test",
            "temperature": 0.3,
            **cfg,
        }
    )
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return OpenAIBackend("default", conf, client)


def sse_handler(
    name: str, size: int, seen: list[httpx.Request] | None = None, stall: float = 0.0
) -> Callable[[httpx.Request], httpx.Response]:
    data = (FIXTURES / name).read_bytes()

    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=Pieces(data, size, stall)
        )

    return handler


async def collect(b: OpenAIBackend) -> str:
    return "".join([p async for p in b.stream(REQUEST) if isinstance(p, str)])


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64, 100000])
@pytest.mark.parametrize("name", ["openai_ok.sse", "openai_crlf_comments.sse"])
async def test_stream_is_reassembled_exactly(name: str, size: int) -> None:
    assert await collect(backend(sse_handler(name, size))) == EXPECTED


async def test_request_shape() -> None:
    seen: list[httpx.Request] = []
    await collect(backend(sse_handler("openai_ok.sse", 100000, seen)))
    req = seen[0]
    assert str(req.url) == "http://llm/v1/chat/completions"
    assert req.headers["authorization"] == "Bearer sk-test"
    body = json.loads(req.content)
    assert body["stream"] is True and body["model"] == "gpt-4o-mini"
    assert body["temperature"] == 0.3
    assert body["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("name", ["openai_ok.sse", "openai_crlf_comments.sse"])
async def test_the_usage_chunk_is_kept_on_the_request(name: str) -> None:
    request = ChatRequest(messages=[ChatMessage("user", "hi")], user="u", conversation="c")
    pieces = [p async for p in backend(sse_handler(name, 5)).stream(request)]
    assert "".join(p for p in pieces if isinstance(p, str)) == EXPECTED
    assert request.usage == Usage(input_tokens=9, output_tokens=6)


async def test_a_server_without_usage_leaves_it_unknown() -> None:
    data = (FIXTURES / "openai_ok.sse").read_bytes()
    data = b"\n\n".join(e for e in data.split(b"\n\n") if b'"usage"' not in e)

    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Pieces(data, 7))

    request = ChatRequest(messages=[ChatMessage("user", "hi")], user="u", conversation="c")
    assert "".join([p async for p in backend(handler).stream(request) if isinstance(p, str)]) == EXPECTED
    assert request.usage is None


async def test_eof_without_done_is_an_error() -> None:
    with pytest.raises(BackendError, match="DONE"):
        await collect(backend(sse_handler("openai_no_done.sse", 3)))


async def test_error_object_mid_stream() -> None:
    with pytest.raises(BackendError, match="server had an error"):
        await collect(backend(sse_handler("openai_error_midstream.sse", 9)))


@pytest.mark.parametrize(("status", "retryable"), [(401, False), (400, False), (429, True), (503, True)])
async def test_http_errors(status: int, retryable: bool) -> None:
    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": {"message": f"nope {status}"}})

    with pytest.raises(BackendError) as err:
        await collect(backend(handler))
    assert err.value.status == status and err.value.retryable is retryable
    assert "sk-test" not in str(err.value)


async def test_stalled_stream_hits_the_idle_timeout() -> None:
    class Stall(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
            await asyncio.sleep(30)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Stall())

    got: list[str] = []
    with pytest.raises(BackendError, match="idle timeout") as err:
        async for piece in backend(handler, idle_timeout_seconds=0.2).stream(REQUEST):
            assert isinstance(piece, str)
            got.append(piece)
    assert got == ["a"] and err.value.retryable


async def test_connection_failure_is_retryable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(BackendError) as err:
        await collect(backend(refuse))
    assert err.value.retryable


async def test_not_an_event_stream() -> None:
    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "application/json"}, json={"x": 1})

    with pytest.raises(BackendError, match="event stream"):
        await collect(backend(handler))


def test_per_bot_model_and_temperature_override_the_backend() -> None:
    from imrelay_worker.backends.openai import request_body

    cfg = BackendConfig.model_validate(
        {"kind": "openai", "base_url": "http://x/v1", "model": "base", "temperature": 0.7}
    )
    req = ChatRequest(messages=[ChatMessage("user", "hi")], user="u", conversation="c")
    assert (request_body(cfg, req)["model"], request_body(cfg, req)["temperature"]) == ("base", 0.7)
    req.model, req.temperature = "bot-model", 0.0
    assert (request_body(cfg, req)["model"], request_body(cfg, req)["temperature"]) == ("bot-model", 0.0)
