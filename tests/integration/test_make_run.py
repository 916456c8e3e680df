"""What a new user does: `make run` (imrelay dev, zero config) then `make demo` (imrelay-sim send)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ..helpers import free_port, free_port_run

pytestmark = pytest.mark.nats


def test_dev_stack_answers_the_demo_message_and_stops_cleanly(tmp_path: Path) -> None:
    admin = free_port_run(4)  # ingress, worker, sender, connector
    ports = {name: free_port() for name in ("ingress", "sim", "nats")}
    while any(p in range(admin, admin + 4) for p in ports.values()):
        ports = {name: free_port() for name in ("ingress", "sim", "nats")}
    env = dict(os.environ)
    env.pop("IMRELAY_CONFIG", None)
    log = tmp_path / "dev.log"
    with open(log, "wb") as out:
        dev = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "imrelay.cli",
                "dev",
                "--state-dir",
                str(tmp_path / "state"),
                "--port",
                str(ports["ingress"]),
                "--admin-port",
                str(admin),
                "--sim-port",
                str(ports["sim"]),
                "--nats-port",
                str(ports["nats"]),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while b"imrelay is running" not in log.read_bytes():
            assert dev.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        config = tmp_path / "state" / "dev.yaml"
        demo = subprocess.run(
            [
                sys.executable,
                "-m",
                "imrelay_sim",
                "--config",
                str(config),
                "send",
                "--bot",
                "demo",
                "--text",
                "Hello from the WeCom simulator! 你好",
                "--ingress",
                f"http://127.0.0.1:{ports['ingress']}",
                "--sim",
                f"http://127.0.0.1:{ports['sim']}",
                "--wait",
                "20",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "ingress answered 200" in demo.stdout
        assert "answer to alice: Hello from the WeCom simulator! 你好" in demo.stdout
        # every platform can be tried the same way (make demo BOT=...)
        for bot in (
            "demo-robot",
            "demo-aibot",
            "demo-aibot-ws",
            "demo-feishu",
            "demo-lark",
            "demo-feishu-ws",
            "demo-dingtalk",
            "demo-dingtalk-stream",
            "demo-qq",
            "demo-discord",
            "demo-discord-gw",
        ):
            tried = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "imrelay_sim",
                    "--config",
                    str(config),
                    "send",
                    "--bot",
                    bot,
                    "--text",
                    f"hello {bot}",
                    "--ingress",
                    f"http://127.0.0.1:{ports['ingress']}",
                    "--sim",
                    f"http://127.0.0.1:{ports['sim']}",
                    "--wait",
                    "20",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
            )
            assert tried.returncode == 0, bot + tried.stdout + tried.stderr
            assert f": hello {bot}" in tried.stdout, tried.stdout
        assert httpx.get(f"http://127.0.0.1:{admin}/metrics").status_code == 200
    finally:
        dev.send_signal(signal.SIGINT)  # what Ctrl-C does
        code = dev.wait(60)
    assert code == 0, log.read_text()
    assert "stopped." in log.read_text()
    # everything it started is gone: the ports are free again
    for port in (ports["ingress"], ports["sim"], ports["nats"], admin, admin + 3):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
