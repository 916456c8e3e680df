"""Any OpenAI-compatible chat-completions server (OpenAI, vLLM, Ollama, DeepSeek, ...), streamed.

``POST {base_url}/chat/completions`` with ``stream: true``, read with :mod:`imrelay_worker.sse`;
``delta.content`` pieces are yielded, ``[DONE]`` ends the answer, and an EOF without ``[DONE]`` or an
``error`` payload raise :class:`~imrelay.errors.BackendError`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from imrelay.config import BackendConfig
from imrelay.errors import BackendError

from ..sse import stream_events
from . import ChatRequest, Piece


def request_body(cfg: BackendConfig, request: ChatRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": request.model or cfg.model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "stream": True,
        "user": request.user,
    }
    temperature = request.temperature if request.temperature is not None else cfg.temperature
    if temperature is not None:
        body["temperature"] = temperature
    return body


def delta_of(data: str) -> str | None:
    """The text in one ``data:`` payload; None for chunks without content (role, usage, finish)."""
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
    choices = chunk.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return None
    content = (choices[0].get("delta") or {}).get("content")
    return content if isinstance(content, str) and content else None


class OpenAIBackend:
    keeps_history = False

    def __init__(self, name: str, cfg: BackendConfig, client: httpx.AsyncClient) -> None:
        self.name = name
        self.cfg = cfg
        self.client = client
        self.url = f"{(cfg.base_url or '').rstrip('/')}/chat/completions"

    async def stream(self, request: ChatRequest) -> AsyncIterator[Piece]:
        headers = {"Content-Type": "application/json"}
        if self.cfg.api_key is not None:
            headers["Authorization"] = f"Bearer {self.cfg.api_key.get_secret_value()}"
        async with contextlib.aclosing(stream_events(
                self.client, self.name, self.url, body=request_body(self.cfg, request), headers=headers,
                request_timeout=self.cfg.timeout_seconds,
                idle_timeout=self.cfg.idle_timeout_seconds)) as events:
            async for event in events:
                if event.event == "error":
                    raise BackendError(self.name, f"error event: {event.data[:300]}")
                if event.data.strip() == "[DONE]":
                    return
                if not event.data:
                    continue
                piece = delta_of(event.data)
                if piece:
                    yield piece
        raise BackendError(self.name, "stream ended without [DONE]", retryable=True)
