"""Dify chat apps (``POST {base_url}/chat-messages``, ``response_mode: streaming``).

Dify keeps the conversation itself: the first turn sends ``conversation_id: ""``, the answer's events carry
the new id, which is kept in the conversation's session and sent back (with the same ``user``) next time.
Events: ``message`` / ``agent_message`` carry answer text, ``message_replace`` replaces the answer
(moderation), ``message_end`` ends it (its ``metadata.usage`` counts the tokens), ``error`` fails it,
``ping`` keeps the stream alive. A conversation Dify no longer knows (404) is started afresh once.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx

from imrelay.config import BackendConfig
from imrelay.errors import BackendError

from ..sse import stream_events
from . import ChatRequest, Piece, Replace
from .openai import usage_in

SESSION_KEY = "dify_conversation_id"
TEXT_EVENTS = {"message", "agent_message"}


def request_body(request: ChatRequest, conversation_id: str) -> dict[str, Any]:
    return {
        "inputs": {},
        "query": request.last_user_text,
        "response_mode": "streaming",
        "conversation_id": conversation_id,
        "user": request.user,
        "files": [],
    }


def parse_event(data: str) -> dict[str, Any] | None:
    if not data.strip():
        return None  # "event: ping" without data
    try:
        event = json.loads(data)
    except json.JSONDecodeError as exc:
        raise BackendError("dify", "stream carried invalid JSON") from exc
    return event if isinstance(event, dict) else None


class DifyBackend:
    keeps_history = True

    def __init__(self, name: str, cfg: BackendConfig, client: httpx.AsyncClient) -> None:
        self.name = name
        self.cfg = cfg
        self.client = client
        self.url = f"{(cfg.base_url or '').rstrip('/')}/chat-messages"

    async def stream(self, request: ChatRequest) -> AsyncIterator[Piece]:
        conversation = request.session.get(SESSION_KEY, "")
        try:
            async with contextlib.aclosing(self._stream(request, conversation)) as pieces:
                async for piece in pieces:
                    yield piece
        except BackendError as exc:
            if exc.status != 404 or not conversation:
                raise
            request.session.pop(SESSION_KEY, None)  # Dify forgot it: start a new conversation
            async with contextlib.aclosing(self._stream(request, "")) as pieces:
                async for piece in pieces:
                    yield piece

    async def _stream(self, request: ChatRequest, conversation: str) -> AsyncGenerator[Piece, None]:
        headers = {"Content-Type": "application/json"}
        if self.cfg.api_key is not None:
            headers["Authorization"] = f"Bearer {self.cfg.api_key.get_secret_value()}"
        async with contextlib.aclosing(
            stream_events(
                self.client,
                self.name,
                self.url,
                body=request_body(request, conversation),
                headers=headers,
                request_timeout=self.cfg.timeout_seconds,
                idle_timeout=self.cfg.idle_timeout_seconds,
            )
        ) as events:
            async for sse in events:
                event = parse_event(sse.data)
                if event is None:
                    continue
                if event.get("conversation_id"):
                    request.session[SESSION_KEY] = str(event["conversation_id"])
                kind = event.get("event")
                if kind in TEXT_EVENTS and event.get("answer"):
                    yield str(event["answer"])
                elif kind == "message_replace":
                    yield Replace(str(event.get("answer", "")))
                elif kind == "message_end":
                    metadata = event.get("metadata")
                    request.usage = usage_in(metadata if isinstance(metadata, dict) else {}) or request.usage
                    return
                elif kind == "error":
                    raise BackendError(
                        self.name,
                        f"{event.get('code', 'error')}: {str(event.get('message', ''))[:300]}",
                        status=int(event.get("status") or 0) or None,
                    )
        raise BackendError(self.name, "stream ended without message_end", retryable=True)
