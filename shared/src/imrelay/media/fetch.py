"""Downloading media: capped reads, and the guard in front of every address that came from a message or
an answer (server-side request forgery).

* :func:`read_capped` refuses a body larger than the limit before reading it when the server says its
  length, and stops reading as soon as it passes the limit when it does not.
* :class:`Guard` refuses private, loopback, link-local, shared, multicast and reserved addresses (the
  cloud metadata address ``169.254.169.254`` among them) unless a network of ``media.allow_private_networks``
  holds them. A name is resolved once, every address it has must pass, and the request is sent to the
  address that was checked (the name goes in ``Host`` and in TLS's SNI, so certificates are still checked
  against it): a name that resolves to another address the second time (DNS rebinding) gains nothing.
  Redirects are followed by hand, each target checked again.
* :class:`Downloader` is what a platform's media fetch gets: its API (an address from the configuration,
  trusted) with a cap, and URLs from messages through the guard.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from email.message import Message
from typing import Any

import httpx

from . import MediaError, MediaProblem

__all__ = ["Downloader", "Fetched", "Guard", "fetch_url", "read_capped"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]


@dataclass(frozen=True, slots=True)
class Fetched:
    data: bytes
    status: int = 200
    content_type: str | None = None
    filename: str | None = None  # from Content-Disposition

    def json(self) -> Any:
        import json

        return json.loads(self.data)


class Guard:
    """Which addresses media may be fetched from."""

    def __init__(self, allow_private_networks: Iterable[str] = ()) -> None:
        self.allowed_networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in allow_private_networks
        )

    def allows(self, address: str | IPAddress) -> bool:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip.version == net.version and ip in net for net in self.allowed_networks):
            return True
        return ip.is_global and not ip.is_multicast and not ip.is_reserved


async def _resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _filename(disposition: str | None) -> str | None:
    if not disposition:
        return None
    msg = Message()
    msg["content-disposition"] = disposition
    name = msg.get_filename()
    return name.rsplit("/", 1)[-1].rsplit("\\", 1)[-1][:200] if name else None


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """The body of a streamed response, refused (:class:`MediaError` ``oversize``) past ``limit`` bytes,
    before reading it when ``Content-Length`` says so."""
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise MediaError(MediaProblem.OVERSIZE, f"{declared} bytes declared, limit {limit}")
    body = bytearray()
    async for piece in response.aiter_bytes():
        body += piece
        if len(body) > limit:
            raise MediaError(MediaProblem.OVERSIZE, f"more than {limit} bytes")
    return bytes(body)


def _fetched(response: httpx.Response, data: bytes) -> Fetched:
    return Fetched(
        data=data,
        status=response.status_code,
        content_type=response.headers.get("content-type"),
        filename=_filename(response.headers.get("content-disposition")),
    )


async def fetch_url(
    client: httpx.AsyncClient,
    url: str,
    *,
    guard: Guard,
    limit: int,
    max_redirects: int = 3,
    headers: Mapping[str, str] | None = None,
    resolve: Resolver = _resolve,
) -> Fetched:
    """GET ``url`` through ``guard``: every hop's address checked, the checked address the one connected
    to. Raises :class:`MediaError` (``blocked``, ``oversize``, ``download_failed``)."""
    target = httpx.URL(url)
    for _ in range(max_redirects + 1):
        if target.scheme not in ("http", "https") or not target.host:
            raise MediaError(MediaProblem.BLOCKED, f"not an http(s) URL: {target.scheme}")
        port = target.port or (443 if target.scheme == "https" else 80)
        try:
            addresses = [str(ipaddress.ip_address(target.host))]
            literal = True
        except ValueError:
            literal = False
            try:
                addresses = await resolve(target.host, port)
            except OSError as exc:
                raise MediaError(MediaProblem.DOWNLOAD_FAILED, f"cannot resolve {target.host}") from exc
        if not addresses or not all(guard.allows(a) for a in addresses):
            raise MediaError(MediaProblem.BLOCKED, f"{target.host} is a private or reserved address")
        address = addresses[0]
        pinned = target.copy_with(host=address)
        extensions: dict[str, Any] = {}
        if not literal and target.scheme == "https":
            extensions["sni_hostname"] = target.host
        request_headers = {**(headers or {}), "Host": target.netloc.decode("ascii")}
        try:
            async with client.stream(
                "GET", pinned, headers=request_headers, extensions=extensions, follow_redirects=False
            ) as response:
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    target = target.join(location)
                    continue
                if response.status_code != 200:
                    raise MediaError(MediaProblem.DOWNLOAD_FAILED, f"HTTP {response.status_code}")
                return _fetched(response, await read_capped(response, limit))
        except httpx.HTTPError as exc:
            raise MediaError(MediaProblem.DOWNLOAD_FAILED, type(exc).__name__) from exc
    raise MediaError(MediaProblem.DOWNLOAD_FAILED, f"more than {max_redirects} redirects")


@dataclass(frozen=True, slots=True)
class Downloader:
    """What a platform's media fetch is given: ``limit`` is the smaller of ``media.max_bytes`` and the
    platform's own limit for the kind."""

    client: httpx.AsyncClient  # the service's client, for the platform's API (a configured address)
    direct: httpx.AsyncClient  # a client without proxies, for guarded URLs (they are connected to directly)
    guard: Guard
    limit: int
    timeout: float = 30.0

    async def api(self, method: str, url: str, **kwargs: Any) -> Fetched:
        """Call the platform's API (trusted: it is the bot's ``api_base``) and read the answer, capped.
        The caller reads the status and an error body itself."""
        try:
            async with asyncio.timeout(self.timeout):
                async with self.client.stream(method, url, **kwargs) as response:
                    return _fetched(response, await read_capped(response, self.limit))
        except TimeoutError as exc:
            raise MediaError(MediaProblem.DOWNLOAD_FAILED, "timed out") from exc
        except httpx.HTTPError as exc:
            raise MediaError(MediaProblem.DOWNLOAD_FAILED, type(exc).__name__) from exc

    async def url(self, url: str, headers: Mapping[str, str] | None = None) -> Fetched:
        """GET a URL a message carried, through the guard."""
        try:
            async with asyncio.timeout(self.timeout):
                return await fetch_url(self.direct, url, guard=self.guard, limit=self.limit, headers=headers)
        except TimeoutError as exc:
            raise MediaError(MediaProblem.DOWNLOAD_FAILED, "timed out") from exc

    async def first_url(self, *urls: str | None) -> Fetched:
        """GET the first of ``urls`` a message gave (through the guard); ``download_failed`` when it gave
        none."""
        url = next((u for u in urls if u), None)
        if url is None:
            raise MediaError(MediaProblem.DOWNLOAD_FAILED, "the message names no URL")
        return await self.url(url)

    def with_limit(self, limit: int) -> Downloader:
        return Downloader(self.client, self.direct, self.guard, min(self.limit, limit), self.timeout)
