"""Turning one backend stream into reply chunks: coalesce deltas, number them, finish with the full text.

Pure orchestration over injected callables (backend stream, publish, clock), so it is unit-tested without a
broker. Backend failures never leave the user in silence: the final chunk then carries a polite message (and
whatever was already streamed) with ``error`` set.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from imrelay.errors import BackendError
from imrelay.events import InboundMessage, ReplyChunk, ReplyFormat

from .backends import Piece, Replace

Publish = Callable[[ReplyChunk], Awaitable[None]]


@dataclass(slots=True)
class AnswerOutcome:
    text: str
    outcome: str  # ok | error | timeout
    first_token_seconds: float | None
    duration_seconds: float
    chunks: int
    error: str | None = None


def _chunk(msg: InboundMessage, seq: int, delta: str, *, final: bool = False,
           full_text: str | None = None, error: str | None = None, text: str | None = None,
           placeholder: str | None = None, fmt: ReplyFormat = ReplyFormat.TEXT) -> ReplyChunk:
    return ReplyChunk(
        reply_id=msg.id, inbound_id=msg.id, platform=msg.platform, bot_id=msg.bot_id,
        chat=msg.chat, recipient=msg.sender, reply_handle=msg.reply_handle, seq=seq,
        delta=delta, text=text if text is not None else full_text, final=final, full_text=full_text,
        format=fmt, error=error, received_at=msg.received_at, placeholder=placeholder,
    )


async def produce_answer(msg: InboundMessage, stream: AsyncIterator[Piece], publish: Publish, *,
                         deadline_seconds: float, coalesce_seconds: float = 0.2,
                         error_message: str, timeout_notice: str = "(answer cut short: timed out)",
                         placeholder: str | None = None, placeholder_after: float = 3.0,
                         fmt: ReplyFormat = ReplyFormat.TEXT,
                         clock: Callable[[], float] = time.monotonic) -> AnswerOutcome:
    """Stream ``stream`` as reply chunks. With ``placeholder``, a chunk carrying it is published when no
    answer text has come after ``placeholder_after`` seconds (platforms that cannot edit show it first)."""
    started = clock()
    parts: list[str] = []
    pending: list[str] = []
    seq = 0
    first: float | None = None
    last_flush = started

    sent = ""  # the text the deltas published so far add up to

    async def flush() -> None:
        nonlocal seq, last_flush, pending, sent
        if pending:
            delta = "".join(pending)
            sent += delta
            await publish(_chunk(msg, seq, delta, text=sent, fmt=fmt))
            seq += 1
            pending = []
        last_flush = clock()

    async def announce() -> None:
        await asyncio.sleep(placeholder_after)
        if first is None and placeholder:
            await publish(_chunk(msg, 0, "", placeholder=placeholder))

    announcer = asyncio.create_task(announce()) if placeholder else None
    outcome, error = "ok", None
    try:
        async with asyncio.timeout(deadline_seconds):
            async for piece in stream:
                if isinstance(piece, Replace):
                    # the backend replaced its answer: what was shown is superseded by the final
                    parts, pending = [piece.text], []
                    continue
                if not piece:
                    continue
                parts.append(piece)
                pending.append(piece)
                if first is None:
                    first = clock() - started
                    await flush()  # the first words go out at once: they are what the user waits for
                elif clock() - last_flush >= coalesce_seconds:
                    await flush()
    except TimeoutError:
        outcome, error = "timeout", "answer deadline exceeded"
    except BackendError as exc:
        outcome, error = "error", str(exc)
    finally:
        if announcer is not None:
            announcer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await announcer
    await flush()
    text = "".join(parts)
    if outcome == "ok" and not text.strip():
        outcome, error = "error", "backend returned an empty answer"
    if outcome == "ok":
        final_text = text
    elif not text.strip():
        final_text = error_message
    elif outcome == "timeout":
        final_text = f"{text}\n\n{timeout_notice}"
    else:
        final_text = f"{text}\n\n{error_message}"
    await publish(_chunk(msg, seq, final_text[len(sent):] if final_text.startswith(sent) else "",
                         final=True, full_text=final_text, error=error, fmt=fmt))
    return AnswerOutcome(text=text, outcome=outcome, first_token_seconds=first,
                         duration_seconds=clock() - started, chunks=seq + 1, error=error)
