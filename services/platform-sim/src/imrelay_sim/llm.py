"""Fake LLM backends for local runs and tests, all answering ``"You said: <last user message>"`` word by
word:

* ``POST /v1/chat/completions``: OpenAI-compatible (SSE ``data:`` chunks, then ``data: [DONE]``; with
  ``stream_options: {include_usage: true}`` a last chunk with empty ``choices`` carries ``usage``, as
  OpenAI sends it);
* ``POST /v1/chat-messages``: Dify (``message`` events carrying a ``conversation_id`` it remembers,
  ``message_end`` with ``metadata.usage``; an unknown ``conversation_id`` is a 404 "Conversation Not
  Exists");
* ``POST /api/v1/chat/completions``: FastGPT (OpenAI-style chunks; ``chatId`` names the conversation).

Media, so tests can prove which bytes a model was given: an OpenAI-style message whose ``content`` is a
list of parts (vision) is read as its text parts, plus ``[image <type> sha256=<hex>]`` for each
``image_url`` data URL and ``[file <name> sha256=<hex>]`` for each ``file_url`` one; Dify takes files
with ``POST /v1/files/upload`` (multipart ``file`` + ``user``; 15 MB at most, 413 ``file_too_large``
beyond) and a ``chat-messages`` request's ``files`` (``local_file`` ids uploaded by the same ``user``,
else 400 ``invalid_param``) add ``[<type> <name> sha256=<hex>]`` to the question. A question holding an
image link (``![alt](url)``) is echoed with it, so the answer carries an image. ``POST
/v1/audio/transcriptions`` (multipart ``file`` + ``model``) transcribes any audio as
``voice sha256=<hex>``.

``POST /sim/llm`` controls them all: ``token_delay`` (seconds between chunks), ``fail_next`` (HTTP statuses
for the next requests), ``reject_key_next`` (how many next requests get the 401 an OpenAI-style API gives a
wrong key, which quotes the key: ``Incorrect API key provided: sk-...``), ``stall_after`` (chunks before
the stream goes silent), ``pause_after`` + ``pause_seconds`` (after that many chunks the model says nothing
for a while, then goes on). ``GET /sim/llm`` lists the recent requests (with ``_api`` naming which one),
and ``first_token_at``, when each first piece was sent; ``GET /sim/llm/streams`` how many answers are
streaming now, the most there were at once, and when each answer began (question, time).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class LLMState:
    token_delay: float = 0.0
    fail_next: list[int] = field(default_factory=list)
    reject_key_next: int = 0
    stall_after: int | None = None
    pause_after: int | None = None
    pause_seconds: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    conversations: dict[str, int] = field(default_factory=dict)  # Dify conversation id -> turns
    first_token_at: list[tuple[str, float]] = field(default_factory=list)  # (question, time)
    files: dict[str, tuple[str, str, str, str]] = field(
        default_factory=dict
    )  # Dify id -> user, name, mime, sha
    started_at: list[tuple[str, float]] = field(default_factory=list)  # (question, time)
    active: int = 0  # answers streaming now
    peak: int = 0  # the most answers streaming at once


DIFY_MAX_UPLOAD = 15 * 1024 * 1024
DIFY_TYPES = {"image": "image/", "document": "", "audio": "audio/", "video": "video/"}


def _data_url(url: str) -> tuple[str, bytes] | None:
    """(type, bytes) of a ``data:<type>;base64,<data>`` URL; None for anything else."""
    m = re.fullmatch(r"data:([\w.+/-]+);base64,([A-Za-z0-9+/=\s]*)", url, flags=re.S)
    if m is None:
        return None
    try:
        return m.group(1), base64.b64decode(m.group(2), validate=False)
    except ValueError:
        return None


def question_of(content: Any) -> str:
    """The question a user message asks: its text, and what each media part holds (by sha256)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts: list[str] = []
    seen: list[str] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            url = (
                (part.get("image_url") or {}).get("url", "")
                if isinstance(part.get("image_url"), dict)
                else ""
            )
            got = _data_url(str(url))
            seen.append(
                f"[image {got[0]} sha256={hashlib.sha256(got[1]).hexdigest()}]"
                if got
                else f"[image link {url}]"
            )
        elif kind == "file_url":
            got = _data_url(str(part.get("url", "")))
            name = part.get("name", "file")
            seen.append(
                f"[file {name} sha256={hashlib.sha256(got[1]).hexdigest()}]" if got else f"[file {name}]"
            )
    return " ".join(t for t in [" ".join(texts).strip(), *seen] if t)


def _chunk(content: str | None, finish: str | None = None) -> str:
    delta = {} if content is None else {"content": content}
    body = {
        "id": "chatcmpl-sim",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "sim",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def _usage(prompt: str, pieces: list[str]) -> dict[str, int]:
    """Token counts as a model reports them: here one token a word of the prompt, one a piece sent."""
    prompt_tokens, completion_tokens = len(prompt.split()), len(pieces)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _usage_chunk(usage: dict[str, int]) -> str:
    body = {
        "id": "chatcmpl-sim",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "sim",
        "choices": [],
        "usage": usage,
    }
    return f"data: {json.dumps(body)}\n\n"


def routes() -> list[Route]:
    state = LLMState()

    def pieces_for(question: str) -> list[str]:
        return re.findall(r"\S+\s*|\s+", f"You said: {question}")

    async def paced(pieces: list[str], render: Callable[[str], str], question: str) -> AsyncIterator[str]:
        state.started_at.append((question, time.time()))
        del state.started_at[:-20000]
        state.active += 1
        state.peak = max(state.peak, state.active)
        try:
            async for chunk in _paced(pieces, render, question):
                yield chunk
        finally:
            state.active -= 1

    async def _paced(pieces: list[str], render: Callable[[str], str], question: str) -> AsyncIterator[str]:
        for i, piece in enumerate(pieces):
            if state.stall_after is not None and i >= state.stall_after:
                await asyncio.sleep(3600)
            if state.pause_after is not None and i == state.pause_after:
                await asyncio.sleep(state.pause_seconds)
            if state.token_delay:
                await asyncio.sleep(state.token_delay)
            if i == 0:
                state.first_token_at.append((question, time.time()))
                del state.first_token_at[:-5000]
            yield render(piece)

    async def begin(request: Request, api: str) -> dict[str, Any] | Response:
        if not request.headers.get("authorization", "").startswith("Bearer "):
            return JSONResponse({"error": {"message": "missing API key", "type": "auth"}}, status_code=401)
        try:
            body = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"error": {"message": "invalid JSON"}}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": {"message": "expected an object"}}, status_code=400)
        state.requests.append({"_api": api, **body})
        del state.requests[:-200]
        if state.reject_key_next > 0:
            state.reject_key_next -= 1
            key = request.headers["authorization"].removeprefix("Bearer ")
            return JSONResponse(
                {
                    "error": {
                        "message": f"Incorrect API key provided: {key}. You can find your API key at "
                        "https://platform.openai.com/account/api-keys.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                },
                status_code=401,
            )
        if state.fail_next:
            status = state.fail_next.pop(0)
            text = f"simulated {status}"
            return JSONResponse(
                {"error": {"message": text}, "message": text, "status": status}, status_code=status
            )
        return body

    def last_user(body: dict[str, Any]) -> str:
        return question_of(
            next(
                (m.get("content", "") for m in reversed(body.get("messages", [])) if m.get("role") == "user"),
                "",
            )
        )

    async def openai_style(body: dict[str, Any], question: str) -> AsyncIterator[str]:
        yield ": keep-alive\n\n"
        pieces = pieces_for(question)
        async for chunk in paced(pieces, _chunk, question):
            yield chunk
        yield _chunk(None, "stop")
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            prompt = " ".join(
                str(m.get("content", "")) for m in body.get("messages", []) if isinstance(m, dict)
            )
            yield _usage_chunk(_usage(prompt, pieces))
        yield "data: [DONE]\n\n"

    def openai_endpoint(api: str) -> Callable[[Request], Awaitable[Response]]:
        """OpenAI-compatible and FastGPT answers share one wire format."""

        async def endpoint(request: Request) -> Response:
            body = await begin(request, api)
            if isinstance(body, Response):
                return body
            return StreamingResponse(openai_style(body, last_user(body)), media_type="text/event-stream")

        return endpoint

    async def dify(request: Request) -> Response:
        body = await begin(request, "dify")
        if isinstance(body, Response):
            return body
        conversation = str(body.get("conversation_id") or "")
        if conversation and conversation not in state.conversations:
            return JSONResponse(
                {"code": "not_found", "message": "Conversation Not Exists.", "status": 404}, status_code=404
            )
        conversation = conversation or str(uuid.uuid4())
        state.conversations[conversation] = state.conversations.get(conversation, 0) + 1
        question = str(body.get("query", ""))
        user = str(body.get("user", ""))
        for item in body.get("files") or []:
            file_id = item.get("upload_file_id") if isinstance(item, dict) else None
            known = state.files.get(str(file_id))
            if not isinstance(item, dict) or item.get("transfer_method") != "local_file" or known is None:
                return JSONResponse(
                    {"code": "invalid_param", "message": "file not found", "status": 400}, status_code=400
                )
            owner, name, mime, sha = known
            wanted = DIFY_TYPES.get(str(item.get("type")))
            if owner != user or wanted is None or not mime.startswith(wanted):
                return JSONResponse(
                    {"code": "invalid_param", "message": "file type or user mismatch", "status": 400},
                    status_code=400,
                )
            question += f" [{item['type']} {name} sha256={sha}]"
        message_id = str(uuid.uuid4())

        def event(piece: str) -> str:
            return (
                "data: "
                + json.dumps(
                    {
                        "event": "message",
                        "answer": piece,
                        "message_id": message_id,
                        "conversation_id": conversation,
                        "task_id": "t",
                    },
                    ensure_ascii=False,
                )
                + "\n\n"
            )

        async def stream() -> AsyncIterator[str]:
            yield "event: ping\n\n"
            pieces = pieces_for(question)
            async for chunk in paced(pieces, event, question):
                yield chunk
            yield (
                "data: "
                + json.dumps(
                    {
                        "event": "message_end",
                        "conversation_id": conversation,
                        "message_id": message_id,
                        "metadata": {"usage": _usage(question, pieces)},
                    }
                )
                + "\n\n"
            )

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def dify_upload(request: Request) -> Response:
        if not request.headers.get("authorization", "").startswith("Bearer "):
            return JSONResponse({"code": "unauthorized", "message": "no key", "status": 401}, status_code=401)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > DIFY_MAX_UPLOAD + 64 * 1024:
            return JSONResponse({"code": "file_too_large", "message": "File size exceeded."}, status_code=413)
        async with request.form(max_part_size=DIFY_MAX_UPLOAD + 1) as form:
            upload, user = form.get("file"), form.get("user")
            if isinstance(upload, str) or upload is None or not isinstance(user, str) or not user:
                return JSONResponse({"code": "no_file_uploaded", "message": "file and user"}, status_code=400)
            data = await upload.read()
            name = upload.filename or "file"
            mime = upload.content_type or "application/octet-stream"
        if len(data) > DIFY_MAX_UPLOAD:
            return JSONResponse({"code": "file_too_large", "message": "File size exceeded."}, status_code=413)
        file_id = str(uuid.uuid4())
        state.files[file_id] = (user, name, mime, hashlib.sha256(data).hexdigest())
        return JSONResponse(
            {
                "id": file_id,
                "name": name,
                "size": len(data),
                "extension": name.rsplit(".", 1)[-1] if "." in name else "",
                "mime_type": mime,
                "created_by": user,
                "created_at": int(time.time()),
            },
            status_code=201,
        )

    async def transcribe(request: Request) -> Response:
        """OpenAI-style speech to text: the "transcript" names the sha256 of the audio it was given."""
        if not request.headers.get("authorization", "").startswith("Bearer "):
            return JSONResponse({"error": {"message": "missing API key"}}, status_code=401)
        async with request.form(max_part_size=25 * 1024 * 1024) as form:
            upload, model = form.get("file"), form.get("model")
            if isinstance(upload, str) or upload is None or not isinstance(model, str) or not model:
                return JSONResponse({"error": {"message": "file and model are required"}}, status_code=400)
            data = await upload.read()
        return JSONResponse({"text": f"voice sha256={hashlib.sha256(data).hexdigest()}"})

    async def control(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return JSONResponse({"error": "invalid json"}, status_code=400)
        if "token_delay" in body:
            state.token_delay = float(body["token_delay"])
        if "fail_next" in body:
            state.fail_next = [int(s) for s in body["fail_next"]]
        if "reject_key_next" in body:
            state.reject_key_next = int(body["reject_key_next"])
        if "stall_after" in body:
            state.stall_after = None if body["stall_after"] is None else int(body["stall_after"])
        if "pause_after" in body:
            state.pause_after = None if body["pause_after"] is None else int(body["pause_after"])
        if "pause_seconds" in body:
            state.pause_seconds = float(body["pause_seconds"])
        return JSONResponse({"ok": True})

    async def last_requests(_: Request) -> Response:
        return JSONResponse(state.requests[-50:])

    async def first_tokens(_: Request) -> Response:
        return JSONResponse(state.first_token_at)

    async def streams(_: Request) -> Response:
        return JSONResponse({"active": state.active, "peak": state.peak, "started": state.started_at})

    return [
        Route("/v1/chat/completions", openai_endpoint("openai"), methods=["POST"]),
        Route("/v1/chat-messages", dify, methods=["POST"]),
        Route("/v1/files/upload", dify_upload, methods=["POST"]),
        Route("/v1/audio/transcriptions", transcribe, methods=["POST"]),
        Route("/api/v1/chat/completions", openai_endpoint("fastgpt"), methods=["POST"]),
        Route("/sim/llm", control, methods=["POST"]),
        Route("/sim/llm", last_requests, methods=["GET"]),
        Route("/sim/llm/first-tokens", first_tokens, methods=["GET"]),
        Route("/sim/llm/streams", streams, methods=["GET"]),
    ]
