"""The operator's commands against a real nats-server and the simulator as a real HTTP server:
``imrelay status``, ``imrelay check-config --online`` (a wrong secret and an untrusted IP each named) and
``imrelay dlq show``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import yaml

from imrelay import subjects
from imrelay.config import load_settings
from imrelay.delivery import DeliveryContext
from imrelay.delivery.tokens import TokenCache
from imrelay.dlq import dlq_headers
from imrelay.jetstream import ensure_buckets, ensure_streams
from imrelay.natsserver import EmbeddedNats
from imrelay.platforms.wecom_app.config import WeComAppBot
from imrelay.platforms.wecom_app.delivery import WeComAppDelivery

from .stack import Stack

pytestmark = pytest.mark.nats


@pytest.fixture(scope="module")
def sim_stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack.create(tmp_path_factory.mktemp("ops"), nats_server)
    with s.running("sim"):
        yield s


def imrelay(stack: Stack, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, IMRELAY_CONFIG=str(config or stack.config_path), IMRELAY_NATS_URL=stack.nats.url)
    return subprocess.run(
        [sys.executable, "-m", "imrelay.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def with_config(stack: Stack, name: str, change: dict[str, Any]) -> Path:
    cfg = json.loads(json.dumps(stack.config))
    cfg["bots"][0]["credentials"].update(change)
    path = stack.root / name
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_check_config_online_passes_against_the_platform(sim_stack: Stack) -> None:
    r = imrelay(sim_stack, "check-config", "--online")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok    nats: connected to" in r.stdout
    assert "ok    bot app (wecom_app) token: access token fetched (valid 7" in r.stdout
    assert "ok    bot robot (wecom_group_robot) token: no access token needed" in r.stdout
    assert "ok    backend default: echo answered" in r.stdout
    assert "ok: ready to go live" in r.stdout
    assert sim_stack.config["bots"][0]["credentials"]["secret"] not in r.stdout + r.stderr


def test_check_config_online_names_a_wrong_secret(sim_stack: Stack) -> None:
    path = with_config(sim_stack, "wrong-secret.yaml", {"secret": "not-the-app-secret"})
    r = imrelay(sim_stack, "check-config", "--online", config=path)
    assert r.returncode == 1
    line = next(x for x in r.stdout.splitlines() if "bot app " in x)
    assert line.startswith("FAIL")
    assert "wecom_app error 40001: wrong secret (credentials.secret)" in line
    assert "docs/troubleshooting.md#wecom-40001" in line
    assert "not-the-app-secret" not in r.stdout + r.stderr
    assert "1 check(s) failed" in r.stdout


def test_check_config_online_names_an_untrusted_ip(sim_stack: Stack) -> None:
    sim_stack.control(trusted_ips=["203.0.113.7"])  # the app trusts another host only
    try:
        r = imrelay(sim_stack, "check-config", "--online")
    finally:
        sim_stack.control(trusted_ips=None)
    assert r.returncode == 1
    line = next(x for x in r.stdout.splitlines() if "bot app " in x)
    assert "wecom_app error 60020: this host's IP is not in the app's trusted IPs" in line
    assert "docs/troubleshooting.md#wecom-60020" in line


def test_check_config_online_names_an_unreachable_nats(sim_stack: Stack) -> None:
    env_url = "nats://127.0.0.1:9"  # discard port: nothing listens
    r = subprocess.run(
        [sys.executable, "-m", "imrelay.cli", "check-config", "--online"],
        env=dict(os.environ, IMRELAY_CONFIG=str(sim_stack.config_path), IMRELAY_NATS_URL=env_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 1
    assert next(x for x in r.stdout.splitlines() if " nats: " in x).startswith("FAIL")


async def test_status_shows_streams_lag_tokens_and_dead_letters(sim_stack: Stack) -> None:
    settings = load_settings(sim_stack.config_path, {})
    nc = await nats.connect(sim_stack.nats.url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, settings.nats)
        buckets = await ensure_buckets(js, settings.nats)
        bot = settings.bots[0]
        async with httpx.AsyncClient() as client:
            assert isinstance(bot, WeComAppBot)
            ctx = DeliveryContext(settings=settings, client=client, tokens=TokenCache(buckets.tokens))
            delivery = WeComAppDelivery.from_bot(bot, ctx)
            await TokenCache(buckets.tokens).get(delivery.token_key, delivery._fetch_token, renew_early=False)
        ack = await js.publish(
            subjects.dlq_subject("sender"),
            b'{"reply_id": "r1"}',
            headers=dlq_headers(
                "sender",
                "recipient not in the app's visible range",
                code=81013,
                original_subject=subjects.outbound_subject("wecom_app", "app", 3),
                deliveries=1,
                msg_id="r1",
            ),
        )
    finally:
        await nc.close()

    r = imrelay(sim_stack, "status", "--output", "json")
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    assert {st["name"] for st in status["streams"] if st["present"]} == {
        subjects.STREAM_IN,
        subjects.STREAM_OUT,
        subjects.STREAM_DLQ,
    }
    app = next(b for b in status["bots"] if b["id"] == "app")
    assert app["token"]["state"] == "valid"
    assert 7000 < app["token"]["expires_in_seconds"] <= 7200
    robot = next(b for b in status["bots"] if b["id"] == "robot")
    assert robot["token"]["state"] == "not used"
    assert status["dead_letters"]["sender"] >= 1
    text = imrelay(sim_stack, "status")
    assert text.returncode == 0
    assert "STREAMS" in text.stdout and "IMRELAY_DLQ" in text.stdout and "sender: " in text.stdout

    shown = imrelay(sim_stack, "dlq", "show", str(ack.seq))
    assert shown.returncode == 0, shown.stderr
    assert "platform code:    81013" in shown.stdout
    assert "recipient not in the app's visible range" in shown.stdout
    assert '"reply_id": "r1"' in shown.stdout
    missing = imrelay(sim_stack, "dlq", "show", "999999")
    assert missing.returncode == 1 and "no dead letter 999999" in missing.stderr
