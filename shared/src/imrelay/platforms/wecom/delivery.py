"""What WeCom's APIs answer, for every WeCom delivery: ``errcode`` mapped onto the upstream error tree."""

from __future__ import annotations

from typing import Any

import httpx

from imrelay.delivery.http import call, json_or_none
from imrelay.errors import (
    PermanentUpstreamError,
    RateLimitedError,
    TokenExpiredError,
    TransientUpstreamError,
)

from .codes import WeComCode

TOKEN_CODES = {40014, 42001, 42007, 42009}
TRANSIENT_CODES = {WeComCode.SYSTEM_BUSY}


def check(payload: Any, status: int, rate_limit_backoff: float = 60.0, platform: str = "wecom") -> None:
    """Raise the upstream error an API answer stands for (nothing for errcode 0)."""
    if status >= 500:
        raise TransientUpstreamError(platform, status, "server error")
    if not isinstance(payload, dict) or "errcode" not in payload:
        if status >= 400:
            raise PermanentUpstreamError(platform, status, "unexpected HTTP status")
        raise TransientUpstreamError(platform, "bad_response", "answer without errcode")
    code = payload.get("errcode")
    msg = str(payload.get("errmsg", ""))[:200]
    if code == 0:
        return
    if not isinstance(code, int):
        raise TransientUpstreamError(platform, str(code), msg)
    if code in TOKEN_CODES:
        raise TokenExpiredError(platform, code, msg)
    if code == WeComCode.API_FREQ_OUT_OF_LIMIT:
        raise RateLimitedError(platform, code, msg, retry_after=rate_limit_backoff)
    if code in TRANSIENT_CODES:
        raise TransientUpstreamError(platform, code, msg)
    raise PermanentUpstreamError(platform, code, msg)


async def post_json(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    *,
    platform: str,
    bot: str,
    http_timeout: float,
    params: dict[str, str] | None = None,
    rate_limit_backoff: float = 60.0,
) -> dict[str, Any]:
    """POST one WeCom API call, time it, and raise what its answer means; return the answer."""
    resp = await call(
        client, "POST", url, platform=platform, bot=bot, http_timeout=http_timeout, params=params, json=body
    )
    payload = json_or_none(resp)
    check(payload, resp.status_code, rate_limit_backoff, platform)
    assert isinstance(payload, dict)
    return payload
