"""Any OpenAI-compatible chat-completions server (OpenAI, vLLM, Ollama, DeepSeek, ...), streamed.

``POST {base_url}/chat/completions`` with ``stream: true``, read with :mod:`imrelay_worker.sse`;
``delta.content`` pieces are yielded, ``[DONE]`` ends the answer, and an EOF without ``[DONE]`` or an
``error`` payload raise :class:`~imrelay.errors.BackendError`. ``stream_options.include_usage`` asks for
the last chunk's ``usage`` (prompt and completion tokens), kept in the request's ``usage``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from imrelay.config import BackendConfig
from imrelay.errors import BackendError
from imrelay.media import MediaKind

from ..sse import stream_events
from . import ChatRequest, InputMedia, Piece, Usage


def content_parts(text: str, media: list[InputMedia]) -> list[dict[str, Any]]:
    """A user message with images, as vision models take it: a text part, then one ``image_url`` part
    (a ``data:`` URL) per image."""
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    for m in media:
        if m.ref.kind is MediaKind.IMAGE:
            parts.append({"type": "image_url", "image_url": {"url": m.data_url()}})
    return parts


def request_body(cfg: BackendConfig, request: ChatRequest) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": m.role, "content": m.content} for m in request.messages]
    images = [m for m in request.media if m.ref.kind is MediaKind.IMAGE]
    if cfg.vision and images:
        last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
        if last is not None:
            messages[last] = {"role": "user", "content": content_parts(messages[last]["content"], images)}
    body: dict[str, Any] = {
        "model": request.model or cfg.model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": request.user,
    }
    temperature = request.temperature if request.temperature is not None else cfg.temperature
    if temperature is not None:
        body["temperature"] = temperature
    return body


def delta_of(data: str) -> str | None:
    """The text in one ``data:`` payload; None for chunks without content (role, usage, finish)."""
    return delta_in(chunk_of(data))


def chunk_of(data: str) -> dict[str, Any]:
    """One ``data:`` payload as an object; an ``error`` payload or invalid JSON raise."""
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError as exc:
        raise BackendError("openai", "stream carried invalid JSON") from exc
    if not isinstance(chunk, dict):
        raise BackendError("openai", "stream carried a non-object chunk")
    if "error" in chunk:
        err = chunk["error"]
        msg = err.get("message", "error") if isinstance(err, dict) else str(err)
        raise BackendError("openai", f"error in stream: {msg}"[:300])
    return chunk


def delta_in(chunk: dict[str, Any]) -> str | None:
    choices = chunk.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return None
    content = (choices[0].get("delta") or {}).get("content")
    return content if isinstance(content, str) and content else None


def usage_in(chunk: dict[str, Any]) -> Usage | None:
    """The token counts of a chunk carrying ``usage`` (the last one, when asked for); None otherwise."""
    usage = chunk.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(input_tokens=prompt, output_tokens=completion)


class OpenAIBackend:
    keeps_history = False

    def __init__(self, name: str, cfg: BackendConfig, client: httpx.AsyncClient) -> None:
        self.name = name
        self.cfg = cfg
        self.client = client
        self.url = f"{(cfg.base_url or '').rstrip('/')}/chat/completions"

    def accepts(self, kind: MediaKind) -> bool:
        return kind is MediaKind.IMAGE and self.cfg.vision

    async def stream(self, request: ChatRequest) -> AsyncIterator[Piece]:
        headers = {"Content-Type": "application/json"}
        if self.cfg.api_key is not None:
            headers["Authorization"] = f"Bearer {self.cfg.api_key.get_secret_value()}"
        async with contextlib.aclosing(
            stream_events(
                self.client,
                self.name,
                self.url,
                body=request_body(self.cfg, request),
                headers=headers,
                request_timeout=self.cfg.timeout_seconds,
                idle_timeout=self.cfg.idle_timeout_seconds,
            )
        ) as events:
            async for event in events:
                if event.event == "error":
                    raise BackendError(self.name, f"error event: {event.data[:300]}")
                if event.data.strip() == "[DONE]":
                    return
                if not event.data:
                    continue
                chunk = chunk_of(event.data)
                request.usage = usage_in(chunk) or request.usage
                piece = delta_in(chunk)
                if piece:
                    yield piece
        raise BackendError(self.name, "stream ended without [DONE]", retryable=True)
