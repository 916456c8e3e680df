"""The services' HTTP client (httpx's interface over aiohttp) against a real HTTP server: bodies, uploads,
errors, timeouts, redirects and cookies behave as they do with plain httpx."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from imrelay.delivery.http import call
from imrelay.errors import TransientUpstreamError
from imrelay.httpclient import async_client
from tests.helpers import free_port, served


class Server:
    """A real uvicorn server in a thread; it records what each request looked like."""

    def __init__(self) -> None:
        self.port = free_port()
        self.seen: list[dict[str, Any]] = []

        async def echo(request: Request) -> Response:
            body = await request.body()
            form: dict[str, Any] = {}
            if request.headers.get("content-type", "").startswith("multipart/"):
                async with request.form() as parsed:
                    for key, value in parsed.items():
                        if isinstance(value, str):
                            form[key] = value
                        else:
                            digest = hashlib.sha256(await value.read()).hexdigest()
                            form[key] = {"filename": value.filename, "sha256": digest}
            self.seen.append(
                {
                    "method": request.method,
                    "query": dict(request.query_params),
                    "headers": dict(request.headers),
                    "cookie_headers": [v for k, v in request.headers.raw if k == b"cookie"],
                    "length": len(body),
                    "form": form,
                }
            )
            return JSONResponse({"ok": True, "got": len(body)}, headers={"set-cookie": "s=1; Path=/"})

        async def slow(_: Request) -> Response:
            await asyncio.sleep(2)
            return Response(b"late")

        async def drip(_: Request) -> Response:
            async def pieces() -> AsyncIterator[bytes]:
                yield b"data: first\n\n"
                await asyncio.sleep(5)
                yield b"data: late\n\n"

            return StreamingResponse(pieces(), media_type="text/event-stream")

        async def gz(_: Request) -> Response:
            return Response(gzip.compress(b'{"zipped": true}'), headers={"content-encoding": "gzip"})

        async def moved(_: Request) -> Response:
            return RedirectResponse("/echo", status_code=302)

        self.app = Starlette(
            routes=[
                Route("/echo", echo, methods=["GET", "POST", "PATCH"]),
                Route("/slow", slow),
                Route("/gz", gz),
                Route("/drip", drip),
                Route("/moved", moved),
            ]
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = Server()
    with served(s.app, s.port):
        yield s


async def test_json_post_round_trip(server: Server) -> None:
    async with async_client(timeout=5) as client:
        resp = await client.post(server.url("/echo"), params={"access_token": "t"}, json={"text": "你好"})
    assert resp.status_code == 200
    assert resp.json() == {"ok": True, "got": len('{"text":"你好"}'.encode())}
    seen = server.seen[-1]
    assert seen["query"] == {"access_token": "t"}
    assert seen["headers"]["content-type"] == "application/json"
    assert int(seen["headers"]["content-length"]) == seen["length"]


async def test_multipart_upload_goes_whole_with_its_length(server: Server) -> None:
    """Upload APIs (WeCom media/upload, Discord attachments) refuse chunked bodies."""
    data = bytes(range(256)) * 4096  # 1 MiB
    async with async_client(timeout=5) as client:
        resp = await client.post(
            server.url("/echo"), data={"type": "image"}, files={"media": ("a.png", data, "image/png")}
        )
    assert resp.status_code == 200
    seen = server.seen[-1]
    assert "transfer-encoding" not in seen["headers"]
    assert int(seen["headers"]["content-length"]) == seen["length"] > len(data)
    assert seen["form"] == {
        "type": "image",
        "media": {"filename": "a.png", "sha256": hashlib.sha256(data).hexdigest()},
    }


async def test_large_json_body_goes_whole_with_its_length(server: Server) -> None:
    """A base64 picture inside JSON (WeCom group robot, QQ) is a large body, not a chunked one."""
    text = "x" * (3 * 1024 * 1024)
    async with async_client(timeout=5) as client:
        resp = await client.post(server.url("/echo"), json={"base64": text})
    assert resp.json()["got"] == len(text) + len('{"base64":""}')
    seen = server.seen[-1]
    assert "transfer-encoding" not in seen["headers"]
    assert int(seen["headers"]["content-length"]) == seen["length"]


async def test_read_timeout_is_an_httpx_timeout_and_a_transient_failure(server: Server) -> None:
    async with async_client(timeout=0.3) as client:
        with pytest.raises(httpx.TimeoutException):
            await client.get(server.url("/slow"))
        with pytest.raises(TransientUpstreamError) as err:
            await call(client, "GET", server.url("/slow"), platform="p", bot="b", http_timeout=0.3)
    assert err.value.code == "http"


async def test_a_peer_that_stops_reading_an_upload_times_the_request_out() -> None:
    """aiohttp does not time writes; the client does (as httpx's write timeout would)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    accepted: list[socket.socket] = []

    async def accept() -> None:  # takes the connection, never reads from it
        conn, _ = await asyncio.get_running_loop().sock_accept(listener)
        accepted.append(conn)

    acceptor = asyncio.create_task(accept())
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/upload"
    try:
        async with async_client(timeout=0.5) as client:
            with pytest.raises(httpx.TimeoutException):
                # the outer wait only keeps a broken client from hanging the suite
                await asyncio.wait_for(client.post(url, content=b"x" * (32 * 1024 * 1024)), 60)
            with pytest.raises(TransientUpstreamError):
                await asyncio.wait_for(
                    call(client, "POST", url, platform="p", bot="b", http_timeout=0.5, content=b"x" * 2**25),
                    60,
                )
    finally:
        acceptor.cancel()
        for conn in accepted:
            conn.close()
        listener.close()


async def test_a_stream_that_stops_mid_way_is_a_read_timeout(server: Server) -> None:
    """A model's stream that goes silent: each read is timed, as with httpx."""
    async with async_client(timeout=0.5) as client, client.stream("GET", server.url("/drip")) as resp:
        pieces = resp.aiter_bytes()
        assert await anext(pieces) == b"data: first\n\n"  # what came is read at once
        with pytest.raises(httpx.ReadTimeout):
            await anext(pieces)


async def test_connection_refused_is_an_httpx_error() -> None:
    async with async_client(timeout=2) as client:
        with pytest.raises(httpx.HTTPError):
            await client.get(f"http://127.0.0.1:{free_port()}/")


async def test_gzip_is_decoded_and_redirects_are_not_followed(server: Server) -> None:
    async with async_client(timeout=5) as client:
        assert (await client.get(server.url("/gz"))).json() == {"zipped": True}
        moved = await client.get(server.url("/moved"))
    assert moved.status_code == 302
    assert moved.headers["location"] == "/echo"


async def test_cookies_are_kept_once_by_httpx(server: Server) -> None:
    async with async_client(timeout=5) as client:
        await client.get(server.url("/echo"))
        await client.get(server.url("/echo"))
    assert server.seen[-1]["cookie_headers"] == [b"s=1"]


async def test_connections_are_reused(server: Server) -> None:
    async with async_client(timeout=5) as client:
        for _ in range(20):
            assert (await client.patch(server.url("/echo"), json={})).status_code == 200
        session = client._transport.client  # type: ignore[attr-defined]
        connector = session.connector
        assert sum(len(v) for v in connector._conns.values()) == 1
