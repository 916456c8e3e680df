"""The sender's broker wiring: a durable pull consumer on IMRELAY_OUT delivering final answers.

For each final chunk the platform delivery renders the parts; each part is posted at most once: a record in
the ``imrelay_deliveries`` bucket keyed by reply id + part index is *claimed* with compare-and-set before the
post (so two copies of a chunk, on one replica or several, never post together) and marked ``done`` after the
platform accepts it, so a redelivered chunk skips what was already shown. A claim left by a replica that died
is taken over after ``sender.claim_timeout_seconds`` (the replica posting keeps its claim fresh meanwhile).
Transient failures are retried in-process with backoff and jitter, then by JetStream (nak with delay) up to
``sender.max_deliver``; permanent ones go to ``imrelay.dlq.sender`` with the platform's code in headers.

An answer's images (``chunk.media``, stored in the media bucket by the worker) follow its text, each its
own part (record ``m<n>``, claimed like the text parts) sent by the platform's ``MediaSink``, unless the
platform shows them with the text itself (``media_inline``). An image the platform refuses (too large, a
type it cannot show, a permanent upload error) becomes one line of text instead; the answer is not
dead-lettered for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from faststream.nats import NatsBroker, NatsMessage
from nats.js.errors import NotFoundError, ObjectDeletedError, ObjectNotFoundError
from pydantic import ValidationError

from imrelay import subjects
from imrelay.answer_streams import StreamStore
from imrelay.broker import durable_consumer, in_progress, make_broker
from imrelay.config import Settings
from imrelay.delivery import Delivery, DeliveryContext, MediaSink, Requester, StreamingDelivery
from imrelay.delivery.claims import Claim, DeliveryClaims, Held, busy_retry_delay
from imrelay.delivery.tokens import TokenCache
from imrelay.dlq import dlq_headers
from imrelay.errors import DeliveryBusy, PermanentUpstreamError, UpstreamError
from imrelay.events import ReplyChunk
from imrelay.hints import platform_hint
from imrelay.jetstream import Buckets
from imrelay.media import MediaError, MediaProblem, MediaRef, user_line
from imrelay.media.store import MediaStore
from imrelay.platforms import delivery_for
from imrelay.platforms import spec as spec_for_platform
from imrelay.subjects import kv_key
from imrelay.telemetry import DELIVERIES, DLQ, FIRST_REPLY, MEDIA, MEDIA_BYTES, RATE_LIMIT_WAIT

from .backoff import backoff_delay
from .ratelimit import Limit, RateLimiter

log = logging.getLogger("imrelay.sender")


@dataclass
class Sender:
    settings: Settings
    broker: NatsBroker
    claims: DeliveryClaims
    limiter: RateLimiter
    tokens: TokenCache | None = None
    deliveries: dict[str, Delivery] = field(default_factory=dict)
    media: MediaStore | None = None
    _last_update: dict[str, float] = field(default_factory=dict)
    _background: set[asyncio.Task[None]] = field(default_factory=set)

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        """Run bookkeeping that nothing waits for (metrics) off the delivery's path."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Let the bookkeeping still running finish (on stop)."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=5)

    async def dead_letter(
        self, msg: NatsMessage, platform: str, bot: str, reason: str, code: str | int | None, msg_id: str
    ) -> None:
        raw = msg.raw_message
        await self.broker.publish(
            raw.data,
            subjects.dlq_subject("sender"),
            headers=dlq_headers(
                "sender",
                reason,
                code=code,
                original_subject=raw.subject,
                deliveries=raw.metadata.num_delivered,
                msg_id=msg_id,
            ),
            stream=subjects.STREAM_DLQ,
        )
        DLQ.labels(platform=platform, bot=bot, stage="sender").inc()
        log.error("dead-lettered reply %s (%s): %s%s", msg_id, code, reason, platform_hint(platform, code))

    async def handle(self, msg: NatsMessage) -> None:
        # in progress while handled, so the ack wait can be short (a dead sender's replies go out soon)
        async with in_progress(msg, self.settings.sender.ack_wait_seconds):
            await self._handle(msg)

    async def _handle(self, msg: NatsMessage) -> None:
        raw = msg.raw_message
        try:
            chunk = ReplyChunk.model_validate_json(raw.data)
        except ValidationError:
            await self.dead_letter(
                msg, "unknown", "unknown", "invalid reply chunk", None, str(raw.metadata.sequence.stream)
            )
            await msg.ack()
            return
        delivery = self.deliveries.get(chunk.bot_id)
        if delivery is None:
            await self.dead_letter(
                msg,
                chunk.platform,
                chunk.bot_id,
                "no deliverable bot with this id in the sender's config",
                None,
                chunk.msg_id,
            )
            await msg.ack()
            return
        if chunk.placeholder is not None:
            if not isinstance(delivery, StreamingDelivery):  # those show the answer growing instead
                await self._placeholder(delivery, chunk, msg)
            await msg.ack()
            return
        if not chunk.final:
            if isinstance(delivery, StreamingDelivery) and chunk.text:
                await self._stream(delivery, chunk, chunk.text)
            # platforms that cannot edit a message wait for the final chunk, which carries the text
            await msg.ack()
            return
        streamed = self._last_update.pop(chunk.reply_id, None) is not None
        finish: Coroutine[Any, Any, None] | None = None
        try:
            finish = await self.deliver(delivery, chunk, first_reply_shown=streamed)
        except PermanentUpstreamError as exc:
            DELIVERIES.labels(platform=chunk.platform, bot=chunk.bot_id, outcome="failed").inc()
            await self.dead_letter(
                msg, chunk.platform, chunk.bot_id, exc.message or str(exc), exc.code, chunk.msg_id
            )
            await msg.ack()
        except DeliveryBusy:
            # Another copy of this chunk is being delivered right now: look again later.
            cfg = self.settings.sender
            await msg.nack(delay=busy_retry_delay(cfg.claim_timeout_seconds, cfg.backoff_max_seconds))
        except Exception as exc:
            delivered = raw.metadata.num_delivered
            code = exc.code if isinstance(exc, UpstreamError) else type(exc).__name__
            if delivered >= self.settings.sender.max_deliver:
                DELIVERIES.labels(platform=chunk.platform, bot=chunk.bot_id, outcome="failed").inc()
                await self.dead_letter(
                    msg,
                    chunk.platform,
                    chunk.bot_id,
                    f"gave up after {delivered} deliveries: {exc}",
                    code,
                    chunk.msg_id,
                )
                await msg.ack()
            else:
                retry_after = exc.retry_after if isinstance(exc, UpstreamError) else None
                delay = backoff_delay(
                    delivered,
                    self.settings.sender.backoff_base_seconds * 4,
                    self.settings.sender.backoff_max_seconds,
                    retry_after=retry_after,
                )
                log.warning(
                    "reply %s delivery %d failed (%s); redelivering in %.1fs%s",
                    chunk.msg_id,
                    delivered,
                    code,
                    delay,
                    platform_hint(chunk.platform, code),
                )
                await msg.nack(delay=delay)
        else:
            await msg.ack()
            if finish is not None:
                # The last part's delivery record is written while the next reply is fetched: acked, this
                # chunk is never redelivered, so nothing reads the record before it is written.
                self._later(finish)

    async def _placeholder(self, delivery: Delivery, chunk: ReplyChunk, msg: NatsMessage) -> None:
        """Post the "thinking…" message once; failing to is not worth a retry (the answer follows)."""
        record = kv_key("reply", chunk.reply_id, "placeholder")
        claim = await self.claims.claim(record)
        if not isinstance(claim, Held):
            return
        try:
            await self._within_limits(delivery, chunk)
            await delivery.send(chunk, chunk.placeholder or "", 0)
        except Exception as exc:
            log.info("reply %s: placeholder not shown (%s)", chunk.reply_id, type(exc).__name__)
        await self.claims.done(record, claim)

    async def _stream(self, delivery: StreamingDelivery, chunk: ReplyChunk, text: str) -> None:
        """Show the answer so far, at most once per ``update_interval``; a failed update is skipped (the
        next one, or the final chunk, shows the text)."""
        now = time.monotonic()
        previous = self._last_update.get(chunk.reply_id)
        if previous is not None and now - previous < delivery.update_interval:
            return
        self._last_update[chunk.reply_id] = now
        if len(self._last_update) > 10_000:  # replies that never finished (dead-lettered): forget the oldest
            for stale in list(self._last_update)[:1000]:
                del self._last_update[stale]
        labels = {"platform": chunk.platform, "bot": chunk.bot_id}
        try:
            await delivery.update(chunk, text)
            DELIVERIES.labels(outcome="update", **labels).inc()
            if previous is None:
                self._later(self._first_shown(chunk, labels))
        except Exception as exc:  # a missed update is made good by the next one
            DELIVERIES.labels(outcome="update_failed", **labels).inc()
            log.info("reply %s: update skipped (%s)", chunk.reply_id, type(exc).__name__)

    async def deliver(
        self, delivery: Delivery, chunk: ReplyChunk, first_reply_shown: bool = False
    ) -> Coroutine[Any, Any, None] | None:
        """Post the parts not posted yet. Returns the writing of the last posted part's delivery record,
        for the caller to run once the chunk is acknowledged (None: nothing left to write)."""
        labels = {"platform": chunk.platform, "bot": chunk.bot_id}
        parts = delivery.render(chunk)
        finish: Coroutine[Any, Any, None] | None = None
        images = bool(chunk.media) and isinstance(delivery, MediaSink) and not delivery.media_inline
        for index, part in enumerate(parts):
            record = kv_key("reply", chunk.reply_id, str(index))
            # the rate-limit window is asked for while the part is claimed: two round trips at once
            limits = asyncio.ensure_future(self._within_limits(delivery, chunk))
            try:
                claim = await self._claim(record, labels)
            except BaseException:
                await _cancel(limits)
                raise
            if claim is None:  # posted before
                await _cancel(limits)
                continue
            async with self._posting(record, claim):
                await self._send_with_retries(delivery, chunk, part, index, limits)
            if index == len(parts) - 1 and not images:
                finish = self._record_done(record, claim)
            else:
                await self.claims.done(record, claim)
            DELIVERIES.labels(outcome="ok", **labels).inc()
            if index == 0 and not first_reply_shown:
                self._later(self._first_shown(chunk, labels))
        if images:  # the answer's images follow its text, each recorded as it is sent
            await self._deliver_media(delivery, chunk, len(parts))
        return finish

    async def _claim(self, record: str, labels: dict[str, str]) -> Held | None:
        """Claim a part before posting it: None if it was posted before; :class:`DeliveryBusy` if another
        copy of the chunk is posting it now."""
        claim = await self.claims.claim(record)
        if claim is Claim.DONE:
            DELIVERIES.labels(outcome="duplicate_skipped", **labels).inc()
            return None
        if not isinstance(claim, Held):
            raise DeliveryBusy(record)
        return claim

    @contextlib.asynccontextmanager
    async def _posting(self, record: str, claim: Held) -> AsyncIterator[None]:
        """Keep the claim fresh while the part is posted; give it up if the post fails."""
        try:
            async with self.claims.kept(record, claim):
                yield
        except BaseException:
            await self.claims.release(record, claim)
            raise

    async def _record_done(self, record: str, claim: Held) -> None:
        try:
            await self.claims.done(record, claim)
        except Exception as exc:  # acked: the chunk is not redelivered, the missing record is never read
            log.warning("delivery record %s not written (%s)", record, type(exc).__name__)

    async def _deliver_media(self, delivery: Delivery, chunk: ReplyChunk, parts: int) -> None:
        if not isinstance(delivery, MediaSink) or delivery.media_inline:
            return
        labels = {"platform": chunk.platform, "bot": chunk.bot_id}
        for index, ref in enumerate(chunk.media):
            record = kv_key("reply", chunk.reply_id, f"m{index}")
            claim = await self._claim(record, labels)
            if claim is None:  # shown before
                continue
            async with self._posting(record, claim):  # an upload may take a while
                line = await self._send_media(delivery, chunk, ref, parts + index)
                if line is not None:  # the image cannot be shown: say so instead
                    await self._send_with_retries(delivery, chunk, line, parts + index)
            await self.claims.done(record, claim)

    async def _send_media(
        self, delivery: MediaSink, chunk: ReplyChunk, ref: MediaRef, index: int
    ) -> str | None:
        """Send one image; the line to show instead when the platform cannot take it."""
        labels = {"platform": chunk.platform, "kind": ref.kind.value}
        problem: MediaProblem | None = None
        limit = spec_for_platform(chunk.platform).media.limits.get(ref.kind)
        if self.media is None:
            problem = MediaProblem.UPLOAD_FAILED
        else:
            try:
                data = await self.media.get(ref)
            except (ObjectNotFoundError, ObjectDeletedError, NotFoundError, ValueError):
                problem = MediaProblem.UPLOAD_FAILED  # expired from the bucket, or damaged
            else:
                try:
                    await self._with_retries(
                        chunk, index, lambda: delivery.send_media(chunk, ref, data, index)
                    )
                except MediaError as exc:
                    problem = exc.problem
                except PermanentUpstreamError as exc:
                    log.warning("reply %s: image %s refused (%s)", chunk.reply_id, ref.key, exc.code)
                    problem = MediaProblem.UPLOAD_FAILED
                else:
                    MEDIA.labels(direction="out", outcome="ok", **labels).inc()
                    MEDIA_BYTES.labels(direction="out", **labels).inc(ref.size)
                    DELIVERIES.labels(outcome="ok", platform=chunk.platform, bot=chunk.bot_id).inc()
                    return None
        MEDIA.labels(direction="out", outcome=problem.value, **labels).inc()
        return user_line(
            ref.kind, problem, limit=limit if problem is MediaProblem.OVERSIZE else None, outbound=True
        )

    async def _first_shown(self, chunk: ReplyChunk, labels: dict[str, str]) -> None:
        """Observe the user's first sight of the answer once per reply, whichever replica shows it (the
        streamed updates and the final part may be handled by different replicas)."""
        if chunk.received_at is None:
            return
        if await self.claims.first(kv_key("reply", chunk.reply_id, "shown")):
            FIRST_REPLY.labels(**labels).observe((datetime.now(UTC) - chunk.received_at).total_seconds())

    async def _within_limits(self, delivery: Delivery, chunk: ReplyChunk) -> None:
        """Wait until one more message keeps every limit of this platform (held across replicas)."""
        for scope, key in delivery.limits(chunk):
            conf = self.settings.sender.rate_limit(scope)
            if conf is None:
                continue
            waited = await self.limiter.acquire(
                kv_key("rl", scope, key), Limit(conf.limit, conf.window_seconds)
            )
            if waited > 0:
                RATE_LIMIT_WAIT.labels(platform=chunk.platform, bot=chunk.bot_id).observe(waited)

    async def _send_with_retries(
        self,
        delivery: Delivery,
        chunk: ReplyChunk,
        part: str,
        index: int,
        limits: asyncio.Future[None] | None = None,
    ) -> None:
        """Send one part, retrying transient failures; ``limits``, when given, is the first attempt's
        rate-limit wait, already under way."""
        await self._with_retries(chunk, index, lambda: delivery.send(chunk, part, index), delivery, limits)

    async def _with_retries(
        self,
        chunk: ReplyChunk,
        index: int,
        send: Callable[[], Awaitable[None]],
        delivery: Delivery | None = None,
        limits: asyncio.Future[None] | None = None,
    ) -> None:
        """``send`` within the platform's limits, transient failures retried with backoff."""
        delivery = delivery or self.deliveries[chunk.bot_id]
        cfg = self.settings.sender
        labels = {"platform": chunk.platform, "bot": chunk.bot_id}
        attempt = 0
        while True:
            attempt += 1
            if limits is not None:
                await limits
                limits = None
            else:
                await self._within_limits(delivery, chunk)
            try:
                await send()
                return
            except PermanentUpstreamError:
                raise
            except UpstreamError as exc:
                if attempt >= cfg.max_attempts:
                    raise
                DELIVERIES.labels(outcome="retry", **labels).inc()
                delay = backoff_delay(
                    attempt, cfg.backoff_base_seconds, cfg.backoff_max_seconds, retry_after=exc.retry_after
                )
                if exc.retry_after is not None:
                    RATE_LIMIT_WAIT.labels(**labels).observe(delay)
                log.info(
                    "reply %s part %d: %s; retry %d in %.2fs", chunk.reply_id, index, exc.code, attempt, delay
                )
                await asyncio.sleep(delay)


async def _cancel(task: asyncio.Future[None]) -> None:
    task.cancel()
    with contextlib.suppress(BaseException):
        await task


def build_sender(
    settings: Settings,
    buckets: Buckets,
    client: httpx.AsyncClient,
    answer_streams: StreamStore,
    requester: Requester | None = None,
    media: MediaStore | None = None,
) -> Sender:
    cfg = settings.sender
    broker = make_broker(settings.nats, "sender", graceful_timeout=30.0)
    tokens = TokenCache(buckets.tokens, skew=cfg.token_refresh_skew_seconds)
    claims = DeliveryClaims(buckets.deliveries, stale_after=cfg.claim_timeout_seconds)
    limiter = RateLimiter(buckets.ratelimits, margin=cfg.rate_limit_margin_seconds)
    sender = Sender(
        settings=settings, broker=broker, claims=claims, limiter=limiter, tokens=tokens, media=media
    )
    ctx = DeliveryContext(
        settings=settings,
        client=client,
        tokens=tokens,
        deliveries=buckets.deliveries,
        answer_streams=answer_streams,
        requester=requester,
        media=media,
    )
    for bot in settings.bots:
        sender.deliveries[bot.id] = delivery_for(bot, ctx)
    # One consumer a partition, one message in flight each across all replicas: a conversation's replies
    # are delivered in order; conversations in different partitions go in parallel.
    for k in range(settings.nats.out_partitions):
        durable_consumer(
            broker,
            subject=subjects.outbound_partition_filter(k),
            stream=subjects.STREAM_OUT,
            durable=subjects.sender_consumer(k),
            ack_wait=cfg.ack_wait_seconds,
            max_deliver=cfg.max_deliver,
            concurrency=1,
            max_ack_pending=1,
            handler=sender.handle,
        )
    return sender
