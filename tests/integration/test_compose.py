"""deploy/compose: the compose file is valid against the Compose Specification's schema, its config
example is a valid imrelay config, and the services, run from the compose file's own commands,
environment and health checks (with a nats-server run from the nats service's command), answer a
simulated WeCom message end to end. Containers are not started here: the same commands run as
processes, with each service's ports moved to free ones on this host."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml

from imrelay.config import parse_settings
from imrelay.natsserver import nats_server_binary
from imrelay_sim.client import build_request

from ..helpers import free_port

pytestmark = pytest.mark.nats

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose"
SCHEMA = ROOT / "tests" / "fixtures" / "compose-spec" / "compose-spec.json"
IMRELAY_SERVICES = ("ingress", "worker", "sender", "connector")
KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([-?])([^}]*))?\}")


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            out[name.strip()] = value.strip()
    return out


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``."""
    if isinstance(value, str):

        def repl(m: re.Match[str]) -> str:
            name, op, arg = m.groups()
            if env.get(name):
                return env[name]
            if op == "?":
                raise KeyError(f"{name}: {arg}")
            return arg if op == "-" else ""

        return _VAR.sub(repl, value)
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    return value


def compose(env: dict[str, str]) -> dict[str, Any]:
    raw = yaml.safe_load((COMPOSE / "compose.yaml").read_text(encoding="utf-8"))  # merges <<: anchors
    return dict(interpolate(raw, env))


def test_compose_file_follows_the_compose_specification() -> None:
    doc = compose(env_file(COMPOSE / ".env.example"))
    jsonschema.Draft7Validator(json.loads(SCHEMA.read_text(encoding="utf-8"))).validate(doc)
    nats = doc["services"]["nats"]
    assert "--jetstream" in nats["command"] and "nats-data:/data" in nats["volumes"]
    assert "nats-data" in doc["volumes"]
    assert nats["restart"] == "unless-stopped" and nats["healthcheck"]["test"][0] == "CMD"
    for name in IMRELAY_SERVICES:
        svc = doc["services"][name]
        assert svc["restart"] == "unless-stopped"
        assert svc["env_file"] == [".env"]
        assert "./imrelay.yaml:/etc/imrelay/imrelay.yaml:ro" in svc["volumes"]
        assert svc["depends_on"]["nats"]["condition"] == "service_healthy"
        assert "/readyz" in " ".join(svc["healthcheck"]["test"])
    assert doc["services"]["connector"]["profiles"] == ["long-connection"]


def test_compose_needs_the_nats_password() -> None:
    env = env_file(COMPOSE / ".env.example")
    del env["NATS_PASSWORD"]
    with pytest.raises(KeyError, match="NATS_PASSWORD: set NATS_PASSWORD in .env"):
        compose(env)


def test_no_secret_is_written_in_the_compose_files() -> None:
    config = (COMPOSE / "imrelay.yaml").read_text(encoding="utf-8")
    for key in ("api_key", "secret", "token", "encoding_aes_key"):
        assert re.search(rf"^\s+{key}: \$\{{[A-Z_]+\}}$", config, re.M), key
    settings = parse_settings(
        yaml.safe_load(config),
        {**env_file(COMPOSE / ".env.example"), "WECOM_SECRET": "s", "WECOM_TOKEN": "t", "WECOM_AES_KEY": KEY},
    )
    assert [b.id for b in settings.bots] == ["wecom"]


class Proc:
    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.log = log

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def wait_until(check: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def compose_stack(tmp_path: Path) -> Iterator[tuple[dict[str, str], str, Path]]:
    """nats + ingress + worker + sender started from compose.yaml's commands, and a simulator."""
    env = {
        **env_file(COMPOSE / ".env.example"),
        "NATS_PASSWORD": "compose-test-pw",
        "WECOM_CORP_ID": "wwcompose",
        "WECOM_AGENT_ID": "1000002",
        "WECOM_SECRET": "wecom-secret",
        "WECOM_TOKEN": "wecom-token",
        "WECOM_AES_KEY": KEY,
        "OPENAI_API_KEY": "sk-compose",
    }
    sim_port, nats_port, nats_http = free_port(), free_port(), free_port()
    env["OPENAI_BASE_URL"] = f"http://127.0.0.1:{sim_port}/v1"
    doc = compose(env)
    # the mounted config, with the bot's API played by the simulator (the only change)
    config = yaml.safe_load((COMPOSE / "imrelay.yaml").read_text(encoding="utf-8"))
    config["bots"][0]["api_base"] = f"http://127.0.0.1:{sim_port}"
    mounted = tmp_path / "imrelay.yaml"
    mounted.write_text(yaml.safe_dump(config), encoding="utf-8")

    procs: list[Proc] = []
    nats_args = [
        {"/data": str(tmp_path / "data"), "8222": str(nats_http)}.get(a, a)
        for a in doc["services"]["nats"]["command"]
    ]
    procs.append(
        Proc(
            [nats_server_binary(), *nats_args, "-a", "127.0.0.1", "-p", str(nats_port)],
            env,
            tmp_path / "nats.log",
        )
    )
    health = doc["services"]["nats"]["healthcheck"]["test"][-1].replace("8222", str(nats_http))
    wait_until(
        lambda: httpx.get(health, timeout=2).status_code == 200 if _up(nats_http) else False, "nats healthy"
    )
    base = dict(os.environ)
    for name in ("IMRELAY_CONFIG", "IMRELAY_NATS_URL", "IMRELAY_PORT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        base.pop(name, None)
    sim_env = dict(base, **env, IMRELAY_CONFIG=str(mounted))
    procs.append(
        Proc(
            [sys.executable, "-m", "imrelay_sim", "serve", "--port", str(sim_port)],
            sim_env,
            tmp_path / "sim.log",
        )
    )
    ingress_port = free_port()
    try:
        for name in ("ingress", "worker", "sender"):
            svc = doc["services"][name]
            admin = free_port()
            penv = dict(base, **env, **{k: str(v) for k, v in svc["environment"].items()})
            assert penv["IMRELAY_NATS_URL"] == "nats://imrelay:compose-test-pw@nats:4222"
            url = penv["IMRELAY_NATS_URL"].replace("@nats:4222", f"@127.0.0.1:{nats_port}")
            penv.update(IMRELAY_CONFIG=str(mounted), IMRELAY_ADMIN_PORT=str(admin), IMRELAY_NATS_URL=url)
            if name == "ingress":
                penv["IMRELAY_PORT"] = str(ingress_port)
            argv = [sys.executable if a == "python" else a for a in svc["command"]]
            procs.append(Proc(argv, penv, tmp_path / f"{name}.log"))
            check = [
                sys.executable if a == "python" else a.replace("9464", str(admin))
                for a in svc["healthcheck"]["test"][1:]
            ]
            wait_until(
                lambda check=check: (
                    subprocess.run(check, capture_output=True, check=False, timeout=10).returncode == 0
                ),
                f"{name} healthy",
            )
        yield env, f"http://127.0.0.1:{ingress_port}", tmp_path
    finally:
        for p in reversed(procs):
            p.stop()


def _up(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
        return True
    except httpx.HTTPError:
        return False


def test_the_services_run_from_the_compose_commands_and_answer(
    compose_stack: tuple[dict[str, str], str, Path],
) -> None:
    env, ingress, root = compose_stack
    settings = parse_settings(yaml.safe_load((root / "imrelay.yaml").read_text(encoding="utf-8")), env)
    bot = settings.bots[0]
    sim = settings.api_base(bot)
    query, headers, body = build_request(bot, "hello compose", "alice", "77001", time.time(), sim)
    resp = httpx.post(f"{ingress}/callback/{bot.id}?{query}", content=body, headers=headers, timeout=10)
    assert resp.status_code == 200

    def answered() -> bool:
        msgs = httpx.get(f"{sim}/sim/messages", params={"bot": bot.id}, timeout=5).json()
        return any(m["content"] == "You said: hello compose" for m in msgs)

    wait_until(answered, "the answer delivered to the simulated WeCom", timeout=60)
    for name in ("ingress", "worker", "sender"):
        first = json.loads((root / f"{name}.log").read_text(encoding="utf-8").splitlines()[0])
        assert first["message"].startswith(f"imrelay-{name} ")  # IMRELAY_LOG_FORMAT=json from compose
        assert "compose-test-pw" not in (root / f"{name}.log").read_text(encoding="utf-8")
