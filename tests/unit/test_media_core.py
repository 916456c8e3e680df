"""Media's pure parts: the type read from the bytes, answers' image links, the lines users read, the
SSRF guard's address rules, capped reads, and the guarded fetch's pinning and redirect checks."""

from __future__ import annotations

import json

import httpx
import pytest

from imrelay.events import Attachment, InboundMessage, ReplyChunk
from imrelay.media import MediaError, MediaKind, MediaProblem, MediaRef, user_line
from imrelay.media.fetch import Guard, fetch_url, read_capped
from imrelay.media.links import image_links, replace_links
from imrelay.media.sniff import kind_of, sniff
from imrelay.redact import redact

from ..media_files import pdf, png


def test_the_type_is_read_from_the_bytes_not_the_name() -> None:
    assert sniff(png()) == "image/png"
    assert sniff(pdf()) == "application/pdf"
    assert sniff(b"#!AMR\n\x00\x01") == "audio/amr"
    assert sniff(b"\x02#!SILK_V3\x00") == "audio/silk"
    assert sniff("纯文本 plain".encode()) == "text/plain"
    assert sniff(bytes(range(256))) == "application/octet-stream"
    assert kind_of("image/png", MediaKind.IMAGE) is MediaKind.IMAGE
    # "an image" whose bytes are a PDF is a file
    assert kind_of(sniff(pdf()), MediaKind.IMAGE) is MediaKind.FILE
    assert kind_of("audio/amr") is MediaKind.VOICE


def test_image_links_are_found_and_replaced() -> None:
    text = 'Here: ![chart](https://img.example/c.png) and ![x](http://a/b.jpg "t") and [not](https://x/y.png)'
    links = image_links(text)
    assert [(link.alt, link.url) for link in links] == [
        ("chart", "https://img.example/c.png"),
        ("x", "http://a/b.jpg"),
    ]
    assert replace_links(text, {"https://img.example/c.png": "chart"}).startswith("Here: chart and ![x]")
    assert image_links("![a](javascript:alert(1)) ![b](file:///etc/passwd)") == []
    assert len(image_links(" ".join(f"![i](https://x/{n}.png)" for n in range(20)), limit=8)) == 8


def test_users_read_one_plain_line() -> None:
    assert user_line(MediaKind.IMAGE, MediaProblem.OVERSIZE, limit=10 * 1024 * 1024) == (
        "(I could not read your picture: it is larger than 10 MB.)"
    )
    assert "voice message" in user_line("voice", MediaProblem.NOT_READ)
    assert user_line("image", MediaProblem.BLOCKED, outbound=True) == (
        "(A picture in this answer could not be shown: its address is not allowed.)"
    )


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("93.184.216.34", True),
        ("2606:4700::6810:85e5", True),
        ("127.0.0.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),  # noqa: S104 - an address the guard must refuse
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("::ffff:169.254.169.254", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
    ],
)
def test_the_guard_refuses_private_and_reserved_addresses(address: str, allowed: bool) -> None:
    assert Guard().allows(address) is allowed


def test_listed_private_networks_are_allowed_and_nothing_else() -> None:
    guard = Guard(["10.0.0.0/8"])
    assert guard.allows("10.9.9.9") and guard.allows("::ffff:10.1.1.1")
    assert not guard.allows("169.254.169.254") and not guard.allows("127.0.0.1")


def _streamed(status: int, body: bytes, headers: dict[str, str] | None = None) -> httpx.MockTransport:
    read: list[int] = []

    async def stream() -> object:
        for i in range(0, len(body), 1000):
            read.append(i)
            yield body[i : i + 1000]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=headers, content=stream())  # type: ignore[arg-type]

    transport = httpx.MockTransport(handler)
    transport.read = read  # type: ignore[attr-defined]
    return transport


async def test_a_declared_length_above_the_cap_is_refused_before_reading() -> None:
    transport = _streamed(200, b"x" * 50_000, {"content-length": "50000"})
    async with httpx.AsyncClient(transport=transport) as client:
        async with client.stream("GET", "http://h/") as resp:
            with pytest.raises(MediaError) as err:
                await read_capped(resp, 10_000)
    assert err.value.problem is MediaProblem.OVERSIZE
    assert transport.read == []  # type: ignore[attr-defined]


async def test_an_undeclared_body_is_cut_as_soon_as_it_passes_the_cap() -> None:
    transport = _streamed(200, b"x" * 50_000)
    async with httpx.AsyncClient(transport=transport) as client:
        async with client.stream("GET", "http://h/") as resp:
            with pytest.raises(MediaError):
                await read_capped(resp, 10_000)
    assert len(transport.read) <= 11  # type: ignore[attr-defined]


def _recording(routes: dict[str, httpx.Response]) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return routes.get(str(request.url), httpx.Response(404))

    return httpx.MockTransport(handler), seen


def _resolver(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> list[str]:
        return table[host]

    return resolve


async def test_the_checked_address_is_the_one_connected_to() -> None:
    transport, seen = _recording({"https://93.184.216.34/a.png": httpx.Response(200, content=png())})
    async with httpx.AsyncClient(transport=transport) as client:
        got = await fetch_url(
            client,
            "https://img.example/a.png",
            guard=Guard(),
            limit=1 << 20,
            resolve=_resolver({"img.example": ["93.184.216.34"]}),
        )
    assert got.data == png()
    [request] = seen
    assert request.headers["host"] == "img.example"
    assert request.extensions["sni_hostname"] == "img.example"


async def test_a_name_with_any_private_address_is_refused_without_a_request() -> None:
    transport, seen = _recording({})
    async with httpx.AsyncClient(transport=transport) as client:
        for table in ({"evil.example": ["93.184.216.34", "10.0.0.5"]}, {"evil.example": ["169.254.169.254"]}):
            with pytest.raises(MediaError) as err:
                await fetch_url(
                    client, "http://evil.example/x", guard=Guard(), limit=1 << 20, resolve=_resolver(table)
                )
            assert err.value.problem is MediaProblem.BLOCKED
    assert seen == []


async def test_a_redirect_to_a_private_address_is_refused() -> None:
    transport, seen = _recording(
        {
            "http://93.184.216.34/r": httpx.Response(
                302, headers={"location": "http://169.254.169.254/latest/"}
            )
        }
    )
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(MediaError) as err:
            await fetch_url(
                client,
                "http://pub.example/r",
                guard=Guard(),
                limit=1 << 20,
                resolve=_resolver({"pub.example": ["93.184.216.34"]}),
            )
    assert err.value.problem is MediaProblem.BLOCKED
    assert [str(r.url) for r in seen] == ["http://93.184.216.34/r"]


async def test_other_schemes_and_redirect_loops_are_refused() -> None:
    transport, _ = _recording(
        {"http://93.184.216.34/loop": httpx.Response(302, headers={"location": "/loop"})}
    )
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(MediaError) as err:
            await fetch_url(client, "file:///etc/passwd", guard=Guard(), limit=10)
        assert err.value.problem is MediaProblem.BLOCKED
        with pytest.raises(MediaError) as err:
            await fetch_url(client, "http://93.184.216.34/loop", guard=Guard(), limit=10, max_redirects=2)
        assert err.value.problem is MediaProblem.DOWNLOAD_FAILED


def test_schema_3_attachments_and_answer_media_round_trip_and_v2_events_still_read() -> None:
    v2 = {
        "schema_version": 2,
        "id": "m",
        "platform": "qq",
        "bot_id": "b",
        "platform_message_id": "k",
        "chat": {"id": "c", "type": "direct"},
        "sender": {"id": "u"},
        "attachments": [{"kind": "image", "ref": "https://x/y.png", "url": "https://x/y.png"}],
    }
    old = InboundMessage.model_validate(v2)
    assert old.schema_version == 3 and old.attachments[0].size is None and old.attachments[0].key is None
    key = "aes-key-of-this-message-0123456789"
    a = Attachment(kind="file", ref="r", name="report.pdf", size=123, mime="application/pdf", key=key)
    assert key not in repr(a)
    assert key not in redact(f"decrypting with {key}")  # masked in logs once read
    again = InboundMessage.model_validate_json(old.model_copy(update={"attachments": [a]}).model_dump_json())
    assert again.attachments == [a]
    ref = MediaRef(kind=MediaKind.IMAGE, key="out/r/0", name="c.png", size=3, sha256="ab", mime="image/png")
    chunk = ReplyChunk(
        reply_id="r",
        inbound_id="m",
        platform="qq",
        bot_id="b",
        chat=old.chat,
        recipient=old.sender,
        seq=0,
        final=True,
        media=[ref],
    )
    assert ReplyChunk.model_validate(json.loads(chunk.model_dump_json())).media == [ref]
