"""The Grafana dashboard and the alert rules against a real Prometheus (Debian's) scraping every service's
admin port (as jobs ``imrelay-<service>`` in namespace ``imrelay-test``, as a ServiceMonitor labels them)
and a NATS exporter's ``-varz`` metrics of the real nats-server while the simulator drives traffic: every
dashboard query returns data, every alert expression evaluates and its data parts return data, and promtool
accepts (and unit-tests) the rules."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from imrelay.natsserver import EmbeddedNats

from ..helpers import free_port, need_tool
from .stack import KEY, Stack
from .test_end_to_end import send

pytestmark = pytest.mark.nats

FILES = Path(__file__).parents[2] / "deploy" / "helm" / "imrelay" / "files"
DASHBOARD = json.loads((FILES / "imrelay-dashboard.json").read_text())
RULES = yaml.safe_load((FILES / "imrelay-alerts.yaml").read_text())
SERVICES = ("ingress", "worker", "sender", "connector")
NAMESPACE = "imrelay-test"
DOCS = Path(__file__).parents[2] / "docs"


def dashboard_queries() -> list[str]:
    return [
        t["expr"].replace("$platform", ".*").replace("$bot", ".*")
        for panel in DASHBOARD["panels"]
        for t in panel["targets"]
    ]


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in RULES["groups"] for r in g["rules"]]


def data_parts(expr: str) -> list[str]:
    """An alert's expressions without their thresholds: what must have data for the alert to mean
    anything (``(a > 1) unless on (x) (b > 0)`` -> ``a``, ``b``; the same for ``and``). Of ``(a) or (b)``
    only the first part counts: the others are the same query for other platforms."""
    expr = re.split(r"\)\s+or\s+\(", expr)[0] + ")" if re.search(r"\)\s+or\s+\(", expr) else expr
    parts = re.split(r"\)\s+(?:unless\s+on\s*\([^)]*\)|and)\s*\(", expr)
    out = []
    for part in parts:
        part = part.strip().removeprefix("(").removesuffix(")")
        out.append(re.sub(r"\s*(>|<|>=|<=|==|!=)\s*[\d.]+\s*\)?$", "", part).strip())
    return out


def varz_metrics(varz: dict[str, Any], prefix: str = "gnatsd_varz") -> list[str]:
    """prometheus-nats-exporter's ``-varz`` rendering: every number in ``/varz``, nested keys joined by
    ``_`` (a ``/`` becomes ``_``, runs of ``_`` one), as a gauge labelled with the server."""
    lines = []
    for key, value in varz.items():
        name = re.sub(r"_+", "_", f"{prefix}_{key}".replace("/", "_")).strip("_")
        if isinstance(value, dict):
            lines.extend(varz_metrics(value, name))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            lines.append(f'{name}{{server_id="nats-0"}} {value}')
    return lines


class NatsExporter:
    """Serves the real nats-server's ``/varz`` as the NATS exporter does (``-varz``), on a free port."""

    def __init__(self, monitor_url: str) -> None:
        async def metrics(_: Request) -> PlainTextResponse:
            async with httpx.AsyncClient() as client:
                varz = (await client.get(f"{monitor_url}/varz", timeout=5)).json()
            return PlainTextResponse("\n".join(varz_metrics(varz)) + "\n")

        self.port = free_port()
        app = Starlette(routes=[Route("/metrics", metrics)])
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> NatsExporter:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def monitored_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedNats, str]]:
    """A nats-server with its monitoring port, and its URL."""
    port = free_port()
    server = EmbeddedNats(
        store_dir=tmp_path_factory.mktemp("nats"), port=free_port(), config=f"http: 127.0.0.1:{port}\n"
    ).start()
    try:
        yield server, f"http://127.0.0.1:{port}"
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def prometheus(
    monitored_nats: tuple[EmbeddedNats, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, str]]:
    need_tool("prometheus", "prometheus")
    root: Path = tmp_path_factory.mktemp("monitoring")
    nats_server, monitor_url = monitored_nats
    exporter = NatsExporter(monitor_url).__enter__()
    s = Stack.create(root, nats_server)
    s.config["bots"].append(
        {
            "id": "ws",
            "platform": "wecom_aibot",
            "mode": "long_connection",
            "ws_url": s.sim_url.replace("http://", "ws://") + "/ws/aibot",
            "credentials": {
                "token": "t",
                "encoding_aes_key": KEY,
                "bot_id": "aibMon",
                "secret": "mon-secret",
            },
        }
    )
    s.config["connector"] = {"heartbeat_seconds": 2}
    s.config["backends"] = {
        "default": {
            "kind": "openai",
            "base_url": f"{s.sim_url}/v1",
            "api_key": "sk-sim",
            "model": "sim-model",
        }
    }
    s.rewrite_config()
    s.add_service("connector", ["imrelay_ingress.connector"])
    s.start()
    port = free_port()
    targets = {f"imrelay-{name}": f"127.0.0.1:{s.ports[name + '_admin']}" for name in SERVICES}
    targets["imrelay-nats"] = f"127.0.0.1:{exporter.port}"
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": job,
                "static_configs": [
                    {"targets": [target], "labels": {"namespace": NAMESPACE, "pod": f"{job}-0"}}
                ],
            }
            for job, target in targets.items()
        ],
    }
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    with open(root / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        s.wait_for(lambda: _ready(url), what="prometheus")
        yield s, url
    finally:
        proc.terminate()
        proc.wait(10)
        s.stop()
        exporter.__exit__()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def query(url: str, expr: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5).json()
    assert body["status"] == "success", (expr, body)
    return body


def has_data(url: str, expr: str) -> bool:
    return bool(query(url, expr)["data"]["result"])


def test_every_dashboard_query_and_alert_has_data(prometheus: tuple[Stack, str]) -> None:
    stack, url = prometheus
    stack.wait_for(
        lambda: all(has_data(url, f'up{{job="imrelay-{j}"}} == 1') for j in (*SERVICES, "nats")),
        timeout=30,
        what="every service scraped",
    )
    # traffic: answers, a forged callback, a dead letter, a failing token endpoint, the socket
    for i in range(3):
        send(stack, f"monitoring message {i}", f"m{secrets.token_hex(3)}")
    resp = httpx.post(
        f"{stack.ingress_url}/callback/app?msg_signature=0&timestamp=1&nonce=2",
        content=b"<xml><Encrypt><![CDATA[AAAA]]></Encrypt></xml>",
    )
    assert resp.status_code == 401
    stack.control(fail_next=[81013])
    send(stack, "to nobody", f"m{secrets.token_hex(3)}")
    httpx.post(f"{stack.sim_url}/sim/llm", json={"fail_next": [400]}).raise_for_status()
    send(stack, "the model fails", f"m{secrets.token_hex(3)}")
    stack.control(expire_tokens=True, gettoken_fail_next=[502])
    send(stack, "after a token failure", f"m{secrets.token_hex(3)}")
    stack.wait_for(
        lambda: httpx.get(f"{stack.sim_url}/sim/aibot/connections").json().get("aibMon") == 1,
        what="the connector's socket",
    )
    httpx.post(f"{stack.sim_url}/sim/aibot/push", json={"bot_id": "aibMon", "text": "hi"}).raise_for_status()

    missing: list[str] = []

    def all_have_data() -> bool:
        missing[:] = [e for e in dashboard_queries() if not has_data(url, e)]
        for rule in alert_rules():
            query(url, rule["expr"])  # every alert expression is valid PromQL here
            missing.extend(p for p in data_parts(rule["expr"]) if not has_data(url, p))
        return not missing

    try:
        stack.wait_for(all_have_data, timeout=60, what="data for every query")
    except AssertionError as exc:
        raise AssertionError(f"no data for: {missing}") from exc
    assert len(dashboard_queries()) >= 16 and len(alert_rules()) == 16


def test_every_alert_groups_by_namespace_and_links_its_runbook() -> None:
    runbooks = (DOCS / "runbooks.md").read_text()
    anchors = {h.strip().lower() for h in re.findall(r"^## (\w+)$", runbooks, re.M)}
    for rule in alert_rules():
        groupings = re.findall(r"\b(?:by|on) \(([^)]*)\)", rule["expr"])
        assert groupings and all("namespace" in g for g in groupings), rule["alert"]
        url = rule["annotations"]["runbook_url"]
        assert url == f"docs/runbooks.md#{rule['alert'].lower()}" and rule["alert"].lower() in anchors


def test_promtool_accepts_and_unit_tests_the_rules() -> None:
    need_tool("promtool", "prometheus")
    check = subprocess.run(
        ["promtool", "check", "rules", str(FILES / "imrelay-alerts.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(
        ["promtool", "test", "rules", "imrelay-alerts.test.yaml"],
        cwd=FILES,
        capture_output=True,
        text=True,
        check=False,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_dashboard_uses_only_metric_names_the_code_defines() -> None:
    from prometheus_client import REGISTRY

    import imrelay.telemetry  # noqa: F401 - registers the metrics

    defined = {m.name for m in REGISTRY.collect()}
    exprs = dashboard_queries() + [r["expr"] for r in alert_rules()]
    used = {
        re.sub(r"_(bucket|sum|count|total)$", "", n) for e in exprs for n in re.findall(r"imrelay_\w+", e)
    }
    assert used and used <= {re.sub(r"_total$", "", n) for n in defined}, used - defined
