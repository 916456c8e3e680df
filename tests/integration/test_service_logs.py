"""A service's own lines, as an operator reads them (``IMRELAY_LOG_FORMAT=json``): the start line, NATS
away at start (its URL, few lines), the connection once NATS is there, and the drain on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from imrelay import __version__
from imrelay.natsserver import EmbeddedNats

from ..helpers import free_port

pytestmark = pytest.mark.nats


def lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        out.append(json.loads(raw))  # every line is JSON, whatever logged it
    return out


def wait_for(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in e["message"] for e in lines(path)):
            return
        assert proc.poll() is None, path.read_text()
        time.sleep(0.2)
    raise AssertionError(f"no log line with {text!r}:\n{path.read_text()}")


def test_worker_logs_start_outage_and_drain_as_json(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    config = tmp_path / "imrelay.yaml"
    config.write_text(
        yaml.safe_dump(
            {"nats": {"url": f"nats://127.0.0.1:{port}"}, "admin": {"port": admin, "host": "127.0.0.1"}}
        ),
        encoding="utf-8",
    )
    log = tmp_path / "worker.log"
    env = dict(os.environ, IMRELAY_LOG_FORMAT="json", IMRELAY_LOG_LEVEL="INFO")
    for name in ("IMRELAY_CONFIG", "IMRELAY_NATS_URL", "IMRELAY_ADMIN_PORT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        env.pop(name, None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "imrelay_worker", "--config", str(config)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = EmbeddedNats(store_dir=tmp_path / "nats", port=port)
    try:
        wait_for(log, "unreachable", proc)
        start = lines(log)[0]
        assert start["message"] == (
            f"imrelay-worker {__version__} starting: config {config}, NATS nats://127.0.0.1:{port}"
        )
        assert start["service"] == "imrelay-worker" and start["level"] == "INFO"
        wait_for(log, "(4 failed attempt(s)", proc)  # NATS stays away a while ...
        server.start()  # ... then comes up
        wait_for(log, "connected to NATS at", proc)
        outage = [e["message"] for e in lines(log) if "unreachable" in e["message"]]
        attempts = int(outage[-1].split("(")[1].split(" failed")[0])
        assert len(outage) <= attempts.bit_length() + 1  # 1, 2, 4, 8 ...: not a line per attempt
        assert all(f"NATS at nats://127.0.0.1:{port} unreachable" in m for m in outage)
        wait_for(log, "worker consuming", proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.cleanup()
    messages = [e["message"] for e in lines(log)]
    assert "SIGTERM received: draining in-flight work, then stopping" in messages
    assert any(m.startswith("imrelay-worker stopped: drained in-flight work in ") for m in messages)
