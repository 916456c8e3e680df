"""Helpers shared by the benchmarks."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30, ok: tuple[int, ...] = (200,)) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code in ok:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def start_cluster(root: Path, size: int = 3) -> tuple[list[subprocess.Popen[bytes]], str]:
    """A JetStream cluster of ``size`` nats-servers on this machine (one loopback address each, free
    ports); returns the processes and the comma-separated client URL. Waits until JetStream is healthy."""
    from imrelay.natsserver import nats_server_binary

    hosts = [f"127.0.0.{31 + i}" for i in range(size)]
    client, route, monitor = free_port(), free_port(), free_port()
    routes = "\n".join(f"    nats://{h}:{route}" for h in hosts)
    procs = []
    for i, host in enumerate(hosts):
        node = root / f"node{i}"
        node.mkdir(parents=True)
        (node / "nats.conf").write_text(
            f"server_name: bench-{i}\nlisten: {host}:{client}\nhttp: {host}:{monitor}\n"
            f"jetstream {{\n  store_dir: {node / 'data'}\n}}\n"
            f"cluster {{\n  name: bench\n  listen: {host}:{route}\n  routes: [\n{routes}\n  ]\n}}\n"
        )
        with open(node / "nats.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    [nats_server_binary(), "-c", str(node / "nats.conf")],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    for host in hosts:
        wait_http(f"http://{host}:{monitor}/healthz", timeout=60)
    return procs, ",".join(f"nats://{h}:{client}" for h in hosts)


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop the benchmark's processes, the last started first."""
    for p in reversed(procs):
        p.terminate()
        p.wait(10)
