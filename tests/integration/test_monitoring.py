"""The Grafana dashboard and the alert rules against a real Prometheus (Debian's) scraping every service's
admin port (as jobs ``imrelay-<service>`` in namespace ``imrelay-test``, as a ServiceMonitor labels them)
and a NATS exporter's ``-varz`` metrics of the real nats-server while the simulator drives traffic: every
dashboard query, its variables resolved as Grafana resolves them for the test's namespace, returns data,
every alert expression evaluates and its data parts return data, and promtool accepts (and unit-tests) the
rules.

A second release in namespace ``imrelay-other`` (the same jobs, pods, platforms and bots; the same series
with every backend, model, consumer, version and NATS server renamed ``intruder-...``) shows only under its
own namespace: the variables for the test's namespace offer none of its values, no dashboard query for the
test's namespace returns one of its series, and no query for a namespace without imrelay returns
anything."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
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
OTHER_NAMESPACE = "imrelay-other"
DOCS = Path(__file__).parents[2] / "docs"
# Panels whose queries may have no data after the test's traffic: title -> the traffic they need.
NEEDS_TRAFFIC: dict[str, str] = {}
# The labels the second release's series have renamed to ``intruder-<value>`` (none a variable filters on).
RENAMED = ("backend", "model", "consumer", "version", "server_id")


def panels() -> list[dict[str, Any]]:
    """The dashboard's graphs (its rows only group them)."""
    return [p for p in DASHBOARD["panels"] if p["type"] != "row"]


def variables() -> dict[str, dict[str, Any]]:
    """The query variables, in the dashboard's order (each may use the ones before it)."""
    return {v["name"]: v for v in DASHBOARD["templating"]["list"] if v["type"] == "query"}


def escape(value: str) -> str:
    """A value in a PromQL regex, in a double-quoted string: as Grafana escapes a multi-value variable."""
    return re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\\\1", value)


def substitute(expr: str, values: Mapping[str, Sequence[str]]) -> str:
    """``expr`` with its variables resolved as Grafana does: a single-value variable to its value, a
    multi-value one to the alternation of the chosen ``values`` (a variable not given: All, its
    ``allValue``)."""

    def resolve(match: re.Match[str]) -> str:
        var = variables().get(match.group(1))
        if var is None:
            return match.group(0)
        chosen = values.get(match.group(1))
        if not var.get("multi"):
            assert chosen, f"no value for ${match.group(1)}"
            return chosen[0]
        if chosen is None:
            return str(var["allValue"])
        return "(" + "|".join(escape(v) for v in chosen) + ")"

    return re.sub(r"\$(\w+)", resolve, expr)


def dashboard_queries(values: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """Every panel query, its variables resolved to ``values`` (by default the test's namespace, All of
    every other variable)."""
    values = {"namespace": [NAMESPACE]} if values is None else values
    return [substitute(t["expr"], values) for panel in panels() for t in panel["targets"]]


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in RULES["groups"] for r in g["rules"]]


def data_parts(expr: str) -> list[str]:
    """An alert's expressions without their thresholds: what must have data for the alert to mean
    anything (``(a > 1) unless on (x) (b > 0)`` -> ``a``, ``b``; the same for ``and`` and ``and on (x)``).
    Of ``(a) or (b)`` only the first part counts: the others are the same query for other platforms."""
    expr = re.split(r"\)\s+or\s+\(", expr)[0] + ")" if re.search(r"\)\s+or\s+\(", expr) else expr
    parts = re.split(r"\)\s+(?:(?:unless|and)\s+on\s*\([^)]*\)|and)\s*\(", expr)
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


class MetricsServer:
    """Serves text pages (``path -> async function``) as an exporter does, on a free port."""

    def __init__(self, pages: Mapping[str, Callable[[], Awaitable[str]]]) -> None:
        def page(make: Callable[[], Awaitable[str]]) -> Callable[[Request], Awaitable[PlainTextResponse]]:
            async def endpoint(_: Request) -> PlainTextResponse:
                return PlainTextResponse(await make())

            return endpoint

        self.port = free_port()
        app = Starlette(routes=[Route(path, page(make)) for path, make in pages.items()])
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> MetricsServer:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


async def fetch(url: str) -> str:
    async with httpx.AsyncClient() as client:
        return (await client.get(url, timeout=5)).text


def nats_exporter(monitor_url: str) -> MetricsServer:
    """The real nats-server's ``/varz`` as the NATS exporter serves it (``-varz``)."""

    async def metrics() -> str:
        return "\n".join(varz_metrics(json.loads(await fetch(f"{monitor_url}/varz")))) + "\n"

    return MetricsServer({"/metrics": metrics})


def renamed(text: str) -> str:
    """Metrics text with the values of the ``RENAMED`` labels prefixed ``intruder-``."""
    return re.sub(rf'\b({"|".join(RENAMED)})="([^"]*)"', r'\1="intruder-\2"', text)


def second_release(upstreams: Mapping[str, str]) -> MetricsServer:
    """``/<job>``: the metrics of ``upstreams[job]``, renamed: another release's."""

    def mirror(url: str) -> Callable[[], Awaitable[str]]:
        async def page() -> str:
            return renamed(await fetch(url))

        return page

    return MetricsServer({f"/{job}": mirror(url) for job, url in upstreams.items()})


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
    exporter = nats_exporter(monitor_url).__enter__()
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
    other = second_release({job: f"http://{target}/metrics" for job, target in targets.items()}).__enter__()
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
        ]
        + [
            {  # the other release: the same job names (a job name is unique in a config: set by relabelling)
                "job_name": f"{job}-other",
                "scrape_interval": "2s",
                "metrics_path": f"/{job}",
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{other.port}"],
                        "labels": {"namespace": OTHER_NAMESPACE, "pod": f"{job}-0"},
                    }
                ],
                "relabel_configs": [{"target_label": "job", "replacement": job}],
            }
            for job in targets
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
        other.__exit__()
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


def options(url: str, name: str, chosen: Mapping[str, Sequence[str]]) -> list[str]:
    """The options Grafana offers for variable ``name`` (``label_values(selector, label)``), the variables
    before it resolved to ``chosen``."""
    match = re.fullmatch(r"label_values\((.+), (\w+)\)", variables()[name]["query"]["query"])
    assert match, variables()[name]
    selector, label = substitute(match.group(1), chosen), match.group(2)
    body = httpx.get(f"{url}/api/v1/label/{label}/values", params={"match[]": selector}, timeout=5).json()
    assert body["status"] == "success", body
    return list(body["data"])


def resolved(url: str, namespace: str) -> dict[str, list[str]]:
    """Every variable for ``namespace``, each with all its options chosen."""
    chosen: dict[str, list[str]] = {"namespace": [namespace]}
    for name in variables():
        if name != "namespace":
            chosen[name] = options(url, name, chosen)
    return chosen


def wait_for_traffic(stack: Stack, url: str) -> None:
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


def test_every_dashboard_query_and_alert_has_data(prometheus: tuple[Stack, str]) -> None:
    stack, url = prometheus
    wait_for_traffic(stack, url)
    missing: list[str] = []

    def all_have_data() -> bool:
        chosen = resolved(url, NAMESPACE)
        missing[:] = [
            f"{panel['title']}: {expr}"
            for panel in panels()
            if panel["title"] not in NEEDS_TRAFFIC
            for t in panel["targets"]
            if not has_data(url, expr := substitute(t["expr"], chosen))
        ]
        for rule in alert_rules():
            query(url, rule["expr"])  # every alert expression is valid PromQL here
            # a part looking a day back (there is no yesterday here) is checked on today's data
            parts = [p.replace(" offset 1d", "") for p in data_parts(rule["expr"])]
            missing.extend(p for p in parts if not has_data(url, p))
        return not missing

    try:
        stack.wait_for(all_have_data, timeout=60, what="data for every query")
    except AssertionError as exc:
        raise AssertionError(f"no data for: {missing}") from exc
    assert len(panels()) >= 20 and len(alert_rules()) == 19
    assert set(NEEDS_TRAFFIC) <= {p["title"] for p in panels()}


def leaked(url: str, expr: str) -> list[dict[str, str]]:
    """The series of ``expr`` that belong to the second release."""
    return [
        r["metric"]
        for r in query(url, expr)["data"]["result"]
        if any(v.startswith("intruder-") for v in r["metric"].values())
    ]


def test_the_namespace_variable_keeps_two_releases_apart(prometheus: tuple[Stack, str]) -> None:
    stack, url = prometheus
    stack.wait_for(
        lambda: all(
            has_data(url, f'up{{namespace="{ns}", job="imrelay-{j}"}} == 1')
            for ns in (NAMESPACE, OTHER_NAMESPACE)
            for j in (*SERVICES, "nats")
        ),
        timeout=30,
        what="both releases scraped",
    )
    assert {NAMESPACE, OTHER_NAMESPACE} <= set(options(url, "namespace", {}))
    ours, theirs = resolved(url, NAMESPACE), resolved(url, OTHER_NAMESPACE)
    assert sorted(ours["job"]) == sorted(theirs["job"]) == sorted(f"imrelay-{s}" for s in SERVICES)
    assert sorted(ours["pod"]) == sorted(theirs["pod"]) == sorted(f"imrelay-{s}-0" for s in SERVICES)
    assert ours["platform"] == theirs["platform"] and ours["bot"] == theirs["bot"] and ours["bot"]
    with_data = 0
    for expr in dashboard_queries(ours):
        assert not leaked(url, expr), expr
        with_data += has_data(url, expr)
    for expr in dashboard_queries(theirs):
        result = query(url, expr)["data"]["result"]
        assert all(r["metric"].get(k, "intruder-").startswith("intruder-") for r in result for k in RENAMED)
    # a namespace without imrelay: nothing at all (no query reads past its namespace)
    nowhere = {"namespace": ["imrelay-nowhere"]}
    assert [e for e in dashboard_queries(nowhere) if has_data(url, e)] == []
    assert with_data >= len(dashboard_queries()) // 2  # the checks above saw data


def test_every_panel_query_selects_one_release_and_names_its_series() -> None:
    for panel in panels():
        for t in panel["targets"]:
            selectors = re.findall(r"\b((?:imrelay|gnatsd)_\w+)(\{[^}]*\})?", t["expr"])
            assert selectors, t["expr"]
            for name, labels in selectors:
                assert 'namespace="$namespace"' in labels, (panel["title"], t["expr"])
                if name.startswith("imrelay_"):  # the NATS exporter is none of imrelay's jobs
                    assert 'job=~"$job"' in labels and 'pod=~"$pod"' in labels, (panel["title"], t["expr"])
            assert "{{" in t["legendFormat"] and t["legendFormat"] != "__auto", (panel["title"], t)
    for name, var in variables().items():
        if name != "namespace":
            assert '"$namespace"' in var["query"]["query"], name
    assert not variables()["namespace"].get("multi") and not variables()["namespace"].get("includeAll")


def test_the_ack_latency_panel_draws_the_platforms_deadlines() -> None:
    (ack,) = [p for p in panels() if "imrelay_callback_ack_seconds" in p["targets"][0]["expr"]]
    defaults = ack["fieldConfig"]["defaults"]
    assert defaults["custom"]["thresholdsStyle"]["mode"] in ("line", "dashed", "line+area", "dashed+area")
    steps = [s["value"] for s in defaults["thresholds"]["steps"]]
    assert steps == [None, 3, 5] and defaults["unit"] == "s"  # Feishu/Lark, QQ, Discord 3 s; WeCom 5 s
    for t in ack["targets"]:  # per platform: each has its own deadline
        grouping = re.search(r"by \(([^)]*)\)", t["expr"])
        assert grouping and "platform" in grouping.group(1), t["expr"]
    # the alert uses the same deadlines (half of each)
    (near,) = [r for r in alert_rules() if r["alert"] == "ImrelayCallbackAckNearDeadline"]
    assert "> 2.5" in near["expr"] and "> 1.5" in near["expr"]


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
