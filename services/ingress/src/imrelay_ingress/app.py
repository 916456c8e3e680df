"""The public ingress app: ``/callback/{bot_id}`` only. Metrics and probes live on the admin port."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from opentelemetry import trace
from prometheus_client import Counter, Histogram
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from imrelay.answer_streams import StreamRecord, StreamStore
from imrelay.callbacks import Adapter, CallbackRequest, StreamingAdapter
from imrelay.config import Settings
from imrelay.errors import (
    BodyTooLarge,
    CallbackError,
    PublishUnavailable,
    ReplayError,
    UnknownBotError,
    VerifyError,
)
from imrelay.hints import callback_hint
from imrelay.media import MediaRef
from imrelay.platforms import adapter_for
from imrelay.telemetry import CALLBACK_ACK, CALLBACKS, exports_traces

from .publisher import Publisher, ReplayGuard

log = logging.getLogger("imrelay.ingress")
tracer = trace.get_tracer("imrelay.ingress")


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _outcome_for(exc: CallbackError) -> str:
    if isinstance(exc, UnknownBotError):
        return "unknown_bot"
    if isinstance(exc, VerifyError):
        return "rejected_replay" if isinstance(exc, ReplayError) else "rejected_signature"
    return "rejected_malformed"


class MediaReader(Protocol):
    async def get(self, ref: MediaRef) -> bytes: ...


async def _stream_images(
    media: MediaReader | None, bot_id: str, record: StreamRecord | None
) -> list[tuple[MediaRef, bytes]]:
    """The bytes of a finished stream's images; one that cannot be read is left out (and logged)."""
    if record is None or not record.finish or not record.media or media is None:
        return []
    images: list[tuple[MediaRef, bytes]] = []
    for ref in record.media:
        try:
            images.append((ref, await media.get(ref)))
        except Exception as exc:
            log.warning("stream poll bot=%s: an image was not read (%s)", bot_id, type(exc).__name__)
    return images


def create_app(
    settings: Settings,
    publisher: Publisher,
    *,
    clock: Callable[[], float] = time.time,
    adapters: Mapping[str, Adapter] | None = None,
    streams: StreamStore | None = None,
    replay: ReplayGuard | None = None,
    media: MediaReader | None = None,
) -> Starlette:
    """Build the ingress app. ``publisher`` stores messages (JetStream in production, a fake in unit
    tests); ``streams`` holds the answer streams platforms poll; ``replay`` remembers once-only signatures
    (a platform whose signature does not cover the body is refused without it); ``media`` reads the images a
    finished answer stream shows; ``clock`` is injectable for timestamp windows."""
    table: dict[str, Adapter] = (
        dict(adapters) if adapters is not None else {bot.id: adapter_for(bot) for bot in settings.bots}
    )
    platform_of = {bot.id: bot.platform for bot in settings.bots}
    for bot in settings.bots:
        for warning in bot.start_warnings():
            log.warning("bot %s %s", bot.id, warning)
    limit = settings.ingress.max_body_bytes
    # A message's trace starts here when traces are exported. Without an exporter nothing would receive
    # the span: none is opened (no trace context in the stored message; the worker starts the trace),
    # which spares about an eighth of the ingress's time per callback.
    traced = exports_traces()
    untraced = contextlib.nullcontext(trace.INVALID_SPAN)
    # The metric series of each (platform, bot, outcome), looked up once: the labels are configured names
    # and fixed words ("unknown" for any other bot id), so there are few of them.
    series: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}

    def observe(platform: str, bot: str, outcome: str, seconds: float) -> None:
        key = (platform, bot, outcome)
        pair = series.get(key)
        if pair is None:
            labels = {"platform": platform, "bot": bot, "outcome": outcome}
            pair = series[key] = (CALLBACKS.labels(**labels), CALLBACK_ACK.labels(**labels))
        pair[0].inc()
        pair[1].observe(seconds)

    async def callback(request: Request) -> Response:
        started = time.perf_counter()
        bot_id = request.path_params["bot_id"]
        platform = platform_of.get(bot_id, "unknown")
        bot_label = bot_id if bot_id in table else "unknown"

        def done(
            status: int,
            outcome: str,
            body: bytes = b"",
            media: str = "text/plain",
            headers: dict[str, str] | None = None,
        ) -> Response:
            observe(platform, bot_label, outcome, time.perf_counter() - started)
            return Response(body, status_code=status, media_type=media, headers=headers)

        adapter = table.get(bot_id)
        if adapter is None:
            log.warning("callback for unknown bot id (path %s)", request.url.path[:80])
            return done(404, "unknown_bot")
        with (
            tracer.start_as_current_span(
                "imrelay.callback",
                kind=trace.SpanKind.SERVER,
                attributes={
                    "imrelay.platform": platform,
                    "imrelay.bot": bot_id,
                    "http.request.method": request.method,
                },
            )
            if traced
            else untraced
        ) as span:
            try:
                body = await read_body(request, limit)
            except BodyTooLarge:
                log.warning("callback rejected bot=%s reason=body over %d bytes", bot_id, limit)
                return done(413, "rejected_oversize")
            except ClientDisconnect:  # gone, or cut off by the body deadline: nobody to answer
                return Response(status_code=408)
            cb = CallbackRequest(
                method=request.method,
                query=request.query_params,
                headers=request.headers,
                body=body,
                now=clock(),
            )
            try:
                result = adapter.handle(cb)
            except CallbackError as exc:
                log.warning(
                    "callback rejected bot=%s reason=%s code=%s%s",
                    bot_id,
                    exc.reason,
                    exc.code,
                    callback_hint(_outcome_for(exc)),
                )
                span.set_attribute("imrelay.outcome", _outcome_for(exc))
                return done(exc.status_code, _outcome_for(exc))
            except Exception as exc:
                # Input the adapter did not foresee is still bad input: 400, never a 500. Adapters raise
                # CallbackError for everything they check, so this is logged as a defect to fix.
                log.error(
                    "callback rejected bot=%s reason=unexpected %s while parsing", bot_id, type(exc).__name__
                )
                return done(400, "rejected_malformed")
            if result.replay_claim is not None:
                claim = result.replay_claim
                try:
                    if replay is None:
                        raise PublishUnavailable("no replay record")
                    first_use = await replay.claim(claim.key, claim.fingerprint)
                except Exception as exc:
                    log.error(
                        "callback not checked bot=%s: replay record unavailable (%s); answering 503",
                        bot_id,
                        type(exc).__name__,
                    )
                    return done(503, "unavailable", headers={"Retry-After": "1"})
                if not first_use:
                    log.warning(
                        "callback rejected bot=%s reason=signature already used with another body", bot_id
                    )
                    span.set_attribute("imrelay.outcome", "rejected_replay")
                    return done(401, "rejected_replay")
            outcome = "accepted"
            if result.stream_poll is not None:
                if streams is None or not isinstance(adapter, StreamingAdapter):
                    return done(503, "unavailable", headers={"Retry-After": "1"})
                try:
                    record = await streams.get(bot_id, result.stream_poll)
                except Exception as exc:
                    log.error("stream poll bot=%s: store unavailable (%s)", bot_id, type(exc).__name__)
                    return done(503, "unavailable", headers={"Retry-After": "1"})
                images = await _stream_images(media, bot_id, record)
                return done(
                    200,
                    "stream_poll",
                    adapter.poll_reply(cb, result.stream_poll, record, images),
                    "application/json",
                )
            if result.message is not None:
                span.set_attribute("imrelay.message_id", result.message.id)
                try:
                    duplicate = await publisher.publish(result.message)
                except PublishUnavailable as exc:
                    log.error(
                        "callback not stored bot=%s: JetStream unavailable (%s); answering 503", bot_id, exc
                    )
                    return done(503, "unavailable", b"", headers={"Retry-After": "1"})
                if duplicate:
                    outcome = "duplicate"
                    log.info("duplicate callback bot=%s key=%s", bot_id, result.dedupe_key)
                else:
                    log.debug("stored message bot=%s id=%s", bot_id, result.message.id)
                if result.stream_open is not None and streams is not None:
                    try:
                        await streams.open(bot_id, result.stream_open)
                    except Exception as exc:
                        log.error("stream open bot=%s failed (%s); answering 503", bot_id, type(exc).__name__)
                        return done(503, "unavailable", headers={"Retry-After": "1"})
            span.set_attribute("imrelay.outcome", outcome)
            return done(
                result.status, outcome, result.body, result.content_type, result.extra_headers or None
            )

    return Starlette(routes=[Route("/callback/{bot_id}", callback, methods=["GET", "POST"])])
