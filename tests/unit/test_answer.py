from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from imrelay.config import Platform
from imrelay.errors import BackendError
from imrelay.events import Chat, ChatType, InboundMessage, ReplyChunk, Sender
from imrelay_worker.answer import produce_answer

MSG = InboundMessage(id="m1", platform=Platform.WECOM_APP, bot_id="b", platform_message_id="k",
                     chat=Chat(id="u", type=ChatType.DIRECT), sender=Sender(id="u"), text="hi")


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


async def run(stream: AsyncIterator[str], **kw: object) -> tuple[list[ReplyChunk], object]:
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
    chunks, res = await run(pieces("a", "b", "c", delay=0.2), deadline_seconds=0.3,
                            coalesce_seconds=0.0)
    assert res.outcome == "timeout"  # type: ignore[attr-defined]
    assert chunks[-1].full_text is not None and chunks[-1].full_text.startswith("a")
    assert "timed out" in chunks[-1].full_text


async def test_empty_answer_is_an_error() -> None:
    chunks, res = await run(pieces("", "  "))
    assert chunks[-1].full_text == "sorry"
    assert res.outcome == "error"  # type: ignore[attr-defined]
