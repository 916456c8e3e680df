"""One server-sent-events reader for every backend, over httpx-sse (which handles comments, CRLF,
events split across reads and UTF-8 split across reads). What it adds is the policy: a non-2xx answer, a
body that is not an event stream, a connection failure or a stream silent for ``idle_timeout`` seconds
become a :class:`~imrelay.errors.BackendError` (retryable where trying again may help)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, SSEError, aconnect_sse

from imrelay.errors import BackendError

__all__ = ["RETRYABLE_STATUS", "error_message", "stream_events"]

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def error_message(resp: httpx.Response) -> str:
    """The provider's own error text (OpenAI ``error.message``, Dify ``message``), else the reason."""
    try:
        data: Any = resp.json()
    except ValueError:
        return resp.reason_phrase or "error"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
        if data.get("message"):
            return str(data["message"])[:300]
    return resp.reason_phrase or "error"


async def stream_events(
    client: httpx.AsyncClient,
    name: str,
    url: str,
    *,
    body: dict[str, Any],
    headers: dict[str, str],
    request_timeout: float,
    idle_timeout: float,
) -> AsyncGenerator[ServerSentEvent, None]:
    """POST ``body`` and yield the events of the answer's stream."""
    try:
        async with aconnect_sse(
            client,
            "POST",
            url,
            headers={"Accept": "text/event-stream", **headers},
            timeout=httpx.Timeout(request_timeout, read=idle_timeout),
            content=json.dumps(body, ensure_ascii=False).encode(),
        ) as source:
            resp = source.response
            if resp.status_code >= 400:
                await resp.aread()
                raise BackendError(
                    name,
                    error_message(resp),
                    status=resp.status_code,
                    retryable=resp.status_code in RETRYABLE_STATUS,
                )
            async with contextlib.aclosing(source.aiter_sse()) as events:
                while True:
                    try:
                        async with asyncio.timeout(idle_timeout):
                            event = await anext(events)
                    except StopAsyncIteration:
                        return
                    except TimeoutError as exc:
                        raise BackendError(name, "stream stalled (idle timeout)", retryable=True) from exc
                    yield event
    except SSEError as exc:
        raise BackendError(name, "response is not an event stream") from exc
    except httpx.TimeoutException as exc:
        raise BackendError(name, f"timed out ({type(exc).__name__})", retryable=True) from exc
    except httpx.TransportError as exc:
        raise BackendError(name, f"connection failed ({type(exc).__name__})", retryable=True) from exc
