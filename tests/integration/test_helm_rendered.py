"""The chart's manifests, run here as a cluster would run them (there is no Kubernetes on this machine):

* the bundled NATS: three real nats-servers started with the rendered ``nats.conf``, the StatefulSet's
  arguments and ``POD_NAME``, each on its own loopback address (the pods' addresses) with the rendered
  ports; only the listen address, the data and pid paths and the route host names are mapped to this
  machine;
* imrelay's services started with the rendered ``imrelay.yaml`` ConfigMap, each Deployment's command and
  environment and the rendered Secrets;
* the ``helm test`` pod's own command, which plays the self-test robot's webhook, sends a signed callback
  and waits for the answer.

Then a NATS node is lost (SIGKILL, after its rendered preStop put it in lame-duck mode) and a second
round trip still completes, answered once: the streams are replicated on the three nodes, and a callback
that got a 503 while a stream elected a new leader is sent again, as the platforms do.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from imrelay.natsserver import nats_server_binary

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


@pytest.fixture(scope="module")
def nats_cluster(docs: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory,
                 ) -> Iterator[list[subprocess.Popen[bytes]]]:
    conf = find(docs, "ConfigMap", f"{FULL}-nats-config")["data"]["nats.conf"]
    sts = find(docs, "StatefulSet", f"{FULL}-nats")
    assert sts["spec"]["replicas"] == len(NODES)
    [container] = sts["spec"]["template"]["spec"]["containers"]
    assert [e["name"] for e in container["env"]] == ["POD_NAME"]
    procs = []
    for i in range(len(NODES)):
        root = tmp_path_factory.mktemp(f"nats-{i}")
        (root / "nats.conf").write_text(node_conf(conf, i, root))
        args = [a.replace("/etc/nats-config/nats.conf", str(root / "nats.conf")) for a in container["args"]]
        with open(root / "nats.log", "wb") as log:
            procs.append(subprocess.Popen(
                [nats_server_binary(), *args], stdout=log, stderr=subprocess.STDOUT,
                env=dict(os.environ, POD_NAME=f"{FULL}-nats-{i}")))
    try:
        for host in NODES:
            # the pod's startup probe: JetStream is current (the meta group has a leader)
            wait_http(f"http://{host}:8222{container['startupProbe']['httpGet']['path']}")
            for probe in ("readinessProbe", "livenessProbe"):
                wait_http(f"http://{host}:8222{container[probe]['httpGet']['path']}")
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def secret_env(docs: list[dict[str, Any]], refs: list[dict[str, Any]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ref in refs:
        secret = find(docs, "Secret", ref["secretRef"]["name"])
        env.update({k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()})
        env.update(secret.get("stringData", {}))
    return env


@pytest.fixture(scope="module")
def services(docs: list[dict[str, Any]], nats_cluster: list[subprocess.Popen[bytes]],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
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
        env = dict(os.environ, **{e["name"]: e["value"] for e in c["env"]},
                   **secret_env(docs, c.get("envFrom", [])))
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        # the pod's paths and ports, mapped to this machine
        assert env["IMRELAY_CONFIG"] == "/etc/imrelay/imrelay.yaml"
        env.update(IMRELAY_CONFIG=str(config), IMRELAY_ADMIN_PORT=str(admin))
        if name == "ingress":
            assert env["IMRELAY_PORT"] == "8080"
            env["IMRELAY_PORT"] = str(ports["ingress"])
        probe = c["readinessProbe"]["httpGet"]["path"]
        running[name] = Service(name, c["args"][2:], env, f"http://127.0.0.1:{admin}{probe}",
                                root / f"{name}.log").start(timeout=60)
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
    mapped = (script.replace("python -m", f"{sys.executable} -m")
              .replace("--host 0.0.0.0 --port 8090", f"--host 127.0.0.1 --port {hook}")
              .replace(f"http://{FULL}-ingress:8080", f"http://127.0.0.1:{ingress}")
              .replace(f"http://{FULL}-selftest:8090", f"http://127.0.0.1:{hook}")
              .replace('"helm test round trip"', f'"{text}"'))
    assert mapped.count("127.0.0.1") == 3 and text in mapped
    env = dict(os.environ, **{e["name"]: e["value"] for e in c["env"]},
               **secret_env(docs, c["envFrom"]))
    env["IMRELAY_CONFIG"] = str(services["config"])
    # the pod ends with its shell, the webhook server in its background with it (its process group here)
    log: Path = services["root"] / f"roundtrip-{text.replace(' ', '-')}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["sh", "-c", mapped], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        proc.wait(timeout=90)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
    text_out = log.read_text()
    assert proc.returncode == 0, text_out
    return text_out


def test_helm_test_round_trip_over_the_bundled_nats_cluster(
        docs: list[dict[str, Any]], nats_cluster: list[subprocess.Popen[bytes]],
        services: dict[str, Any]) -> None:
    out = run_test_pod(docs, services, "first round trip")
    assert "ingress answered 200" in out
    assert re.search(r"answer to .*first round trip", out), out
    # the streams are replicated on every node, as the rendered config asked
    info = httpx.get(f"http://{NODES[0]}:8222/jsz", params={"streams": "true", "config": "true"},
                     timeout=5).json()
    streams = {s["name"]: s for d in info["account_details"] for s in d["stream_detail"]}
    assert streams["IMRELAY_IN"]["config"]["num_replicas"] == 3
    assert len(streams["IMRELAY_IN"]["cluster"]["replicas"]) == 2  # the leader and two followers


def test_a_round_trip_survives_losing_a_nats_node(
        docs: list[dict[str, Any]], nats_cluster: list[subprocess.Popen[bytes]],
        services: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> None:
    sts = find(docs, "StatefulSet", f"{FULL}-nats")
    [container] = sts["spec"]["template"]["spec"]["containers"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    victim = nats_cluster[2]
    pid_file = next(Path(p) for p in re.findall(r"pid_file: (\S+)", _conf_of(victim)))
    # the rendered preStop hook, with the pod's pid file mapped: the node enters lame-duck mode
    argv = [nats_server_binary() if a == "nats-server" else a.replace("/var/run/nats/nats.pid", str(pid_file))
            for a in pre_stop]
    subprocess.run(argv, check=True, timeout=10)
    log = pid_file.parent / "nats.log"
    deadline = time.monotonic() + 10
    while "Entering lame duck mode" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "Entering lame duck mode" in log.read_text()
    victim.send_signal(signal.SIGKILL)  # and then it is gone, without a goodbye
    victim.wait(10)
    out = run_test_pod(docs, services, "second round trip")
    # answered once, whether the first callback got its PubAck or a 503 while a stream elected a leader
    assert len(re.findall(r"answer to .*second round trip", out)) == 1, out
    assert "ingress answered 200" in out


def _conf_of(proc: subprocess.Popen[bytes]) -> str:
    args = proc.args
    assert isinstance(args, list)
    return Path(str(args[args.index("--config") + 1])).read_text()
