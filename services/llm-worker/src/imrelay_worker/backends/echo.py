"""The built-in ``echo`` backend: answers with the user's own words, streamed word by word, and names
each piece of media it was given (name, type, size, sha256). No network; the zero-config default, so a
fresh install answers at once."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from imrelay.media import MediaKind

from . import ChatRequest, Piece

_PIECES = re.compile(r"\S+\s*|\s+")


class EchoBackend:
    keeps_history = False

    def __init__(self, name: str = "echo") -> None:
        self.name = name

    def accepts(self, kind: MediaKind) -> bool:
        return True

    async def stream(self, request: ChatRequest) -> AsyncIterator[Piece]:
        for piece in _PIECES.findall(request.last_user_text):
            yield piece
        for i, m in enumerate(request.media):
            ref = m.ref
            sep = "\n" if i or request.last_user_text else ""
            yield f"{sep}[{ref.kind.value} {ref.name} {ref.mime} {ref.size} bytes sha256={ref.sha256}]"
