"""One timed platform call, shared by every delivery: transport failures become transient errors, the
duration is recorded in ``imrelay_delivery_seconds``."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import httpx

from imrelay.errors import TransientUpstreamError
from imrelay.events import ReplyChunk
from imrelay.telemetry import DELIVERY_SECONDS


async def call(client: httpx.AsyncClient, method: str, url: str, *, platform: str, bot: str,
               http_timeout: float, **kwargs: Any) -> httpx.Response:
    started = time.perf_counter()
    try:
        return await client.request(method, url, timeout=http_timeout, **kwargs)
    except httpx.HTTPError as exc:
        raise TransientUpstreamError(platform, "http", type(exc).__name__) from exc
    finally:
        DELIVERY_SECONDS.labels(platform=platform, bot=bot).observe(time.perf_counter() - started)


def json_or_none(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def retry_after(resp: httpx.Response, *headers: str) -> float | None:
    """Seconds the platform asked us to wait (``Retry-After`` or a platform header), if it said."""
    for name in ("retry-after", *headers):
        value = resp.headers.get(name)
        if value:
            try:
                return max(float(value), 0.0)
            except ValueError:
                continue
    return None


def window_closed(chunk: ReplyChunk, seconds: float, now: datetime | None = None) -> bool:
    """The platform only accepts an answer within ``seconds`` of the user's message."""
    if chunk.received_at is None:
        return False
    return ((now or datetime.now(UTC)) - chunk.received_at).total_seconds() > seconds
