from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from imrelay.natsserver import EmbeddedNats

from ..helpers import free_port
from .stack import Stack


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(store_dir=tmp_path_factory.mktemp("nats"), port=free_port()).start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("stack")
    s = Stack.create(root, nats_server).start()
    try:
        yield s
    finally:
        s.stop()
