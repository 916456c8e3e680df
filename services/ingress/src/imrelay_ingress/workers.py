"""Several ingress processes on one port (``ingress.workers``): each binds the public port with
``SO_REUSEPORT`` (the kernel spreads new connections over them) and has its own NATS connection. The first
process starts the others, serves the admin port, and answers ``/metrics`` with the sum over all of them
(each other process serves its admin app on a Unix socket only the first one reads)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from imrelay.telemetry import registry

__all__ = [
    "WORKER_ENV",
    "WORKER_SOCKET_ENV",
    "Workers",
    "merge_expositions",
    "parent_gone",
    "public_socket",
    "worker_index",
]

log = logging.getLogger("imrelay.ingress")

WORKER_ENV = "IMRELAY_INGRESS_WORKER"  # set in the processes the first one starts: their index
WORKER_SOCKET_ENV = "IMRELAY_INGRESS_WORKER_SOCKET"  # their admin app's Unix socket

# How long a started process may take to drain after SIGTERM (the public server's graceful shutdown is
# 10 s) before it is killed.
STOP_SECONDS = 15.0

# Gauges that say "this is configured" (1 in every process): the highest, not the sum.
_SAME_IN_EVERY_PROCESS = frozenset({"imrelay_build_info", "imrelay_bot_configured"})


def worker_index() -> int:
    """0 in the first (or only) process, 1.. in the processes it started."""
    value = os.environ.get(WORKER_ENV, "")
    return int(value) if value.isdigit() else 0


async def parent_gone(parent: int, interval: float = 1.0) -> None:
    """Return once the process that started this one is gone (this one was handed to another parent)."""
    while True:
        if os.getppid() != parent:
            return
        await asyncio.sleep(interval)


def public_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """The public listening socket; with ``reuse_port`` other processes can bind the same port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def merge_expositions(texts: Iterable[str]) -> bytes:
    """One Prometheus exposition from several processes' own: ``imrelay_*`` samples summed (the
    configuration gauges and ``_created`` times taken once), every other family from the first text (the
    first process's ``process_*`` and ``python_*``)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for i, text in enumerate(texts):
        for family in text_string_to_metric_families(text):
            if i and not family.name.startswith("imrelay_"):
                continue
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            merged = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in merged:
                    merged[key] = sample.value
                elif sample.name.endswith("_created"):
                    merged[key] = min(merged[key], sample.value)
                elif family.name in _SAME_IN_EVERY_PROCESS:
                    merged[key] = max(merged[key], sample.value)
                else:
                    merged[key] += sample.value
    for name, family in families.items():
        family.samples = [Sample(s, dict(labels), v) for (s, labels), v in values[name].items()]

    class _Merged:
        def collect(self) -> Iterable[Metric]:
            return families.values()

    out = CollectorRegistry(auto_describe=False)
    out.register(_Merged())
    return generate_latest(out)


@dataclass
class _Worker:
    index: int
    socket_path: Path
    proc: subprocess.Popen[bytes]
    client: httpx.AsyncClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(self.socket_path)),
            base_url="http://worker",
            timeout=2.0,
        )


class Workers:
    """The ingress processes the first one starts (``count`` - 1 of them), and what it asks them."""

    def __init__(self, count: int, run_dir: Path) -> None:
        self.count = count
        self.run_dir = run_dir
        self.workers: list[_Worker] = []
        self.stopping = False

    def start(self) -> None:
        argv = [sys.executable, "-m", "imrelay_ingress"]
        for index in range(1, self.count):
            path = self.run_dir / f"worker-{index}.sock"
            env = dict(os.environ, **{WORKER_ENV: str(index), WORKER_SOCKET_ENV: str(path)})
            self.workers.append(_Worker(index, path, subprocess.Popen(argv, env=env)))  # noqa: S603
        log.info("ingress: %d processes on the public port", self.count)

    async def exited(self) -> int:
        """Wait until one of the started processes ends (unless stopping); return its index."""
        while True:
            for w in self.workers:
                if w.proc.poll() is not None and not self.stopping:
                    log.error("ingress process %d exited with %s", w.index, w.proc.returncode)
                    return w.index
            await asyncio.sleep(0.5)

    async def _get(self, w: _Worker, path: str) -> httpx.Response | None:
        try:
            return await w.client.get(path)
        except httpx.HTTPError:
            return None

    async def not_ready(self) -> list[str]:
        """The started processes that are not ready (not yet serving, or not connected to NATS)."""
        answers = await asyncio.gather(*(self._get(w, "/readyz") for w in self.workers))
        return [
            f"ingress process {w.index} not ready"
            for w, r in zip(self.workers, answers, strict=True)
            if r is None or r.status_code != 200
        ]

    async def exposition(self) -> bytes:
        """This process's metrics and those of the started processes, summed."""
        answers = await asyncio.gather(*(self._get(w, "/metrics") for w in self.workers))
        texts = [generate_latest(registry()).decode()]
        texts += [r.text for r in answers if r is not None and r.status_code == 200]
        return merge_expositions(texts)

    async def stop(self) -> None:
        """SIGTERM the started processes (they drain like the first one) and wait for them."""
        self.stopping = True
        for w in self.workers:
            if w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*(asyncio.to_thread(_wait, w.proc) for w in self.workers))
        for w in self.workers:
            await w.client.aclose()


def _wait(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
