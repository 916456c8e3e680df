"""``make images`` on this machine (buildah, from scratch): the image builds, keeps no compiler or package
manager, runs as a non-root user, and its own command, started from the image's filesystem as that user
with the image's environment, is a working ingress that stores a signed callback in JetStream.

Needs root, buildah and debootstrap (``.ci/run`` installs them); skipped, saying why, without them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from imrelay.config import parse_settings
from imrelay.natsserver import EmbeddedNats
from imrelay_sim.client import build_request

from ..helpers import free_port
from .stack import stored_inbound

ROOT = Path(__file__).parents[2]
MISSING = [t for t in ("buildah", "debootstrap", "chroot") if shutil.which(t) is None]

pytestmark = [
    pytest.mark.timeout(1200),
    pytest.mark.skipif(
        os.geteuid() != 0 or bool(MISSING),
        reason=f"make images needs root and {', '.join(MISSING) or 'buildah'}",
    ),
]

KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


def buildah(*args: str) -> str:
    return subprocess.run(
        ["buildah", *args], check=True, capture_output=True, text=True, timeout=120
    ).stdout.strip()


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    name = f"localhost/imrelay:test-{os.getpid()}"
    run = subprocess.run(
        ["make", "images", f"IMAGE={name}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1100,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert f"built {name} (user 10001:10001)" in run.stdout
    try:
        yield name
    finally:
        subprocess.run(["buildah", "rmi", "-f", name], capture_output=True, check=False)


@pytest.fixture(scope="module")
def mounted(image: str) -> Iterator[tuple[Path, dict[str, Any]]]:
    config: dict[str, Any] = json.loads(buildah("inspect", "--type", "image", image))["OCIv1"]["config"]
    ctr = buildah("from", "--pull-never", image)
    try:
        yield Path(buildah("mount", ctr)), config
    finally:
        subprocess.run(["buildah", "umount", ctr], capture_output=True, check=False)
        subprocess.run(["buildah", "rm", ctr], capture_output=True, check=False)


def test_the_image_runs_as_a_user_and_carries_no_build_tools(mounted: tuple[Path, dict[str, Any]]) -> None:
    root, config = mounted
    assert config["User"] == "10001:10001"
    assert config["Cmd"] == ["python", "-m", "imrelay_ingress"]
    passwd = (root / "etc" / "passwd").read_text()
    assert "imrelay:x:10001:10001:" in passwd
    for tool in ("usr/bin/gcc", "usr/bin/cc", "usr/bin/apt-get", "usr/bin/dpkg", "opt/imrelay/bin/pip"):
        assert not (root / tool).exists(), tool
    assert (root / "opt" / "imrelay" / "bin" / "python").exists()


def test_the_images_command_is_a_working_ingress(
    mounted: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    root, config = mounted
    server = EmbeddedNats(store_dir=tmp_path / "nats", port=free_port()).start()
    port, admin = free_port(), free_port()
    cfg = {
        "bots": [
            {
                "id": "robot",
                "platform": "wecom_group_robot",
                "credentials": {"token": "imagetoken", "encoding_aes_key": KEY},
            }
        ]
    }
    (root / "tmp" / "imrelay.yaml").write_text(yaml.safe_dump(cfg))
    env = [e for e in config["Env"] if e.startswith(("PATH=", "PYTHONUNBUFFERED="))]
    # the image's command as the image's user, in the image's filesystem, with the image's environment
    argv = [
        "chroot",
        f"--userspec={config['User']}",
        str(root),
        "env",
        "-i",
        *env,
        "IMRELAY_CONFIG=/tmp/imrelay.yaml",
        f"IMRELAY_NATS_URL={server.url}",
        f"IMRELAY_PORT={port}",
        f"IMRELAY_ADMIN_PORT={admin}",
        *config["Cmd"],
    ]
    log = tmp_path / "ingress.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{admin}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        bot = parse_settings(cfg, {}).bots[0]
        query, headers, body = build_request(bot, "from the image", "alice", "4242", time.time())
        resp = httpx.post(
            f"http://127.0.0.1:{port}/callback/robot?{query}", content=body, headers=headers, timeout=10
        )
        assert resp.status_code == 200, log.read_text()
        assert asyncio.run(stored_inbound(server.url)) == 1
    finally:
        proc.terminate()
        proc.wait(30)
        server.cleanup()
