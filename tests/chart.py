"""The Helm chart rendered offline (helm-python-sdk), for the chart's unit and integration tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from helm_python import Chart

CHART = Path(__file__).parents[1] / "deploy" / "helm" / "imrelay"


def render_files(values: dict[str, Any]) -> dict[str, str]:
    """Each rendered template file (NOTES.txt included) as Helm would install release imrelay in chat."""
    out: dict[str, str] = Chart.load(CHART).render(values, name="imrelay", namespace="chat", is_install=True)
    return out


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rendered manifest, NOTES.txt left out."""
    docs: list[dict[str, Any]] = []
    for path, text in render_files(values).items():
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
