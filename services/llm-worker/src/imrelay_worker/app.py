"""The llm-worker's broker wiring: a durable pull consumer on IMRELAY_IN, reply chunks to IMRELAY_OUT.

Delivery semantics: explicit ack after the final chunk is stored; in-progress acks while the backend is
slow; a failed attempt is nak'ed with a delay and retried up to ``worker.max_deliver`` times, then the message
goes to ``imrelay.dlq.worker`` with the reason in headers. Reply chunks carry deterministic ``Nats-Msg-Id``s
(``<reply>:<seq>``, ``<reply>:final``) so a re-run after a crash never shows the user a second answer.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from faststream.nats import NatsBroker, NatsMessage
from nats.js.kv import KeyValue
from opentelemetry import trace
from pydantic import ValidationError

from imrelay import subjects
from imrelay.broker import durable_consumer, in_progress, make_broker
from imrelay.config import BotConfig, Settings
from imrelay.delivery import DeliveryContext
from imrelay.delivery.claims import Claim, DeliveryClaims, Held, busy_retry_delay
from imrelay.delivery.tokens import TokenCache
from imrelay.dlq import dlq_headers
from imrelay.errors import NotConfiguredError
from imrelay.events import InboundMessage, ReplyChunk, ReplyFormat
from imrelay.httpclient import async_client
from imrelay.media import MEDIA_KINDS, MediaKind, MediaProblem, MediaRef
from imrelay.media.store import MediaStore
from imrelay.platforms import delivery_for, spec_for
from imrelay.subjects import kv_key
from imrelay.telemetry import DLQ, LLM_DURATION, LLM_TOKENS, LLM_TTFT, instrument_httpx, model_label

from .answer import Finish, produce_answer
from .backends import Backend, ChatMessage, ChatRequest, Piece, Usage, build_backend
from .media import Gathered, MediaStep, Unread
from .memory import Conversation, MemoryStore, Turn, conversation_key
from .privacy import Pseudonyms

log = logging.getLogger("imrelay.worker")
tracer = trace.get_tracer("imrelay.worker")

NON_TEXT_REPLY = "I can read text, pictures, files and voice messages, but not this kind of message."
COMMANDS = {
    "/reset": "Conversation cleared. What would you like to talk about?",
    "/help": "Ask me anything in plain words. Commands: /reset forgets our conversation so far, "
    "/help shows this message.",
}


@dataclass
class Worker:
    settings: Settings
    broker: NatsBroker
    backends: dict[str, Backend]
    client: httpx.AsyncClient
    memory: MemoryStore | None = None
    media: MediaStep | None = None  # set once the media bucket is there
    # the messages answered (or being answered): a copy delivered again is not answered again
    answered: DeliveryClaims | None = None

    async def publish_chunk(self, chunk: ReplyChunk) -> None:
        await self.broker.publish(
            chunk.model_dump_json().encode(),
            subjects.outbound_subject(
                chunk.platform,
                chunk.bot_id,
                subjects.partition_of(f"{chunk.bot_id}:{chunk.chat.id}", self.settings.nats.out_partitions),
            ),
            headers={subjects.HDR_MSG_ID: chunk.msg_id},
            stream=subjects.STREAM_OUT,
            timeout=self.settings.nats.publish_timeout_seconds,
        )

    async def dead_letter(self, msg: NatsMessage, reason: str, msg_id: str) -> None:
        raw = msg.raw_message
        platform, bot = _labels_of(raw.subject)
        await self.broker.publish(
            raw.data,
            subjects.dlq_subject("worker"),
            headers=dlq_headers(
                "worker",
                reason,
                original_subject=raw.subject,
                deliveries=raw.metadata.num_delivered,
                msg_id=msg_id,
            ),
            stream=subjects.STREAM_DLQ,
        )
        DLQ.labels(platform=platform, bot=bot, stage="worker").inc()
        log.error("dead-lettered inbound %s: %s", msg_id, reason)

    async def handle(self, msg: NatsMessage) -> None:
        # in progress while handled, so the ack wait can be short (a dead worker's conversations resume soon)
        async with in_progress(msg, self.settings.worker.ack_wait_seconds):
            await self._handle(msg)

    async def _handle(self, msg: NatsMessage) -> None:
        raw = msg.raw_message
        try:
            inbound = InboundMessage.model_validate_json(raw.data)
        except ValidationError:
            await self.dead_letter(msg, "invalid inbound event", str(raw.metadata.sequence.stream))
            await msg.ack()
            return
        record = kv_key("inbound", inbound.id, "answer")
        go, held = await self._claim(record, inbound, msg)
        if not go:
            return
        try:
            async with self._kept(record, held):
                await self.answer(inbound)
        except Exception as exc:
            if held is not None and self.answered is not None:  # a later attempt (or a re-drive) answers it
                await self.answered.release(record, held)
            delivered = raw.metadata.num_delivered
            if delivered >= self.settings.worker.max_deliver:
                await self.dead_letter(
                    msg, f"gave up after {delivered} attempts: {type(exc).__name__}", inbound.id
                )
                await msg.ack()
            else:
                log.warning(
                    "inbound %s attempt %d failed (%s); retrying", inbound.id, delivered, type(exc).__name__
                )
                await msg.nack(delay=min(2.0**delivered, 30.0))
            return
        if held is not None and self.answered is not None:
            await self.answered.done(record, held)
        await msg.ack()

    async def _claim(
        self, record: str, inbound: InboundMessage, msg: NatsMessage
    ) -> tuple[bool, Held | None]:
        """(whether to answer ``inbound``, the claim held meanwhile: None when nothing is claimed). Not to
        answer: it was answered (acked), or another copy of it is being answered now (this copy comes back
        after that one is done or has died). A copy comes twice when it waited for a free slot longer
        than the ack wait; answering both would ask the model twice and remember the turn twice."""
        if self.answered is None or inbound.kind == "event":
            return True, None
        claim = await self.answered.claim(record)
        if claim is Claim.DONE:
            log.info("inbound %s was answered before; not again", inbound.id)
            await msg.ack()
            return False, None
        if claim is Claim.BUSY:
            delay = busy_retry_delay(self.answered.stale_after, 30.0)
            log.info("inbound %s is being answered by another copy; again in %.1fs", inbound.id, delay)
            await msg.nack(delay=delay)
            return False, None
        return True, claim

    def _kept(self, record: str, held: Held | None) -> contextlib.AbstractAsyncContextManager[None]:
        if self.answered is None or held is None:
            return contextlib.nullcontext()
        return self.answered.kept(record, held)

    async def answer(self, inbound: InboundMessage) -> None:
        if inbound.kind == "event":
            log.debug("event %s from %s: nothing to answer", inbound.event, inbound.bot_id)
            return
        bot = self.settings.bot(inbound.bot_id)
        if bot is None:
            raise NotConfiguredError(f"no bot {inbound.bot_id!r} in this worker's config")
        cfg = self.settings.backends[bot.backend]
        model = model_label(bot.model or cfg.model)
        labels = {"platform": inbound.platform, "bot": inbound.bot_id, "backend": bot.backend, "model": model}
        deadline = bot.answer_timeout_seconds or self.settings.worker.answer_timeout_seconds
        text = inbound.text.strip()
        key = conversation_key(inbound, self.settings.memory.per_user_in_groups)
        command = text.split(maxsplit=1)[0].lower() if text.startswith("/") else ""
        request: ChatRequest | None = None
        backend = self.backends[bot.backend]
        gathered = Gathered()
        if command not in COMMANDS and self.media is not None and inbound.attachments:
            gathered = await self.media.gather(inbound, bot)
            for voice in gathered.voice:
                transcript = await self.media.transcribe(inbound, voice)
                if transcript is None:
                    gathered.unread.append(Unread(MediaKind.VOICE, MediaProblem.NOT_READ))
                else:
                    gathered.transcripts.append(transcript)
        if command not in COMMANDS and self.media is None:  # media is switched off: transcripts still read
            for a in inbound.attachments:
                if a.kind == MediaKind.VOICE and a.transcript:
                    gathered.transcripts.append(a.transcript)
                elif a.kind in MEDIA_KINDS:
                    gathered.unread.append(Unread(a.kind, MediaProblem.UNSUPPORTED))
        given = [m for m in gathered.media if backend.accepts(m.ref.kind)]
        unread = gathered.unread + [
            Unread(m.ref.kind, MediaProblem.UNSUPPORTED) for m in gathered.media if m not in given
        ]
        question = "\n".join(t for t in [text, *gathered.transcripts] if t)
        notices = "\n".join(dict.fromkeys(u.line for u in unread))
        if command in COMMANDS:
            if command == "/reset" and self.memory is not None:
                await self.memory.forget(key)
            stream: AsyncIterator[Piece] = _once(COMMANDS[command])
        elif not question and not given:
            if not inbound.attachments:
                return
            stream = _once(notices or NON_TEXT_REPLY)
        else:
            names = Pseudonyms(self.settings.worker, bot)
            conv = await self.memory.load(key) if self.memory is not None else Conversation()
            system = bot.system_prompt or cfg.system_prompt
            history = [] if backend.keeps_history else conv.messages()
            told = question
            if unread:  # the model learns what it was not shown
                told += "\n" + "\n".join(
                    f"[The user also sent a {u.kind} that could not be read.]" for u in unread
                )
            request = ChatRequest(
                messages=([ChatMessage("system", system)] if system else [])
                + history
                + [ChatMessage("user", told.strip())],
                user=names.user(f"{inbound.platform}:{inbound.bot_id}:{inbound.sender.id}"),
                conversation=names.conversation(key),
                session=dict(conv.session),
                model=bot.model,
                temperature=bot.temperature,
                media=given,
            )
            stream = backend.stream(request)
            if notices:
                stream = _after(notices + "\n\n", stream)
            text = question or "[" + ", ".join(m.ref.name for m in given) + "]"
        span = (
            tracer.start_as_current_span(
                f"chat {model}",
                kind=trace.SpanKind.CLIENT,
                attributes={
                    "gen_ai.operation.name": "chat",
                    "gen_ai.system": cfg.kind.value,
                    "gen_ai.request.model": model,
                },
            )
            if request is not None
            else contextlib.nullcontext(None)
        )
        with span as model_span:
            result = await produce_answer(
                inbound,
                stream,
                self.publish_chunk,
                deadline_seconds=deadline,
                coalesce_seconds=self.settings.worker.delta_interval_seconds,
                error_message=cfg.error_message,
                placeholder=bot.thinking_message if request is not None else None,
                placeholder_after=bot.thinking_after_seconds,
                fmt=ReplyFormat(bot.reply_format),
                deltas=spec_for(bot).capabilities.edits,
                finish=self._answer_images(inbound, bot),
            )
            if model_span is not None and request is not None:
                _record_usage(model_span, bot.backend, model, request.usage)
                if result.outcome != "ok":
                    model_span.set_attribute("error.type", result.outcome)
        if request is None:
            return
        if result.first_token_seconds is not None:
            LLM_TTFT.labels(**labels).observe(result.first_token_seconds)
        LLM_DURATION.labels(outcome=result.outcome, **labels).observe(result.duration_seconds)
        if result.outcome != "ok":
            log.warning("backend %s failed for inbound %s: %s", bot.backend, inbound.id, result.error)
        elif self.memory is not None:
            # only a complete answer becomes memory
            await self.memory.remember(key, Turn(text, result.text, inbound.sender.id), request.session)

    def _answer_images(self, inbound: InboundMessage, bot: BotConfig) -> Finish | None:
        """The answer's image links sent as images, where the platform can show them."""
        media = self.media
        if media is None or MediaKind.IMAGE not in spec_for(bot).media.outbound:
            return None

        async def finish(text: str) -> tuple[str, list[MediaRef]]:
            new_text, refs, lines = await media.answer_images(inbound.platform, inbound.id, text)
            if lines:
                new_text = "\n\n".join([new_text, *lines]) if new_text else "\n".join(lines)
            return new_text, refs

        return finish


def _record_usage(span: trace.Span, backend: str, model: str, usage: Usage | None) -> None:
    """The model's token counts on its span (GenAI conventions) and in ``imrelay_llm_tokens_total``."""
    if usage is None:
        return
    span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
    LLM_TOKENS.labels(backend=backend, model=model, type="input").inc(usage.input_tokens)
    LLM_TOKENS.labels(backend=backend, model=model, type="output").inc(usage.output_tokens)


async def _once(text: str) -> AsyncIterator[Piece]:
    yield text


async def _after(first: str, stream: AsyncIterator[Piece]) -> AsyncIterator[Piece]:
    """``first`` (the lines about media that was not read), then the backend's answer."""
    yield first
    try:
        async for piece in stream:
            yield piece
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


def _labels_of(subject: str) -> tuple[str, str]:
    parts = subject.split(".")
    return (parts[2], parts[3]) if len(parts) >= 4 else ("unknown", "unknown")


def media_step(
    settings: Settings, client: httpx.AsyncClient, store: MediaStore, tokens: KeyValue
) -> MediaStep:
    """The worker's media step: each bot's platform package fetches its media (with the bot's token,
    kept in the shared token cache like the sender's)."""
    ctx = DeliveryContext(
        settings=settings,
        client=client,
        tokens=TokenCache(tokens, skew=settings.sender.token_refresh_skew_seconds),
        media=store,
    )
    deliveries = {bot.id: delivery_for(bot, ctx) for bot in settings.bots}
    direct = httpx.AsyncClient(
        trust_env=False,
        follow_redirects=False,
        timeout=httpx.Timeout(settings.media.fetch_timeout_seconds),
    )
    instrument_httpx(direct)
    return MediaStep(settings.media, store, deliveries, client, direct)


MAX_ACK_PENDING = 1_000_000


def http_limits(concurrency: int) -> httpx.Limits:
    """The worker's connection pool: one connection per answer it may stream at once (each holds one
    for its whole stream), and as many kept alive for the next ones."""
    return httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)


def build_worker(settings: Settings, client: httpx.AsyncClient | None = None) -> Worker:
    limits = http_limits(settings.worker.concurrency)
    http = client or async_client(timeout=httpx.Timeout(60.0), limits=limits)
    broker = make_broker(settings.nats, "worker", graceful_timeout=settings.worker.answer_timeout_seconds)
    backends = {name: build_backend(name, cfg, http) for name, cfg in settings.backends.items()}
    worker = Worker(settings=settings, broker=broker, backends=backends, client=http)
    wcfg = settings.worker
    durable_consumer(
        broker,
        subject=subjects.IN_ALL,
        stream=subjects.STREAM_IN,
        durable=subjects.CONSUMER_WORKER,
        ack_wait=wcfg.ack_wait_seconds,
        max_deliver=wcfg.max_deliver,
        concurrency=wcfg.concurrency,
        # The limit is each replica's concurrency; the consumer's own cap (shared by every replica; the
        # server's default is 1,000) must not be the lower one.
        max_ack_pending=MAX_ACK_PENDING,
        handler=worker.handle,
    )
    return worker
