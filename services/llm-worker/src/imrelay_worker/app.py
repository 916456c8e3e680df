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
from opentelemetry import trace
from pydantic import ValidationError

from imrelay import subjects
from imrelay.broker import durable_consumer, in_progress, make_broker
from imrelay.config import Settings
from imrelay.dlq import dlq_headers
from imrelay.errors import NotConfiguredError
from imrelay.events import InboundMessage, ReplyChunk, ReplyFormat
from imrelay.telemetry import DLQ, LLM_DURATION, LLM_TOKENS, LLM_TTFT, model_label

from .answer import produce_answer
from .backends import Backend, ChatMessage, ChatRequest, Piece, Usage, build_backend
from .memory import Conversation, MemoryStore, Turn, conversation_key
from .privacy import Pseudonyms

log = logging.getLogger("imrelay.worker")
tracer = trace.get_tracer("imrelay.worker")

NON_TEXT_REPLY = "I can only read text messages for now."
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
        raw = msg.raw_message
        try:
            inbound = InboundMessage.model_validate_json(raw.data)
        except ValidationError:
            await self.dead_letter(msg, "invalid inbound event", str(raw.metadata.sequence.stream))
            await msg.ack()
            return
        try:
            await self.answer(inbound, msg)
        except Exception as exc:
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
        await msg.ack()

    async def answer(self, inbound: InboundMessage, msg: NatsMessage) -> None:
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
        if command in COMMANDS:
            if command == "/reset" and self.memory is not None:
                await self.memory.forget(key)
            stream: AsyncIterator[Piece] = _once(COMMANDS[command])
        elif not text:
            if not inbound.attachments:
                return
            stream = _once(NON_TEXT_REPLY)
        else:
            backend = self.backends[bot.backend]
            names = Pseudonyms(self.settings.worker, bot)
            conv = await self.memory.load(key) if self.memory is not None else Conversation()
            system = bot.system_prompt or cfg.system_prompt
            history = [] if backend.keeps_history else conv.messages()
            request = ChatRequest(
                messages=([ChatMessage("system", system)] if system else [])
                + history
                + [ChatMessage("user", text)],
                user=names.user(f"{inbound.platform}:{inbound.bot_id}:{inbound.sender.id}"),
                conversation=names.conversation(key),
                session=dict(conv.session),
                model=bot.model,
                temperature=bot.temperature,
            )
            stream = backend.stream(request)
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
        async with in_progress(msg, self.settings.worker.ack_wait_seconds):
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


def _labels_of(subject: str) -> tuple[str, str]:
    parts = subject.split(".")
    return (parts[2], parts[3]) if len(parts) >= 4 else ("unknown", "unknown")


def build_worker(settings: Settings, client: httpx.AsyncClient | None = None) -> Worker:
    http = client or httpx.AsyncClient(timeout=httpx.Timeout(60.0), follow_redirects=False)
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
        handler=worker.handle,
    )
    return worker
