"""Dify chat apps (``POST {base_url}/chat-messages``, ``response_mode: streaming``).

Dify keeps the conversation itself: the first turn sends ``conversation_id: ""``, the answer's events carry
the new id, which is kept in the conversation's session and sent back (with the same ``user``) next time.
Events: ``message`` / ``agent_message`` carry answer text, ``message_replace`` replaces the answer
(moderation), ``message_end`` ends it (its ``metadata.usage`` counts the tokens), ``error`` fails it,
``ping`` keeps the stream alive. A conversation Dify no longer knows (404) is started afresh once.

Media: each piece is uploaded first (``POST {base_url}/files/upload``, multipart ``file`` and the same
``user`` as the chat) and passed in ``files`` as a ``local_file`` of type image, document, audio or
video (the Dify app must allow that type). An image the answer carries (a ``message_file`` event) is
added to the answer as an image link, which the worker sends as an image.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx

from imrelay.config import BackendConfig
from imrelay.errors import BackendError
from imrelay.media import MediaKind

from ..sse import stream_events
from . import ChatRequest, InputMedia, Piece, Replace
from .openai import usage_in

SESSION_KEY = "dify_conversation_id"
TEXT_EVENTS = {"message", "agent_message"}


FILE_TYPES = {
    MediaKind.IMAGE: "image",
    MediaKind.FILE: "document",
    MediaKind.VOICE: "audio",
    MediaKind.VIDEO: "video",
}


def request_body(
    request: ChatRequest, conversation_id: str, files: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    return {
        "inputs": {},
        "query": request.last_user_text,
        "response_mode": "streaming",
        "conversation_id": conversation_id,
        "user": request.user,
        "files": files or [],
    }


def file_link(event: dict[str, Any], base_url: str) -> str | None:
    """A ``message_file`` event's image as an image link for the answer (a relative URL made absolute
    against the Dify server's address); None for other files."""
    url = event.get("url")
    if event.get("type") != "image" or not isinstance(url, str) or not url:
        return None
    if url.startswith("/"):
        url = str(httpx.URL(base_url).join(url))
    if not url.startswith(("http://", "https://")):
        return None
    return f"\n\n![image]({url})\n\n"


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
        self.upload_url = f"{(cfg.base_url or '').rstrip('/')}/files/upload"

    def accepts(self, kind: MediaKind) -> bool:
        return kind in FILE_TYPES

    def _auth(self) -> dict[str, str]:
        if self.cfg.api_key is None:
            return {}
        return {"Authorization": f"Bearer {self.cfg.api_key.get_secret_value()}"}

    async def upload(self, media: InputMedia, user: str) -> dict[str, str]:
        """Upload one piece for ``user``; its entry of ``files``."""
        try:
            resp = await self.client.post(
                self.upload_url,
                headers=self._auth(),
                files={"file": (media.ref.name, media.data, media.ref.mime)},
                data={"user": user},
                timeout=self.cfg.timeout_seconds,
            )
        except httpx.HTTPError as exc:
            raise BackendError(
                self.name, f"file upload failed: {type(exc).__name__}", retryable=True
            ) from exc
        if resp.status_code >= 400:
            try:
                detail = resp.json()
                code = detail.get("code", resp.status_code) if isinstance(detail, dict) else resp.status_code
            except ValueError:
                code = resp.status_code
            raise BackendError(
                self.name,
                f"file upload refused: {code}",
                status=resp.status_code,
                retryable=resp.status_code >= 500 or resp.status_code == 429,
            )
        file_id = resp.json().get("id")
        if not isinstance(file_id, str):
            raise BackendError(self.name, "file upload answered without an id")
        return {
            "type": FILE_TYPES[media.ref.kind],
            "transfer_method": "local_file",
            "upload_file_id": file_id,
        }

    async def stream(self, request: ChatRequest) -> AsyncIterator[Piece]:
        files = [await self.upload(m, request.user) for m in request.media if self.accepts(m.ref.kind)]
        conversation = request.session.get(SESSION_KEY, "")
        try:
            async with contextlib.aclosing(self._stream(request, conversation, files)) as pieces:
                async for piece in pieces:
                    yield piece
        except BackendError as exc:
            if exc.status != 404 or not conversation:
                raise
            request.session.pop(SESSION_KEY, None)  # Dify forgot it: start a new conversation
            async with contextlib.aclosing(self._stream(request, "", files)) as pieces:
                async for piece in pieces:
                    yield piece

    async def _stream(
        self, request: ChatRequest, conversation: str, files: list[dict[str, str]]
    ) -> AsyncGenerator[Piece, None]:
        headers = {"Content-Type": "application/json"}
        if self.cfg.api_key is not None:
            headers["Authorization"] = f"Bearer {self.cfg.api_key.get_secret_value()}"
        async with contextlib.aclosing(
            stream_events(
                self.client,
                self.name,
                self.url,
                body=request_body(request, conversation, files),
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
                elif kind == "message_file":
                    link = file_link(event, self.cfg.base_url or "")
                    if link:
                        yield link
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
