"""The built-in ``echo`` backend: answers with the user's own words, streamed word by word. No network;
the zero-config default, so a fresh install answers at once."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from . import ChatRequest, Piece

_PIECES = re.compile(r"\S+\s*|\s+")


class EchoBackend:
    keeps_history = False

    def __init__(self, name: str = "echo") -> None:
        self.name = name

    async def stream(self, request: ChatRequest) -> AsyncIterator[Piece]:
        for piece in _PIECES.findall(request.last_user_text):
            yield piece
