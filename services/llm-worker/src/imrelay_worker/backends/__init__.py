"""LLM backends. Each turns a conversation into an async stream of text deltas, raising
:class:`~imrelay.errors.BackendError` on failure. One module per backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

import httpx

from imrelay.config import BackendConfig, BackendKind


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    messages: list[ChatMessage]
    user: str  # a stable end-user id (platform:bot:sender)
    conversation: str  # a stable conversation id (platform:bot:chat)


class Backend(Protocol):
    name: str

    def stream(self, request: ChatRequest) -> AsyncIterator[str]: ...


def build_backend(name: str, cfg: BackendConfig, client: httpx.AsyncClient) -> Backend:
    from .echo import EchoBackend
    from .openai import OpenAIBackend

    if cfg.kind is BackendKind.ECHO:
        return EchoBackend(name)
    if cfg.kind is BackendKind.OPENAI:
        return OpenAIBackend(name, cfg, client)
    raise ValueError(f"backend kind {cfg.kind.value!r} is not supported by this worker yet")
