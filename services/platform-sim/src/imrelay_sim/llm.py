"""A fake OpenAI-compatible chat-completions server for local runs and tests.

``POST /v1/chat/completions`` with ``stream: true`` answers ``"You said: <last user message>"`` as SSE
chunks, word by word, then ``data: [DONE]``. ``POST /sim/llm`` controls it: ``token_delay`` (seconds between
chunks), ``fail_next`` (HTTP statuses for the next requests), ``stall_after`` (chunks before the stream goes
silent), and it records the last request body for tests (``GET /sim/llm``).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class LLMState:
    token_delay: float = 0.0
    fail_next: list[int] = field(default_factory=list)
    stall_after: int | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)


def _chunk(content: str | None, finish: str | None = None) -> str:
    delta = {} if content is None else {"content": content}
    body = {"id": "chatcmpl-sim", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": "sim", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def routes() -> list[Route]:
    state = LLMState()

    async def completions(request: Request) -> Response:
        if not request.headers.get("authorization", "").startswith("Bearer "):
            return JSONResponse({"error": {"message": "missing API key", "type": "auth"}},
                                status_code=401)
        try:
            body = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"error": {"message": "invalid JSON"}}, status_code=400)
        state.requests.append(body)
        if state.fail_next:
            status = state.fail_next.pop(0)
            return JSONResponse({"error": {"message": f"simulated {status}"}}, status_code=status)
        last = next((m.get("content", "") for m in reversed(body.get("messages", []))
                     if m.get("role") == "user"), "")
        pieces = re.findall(r"\S+\s*|\s+", f"You said: {last}")

        async def stream() -> AsyncIterator[str]:
            yield ": keep-alive\n\n"
            for i, piece in enumerate(pieces):
                if state.stall_after is not None and i >= state.stall_after:
                    await asyncio.sleep(3600)
                if state.token_delay:
                    await asyncio.sleep(state.token_delay)
                yield _chunk(piece)
            yield _chunk(None, "stop")
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def control(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return JSONResponse({"error": "invalid json"}, status_code=400)
        if "token_delay" in body:
            state.token_delay = float(body["token_delay"])
        if "fail_next" in body:
            state.fail_next = [int(s) for s in body["fail_next"]]
        if "stall_after" in body:
            state.stall_after = None if body["stall_after"] is None else int(body["stall_after"])
        return JSONResponse({"ok": True})

    async def last_requests(_: Request) -> Response:
        return JSONResponse(state.requests[-20:])

    return [
        Route("/v1/chat/completions", completions, methods=["POST"]),
        Route("/sim/llm", control, methods=["POST"]),
        Route("/sim/llm", last_requests, methods=["GET"]),
    ]
