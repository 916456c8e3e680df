"""The Helm chart, rendered offline (helm-python-sdk) for each values file in ci/: every core manifest is
valid for the current Kubernetes (kubernetes-validate --strict), the schema rejects typos, NOTES.txt fails
bad installs, and the rendered config is one imrelay accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helm_python import lint

from imrelay.config import parse_settings

from ..chart import CHART, OPERATOR_APIS, find, render, render_files, values_file

VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
K8S = "1.33.0"
CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("cert-manager.io/v1", "Certificate"),
}


def load(path: Path) -> dict[str, Any]:
    return values_file(path.name)


@pytest.mark.parametrize("path", VALUES, ids=[p.stem for p in VALUES])
def test_every_manifest_is_valid(path: Path) -> None:
    docs = render(load(path))
    assert docs
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            assert doc["metadata"]["name"] and doc["spec"]
            continue
        kubernetes_validate.validate(doc, K8S, strict=True)
    assert lint(CHART, load(path), strict=True)["errors"] == []


def test_workloads_are_restricted_and_probed() -> None:
    deployments = [d for d in render({}) if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {
        "imrelay-ingress",
        "imrelay-llm-worker",
        "imrelay-sender",
    }
    for d in deployments:
        pod = d["spec"]["template"]["spec"]
        [c] = pod["containers"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert c["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["resources"]["requests"] and c["resources"]["limits"]
        assert "checksum/config" in d["spec"]["template"]["metadata"]["annotations"]


def test_a_config_change_rolls_the_pods() -> None:
    def checksum(values: dict[str, Any]) -> str:
        [d] = [x for x in render(values) if x["kind"] == "Deployment" and "sender" in x["metadata"]["name"]]
        return str(d["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum({}) != checksum(
        {
            "config": {
                "backends": {"default": {"kind": "echo"}},
                "bots": [
                    {
                        "id": "x",
                        "platform": "wecom_group_robot",
                        "credentials": {"token": "t", "encoding_aes_key": "k" * 43},
                    }
                ],
            }
        }
    )


def test_the_rendered_config_is_one_imrelay_accepts() -> None:
    values = load(CHART / "ci" / "external-nats-values.yaml")
    [cm] = [
        d for d in render(values) if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "imrelay-config"
    ]
    env = {
        k: "x" * 43
        for k in (
            "OPENAI_API_KEY",
            "WECOM_SECRET",
            "WECOM_TOKEN",
            "WECOM_AES_KEY",
            "AIBOT_AES_KEY",
            "AIBOT_SECRET",
        )
    }
    settings = parse_settings(yaml.safe_load(cm["data"]["imrelay.yaml"]), env)
    assert settings.nats.url == "nats://nats.messaging.svc:4222" and settings.nats.replicas == 3
    assert [b.id for b in settings.bots] == ["hr-helper", "assistant"]
    assert settings.ingress.connections.keep_alive_timeout_seconds == 75
    assert settings.ingress.connections.max_connections == 8192


def test_only_the_callback_port_is_exposed() -> None:
    docs = render(load(CHART / "ci" / "external-nats-values.yaml"))
    [ingress] = [d for d in docs if d["kind"] == "Ingress"]
    [path] = ingress["spec"]["rules"][0]["http"]["paths"]
    assert path["path"] == "/callback" and path["backend"]["service"]["port"] == {"name": "http"}
    [policy] = [d for d in docs if d["kind"] == "NetworkPolicy"]
    admin_rule, http_rule = policy["spec"]["ingress"]
    assert admin_rule["ports"] == [{"port": 9464, "protocol": "TCP"}] and admin_rule["from"]
    assert http_rule == {"ports": [{"port": 8080, "protocol": "TCP"}]}


@pytest.mark.parametrize(
    "values",
    [
        {"componets": {}},
        {"components": {"ingress": {"enabled": True, "module": "imrelay_ingress", "replica": 3}}},
        {"nats": {"enabled": False, "url": "nats.example.com:4222"}},
        {"nats": {"replica": 3}},
        {"nats": {"replicas": 2}},
        {"config": {"bots": [{"id": "Bad_Id", "platform": "wecom_app"}]}},
        {"config": {"extra": {"ingress": {"connections": {"header_timeout": 10}}}}},
        {"config": {"extra": {"ingress": {"connections": {"max_connections": 0}}}}},
    ],
)
def test_the_schema_rejects_typos(values: dict[str, Any]) -> None:
    with pytest.raises(Exception, match="(?i)schema|values|additional|pattern|length"):
        render(values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {
                "keda": {"enabled": True},
                "components": {
                    "llm-worker": {
                        "enabled": True,
                        "module": "imrelay_worker",
                        "autoscaling": {
                            "enabled": True,
                            "minReplicas": 1,
                            "maxReplicas": 2,
                            "targetCPUUtilizationPercentage": 50,
                        },
                    }
                },
            },
            "one autoscaler",
        ),
        (
            {
                "config": {
                    "bots": [
                        {
                            "id": "ws",
                            "platform": "wecom_aibot",
                            "mode": "long_connection",
                            "credentials": {
                                "token": "t",
                                "encoding_aes_key": "${K}",
                                "bot_id": "aib1",
                                "secret": "${S}",
                            },
                        }
                    ]
                }
            },
            "connector.enabled",
        ),
        ({"nats": {"enabled": False}}, "nats.url is required"),
        ({"nats": {"url": "nats://nats.messaging:4222"}}, "choose one NATS"),
        ({"nats": {"replicas": 1}}, r"streamReplicas \(3\) cannot exceed"),
    ],
)
def test_notes_fail_bad_installs(values: dict[str, Any], message: str) -> None:
    with pytest.raises(Exception, match=message):
        render_files(values)


def test_notes_print_each_bots_callback_url() -> None:
    notes = render_files(load(CHART / "ci" / "external-nats-values.yaml"))["imrelay/templates/NOTES.txt"]
    assert "hr-helper (wecom_app): https://imrelay.example.com/callback/hr-helper" in notes
    assert "assistant (wecom_aibot): long connection" in notes


# Checks the chart does not meet on purpose (justified in deploy/helm/imrelay/README.md).
CHECKOV_SKIPS = ["CKV_K8S_11", "CKV_K8S_15", "CKV_K8S_35", "CKV_K8S_43"]


@pytest.mark.parametrize("path", VALUES, ids=[p.stem for p in VALUES])
def test_checkov_finds_nothing(path: Path, tmp_path: Path) -> None:
    import json
    import shutil
    import subprocess

    checkov = shutil.which("checkov") or str(Path(__import__("sys").executable).parent / "checkov")
    out = render_files(load(path))
    manifest = tmp_path / "imrelay.yaml"
    manifest.write_text("\n---\n".join(v for k, v in out.items() if not k.endswith("NOTES.txt")))
    run = subprocess.run(
        [
            checkov,
            "-f",
            str(manifest),
            "--framework",
            "kubernetes",
            "--skip-download",
            "--output",
            "json",
            "--skip-check",
            ",".join(CHECKOV_SKIPS),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = json.loads(run.stdout)
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert summary["failed"] == 0, failed
    assert summary["passed"] > 50


def test_helm_test_round_trip_pod() -> None:
    docs = render({"helmTest": {"enabled": True}})
    [pod] = [d for d in docs if d["kind"] == "Pod"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    command = " ".join(pod["spec"]["containers"][0]["command"])
    assert "imrelay_sim send --bot helm-selftest" in command and "http://imrelay-ingress:8080" in command
    [cm] = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "imrelay-config"]
    settings = parse_settings(
        yaml.safe_load(cm["data"]["imrelay.yaml"]),
        {"HELM_SELFTEST_TOKEN": "t", "HELM_SELFTEST_AES_KEY": "k" * 43},
    )
    bot = settings.bot("helm-selftest")
    assert bot is not None and settings.api_base(bot) == "http://imrelay-selftest:8090"
    assert settings.backends[bot.backend].kind.value == "echo"  # no model cost
    [sender] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("sender")]
    refs = [e["secretRef"]["name"] for e in sender["spec"]["template"]["spec"]["containers"][0]["envFrom"]]
    assert "imrelay-selftest" in refs


def test_the_bundled_nats_is_a_jetstream_cluster() -> None:
    docs = render(values_file("keda-values.yaml"))
    sts = find(docs, "StatefulSet", "imrelay-nats")
    assert sts["spec"]["replicas"] == 3 and sts["spec"]["serviceName"] == "imrelay-nats-headless"
    [claim] = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    pod = sts["spec"]["template"]["spec"]
    [c] = [c for c in pod["containers"] if c["name"] == "nats"]
    assert pod["securityContext"]["runAsNonRoot"] is True and c["securityContext"]["readOnlyRootFilesystem"]
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["nats-server", "-sl=ldm=/var/run/nats/nats.pid"]
    conf = find(docs, "ConfigMap", "imrelay-nats-config")["data"]["nats.conf"]
    assert "nats://imrelay-nats-2.imrelay-nats-headless:6222" in conf and "store_dir: /data" in conf
    assert find(docs, "PodDisruptionBudget", "imrelay-nats")["spec"]["maxUnavailable"] == 1
    assert find(docs, "Service", "imrelay-nats-headless")["spec"]["publishNotReadyAddresses"] is True
    cfg = yaml.safe_load(find(docs, "ConfigMap", "imrelay-config")["data"]["imrelay.yaml"])
    assert cfg["nats"] == {"url": "nats://imrelay-nats:4222", "replicas": 3}
    trigger = find(docs, "ScaledObject", "imrelay-llm-worker")["spec"]["triggers"][0]["metadata"]
    assert trigger["natsServerMonitoringEndpoint"] == "imrelay-nats-headless.chat.svc.cluster.local:8222"
    # a single node: no cluster block, no PDB; and none of it with a NATS of your own
    single = render(values_file("minimal-values.yaml"))
    assert "cluster {" not in find(single, "ConfigMap", "imrelay-nats-config")["data"]["nats.conf"]
    assert not [d for d in single if d["kind"] == "PodDisruptionBudget" and "nats" in d["metadata"]["name"]]
    external = render(values_file("external-nats-values.yaml"))
    assert not [d for d in external if d["metadata"]["name"].startswith("imrelay-nats")]


def component_env(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    [container] = find(docs, "Deployment", f"imrelay-{name}")["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_the_bundled_nats_has_a_user_per_service_and_encrypts_its_files() -> None:
    from imrelay.permissions import chart_template

    generated = CHART / "charts" / "nats" / "templates" / "_imrelay_authorization.tpl"
    assert generated.read_text() == chart_template(), "run: imrelay nats permissions --chart"
    docs = render({})
    conf = find(docs, "ConfigMap", "imrelay-nats-config")["data"]["nats.conf"]
    assert "authorization {" in conf and "cipher: chachapoly" in conf
    assert "key: $NATS_JETSTREAM_KEY" in conf
    secret = find(docs, "Secret", "imrelay-nats-auth")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    services = ("INGRESS", "CONNECTOR", "WORKER", "SENDER", "CLI")
    assert set(secret["data"]) == {f"IMRELAY_NATS_PASSWORD_{s}" for s in services} | {"NATS_JETSTREAM_KEY"}
    for component, user in (("ingress", "ingress"), ("llm-worker", "worker"), ("sender", "sender")):
        env = component_env(docs, component)
        assert env["IMRELAY_NATS_USER"] == f"imrelay-{user}"
        assert env["IMRELAY_NATS_PASSWORD"] == {
            "secretKeyRef": {"name": "imrelay-nats-auth", "key": f"IMRELAY_NATS_PASSWORD_{user.upper()}"}
        }
    # both can be turned off (a NATS you secure some other way)
    off = render({"nats": {"auth": {"enabled": False}, "encryption": {"enabled": False}}})
    conf = find(off, "ConfigMap", "imrelay-nats-config")["data"]["nats.conf"]
    assert "authorization" not in conf and "cipher" not in conf
    assert "IMRELAY_NATS_USER" not in component_env(off, "sender")


def test_tls_for_the_bundled_and_for_your_own_nats() -> None:
    docs = render(values_file("nats-tls-values.yaml"))
    conf = find(docs, "ConfigMap", "imrelay-nats-config")["data"]["nats.conf"]
    assert "cert_file: /etc/nats-tls/tls.crt" in conf
    cert = find(docs, "Certificate", "imrelay-nats")["spec"]
    assert cert["secretName"] == "imrelay-nats-tls" and cert["issuerRef"]["name"] == "cluster-ca"
    sts = find(docs, "StatefulSet", "imrelay-nats")["spec"]["template"]["spec"]
    assert {"name": "tls", "secret": {"secretName": "imrelay-nats-tls"}} in sts["volumes"]
    cfg = yaml.safe_load(find(docs, "ConfigMap", "imrelay-config")["data"]["imrelay.yaml"])
    assert cfg["nats"]["url"] == "tls://imrelay-nats:4222"
    assert cfg["nats"]["tls"] == {"ca_file": "/etc/imrelay-nats-tls/ca.crt"}
    parse_settings(cfg, {})
    pod = find(docs, "Deployment", "imrelay-sender")["spec"]["template"]["spec"]
    ca = {"secretName": "imrelay-nats-tls", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    assert {"name": "nats-tls", "secret": ca} in pod["volumes"]
    own = render(values_file("external-nats-secure-values.yaml"))
    assert not [d for d in own if d["metadata"]["name"].startswith("imrelay-nats")]
    env = component_env(own, "llm-worker")
    assert env["IMRELAY_NATS_PASSWORD"]["secretKeyRef"]["name"] == "imrelay-nats-passwords"
    cfg = yaml.safe_load(find(own, "ConfigMap", "imrelay-config")["data"]["imrelay.yaml"])
    assert cfg["nats"]["url"].startswith("tls://") and cfg["nats"]["tls"]["ca_file"].endswith("ca.crt")


# ---- extensibility -------------------------------------------------------------------------------------

ROBOT: dict[str, Any] = {
    "id": "robot",
    "platform": "wecom_group_robot",
    "credentials": {"token": "${ROBOT_TOKEN}", "encoding_aes_key": "${ROBOT_AES_KEY}"},
}


def pod_of(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    spec: dict[str, Any] = find(docs, "Deployment", name)["spec"]["template"]
    return spec


def test_umbrella_values_and_every_escape_hatch() -> None:
    docs = render(values_file("umbrella-values.yaml"))
    names = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    assert names == {"chat-relay-ingress", "chat-relay-llm-worker", "chat-relay-sender", "imrelay-nats-box"}
    sa = find(docs, "ServiceAccount", "chat-relay-pods")
    assert sa["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/chat-relay"
    }
    ingress, worker = pod_of(docs, "chat-relay-ingress"), pod_of(docs, "chat-relay-llm-worker")
    for tpl in (ingress, worker):
        spec = tpl["spec"]
        assert spec["serviceAccountName"] == "chat-relay-pods"
        assert spec["automountServiceAccountToken"] is False
        assert tpl["metadata"]["annotations"]["team"] == "chat"
        assert tpl["metadata"]["labels"]["cost-center"] == "c42"
        assert spec["tolerations"] == [
            {"key": "dedicated", "operator": "Equal", "value": "chat", "effect": "NoSchedule"}
        ]
        assert spec["affinity"]["nodeAffinity"]
        assert {"name": "corp-ca", "configMap": {"name": "corp-ca"}} in spec["volumes"]
        [c] = spec["containers"]
        assert {"name": "corp-ca", "mountPath": "/etc/corp-ca", "readOnly": True} in c["volumeMounts"]
        assert {"configMapRef": {"name": "chat-relay-extra"}} in c["envFrom"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["TZ"] == "Asia/Shanghai" and env["IMRELAY_LOG_LEVEL"] == "DEBUG"
        assert env["IMRELAY_LOG_FORMAT"] == "json"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.monitoring:4318"
        assert env["HTTP_PROXY"] == env["HTTPS_PROXY"] == "http://proxy.corp:3128"
        assert env["NO_PROXY"] == ".svc,.cluster.local,10.0.0.0/8"
    # a component's own values add to (maps, lists) or override (the rest) the pod-wide ones
    assert ingress["spec"]["priorityClassName"] == "chat-critical"
    assert worker["spec"]["priorityClassName"] == "chat-normal"
    assert ingress["spec"]["nodeSelector"] == {"pool": "apps", "zone": "edge"}
    assert worker["spec"]["nodeSelector"] == {"pool": "apps"}
    assert ingress["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert "sidecar.istio.io/inject" not in worker["metadata"]["annotations"]
    worker_env = [e["name"] for e in worker["spec"]["containers"][0]["env"]]
    assert "SSL_CERT_FILE" in worker_env
    assert "SSL_CERT_FILE" not in [e["name"] for e in ingress["spec"]["containers"][0]["env"]]
    # the bundled NATS's Services are found under the release's name whatever the override
    cfg = yaml.safe_load(find(docs, "ConfigMap", "chat-relay-config")["data"]["imrelay.yaml"])
    assert cfg["nats"]["url"] == "nats://imrelay-nats:4222"


def test_defaults_add_nothing() -> None:
    docs = render({})
    tpl = pod_of(docs, "imrelay-sender")
    spec = tpl["spec"]
    assert not {"affinity", "priorityClassName", "nodeSelector", "tolerations"} & set(spec)
    env = {e["name"] for e in spec["containers"][0]["env"]}
    assert not {"IMRELAY_LOG_LEVEL", "OTEL_EXPORTER_OTLP_ENDPOINT", "HTTP_PROXY", "NO_PROXY"} & env
    assert find(docs, "ServiceAccount", "imrelay")["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == "imrelay"


def test_name_overrides_and_an_existing_service_account() -> None:
    docs = render({"nameOverride": "chatbot", "serviceAccount": {"create": False, "name": "shared"}})
    dep = find(docs, "Deployment", "imrelay-chatbot-sender")
    assert dep["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "chatbot"
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "shared"
    assert not [d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"] != "imrelay-nats"]


@pytest.mark.parametrize(
    "bot",
    [
        {**ROBOT, "credentials": {"token": "t"}},  # a credential missing
        {**ROBOT, "credentials": {**ROBOT["credentials"], "tokn": "t"}},  # a typo in credentials
        {**ROBOT, "replay_window": 60},  # a typo in the bot
        {**ROBOT, "mode": "websocket"},  # not a mode
        {**ROBOT, "platform": "slack"},  # not a platform
        {"id": "fs", "platform": "feishu", "credentials": {"app_id": "a"}},  # no app secret
        {**ROBOT, "temperature": 3},
    ],
)
def test_a_bad_bot_fails_the_install(bot: dict[str, Any]) -> None:
    with pytest.raises(Exception, match="(?i)schema|values"):
        render({"config": {"bots": [bot]}})


def test_the_chart_bot_schema_is_generated_from_the_config_models() -> None:
    import json

    from imrelay.configdoc import with_chart_bots_schema

    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema == with_chart_bots_schema(schema), (
        "run: imrelay config schema --chart deploy/helm/imrelay/values.schema.json"
    )
    assert schema["properties"]["config"]["properties"]["bots"] == {"$ref": "#/definitions/bots"}


def test_global_values_of_an_umbrella_chart_are_accepted() -> None:
    assert render({"global": {"imageRegistry": "r.example.com", "anything": {"nested": True}}})


# ---- rollouts ------------------------------------------------------------------------------------------


def checksums(values: dict[str, Any]) -> dict[str, str]:
    annotations: dict[str, str] = pod_of(render(values), "imrelay-sender")["metadata"]["annotations"]
    return annotations


def test_a_secret_change_rolls_the_pods() -> None:
    before = checksums({"secrets": {"values": {"OPENAI_API_KEY": "one"}}})
    after = checksums({"secrets": {"values": {"OPENAI_API_KEY": "two"}}})
    assert before["checksum/secrets"] != after["checksum/secrets"]
    assert before["checksum/config"] == after["checksum/config"]
    assert before == checksums({"secrets": {"values": {"OPENAI_API_KEY": "one"}}})  # stable otherwise


@pytest.mark.parametrize(
    ("component", "values", "expected"),
    [
        ("ingress", {}, {"minAvailable": 1}),
        (
            "ingress",
            {"components": {"ingress": {"enabled": True, "module": "imrelay_ingress", "replicas": 1}}},
            {"maxUnavailable": 1},
        ),
        (
            "sender",
            {
                "components": {
                    "sender": {
                        "enabled": True,
                        "module": "imrelay_sender",
                        "pdb": {"enabled": True, "minAvailable": 2},
                    }
                }
            },
            {"maxUnavailable": 1},
        ),
        (
            "sender",
            {
                "components": {
                    "sender": {
                        "enabled": True,
                        "module": "imrelay_sender",
                        "pdb": {"enabled": True, "minAvailable": "50%"},
                    }
                }
            },
            {"minAvailable": "50%"},
        ),
        (
            "sender",
            {
                "components": {
                    "sender": {
                        "enabled": True,
                        "module": "imrelay_sender",
                        "autoscaling": {
                            "enabled": True,
                            "minReplicas": 1,
                            "maxReplicas": 4,
                            "targetCPUUtilizationPercentage": 70,
                        },
                    }
                }
            },
            {"maxUnavailable": 1},
        ),
        ("llm-worker", {"keda": {"enabled": True, "minReplicas": 3}}, {"minAvailable": 1}),
    ],
)
def test_a_pdb_never_blocks_a_drain(component: str, values: dict[str, Any], expected: dict[str, Any]) -> None:
    pdb = find(render(values), "PodDisruptionBudget", f"imrelay-{component}")["spec"]
    assert {k: v for k, v in pdb.items() if k != "selector"} == expected


def test_single_replica_values_allow_drains() -> None:
    docs = render(values_file("single-replica-values.yaml"))
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert {d["metadata"]["name"] for d in pdbs} == {
        "imrelay-ingress",
        "imrelay-llm-worker",
        "imrelay-sender",
    }
    assert all(d["spec"].get("maxUnavailable") == 1 and "minAvailable" not in d["spec"] for d in pdbs)


def test_probes_and_the_ingress_pause_before_stopping() -> None:
    docs = render(
        {
            "components": {
                "ingress": {
                    "enabled": True,
                    "module": "imrelay_ingress",
                    "preStopSleepSeconds": 12,
                    "startupProbe": {"periodSeconds": 3, "failureThreshold": 50},
                }
            }
        }
    )
    ingress = pod_of(docs, "imrelay-ingress")["spec"]
    [c] = ingress["containers"]
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["python", "-c", "import time; time.sleep(12)"]
    assert ingress["terminationGracePeriodSeconds"] == 30 + 12  # the pause, then the time to finish
    assert c["startupProbe"] == {
        "httpGet": {"path": "/healthz", "port": "admin"},
        "periodSeconds": 3,
        "failureThreshold": 50,
    }
    sender = pod_of(docs, "imrelay-sender")["spec"]
    [s] = sender["containers"]
    assert "lifecycle" not in s and sender["terminationGracePeriodSeconds"] == 60
    assert s["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert s["readinessProbe"]["httpGet"]["path"] == "/readyz"


@pytest.mark.parametrize(
    ("values", "kind", "value"),
    [
        ({"serviceMonitor": {"enabled": True}}, "ServiceMonitor", "serviceMonitor.enabled"),
        ({"prometheusRule": {"enabled": True}}, "PrometheusRule", "prometheusRule.enabled"),
        ({"keda": {"enabled": True}}, "ScaledObject", "keda.enabled"),
        (
            {"nats": {"exporter": {"podMonitor": {"enabled": True}}}},
            "PodMonitor",
            "nats.exporter.podMonitor.enabled",
        ),
        (values_file("nats-tls-values.yaml"), "Certificate", "nats.tls.certManager.enabled"),
    ],
)
def test_operator_objects_need_their_api(values: dict[str, Any], kind: str, value: str) -> None:
    with pytest.raises(Exception, match=rf"{value}=true needs the {kind} API .*set {value}=false"):
        render(values, api_versions=[])
    assert [d for d in render(values, api_versions=OPERATOR_APIS) if d["kind"] == kind]
    group_version = next(a.rsplit("/", 1)[0] for a in OPERATOR_APIS if a.endswith(f"/{kind}"))
    assert [d for d in render(values, api_versions=[group_version]) if d["kind"] == kind]


def test_notes_without_the_ingress_explain_how_to_reach_the_callbacks() -> None:
    notes = render_files({"config": {"bots": [ROBOT]}})["imrelay/templates/NOTES.txt"]
    assert "https://" not in notes
    assert "ingress.enabled=false" in notes and "port-forward svc/imrelay-ingress 8080" in notes
    assert "robot (wecom_group_robot): callback path /callback/robot" in notes


def test_the_helm_test_secret_is_the_same_on_every_render() -> None:
    def secret(values: dict[str, Any]) -> dict[str, str]:
        data: dict[str, str] = find(render(values), "Secret", "imrelay-selftest")["data"]
        return data

    first = secret({"helmTest": {"enabled": True}})
    assert first == secret({"helmTest": {"enabled": True}})
    assert first != secret({"helmTest": {"enabled": True, "seed": "private"}})
    import base64

    assert len(base64.b64decode(first["HELM_SELFTEST_AES_KEY"])) == 43
    assert checksums({"helmTest": {"enabled": True}}) == checksums({"helmTest": {"enabled": True}})


# ---- the bundled NATS ----------------------------------------------------------------------------------


def test_the_bundled_nats_exports_metrics_and_can_have_a_nats_box() -> None:
    docs = render(values_file("umbrella-values.yaml"))
    pod = find(docs, "StatefulSet", "imrelay-nats")["spec"]["template"]["spec"]
    [exporter] = [c for c in pod["containers"] if c["name"] == "exporter"]
    assert exporter["image"].startswith("natsio/prometheus-nats-exporter:")
    assert exporter["args"][-1] == "http://localhost:8222/" and "-jsz=all" in exporter["args"]
    assert exporter["ports"] == [{"name": "metrics", "containerPort": 7777}]
    monitor = find(docs, "PodMonitor", "imrelay-nats")["spec"]
    assert monitor["podMetricsEndpoints"][0]["port"] == "metrics"
    assert monitor["selector"]["matchLabels"]["app.kubernetes.io/name"] == "nats"
    assert find(docs, "PodMonitor", "imrelay-nats")["metadata"]["labels"]["release"] == "prometheus"
    policy = find(docs, "NetworkPolicy", "imrelay-nats")["spec"]["ingress"][-1]
    assert {"port": 7777, "protocol": "TCP"} in policy["ports"]
    box = pod_of(docs, "imrelay-nats-box")["spec"]
    [c] = box["containers"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
    assert env["NATS_URL"] == "nats://imrelay-nats:4222" and env["NATS_USER"] == "imrelay-cli"
    assert env["NATS_PASSWORD"] == {
        "secretKeyRef": {"name": "imrelay-nats-auth", "key": "IMRELAY_NATS_PASSWORD_CLI"}
    }
    # the exporter is there by default, its PodMonitor and nats-box only when asked for
    plain = render({})
    assert [
        c["name"]
        for c in find(plain, "StatefulSet", "imrelay-nats")["spec"]["template"]["spec"]["containers"]
    ] == ["nats", "exporter"]
    assert not [d for d in plain if d["kind"] == "PodMonitor" or d["metadata"]["name"] == "imrelay-nats-box"]
    off = render({"nats": {"exporter": {"enabled": False}}})
    assert [
        c["name"] for c in find(off, "StatefulSet", "imrelay-nats")["spec"]["template"]["spec"]["containers"]
    ] == ["nats"]
