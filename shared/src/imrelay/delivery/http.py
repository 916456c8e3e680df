"""One timed platform call, shared by every delivery and token fetch: transport failures become transient
errors, the duration is recorded in ``imrelay_delivery_seconds``."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from imrelay.errors import TokenExpiredError, TransientUpstreamError, UpstreamError
from imrelay.events import ReplyChunk
from imrelay.telemetry import DELIVERY_SECONDS, TOKEN_REFRESHES

if TYPE_CHECKING:
    from .tokens import TokenCache

T = TypeVar("T")


async def call(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    platform: str,
    bot: str,
    http_timeout: float,
    failure_code: str = "http",
    **kwargs: Any,
) -> httpx.Response:
    """``client.request`` within ``http_timeout``, timed; a transport failure raises a
    :class:`TransientUpstreamError` with code ``failure_code`` (``"token"`` for a token endpoint)."""
    started = time.perf_counter()
    try:
        return await client.request(method, url, timeout=http_timeout, **kwargs)
    except httpx.HTTPError as exc:
        raise TransientUpstreamError(platform, failure_code, type(exc).__name__) from exc
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


async def counted_token_fetch(
    platform: str, bot: str, fetch: Callable[[], Awaitable[tuple[str, float]]]
) -> tuple[str, float]:
    """Run a token-endpoint call, count it in ``imrelay_token_refreshes_total``, and turn transport or
    answer-shape failures into transient errors."""
    try:
        result = await fetch()
    except UpstreamError:
        TOKEN_REFRESHES.labels(platform=platform, bot=bot, outcome="error").inc()
        raise
    except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
        TOKEN_REFRESHES.labels(platform=platform, bot=bot, outcome="error").inc()
        raise TransientUpstreamError(platform, "token", type(exc).__name__) from exc
    TOKEN_REFRESHES.labels(platform=platform, bot=bot, outcome="ok").inc()
    return result


async def post_for_token(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    *,
    platform: str,
    bot: str,
    http_timeout: float,
    check: Callable[[Any, int, float | None], None],
    answer_keys: tuple[str, str],
) -> tuple[str, float]:
    """A JSON token endpoint: POST ``body``, ``check(payload, status, retry_after)`` raises what a failed
    answer means, and ``answer_keys`` name the token and its lifetime in seconds (7200 when absent).
    Counted like every token fetch."""
    token_key, lifetime_key = answer_keys

    async def fetch() -> tuple[str, float]:
        resp = await call(
            client,
            "POST",
            url,
            platform=platform,
            bot=bot,
            http_timeout=http_timeout,
            failure_code="token",
            json=body,
        )
        payload = json_or_none(resp)
        check(payload, resp.status_code, retry_after(resp))
        return str(payload[token_key]), float(payload.get(lifetime_key, 7200))

    return await counted_token_fetch(platform, bot, fetch)


async def with_token(
    tokens: TokenCache,
    key: str,
    fetch: Callable[[], Awaitable[tuple[str, float]]],
    use: Callable[[str], Awaitable[T]],
    *,
    renew_early: bool,
) -> T:
    """Call ``use(token)``; if the platform says the token is invalid, forget it cluster-wide, fetch a new
    one and try once more."""
    token = await tokens.get(key, fetch, renew_early=renew_early)
    try:
        return await use(token)
    except TokenExpiredError:
        await tokens.invalidate(key, token)
        token = await tokens.get(key, fetch, renew_early=renew_early)
        return await use(token)
