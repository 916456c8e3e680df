"""``ingress.workers: 2``: two processes answer on one port, each storing what it verified; the admin
port's metrics are their sum, readyz waits for both, and SIGTERM stops both."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from imrelay.config import parse_settings
from imrelay.natsserver import EmbeddedNats
from imrelay_sim.client import build_callback

from ..helpers import free_port

pytestmark = pytest.mark.nats

KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
CALLBACKS = 40


async def stored(url: str) -> int:
    nc = await nats.connect(url)
    try:
        return int((await nc.jetstream().stream_info("IMRELAY_IN")).state.messages)
    finally:
        await nc.close()


def samples(text: str, name: str) -> dict[str, float]:
    """``sample name{labels}`` -> value for the samples of family ``name``."""
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name == name:
            for s in family.samples:
                out[s.name + str(sorted(s.labels.items()))] = s.value
    return out


def start(tmp_path: Path, server: EmbeddedNats) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """An ingress with ``workers: 2``, once its admin port says ready."""
    port, admin = free_port(), free_port()
    config: dict[str, Any] = {
        "ingress": {"host": "127.0.0.1", "port": port, "workers": 2},
        "admin": {"host": "127.0.0.1", "port": admin},
        "nats": {"url": server.url},
        "bots": [
            {
                "id": "w",
                "platform": "wecom_app",
                "credentials": {
                    "corp_id": "wwworkers00000001",
                    "agent_id": "1000002",
                    "secret": "s",
                    "token": "workerstoken",
                    "encoding_aes_key": KEY,
                },
            }
        ],
    }
    (tmp_path / "imrelay.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, IMRELAY_LOG_LEVEL="WARNING")
    for name in ("IMRELAY_CONFIG", "IMRELAY_NATS_URL", "IMRELAY_PORT", "IMRELAY_ADMIN_PORT"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "imrelay_ingress", "--config", str(tmp_path / "imrelay.yaml")], env=env
    )
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None
        try:
            if httpx.get(f"http://127.0.0.1:{admin}/readyz").status_code == 200:
                return proc, config
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "not ready"
        time.sleep(0.2)


def port_closed(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/callback/w")
    except httpx.ConnectError:
        return True
    return False


def test_two_processes_share_the_port_and_report_one_sum(tmp_path: Path) -> None:
    server = EmbeddedNats(store_dir=tmp_path / "nats").start()
    proc, config = start(tmp_path, server)
    port, admin = config["ingress"]["port"], config["admin"]["port"]
    try:
        bot = parse_settings(config, {}).bots[0]
        now = int(time.time())
        for i in range(CALLBACKS):  # a connection each: the kernel spreads them over the processes
            query, body = build_callback(bot, f"question {i}", f"user{i}", str(10**12 + i), now)
            with httpx.Client() as client:
                r = client.post(f"http://127.0.0.1:{port}/callback/w?{query}", content=body)
            assert r.status_code == 200, r.text
        assert asyncio.run(stored(server.url)) == CALLBACKS

        text = httpx.get(f"http://127.0.0.1:{admin}/metrics").text
        callbacks = samples(text, "imrelay_callbacks")
        accepted = [
            v for k, v in callbacks.items() if "'accepted'" in k and k.startswith("imrelay_callbacks_total")
        ]
        assert accepted == [CALLBACKS]
        assert list(samples(text, "imrelay_build_info").values()) == [1.0]
        assert text.count("# TYPE imrelay_callback_ack_seconds histogram") == 1

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert port_closed(port)  # no process left on the port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.cleanup()


def test_the_others_stop_when_the_first_process_is_killed(tmp_path: Path) -> None:
    server = EmbeddedNats(store_dir=tmp_path / "nats").start()
    proc, config = start(tmp_path, server)
    try:
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 30
        while not port_closed(config["ingress"]["port"]):  # the other process answers until it sees
            assert time.monotonic() < deadline, "the other ingress process kept serving"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.cleanup()
