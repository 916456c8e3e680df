"""LLM backends. Each turns a conversation into an async stream of text deltas, raising
:class:`~imrelay.errors.BackendError` on failure. One module per backend.

The user's last message may come with media (``ChatRequest.media``: the bytes, already fetched, checked
and stored by the worker): a backend takes the kinds its :meth:`Backend.accepts` says; the worker tells
the model and the user about the others."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

import httpx

from imrelay.config import BackendConfig, BackendKind
from imrelay.media import MediaKind, MediaRef


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens the model reported for one answer (OpenAI ``usage``, Dify ``metadata.usage``)."""

    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class InputMedia:
    """A piece of media of the user's message: its stored reference and its bytes."""

    ref: MediaRef
    data: bytes

    def data_url(self) -> str:
        return f"data:{self.ref.mime};base64,{base64.b64encode(self.data).decode('ascii')}"


@dataclass(slots=True)
class ChatRequest:
    messages: list[ChatMessage]
    user: str  # a stable end-user id (platform:bot:sender)
    conversation: str  # a stable conversation id (platform:bot:chat[:user])
    # per-conversation backend state kept in memory between turns (e.g. Dify's conversation_id);
    # a backend may update it, and the worker stores it once the answer is complete
    session: dict[str, str] = field(default_factory=dict)
    model: str | None = None  # per-bot overrides of the backend's settings
    temperature: float | None = None
    usage: Usage | None = None  # set by the backend when the model reports its token counts
    media: list[InputMedia] = field(default_factory=list)  # what the last user message carried

    @property
    def last_user_text(self) -> str:
        return next((m.content for m in reversed(self.messages) if m.role == "user"), "")


@dataclass(frozen=True, slots=True)
class Replace:
    """The backend replaced the whole answer so far (Dify ``message_replace``, e.g. moderation)."""

    text: str


Piece = str | Replace


class Backend(Protocol):
    name: str
    keeps_history: bool  # the backend remembers the conversation itself: send only the new message

    def accepts(self, kind: MediaKind) -> bool:
        """Whether this backend reads media of ``kind`` (given in ``ChatRequest.media``)."""
        ...

    def stream(self, request: ChatRequest) -> AsyncIterator[Piece]: ...


def build_backend(name: str, cfg: BackendConfig, client: httpx.AsyncClient) -> Backend:
    from .dify import DifyBackend
    from .echo import EchoBackend
    from .fastgpt import FastGPTBackend
    from .openai import OpenAIBackend

    if cfg.kind is BackendKind.ECHO:
        return EchoBackend(name)
    if cfg.kind is BackendKind.OPENAI:
        return OpenAIBackend(name, cfg, client)
    if cfg.kind is BackendKind.DIFY:
        return DifyBackend(name, cfg, client)
    return FastGPTBackend(name, cfg, client)
