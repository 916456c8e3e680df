"""The HTTP client the services call platforms and models with: httpx's interface (requests, responses,
errors, tracing) over aiohttp's connections (httpx-aiohttp). Per request it costs about a third of
httpx's own connection handling, which was most of a sender's CPU per delivery.

What stays as with plain httpx: timeouts per connect and per read, redirects not followed unless asked,
``Content-Encoding`` decoded by httpx, errors raised as ``httpx.HTTPError`` subclasses. Requests through
a proxy from ``HTTPS_PROXY``/``HTTP_PROXY`` go through httpx's own transport (as before).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

__all__ = ["async_client"]

DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)


# bodies above this go to aiohttp in pieces (aiohttp warns of a large body handed over whole)
_WHOLE_BODY_MAX = 256 * 1024
_PIECE = 64 * 1024


class _Pieces(httpx.AsyncByteStream):
    def __init__(self, body: bytes) -> None:
        self.body = memoryview(body)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.body), _PIECE):
            yield bytes(self.body[start : start + _PIECE])


class _Transport(AiohttpTransport):
    """aiohttp underneath. Every request body is read first and sent with its ``Content-Length``, never
    chunked (platform upload APIs refuse chunked bodies); a large one is written in pieces.

    aiohttp times connecting and each read, not writing: a peer that stops reading an upload would hold
    the request forever. So sending the request and getting the answer's head must fit in the request's
    connect + write + read timeouts together, else :class:`httpx.WriteTimeout`."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        if len(body) > _WHOLE_BODY_MAX:
            request = httpx.Request(
                request.method,
                request.url,
                headers=request.headers,  # Content-Length included: aiohttp does not chunk
                stream=_Pieces(body),
                extensions=request.extensions,
            )
        timeouts = request.extensions.get("timeout", {})
        phases = [timeouts.get(phase) for phase in ("connect", "write", "read")]
        if any(seconds is None for seconds in phases):
            return await super().handle_async_request(request)
        deadline = asyncio.timeout(sum(phases))
        try:
            async with deadline:
                return await super().handle_async_request(request)
        except TimeoutError as exc:
            if deadline.expired():
                raise httpx.WriteTimeout("request not sent and answered in time", request=request) from exc
            raise


def _session(limits: httpx.Limits, ssl_context: ssl.SSLContext) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=limits.max_connections or 0,
        keepalive_timeout=limits.keepalive_expiry,
        ssl=ssl_context,
    )
    # httpx keeps the cookies (as it always did); aiohttp keeps none of its own
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())


def async_client(
    *, timeout: float | httpx.Timeout, limits: httpx.Limits = DEFAULT_LIMITS, verify: bool = True
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` whose requests go over aiohttp (its session is made on the first
    request, inside the running event loop; ``aclose()`` closes it)."""
    ssl_context = httpx.create_ssl_context(verify=verify)
    transport = _Transport(verify=verify, limits=limits, client=lambda: _session(limits, ssl_context))
    return httpx.AsyncClient(timeout=timeout, limits=limits, transport=transport, verify=verify)
