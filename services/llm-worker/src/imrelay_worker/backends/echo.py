"""The built-in ``echo`` backend: answers with the user's own words, streamed word by word. No network;
the zero-config default, so a fresh install answers at once."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from . import ChatRequest

_PIECES = re.compile(r"\S+\s*|\s+")


class EchoBackend:
    def __init__(self, name: str = "echo") -> None:
        self.name = name

    async def stream(self, request: ChatRequest) -> AsyncIterator[str]:
        last_user = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        for piece in _PIECES.findall(last_user):
            yield piece
