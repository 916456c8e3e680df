from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from imrelay.config import BackendConfig
from imrelay.errors import BackendError
from imrelay.events import Chat, ChatType, InboundMessage, ReplyChunk, Sender
from imrelay_worker.answer import produce_answer
from imrelay_worker.backends import ChatMessage, ChatRequest, Piece
from imrelay_worker.backends.openai import OpenAIBackend

MSG = InboundMessage(
    id="m1",
    platform="wecom_app",
    bot_id="b",
    platform_message_id="k",
    chat=Chat(id="u", type=ChatType.DIRECT),
    sender=Sender(id="u"),
    text="hi",
)


async def pieces(*items: str | Exception, delay: float = 0.0) -> AsyncIterator[str]:
    for item in items:
        if delay:
            await asyncio.sleep(delay)
        if isinstance(item, Exception):
            raise item
        yield item


class Ticker:
    """A fake clock that advances one second per read."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


async def run(
    stream: AsyncIterator[str] | AsyncIterator[Piece], **kw: object
) -> tuple[list[ReplyChunk], object]:
    out: list[ReplyChunk] = []

    async def publish(c: ReplyChunk) -> None:
        out.append(c)

    opts: dict[str, object] = {"deadline_seconds": 5.0, "error_message": "sorry", **kw}
    res = await produce_answer(MSG, stream, publish, **opts)  # type: ignore[arg-type]
    return out, res


async def test_deltas_are_numbered_and_final_has_the_whole_text() -> None:
    chunks, res = await run(pieces("Hel", "lo ", "world"), coalesce_seconds=0.0, clock=Ticker())
    assert [c.seq for c in chunks] == [0, 1, 2, 3]
    assert [c.delta for c in chunks[:-1]] == ["Hel", "lo ", "world"]
    final = chunks[-1]
    assert final.final and final.full_text == "Hello world" and final.error is None
    assert final.msg_id == "m1:final" and chunks[0].msg_id == "m1:0"
    assert res.outcome == "ok"  # type: ignore[attr-defined]


async def test_first_piece_at_once_then_deltas_are_coalesced() -> None:
    chunks, _ = await run(pieces("a", "b", "c", "d"), coalesce_seconds=1e9)
    assert [c.delta for c in chunks] == ["a", "bcd", ""]
    assert [c.text for c in chunks] == ["a", "abcd", "abcd"]  # the answer so far, for edits
    assert chunks[-1].full_text == "abcd"


async def test_without_deltas_only_the_final_chunk_is_published() -> None:
    # a platform that cannot show an answer growing gets no chunks it would only acknowledge
    chunks, res = await run(pieces("Hel", "lo ", "world"), coalesce_seconds=0.0, deltas=False)
    assert len(chunks) == 1
    [final] = chunks
    assert final.final and final.seq == 0 and final.msg_id == "m1:final"
    assert final.full_text == "Hello world" and final.delta == "Hello world"
    assert res.first_token_seconds is not None  # type: ignore[attr-defined]


async def test_placeholder_when_the_first_words_are_slow() -> None:
    chunks, _ = await run(pieces("late", delay=0.3), placeholder="thinking…", placeholder_after=0.1)
    assert chunks[0].placeholder == "thinking…" and chunks[0].msg_id == "m1:placeholder"
    assert chunks[-1].full_text == "late"
    quick, _ = await run(pieces("quick"), placeholder="thinking…", placeholder_after=0.5)
    assert all(c.placeholder is None for c in quick)


async def test_backend_error_gives_a_polite_final() -> None:
    chunks, res = await run(pieces(BackendError("openai", "boom")))
    assert chunks[-1].final and chunks[-1].full_text == "sorry"
    assert chunks[-1].error is not None
    assert res.outcome == "error"  # type: ignore[attr-defined]


async def test_error_after_partial_answer_keeps_what_was_said() -> None:
    chunks, _ = await run(pieces("partial", BackendError("openai", "cut")), coalesce_seconds=0.0)
    assert chunks[-1].full_text == "partial\n\nsorry"


async def test_timeout_keeps_streamed_text_and_adds_notice() -> None:
    chunks, res = await run(pieces("a", "b", "c", delay=0.2), deadline_seconds=0.3, coalesce_seconds=0.0)
    assert res.outcome == "timeout"  # type: ignore[attr-defined]
    assert chunks[-1].full_text is not None and chunks[-1].full_text.startswith("a")
    assert "timed out" in chunks[-1].full_text


async def test_empty_answer_is_an_error() -> None:
    chunks, res = await run(pieces("", "  "))
    assert chunks[-1].full_text == "sorry"
    assert res.outcome == "error"  # type: ignore[attr-defined]


class ModelBody(httpx.AsyncByteStream):
    """A model's streamed HTTP body (OpenAI wire format) that records when it is closed."""

    def __init__(self, words: int) -> None:
        self.words, self.closed = words, False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(self.words):
            yield ("data: " + json.dumps({"choices": [{"delta": {"content": f"w{i} "}}]}) + "\n\n").encode()
            await asyncio.sleep(0.001)
        yield b"data: [DONE]\n\n"

    async def aclose(self) -> None:
        self.closed = True


def model(body: ModelBody, requests: list[httpx.Request]) -> OpenAIBackend:
    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=body)

    conf = BackendConfig.model_validate(
        {"kind": "openai", "base_url": "http://llm/v1", "model": "m", "api_key": "k"}
    )
    return OpenAIBackend("default", conf, httpx.AsyncClient(transport=httpx.MockTransport(handler)))


REQ = ChatRequest(messages=[ChatMessage("user", "hi")], user="u", conversation="c")


async def test_a_failed_publish_mid_answer_neither_stops_the_answer_nor_asks_again() -> None:
    body, requests, published = ModelBody(20), list[httpx.Request](), list[ReplyChunk]()
    calls = 0

    async def publish(c: ReplyChunk) -> None:
        nonlocal calls
        calls += 1
        if calls in (3, 4):  # the broker loses its leader for a moment
            raise ConnectionError("no responders")
        published.append(c)

    res = await produce_answer(
        MSG,
        model(body, requests).stream(REQ),
        publish,
        deadline_seconds=5,
        error_message="sorry",
        coalesce_seconds=0.0,
    )
    whole = "".join(f"w{i} " for i in range(20))
    assert res.outcome == "ok" and res.text == whole
    assert published[-1].final and published[-1].full_text == whole
    assert all(whole.startswith(c.text or "") for c in published)
    assert len(requests) == 1  # the model was asked once
    assert body.closed


async def test_the_model_stream_is_closed_when_the_final_cannot_be_published() -> None:
    body, requests = ModelBody(20), list[httpx.Request]()
    seen: list[ReplyChunk] = []

    async def publish(c: ReplyChunk) -> None:
        seen.append(c)
        if len(seen) == 2:  # the broker fails for good: abandon the answer (the message is redelivered)
            raise ConnectionError("no responders")
        if c.final:
            raise ConnectionError("no responders")

    with pytest.raises(ConnectionError):
        await produce_answer(
            MSG,
            model(body, requests).stream(REQ),
            publish,
            deadline_seconds=5,
            error_message="sorry",
            coalesce_seconds=0.0,
            final_publish_delays=(0.01, 0.01),
        )
    assert body.closed  # closed by us, not by the garbage collector later
    assert sum(1 for c in seen if c.final) == 3  # tried, and tried again twice


async def test_the_stream_is_closed_when_reading_stops_early() -> None:
    body, requests = ModelBody(1000), list[httpx.Request]()
    chunks, res = await run(model(body, requests).stream(REQ), deadline_seconds=0.05, coalesce_seconds=0.0)
    assert res.outcome == "timeout"  # type: ignore[attr-defined]
    assert body.closed
