"""The chart's manifests, run here as a cluster would run them (there is no Kubernetes on this machine):

* the bundled NATS: three real nats-servers started with the rendered ``nats.conf``, the StatefulSet's
  arguments and ``POD_NAME``, each on its own loopback address (the pods' addresses) with the rendered
  ports; only the listen address, the data and pid paths and the route host names are mapped to this
  machine;
* imrelay's services started with the rendered ``imrelay.yaml`` ConfigMap, each Deployment's command and
  environment and the rendered Secrets;
* the ``helm test`` pod's own command, which plays the self-test robot's webhook, sends a signed callback
  and waits for the answer.

Then the NATS StatefulSet is rolled (preStop hook, SIGTERM, restart on the node's data, the next node once
the startup probe passes) while a platform keeps sending callbacks: each is answered exactly once. Last,
a node is lost for good (SIGKILL after lame-duck mode) and a round trip still completes, answered once:
the streams are replicated on the three nodes, and a callback that got a 503 while a stream elected a
new leader is sent again, as the platforms do.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from imrelay.config import parse_settings
from imrelay.natsserver import nats_server_binary
from imrelay_sim.client import build_request, post_with_retries

from ..chart import find, render
from ..helpers import free_port
from .stack import Service

pytestmark = pytest.mark.timeout(300)

FULL = "imrelay"
NODES = ["127.0.0.11", "127.0.0.12", "127.0.0.13"]  # the three NATS pods' addresses


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return render({"helmTest": {"enabled": True}})


def node_conf(conf: str, i: int, root: Path) -> str:
    """Node i's nats.conf: the rendered file with only pod-specific places mapped to this machine."""
    every_address = "0.0.0.0"  # noqa: S104 - what the pods listen on
    out = conf.replace(f"{every_address}:", f"{NODES[i]}:")
    out = out.replace("store_dir: /data", f"store_dir: {root / 'data'}")
    out = out.replace("/var/run/nats/nats.pid", str(root / "nats.pid"))
    for j, host in enumerate(NODES):
        out = out.replace(f"nats://{FULL}-nats-{j}.{FULL}-nats-headless:6222", f"nats://{host}:6222")
    assert every_address not in out and "headless" not in out and "/var/run" not in out
    return out


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(url, timeout=2)
            if resp.status_code == 200:
                return
            last = resp.text
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.25)
    raise TimeoutError(f"{url}: {last}")


@dataclass
class NatsNode:
    """One NATS pod: the rendered container's arguments, environment, probes and preStop hook."""

    index: int
    root: Path
    container: dict[str, Any]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return NODES[self.index]

    def _map(self, arg: str) -> str:
        return arg.replace("/etc/nats-config/nats.conf", str(self.root / "nats.conf")).replace(
            "/var/run/nats/nats.pid", str(self.root / "nats.pid")
        )

    env: dict[str, str] | None = None

    def start(self) -> None:
        argv = [nats_server_binary(), *(self._map(a) for a in self.container["args"])]
        with open(self.root / "nats.log", "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(self.env or {}), "POD_NAME": f"{FULL}-nats-{self.index}"},
            )

    def probe(self, name: str) -> str:
        return f"http://{self.host}:8222{self.container[name]['httpGet']['path']}"

    def wait_started(self) -> None:
        """What the kubelet waits for: the startup probe (JetStream current), then ready and live."""
        for name in ("startupProbe", "readinessProbe", "livenessProbe"):
            wait_http(self.probe(name))

    def pre_stop(self) -> None:
        """The rendered preStop hook: lame-duck mode."""
        argv = [
            nats_server_binary() if a == "nats-server" else self._map(a)
            for a in self.container["lifecycle"]["preStop"]["exec"]["command"]
        ]
        subprocess.run(argv, check=True, timeout=10)
        deadline = time.monotonic() + 10
        while "Entering lame duck mode" not in self.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "Entering lame duck mode" in self.log()

    def terminate(self) -> None:
        """A pod deletion: the preStop hook, then SIGTERM, then the grace period."""
        assert self.proc is not None
        self.pre_stop()
        self.proc.terminate()
        grace = self.container.get("terminationGracePeriodSeconds", 60)
        self.proc.wait(grace)

    def log(self) -> str:
        return (self.root / "nats.log").read_text()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def nats_cluster(
    docs: list[dict[str, Any]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[NatsNode]]:
    conf = find(docs, "ConfigMap", f"{FULL}-nats-config")["data"]["nats.conf"]
    sts = find(docs, "StatefulSet", f"{FULL}-nats")
    assert sts["spec"]["replicas"] == len(NODES)
    assert sts["spec"]["podManagementPolicy"] == "Parallel"  # every node starts at once
    [container] = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "nats"]
    env = container_env(docs, container)  # the users' passwords and the encryption key, from the Secret
    assert env["POD_NAME"] == "<metadata.name>" and len(env["NATS_JETSTREAM_KEY"]) == 48
    assert "cipher: chachapoly" in conf and '"user": "imrelay-worker"' in conf
    container = dict(
        container,
        terminationGracePeriodSeconds=sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
    )
    nodes = []
    for i in range(len(NODES)):
        root = tmp_path_factory.mktemp(f"nats-{i}")
        (root / "nats.conf").write_text(node_conf(conf, i, root))
        nodes.append(NatsNode(i, root, container, env=env))
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_started()
        yield nodes
    finally:
        for node in nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
        for node in nodes:
            try:
                if node.proc is not None:
                    node.proc.wait(10)
            except subprocess.TimeoutExpired:
                node.kill()


def container_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """A container's ``env``: plain values, and ``secretKeyRef`` values read from the rendered Secret."""
    env: dict[str, str] = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif ref := e["valueFrom"].get("secretKeyRef"):
            secret = find(docs, "Secret", ref["name"])
            env[e["name"]] = (
                base64.b64decode(secret["data"][ref["key"]]).decode()
                if ref["key"] in secret.get("data", {})
                else secret["stringData"][ref["key"]]
            )
        else:
            env[e["name"]] = f"<{e['valueFrom']['fieldRef']['fieldPath']}>"
    return env


def secret_env(docs: list[dict[str, Any]], refs: list[dict[str, Any]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ref in refs:
        secret = find(docs, "Secret", ref["secretRef"]["name"])
        env.update({k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()})
        env.update(secret.get("stringData", {}))
    return env


@pytest.fixture(scope="module")
def services(
    docs: list[dict[str, Any]], nats_cluster: list[NatsNode], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("helm-services")
    hook = free_port()
    cfg = yaml.safe_load(find(docs, "ConfigMap", f"{FULL}-config")["data"]["imrelay.yaml"])
    assert cfg["nats"] == {"url": f"nats://{FULL}-nats:4222", "replicas": 3}
    # the client Service balances over the nodes; here every node's address is listed instead
    cfg["nats"]["url"] = ",".join(f"nats://{h}:4222" for h in NODES)
    [bot] = [b for b in cfg["bots"] if b["id"] == "helm-selftest"]
    assert bot["api_base"] == f"http://{FULL}-selftest:8090"
    bot["api_base"] = f"http://127.0.0.1:{hook}"
    config = root / "imrelay.yaml"
    config.write_text(yaml.safe_dump(cfg))

    running: dict[str, Service] = {}
    ports = {"ingress": free_port()}
    for name in ("ingress", "llm-worker", "sender"):
        dep = find(docs, "Deployment", f"{FULL}-{name}")
        [c] = dep["spec"]["template"]["spec"]["containers"]
        assert c["args"][:2] == ["python", "-m"]
        admin = free_port()
        env = dict(os.environ, **container_env(docs, c), **secret_env(docs, c.get("envFrom", [])))
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        user = "worker" if name == "llm-worker" else name  # each connects as its own least-privilege user
        assert env["IMRELAY_NATS_USER"] == f"imrelay-{user}" and env["IMRELAY_NATS_PASSWORD"]
        # the pod's paths and ports, mapped to this machine
        assert env["IMRELAY_CONFIG"] == "/etc/imrelay/imrelay.yaml"
        env.update(IMRELAY_CONFIG=str(config), IMRELAY_ADMIN_PORT=str(admin))
        if name == "ingress":
            assert env["IMRELAY_PORT"] == "8080"
            env["IMRELAY_PORT"] = str(ports["ingress"])
        probe = c["readinessProbe"]["httpGet"]["path"]
        running[name] = Service(
            name, c["args"][2:], env, f"http://127.0.0.1:{admin}{probe}", root / f"{name}.log"
        ).start(timeout=60)
    try:
        yield {"root": root, "config": config, "hook": hook, "ingress": ports["ingress"]}
    finally:
        for svc in reversed(list(running.values())):
            svc.stop()


def run_test_pod(docs: list[dict[str, Any]], services: dict[str, Any], text: str) -> str:
    """The helm test pod's command, its host names and ports mapped to this machine."""
    pod = find(docs, "Pod", f"{FULL}-roundtrip")
    [c] = pod["spec"]["containers"]
    assert c["command"][:2] == ["sh", "-c"]
    script = c["command"][2]
    hook, ingress = services["hook"], services["ingress"]
    mapped = (
        script.replace("python -m", f"{sys.executable} -m")
        .replace("--host 0.0.0.0 --port 8090", f"--host 127.0.0.1 --port {hook}")
        .replace(f"http://{FULL}-ingress:8080", f"http://127.0.0.1:{ingress}")
        .replace(f"http://{FULL}-selftest:8090", f"http://127.0.0.1:{hook}")
        .replace('"helm test round trip"', f'"{text}"')
    )
    assert mapped.count("127.0.0.1") == 3 and text in mapped
    env = dict(os.environ, **container_env(docs, c), **secret_env(docs, c["envFrom"]))
    env["IMRELAY_CONFIG"] = str(services["config"])
    # the pod ends with its shell, the webhook server in its background with it (its process group here)
    log: Path = services["root"] / f"roundtrip-{text.replace(' ', '-')}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["sh", "-c", mapped], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        proc.wait(timeout=90)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
    text_out = log.read_text()
    assert proc.returncode == 0, text_out
    return text_out


def test_helm_test_round_trip_over_the_bundled_nats_cluster(
    docs: list[dict[str, Any]], nats_cluster: list[NatsNode], services: dict[str, Any]
) -> None:
    out = run_test_pod(docs, services, "first round trip")
    assert "ingress answered 200" in out
    assert re.search(r"answer to .*first round trip", out), out
    # the streams are replicated on every node, as the rendered config asked
    info = httpx.get(
        f"http://{NODES[0]}:8222/jsz", params={"streams": "true", "config": "true"}, timeout=5
    ).json()
    streams = {s["name"]: s for d in info["account_details"] for s in d["stream_detail"]}
    assert streams["IMRELAY_IN"]["config"]["num_replicas"] == 3
    assert len(streams["IMRELAY_IN"]["cluster"]["replicas"]) == 2  # the leader and two followers
    # JetStream's files are encrypted at rest: the message is stored, its text is nowhere on disk
    stored = b"".join(
        f.read_bytes() for n in nats_cluster for f in (n.root / "data").rglob("*") if f.is_file()
    )
    assert len(stored) > 10_000 and b"first round trip" not in stored
    # and nobody gets in without a user
    anonymous = subprocess.run(
        [
            sys.executable,
            "-c",
            "import asyncio, nats; asyncio.run(nats.connect("
            f"'nats://{NODES[0]}:4222', max_reconnect_attempts=1, reconnect_time_wait=0.1))",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert anonymous.returncode != 0 and "Authorization Violation" in anonymous.stderr


def test_a_rolling_restart_of_nats_loses_and_repeats_nothing(
    docs: list[dict[str, Any]], nats_cluster: list[NatsNode], services: dict[str, Any]
) -> None:
    """kubectl rollout restart of the NATS StatefulSet while callbacks keep coming: each node in turn gets
    its preStop hook and SIGTERM, comes back on its volume, and the next one goes only once the startup
    probe says it caught up. The platform re-sends a callback that got a 503, as WeCom does."""
    settings_cfg = yaml.safe_load(Path(services["config"]).read_text())
    env = secret_env(docs, [{"secretRef": {"name": f"{FULL}-selftest"}}])
    bot = parse_settings(settings_cfg, env).bot("helm-selftest")
    assert bot is not None
    hook = Service(
        "hook",
        ["imrelay_sim", "serve", "--host", "127.0.0.1", "--port", str(services["hook"])],
        dict(os.environ, IMRELAY_CONFIG=str(services["config"]), **env),
        f"http://127.0.0.1:{services['hook']}/sim/stats",
        services["root"] / "hook.log",
    ).start()
    sent: list[str] = []
    failed: list[str] = []
    stop = threading.Event()

    def platform() -> None:
        with httpx.Client(timeout=5) as client:
            n = 0
            while not stop.is_set():
                n += 1
                text = f"rolling {n}"
                query, headers, body = build_request(
                    bot,
                    text,
                    "alice",
                    f"roll-{n}",
                    time.time(),
                    f"http://127.0.0.1:{services['hook']}",
                    "wrkroll",
                )
                url = f"http://127.0.0.1:{services['ingress']}/callback/{bot.id}?{query}"
                resp = post_with_retries(client, url, body, headers, 3, 2.0, f"roll-{n}")
                (sent if resp is not None and resp.status_code == 200 else failed).append(text)
                stop.wait(3.5)  # a group robot takes 20 messages a minute: stay under it

    driver = threading.Thread(target=platform)
    driver.start()
    try:
        time.sleep(1)
        rolling = time.monotonic()
        for node in reversed(nats_cluster):  # a StatefulSet rolls from the highest ordinal down
            node.terminate()
            node.start()
            node.wait_started()
        rolled = time.monotonic() - rolling
        time.sleep(1)
    finally:
        stop.set()
        driver.join(60)
    try:
        assert not failed and len(sent) >= 6  # one every 3.5 s through a roll of 30 s or more
        deadline = time.monotonic() + 60
        answers: list[str] = []
        messages = f"http://127.0.0.1:{services['hook']}/sim/messages"
        while time.monotonic() < deadline:
            listed = httpx.get(messages, params={"bot": bot.id}, timeout=5).json()
            answers = [str(m["content"]) for m in listed]
            if all(any(a.endswith(t) for a in answers) for t in sent):
                break
            time.sleep(0.5)
        counts = {t: sum(a.endswith(t) for a in answers) for t in sent}
        assert {t: n for t, n in counts.items() if n != 1} == {}, f"of {len(sent)} acked"
        print(f"\nNATS rolled in {rolled:.1f}s; {len(sent)} callbacks, each answered once")
    finally:
        hook.stop()


def test_a_round_trip_survives_losing_a_nats_node(
    docs: list[dict[str, Any]], nats_cluster: list[NatsNode], services: dict[str, Any]
) -> None:
    victim = nats_cluster[2]
    victim.pre_stop()  # lame-duck mode, as the rendered preStop hook does
    victim.kill()  # and then it is gone, without a goodbye
    out = run_test_pod(docs, services, "second round trip")
    # answered once, whether the first callback got its PubAck or a 503 while a stream elected a leader
    assert len(re.findall(r"answer to .*second round trip", out)) == 1, out
    assert "ingress answered 200" in out
