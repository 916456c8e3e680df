"""The Helm chart rendered offline (helm-python-sdk), for the chart's unit and integration tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from helm_python import Chart, _native

CHART = Path(__file__).parents[1] / "deploy" / "helm" / "imrelay"

# The APIs of the operators the chart can use (their CRDs), as `helm template --api-versions` names them.
OPERATOR_APIS = [
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PodMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
    "keda.sh/v1alpha1/ScaledObject",
    "cert-manager.io/v1/Certificate",
]


def render_files(values: dict[str, Any], api_versions: list[str] | None = None) -> dict[str, str]:
    """Each rendered template file (NOTES.txt included) as Helm would install release imrelay in chat, on
    a cluster that serves ``api_versions`` beyond the built-in ones (default: every operator's API)."""
    chart = Chart.load(CHART)
    opts = {
        "name": "imrelay",
        "namespace": "chat",
        "is_install": True,
        "api_versions": OPERATOR_APIS if api_versions is None else api_versions,
    }
    # helm-python-sdk's render() has no keyword for the cluster's APIs; its native call takes them
    rendered = _native.call_string("helm_render", chart._raw(), json.dumps(values), json.dumps(opts))
    out: dict[str, str] = json.loads(rendered)
    return out


def render(values: dict[str, Any], api_versions: list[str] | None = None) -> list[dict[str, Any]]:
    """Every rendered manifest, NOTES.txt left out."""
    docs: list[dict[str, Any]] = []
    for path, text in render_files(values, api_versions).items():
        if not path.endswith("NOTES.txt"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one manifest of that kind and name."""
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def values_file(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CHART / "ci" / name).read_text()) or {}
    return data
