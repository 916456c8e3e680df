"""Any OpenAI-compatible chat-completions server (OpenAI, vLLM, Ollama, DeepSeek, ...), streamed.

``POST {base_url}/chat/completions`` with ``stream: true``; the SSE stream is read with httpx-sse (comments,
CRLF, split events and split UTF-8 are handled there), ``delta.content`` pieces are yielded, ``[DONE]`` ends
the answer, and an EOF without ``[DONE]``, an ``error`` payload or a stalled stream (idle timeout) raise
:class:`~imrelay.errors.BackendError`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from httpx_sse import SSEError, aconnect_sse

from imrelay.config import BackendConfig
from imrelay.errors import BackendError

from . import ChatRequest

_RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}


def request_body(cfg: BackendConfig, request: ChatRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": cfg.model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "stream": True,
        "user": request.user,
    }
    if cfg.temperature is not None:
        body["temperature"] = cfg.temperature
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
    def __init__(self, name: str, cfg: BackendConfig, client: httpx.AsyncClient) -> None:
        self.name = name
        self.cfg = cfg
        self.client = client
        self.url = f"{(cfg.base_url or '').rstrip('/')}/chat/completions"

    async def stream(self, request: ChatRequest) -> AsyncIterator[str]:
        headers = {"Accept": "text/event-stream"}
        if self.cfg.api_key is not None:
            headers["Authorization"] = f"Bearer {self.cfg.api_key.get_secret_value()}"
        timeout = httpx.Timeout(self.cfg.timeout_seconds, read=self.cfg.idle_timeout_seconds)
        done = False
        try:
            async with aconnect_sse(self.client, "POST", self.url, headers=headers, timeout=timeout,
                                    json=request_body(self.cfg, request)) as source:
                resp = source.response
                if resp.status_code >= 400:
                    await resp.aread()
                    raise BackendError(self.name, _error_message(resp), status=resp.status_code,
                                       retryable=resp.status_code in _RETRYABLE)
                events = source.aiter_sse()
                while True:
                    try:
                        async with asyncio.timeout(self.cfg.idle_timeout_seconds):
                            event = await anext(events)
                    except StopAsyncIteration:
                        break
                    except TimeoutError as exc:
                        raise BackendError(self.name, "stream stalled (idle timeout)",
                                           retryable=True) from exc
                    if event.event == "error":
                        raise BackendError(self.name, f"error event: {event.data[:300]}")
                    if event.data.strip() == "[DONE]":
                        done = True
                        break
                    if not event.data:
                        continue
                    piece = delta_of(event.data)
                    if piece:
                        yield piece
        except SSEError as exc:
            raise BackendError(self.name, "response is not an event stream") from exc
        except httpx.TimeoutException as exc:
            raise BackendError(self.name, f"timed out ({type(exc).__name__})", retryable=True) from exc
        except httpx.TransportError as exc:
            raise BackendError(self.name, f"connection failed ({type(exc).__name__})",
                               retryable=True) from exc
        if not done:
            raise BackendError(self.name, "stream ended without [DONE]", retryable=True)


def _error_message(resp: httpx.Response) -> str:
    try:
        err = resp.json().get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
    except (ValueError, AttributeError):
        pass
    return resp.reason_phrase or "error"
