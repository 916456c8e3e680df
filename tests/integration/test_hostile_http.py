"""Hostile callbacks against real ingress processes (uvicorn, JetStream on a real nats-server): a seeded
sample of the fuzz over real HTTP, malformed HTTP on a raw socket, and DingTalk's once-only signatures
held across two ingress replicas."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from imrelay.natsserver import EmbeddedNats

from ..helpers import free_port
from ..hostile import BOT_IDS, BOTS, SIM, Request, bot, plaintext_of, sign_plaintext, signed
from ..unit.test_callback_fuzz import insider, outsider
from .stack import Stack, stored_inbound

pytestmark = pytest.mark.nats

SEED = 20261202
SAMPLE = 40  # outsider and insider cases per bot over real HTTP: 8 x 2 x 40 = 640 requests


@pytest.fixture(scope="module")
def stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("hostile")
    s = Stack.create(root, nats_server)
    s.config["bots"] = BOTS
    [second] = s.add_replicas("ingress", 1)
    s.ports["ingress2"] = free_port()
    s.services[second].env["IMRELAY_PORT"] = str(s.ports["ingress2"])
    with s.running("ingress", second):
        yield s


def send(url: str, req: Request) -> httpx.Response:
    target = f"{url}/callback/{req.bot_id}" + (f"?{req.query}" if req.query else "")
    return httpx.request(req.method, target, content=req.body, headers=req.headers, timeout=10)


def stored(stack: Stack) -> int:
    return asyncio.run(stored_inbound(stack.nats.url))


def test_dingtalk_signature_is_used_once_across_replicas(stack: Stack) -> None:
    other = f"http://127.0.0.1:{stack.ports['ingress2']}"
    before = stored(stack)
    real = signed("dt", "hello", f"once-{time.time_ns()}", time.time())
    assert send(stack.ingress_url, real).status_code == 200
    body = json.loads(real.body)
    body.update(msgId=body["msgId"] + "-forged", text={"content": "forged"})
    assert send(other, real.replace(body=json.dumps(body).encode())).status_code == 401
    assert send(other, real).status_code == 200  # DingTalk retrying on another replica: a duplicate
    assert stored(stack) == before + 1


def test_fuzz_sample_over_real_http(stack: Stack) -> None:
    now = time.time()
    for bot_id in BOT_IDS:
        rng = random.Random(f"{SEED}:http:{bot_id}")
        original = signed(bot_id, "hello", f"fuzz-{bot_id}", now)
        assert send(stack.ingress_url, original).status_code == 200
        before = stored(stack)
        for _ in range(SAMPLE):
            mutation, req = outsider(original, rng)
            if mutation == "header":  # framing headers the client will not send: see the raw tests
                req = req.replace(
                    headers={
                        k: v
                        for k, v in req.headers.items()
                        if k not in ("Content-Length", "Transfer-Encoding")
                    }
                )
            if mutation == "resign":  # re-sign around the real clock, not the unit tests' fixed one
                req = signed(bot_id, "hello", f"fuzz-{bot_id}", now + rng.randint(-900, 900))
            status = send(stack.ingress_url, req).status_code
            assert status < 500, (mutation, req)
        assert stored(stack) == before, f"{bot_id}: an outsider's request was stored"
        plain = plaintext_of(original)
        is_xml = bot(bot_id).platform in ("wecom_app", "wecom_group_robot")
        for _ in range(SAMPLE):
            mutation, payload = insider(plain, rng, is_xml)
            status = send(stack.ingress_url, sign_plaintext(bot_id, payload, now)).status_code
            assert status < 500, (bot_id, mutation, payload[:200])
    assert SIM  # the simulator's address is only named in replies, never called here


RAW_REQUESTS = [
    b"POST /callback/app\xff\xfe HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    b"POST /callback/%ff%fe%00 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    b"GET /callback/app?msg_signature=%ff&timestamp=%00&nonce=\xff&echostr=%%% HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /callback/qq HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n12345",
    b"POST /callback/qq HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /callback/dc HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /callback/fs HTTP/1.1\r\nHost: x\r\nX-Lark-Signature: \x1b[31m\r\nContent-Length: 2\r\n\r\n{}",
    b"BREW /callback/app HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /callback/nobody%0d%0aINFO%20forged HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40),  # a TLS hello on the plain port
]


@pytest.mark.parametrize("raw", RAW_REQUESTS, ids=range(len(RAW_REQUESTS)))
def test_malformed_http_gets_4xx_or_a_closed_connection(stack: Stack, raw: bytes) -> None:
    before = stored(stack)
    with socket.create_connection(("127.0.0.1", stack.ports["ingress"]), timeout=10) as sock:
        sock.sendall(raw)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer:
                    break
        except (ConnectionResetError, TimeoutError):
            pass
    if answer:
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500, answer[:200]
    assert stored(stack) == before
