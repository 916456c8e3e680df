"""Turning one backend stream into reply chunks: coalesce deltas, number them, finish with the full text.

Pure orchestration over injected callables (backend stream, publish, clock), so it is unit-tested without a
broker. Backend failures never leave the user in silence: the final chunk then carries a polite message (and
whatever was already streamed) with ``error`` set. A chunk that cannot be published while the answer is
being written (the broker electing a leader, say) is skipped — the next one, and the final chunk, carry the
whole text so far — so the model is not asked again; the final chunk is tried a few times before giving
up. The backend's stream is always closed here, whatever happens, not left to the garbage collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from imrelay.errors import BackendError
from imrelay.events import InboundMessage, ReplyChunk, ReplyFormat
from imrelay.media import MediaRef
from imrelay.redact import redact

from .backends import Piece, Replace

log = logging.getLogger("imrelay.worker")

Publish = Callable[[ReplyChunk], Awaitable[None]]
# the final text -> (the text shown, images sent with it): the answer's image links fetched and stored
Finish = Callable[[str], Awaitable[tuple[str, list[MediaRef]]]]
FINAL_PUBLISH_DELAYS = (0.5, 1.0, 2.0, 4.0)  # seconds between tries of the final chunk (a leader election)


@dataclass(slots=True)
class AnswerOutcome:
    text: str
    outcome: str  # ok | error | timeout
    first_token_seconds: float | None
    duration_seconds: float
    chunks: int
    error: str | None = None


def _chunk(
    msg: InboundMessage,
    seq: int,
    delta: str,
    *,
    final: bool = False,
    full_text: str | None = None,
    error: str | None = None,
    text: str | None = None,
    placeholder: str | None = None,
    fmt: ReplyFormat = ReplyFormat.TEXT,
    media: list[MediaRef] | None = None,
) -> ReplyChunk:
    return ReplyChunk(
        reply_id=msg.id,
        inbound_id=msg.id,
        platform=msg.platform,
        bot_id=msg.bot_id,
        chat=msg.chat,
        recipient=msg.sender,
        reply_handle=msg.reply_handle,
        seq=seq,
        delta=delta,
        text=text if text is not None else full_text,
        final=final,
        full_text=full_text,
        format=fmt,
        error=error,
        received_at=msg.received_at,
        placeholder=placeholder,
        media=media or [],
    )


async def produce_answer(
    msg: InboundMessage,
    stream: AsyncIterator[Piece],
    publish: Publish,
    *,
    deadline_seconds: float,
    coalesce_seconds: float = 0.2,
    error_message: str,
    timeout_notice: str = "(answer cut short: timed out)",
    placeholder: str | None = None,
    placeholder_after: float = 3.0,
    fmt: ReplyFormat = ReplyFormat.TEXT,
    deltas: bool = True,
    final_publish_delays: tuple[float, ...] = FINAL_PUBLISH_DELAYS,
    clock: Callable[[], float] = time.monotonic,
    finish: Finish | None = None,
) -> AnswerOutcome:
    """Stream ``stream`` as reply chunks. With ``placeholder``, a chunk carrying it is published when no
    answer text has come after ``placeholder_after`` seconds (platforms that cannot edit show it first).
    Without ``deltas`` (a platform that cannot show an answer growing) only the placeholder and the final
    chunk are published. Raises only when the final chunk cannot be published (then nothing of the answer
    is stored for sure)."""
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
            try:
                await publish(_chunk(msg, seq, delta, text=sent + delta, fmt=fmt))
            except Exception as exc:  # best effort: the next chunk carries this text too
                log.info("reply %s: chunk %d not published (%s); continuing", msg.id, seq, type(exc).__name__)
            else:
                sent += delta
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
                if not deltas:
                    if first is None:
                        first = clock() - started
                    continue
                pending.append(piece)
                if first is None:
                    first = clock() - started
                    await flush()  # the first words go out at once: they are what the user waits for
                elif clock() - last_flush >= coalesce_seconds:
                    await flush()
    except TimeoutError:
        outcome, error = "timeout", "answer deadline exceeded"
    except BackendError as exc:
        outcome, error = "error", redact(str(exc))  # it travels on NATS: no echoed API key
    finally:
        # Close the model's HTTP stream now, on this task, also when we stopped reading it early.
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
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
    media: list[MediaRef] = []
    if finish is not None and text.strip():
        try:
            final_text, media = await finish(final_text)
        except Exception as exc:  # the answer's text goes out even if its images cannot
            log.warning("reply %s: answer images not attached (%s)", msg.id, type(exc).__name__)
    final = _chunk(
        msg,
        seq,
        final_text[len(sent) :] if final_text.startswith(sent) else "",
        final=True,
        full_text=final_text,
        error=error,
        fmt=fmt,
        media=media,
    )
    for delay in (*final_publish_delays, None):
        try:
            await publish(final)
            break
        except Exception as exc:
            if delay is None:
                raise
            log.warning(
                "reply %s: final chunk not published (%s); trying again in %.1fs",
                msg.id,
                type(exc).__name__,
                delay,
            )
            await asyncio.sleep(delay)
    return AnswerOutcome(
        text=text,
        outcome=outcome,
        first_token_seconds=first,
        duration_seconds=clock() - started,
        chunks=seq + 1,
        error=error,
    )
