"""FastGPT apps (``POST {base_url}/v1/chat/completions``, the app's own API key).

With ``chatId`` set, FastGPT loads the conversation's history itself and reads only the last message, so
imrelay sends just the new question with a ``chatId`` bound to the conversation (≤ 250 characters). With
``detail: false`` the stream is OpenAI-style ``data:`` chunks ending in ``[DONE]``.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from imrelay.config import BackendConfig
from imrelay.errors import BackendError
from imrelay.media import MediaKind

from ..sse import stream_events
from . import ChatRequest, Piece
from .openai import chunk_of, delta_in, usage_in


def chat_id(conversation: str) -> str:
    """A stable chatId of at most 250 characters for an imrelay conversation."""
    if len(conversation) <= 200:
        return conversation
    return conversation[:150] + ":" + hashlib.sha256(conversation.encode()).hexdigest()[:32]


def content(request: ChatRequest) -> str | list[dict[str, Any]]:
    """The new message: its text, or OpenAI-style content parts when it carries images and files
    (``image_url`` and ``file_url`` parts with ``data:`` URLs)."""
    if not request.media:
        return request.last_user_text
    parts: list[dict[str, Any]] = []
    if request.last_user_text:
        parts.append({"type": "text", "text": request.last_user_text})
    for m in request.media:
        if m.ref.kind is MediaKind.IMAGE:
            parts.append({"type": "image_url", "image_url": {"url": m.data_url()}})
        elif m.ref.kind is MediaKind.FILE:
            parts.append({"type": "file_url", "name": m.ref.name, "url": m.data_url()})
    return parts


def request_body(request: ChatRequest) -> dict[str, Any]:
    return {
        "chatId": chat_id(request.conversation),
        "stream": True,
        "detail": False,
        "variables": {"user": request.user},
        "messages": [{"role": "user", "content": content(request)}],
    }


class FastGPTBackend:
    keeps_history = True

    def __init__(self, name: str, cfg: BackendConfig, client: httpx.AsyncClient) -> None:
        self.name = name
        self.cfg = cfg
        self.client = client
        self.url = f"{(cfg.base_url or '').rstrip('/')}/v1/chat/completions"

    def accepts(self, kind: MediaKind) -> bool:
        return kind in (MediaKind.IMAGE, MediaKind.FILE)

    async def stream(self, request: ChatRequest) -> AsyncIterator[Piece]:
        headers = {"Content-Type": "application/json"}
        if self.cfg.api_key is not None:
            headers["Authorization"] = f"Bearer {self.cfg.api_key.get_secret_value()}"
        async with contextlib.aclosing(
            stream_events(
                self.client,
                self.name,
                self.url,
                body=request_body(request),
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
                if event.event not in ("", "message", "answer", "fastAnswer") or not event.data:
                    continue  # flowNodeStatus and the like
                chunk = chunk_of(event.data)
                request.usage = usage_in(chunk) or request.usage  # when the final chunk carries it
                piece = delta_in(chunk)
                if piece:
                    yield piece
        raise BackendError(self.name, "stream ended without [DONE]", retryable=True)
