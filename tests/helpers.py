"""Test helpers shared by unit and integration tests (no fixtures here; see conftest.py)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import uvicorn
from starlette.types import ASGIApp

from imrelay.events import InboundMessage

VECTORS = Path(__file__).parent / "vectors" / "platform_vectors.json"


def need_tool(name: str, package: str) -> str:
    """The path of the program ``name``. Without it the test is skipped, saying which package brings it;
    with ``IMRELAY_REQUIRE_TOOLS`` set (CI, ``.ci/run``) it fails instead."""
    path = shutil.which(name)
    if path:
        return path
    unavailable(f"{name} is not installed (Debian package {package}; .ci/run installs it)")


def unavailable(message: str) -> NoReturn:
    """A tool a test needs is missing: skip, saying what to install; with ``IMRELAY_REQUIRE_TOOLS`` set (CI,
    ``.ci/run``) fail instead."""
    if os.environ.get("IMRELAY_REQUIRE_TOOLS"):
        pytest.fail(message)
    pytest.skip(message)


def load_vectors(*platforms: str) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads(VECTORS.read_text(encoding="utf-8"))["cases"]
    return [c for c in cases if c["platform"] in platforms]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_port_run(n: int) -> int:
    """A port p such that p .. p+n-1 are all free now."""
    import random

    for _ in range(200):
        base = random.randint(20000, 60000 - n)
        socks = []
        try:
            for port in range(base, base + n):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no run of {n} free ports")


@contextlib.contextmanager
def served(app: ASGIApp, port: int) -> Iterator[None]:
    """``app`` served by a real uvicorn server on 127.0.0.1:``port``, in a thread, for the block."""
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the test server did not start on port {port}")
        time.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(10)


class FakePublisher:
    """Records what the ingress would store; ``fail`` simulates JetStream being unavailable."""

    def __init__(self) -> None:
        self.published: list[InboundMessage] = []
        self.keys: set[str] = set()
        self.fail = False

    async def publish(self, message: InboundMessage) -> bool:
        from imrelay.errors import PublishUnavailable

        if self.fail:
            raise PublishUnavailable("test: NATS down")
        key = f"{message.bot_id}:{message.platform_message_id}"
        if key in self.keys:
            return True
        self.keys.add(key)
        self.published.append(message)
        return False

    async def ready(self) -> bool:
        return not self.fail


class FakeStreamStore:
    """AI-bot answer streams in a dict (unit tests of the ingress)."""

    def __init__(self) -> None:
        from imrelay.answer_streams import StreamRecord

        self.records: dict[tuple[str, str], StreamRecord] = {}

    async def get(self, bot_id: str, sid: str) -> Any:
        return self.records.get((bot_id, sid))

    async def open(self, bot_id: str, sid: str) -> None:
        from imrelay.answer_streams import StreamRecord

        self.records.setdefault((bot_id, sid), StreamRecord("", False, 0.0))

    async def put(self, bot_id: str, sid: str, content: str, finish: bool, media: Any = ()) -> None:
        from imrelay.answer_streams import StreamRecord

        self.records[(bot_id, sid)] = StreamRecord(content, finish, 0.0, tuple(media))


class FakeReplayGuard:
    """Once-only signatures in a dict (unit tests of the ingress)."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    async def claim(self, key: str, fingerprint: str) -> bool:
        return self.seen.setdefault(key, fingerprint) == fingerprint
