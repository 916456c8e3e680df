"""The whole stack on a NATS that requires TLS and a user per service, with the permissions of
``imrelay.permissions``: every platform path still answers, no permission is missing (the server logs no
violation), and what a service may not do it cannot do."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import trustme
from nats.js.errors import KeyNotFoundError

from imrelay import subjects
from imrelay.config import NatsConfig, parse_settings
from imrelay.errors import NatsRefusedError
from imrelay.jetstream import connect, connect_options
from imrelay.natsserver import EmbeddedNats
from imrelay.permissions import SERVICES, authorization_block
from imrelay.platforms.discord import sim as discord
from imrelay.platforms.wecom_aibot import sim as sim_aibot
from imrelay.platforms.wecom_aibot.config import WeComAIBot
from imrelay.platforms.wecom_group_robot.config import WeComGroupRobotBot
from imrelay_sim.client import build_callback, build_request, upload_media

from ..helpers import free_port
from ..media_files import png
from .stack import KEY, Service, Stack

pytestmark = pytest.mark.nats

PASSWORDS = {svc: secrets.token_urlsafe(18) for svc in SERVICES}
WS_BOT = "aibSecureConn01"
SEED = discord.DEMO_SEED


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    files = {"ca": root / "ca.pem", "cert": root / "server.pem", "key": root / "server.key"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.cert_chain_pems[0].write_to_path(str(files["cert"]))
    server.private_key_pem.write_to_path(str(files["key"]))
    return {k: str(v) for k, v in files.items()}


@pytest.fixture(scope="module")
def secure_nats(tmp_path_factory: pytest.TempPathFactory, pki: dict[str, str]) -> Iterator[EmbeddedNats]:
    tls = f'tls {{ cert_file: "{pki["cert"]}", key_file: "{pki["key"]}", timeout: 2 }}\n'
    server = EmbeddedNats(
        store_dir=tmp_path_factory.mktemp("secure-nats"),
        port=free_port(),
        config=tls + authorization_block(PASSWORDS),
        scheme="tls",
    ).start()
    try:
        yield server
    finally:
        server.cleanup()


def violations(server: EmbeddedNats) -> list[str]:
    """The server's log lines for refused publishes and subscriptions ("Publish Violation" ...)."""
    log = (server.store_dir / "nats-server.log").read_text(errors="replace")
    return [line for line in log.splitlines() if " Violation - " in line]


def as_service(env: dict[str, str], service: str, password: str | None = None) -> dict[str, str]:
    return {
        **env,
        "IMRELAY_NATS_USER": f"imrelay-{service}",
        "IMRELAY_NATS_PASSWORD": password or PASSWORDS[service],
    }


@pytest.fixture(scope="module")
def stack(
    secure_nats: EmbeddedNats, pki: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("secure-stack")
    s = Stack.create(root, secure_nats, extra_env={"DISCORD_SIM_SEED": SEED})
    s.config["nats"] = {"tls": {"ca_file": pki["ca"]}}
    s.config["media"] = {"allow_private_networks": ["127.0.0.0/8"]}  # the simulator's files
    sim = s.sim_url
    s.config["bots"] += [
        {
            "id": "fs",
            "platform": "feishu",
            "api_base": sim,
            "credentials": {
                "app_id": "cli_sec01",
                "app_secret": "fs-secret",
                "encrypt_key": "sec-encrypt-key",
                "verification_token": "sec-verification-token",
            },
        },
        {
            "id": "dt",
            "platform": "dingtalk",
            "api_base": sim,
            "credentials": {"app_key": "dingsec01", "app_secret": "dt-secret"},
        },
        {
            "id": "qqbot",
            "platform": "qq",
            "api_base": sim,
            "auth_base": sim,
            "credentials": {"app_id": "1020305", "app_secret": "qqsecret0123456789"},
        },
        {
            "id": "dc",
            "platform": "discord",
            "api_base": sim,
            "credentials": {
                "application_id": "998878",
                "public_key": discord.public_key_for(SEED),
                "bot_token": "unused",
            },
        },
        {
            "id": "ai",
            "platform": "wecom_aibot",
            "credentials": {"token": "aibottoken", "encoding_aes_key": KEY},
        },
        {
            "id": "ws",
            "platform": "wecom_aibot",
            "mode": "long_connection",
            "ws_url": sim.replace("http://", "ws://") + "/ws/aibot",
            "credentials": {"token": "t", "encoding_aes_key": KEY, "bot_id": WS_BOT, "secret": "ws-secret"},
        },
    ]
    s.add_service("connector", ["imrelay_ingress.connector"])
    for name in ("ingress", "worker", "sender", "connector"):
        s.services[name].env = as_service(s.services[name].env, name)
    with s.running():
        yield s


def post(stack: Stack, bot_id: str, text: str, user: str, msg_id: str) -> httpx.Response:
    bot = parse_settings(stack.config, {}).bot(bot_id)
    assert bot is not None
    query, headers, body = build_request(bot, text, user, msg_id, time.time(), stack.sim_url)
    return httpx.post(
        f"{stack.ingress_url}/callback/{bot_id}" + (f"?{query}" if query else ""),
        content=body,
        headers=headers,
        timeout=10,
    )


ANSWER: dict[str, Callable[[str, str], dict[str, str]]] = {
    "app": lambda m, u: {"touser": u},
    "fs": lambda m, u: {"reply_to": f"om_{m}"},
    "dt": lambda m, u: {"chat": f"cid_{u}"},
    "qqbot": lambda m, u: {"reply_to": f"ROBOT1.0_{m}"},
    "dc": lambda m, u: {"token": "aW50ZXJhY3Rpb24" + hashlib.sha256(m.encode()).hexdigest()[:40]},
}


@pytest.mark.parametrize("bot_id", list(ANSWER))
def test_every_platform_answers_through_tls_and_per_service_users(stack: Stack, bot_id: str) -> None:
    user, msg_id = f"u{secrets.token_hex(4)}", str(secrets.randbelow(2**40))
    text = f"secure question for {bot_id}"
    assert post(stack, bot_id, text, user, msg_id).status_code == 200
    where = ANSWER[bot_id](msg_id, user) | ({"bot": bot_id} if bot_id != "app" else {})
    found = stack.wait_for(
        lambda: (m := stack.messages(**where)) and m[-1]["content"] == text and m,
        what=f"the answer on {bot_id}",
    )
    assert [m["content"] for m in found] == [text]
    assert violations(stack.nats) == []  # no service needed a subject its user lacks


def test_group_robot_and_ai_bot_callbacks_answer(stack: Stack) -> None:
    """The two WeCom bots without access tokens: the robot's webhook, and the AI bot's answer stream read
    back from NATS by the ingress when WeCom polls for it."""
    settings = parse_settings(stack.config, {})
    robot, ai = settings.bot("robot"), settings.bot("ai")
    assert isinstance(robot, WeComGroupRobotBot) and isinstance(ai, WeComAIBot)
    who, chat = f"u{secrets.token_hex(4)}", f"wrk{secrets.token_hex(4)}"
    query, body = build_callback(
        robot,
        "robot over tls",
        who,
        str(secrets.randbelow(2**40)),
        int(time.time()),
        stack.sim_url,
        chat=chat,
    )
    resp = httpx.post(f"{stack.ingress_url}/callback/robot?{query}", content=body, timeout=10)
    assert resp.status_code == 200
    stack.wait_for(
        lambda: [
            m
            for m in stack.messages(bot="robot")
            if who in m.get("mentioned_list", []) and m["content"] == "robot over tls"
        ],
        what="the robot's answer",
    )
    query, headers, body = sim_aibot.message_callback(
        ai, "ai bot over tls", who, secrets.token_hex(16), "", time.time(), stack.sim_url
    )
    first = httpx.post(f"{stack.ingress_url}/callback/ai?{query}", content=body, headers=headers, timeout=10)
    sid = sim_aibot.read_reply(ai, first.content)["stream"]["id"]

    def finished() -> str:
        q, h, b = sim_aibot.refresh_callback(ai, sid, who, time.time())
        reply = httpx.post(f"{stack.ingress_url}/callback/ai?{q}", content=b, headers=h, timeout=10)
        stream = sim_aibot.read_reply(ai, reply.content)["stream"]
        return str(stream["content"]) if stream["finish"] else ""

    assert stack.wait_for(finished, what="the AI bot's finished stream") == "ai bot over tls"
    assert violations(stack.nats) == []


def test_media_in_and_out_through_per_service_users(stack: Stack) -> None:
    """A user's picture is downloaded and stored by the worker, an answer's picture read back by the sender
    (Feishu) and by the ingress (the AI bot's polled stream), each with its own user."""
    photo, chart = png(12, 12), png(30, 10)
    sent = upload_media(stack.sim_url, photo, name="photo.png", kind="image")
    shown = upload_media(stack.sim_url, chart, name="chart.png", kind="image")
    link = f"![chart]({stack.sim_url}/sim/media/{shown.id})"
    settings = parse_settings(stack.config, {})
    fs = settings.bot("fs")
    assert fs is not None
    msg_id = str(secrets.randbelow(2**40))
    query, headers, body = build_request(fs, link, "u-media", msg_id, time.time(), stack.sim_url, "", (sent,))
    resp = httpx.post(f"{stack.ingress_url}/callback/fs?{query}", content=body, headers=headers, timeout=10)
    assert resp.status_code == 200

    def card() -> dict[str, Any] | None:
        return next(
            (
                m
                for m in stack.messages(bot="fs", reply_to=f"om_{msg_id}")
                if m.get("media") and not m.get("streaming")
            ),
            None,
        )

    answer = stack.wait_for(card, what="the answer with its picture")
    assert sent.sha256 in answer["content"]  # the echo model was given the user's picture
    assert [m["sha256"] for m in answer["media"]] == [hashlib.sha256(chart).hexdigest()]
    ai = settings.bot("ai")
    assert isinstance(ai, WeComAIBot)
    query, headers, body = sim_aibot.message_callback(
        ai, link, "u-media", secrets.token_hex(16), "", time.time(), stack.sim_url
    )
    first = httpx.post(f"{stack.ingress_url}/callback/ai?{query}", content=body, headers=headers, timeout=10)
    sid = sim_aibot.read_reply(ai, first.content)["stream"]["id"]

    def finished() -> list[Any]:
        q, h, b = sim_aibot.refresh_callback(ai, sid, "u-media", time.time())
        reply = httpx.post(f"{stack.ingress_url}/callback/ai?{q}", content=b, headers=h, timeout=10)
        stream = sim_aibot.read_reply(ai, reply.content)["stream"]
        return list(stream.get("msg_item") or []) if stream["finish"] else []

    [item] = stack.wait_for(finished, what="the AI bot's stream with its picture")
    assert item["image"]["md5"] == hashlib.md5(chart).hexdigest()  # noqa: S324 - WeCom's checksum
    assert violations(stack.nats) == []


def test_the_long_connection_answers_through_the_connector_user(stack: Stack) -> None:
    stack.wait_for(
        lambda: httpx.get(f"{stack.sim_url}/sim/aibot/connections").json().get(WS_BOT) == 1,
        what="the bot's socket",
    )
    text = f"secure socket {secrets.token_hex(3)}"
    httpx.post(
        f"{stack.sim_url}/sim/aibot/push", json={"bot_id": WS_BOT, "text": text, "user": "bob"}, timeout=5
    ).raise_for_status()
    stack.wait_for(
        lambda: [m for m in stack.messages(bot="ws") if m["content"] == text and m["finish"]],
        what="the answer on the socket",
    )
    assert violations(stack.nats) == []


def client_config(secure_nats: EmbeddedNats, pki: dict[str, str], **auth: Any) -> NatsConfig:
    return NatsConfig.model_validate({"url": secure_nats.url, "tls": {"ca_file": pki["ca"]}, "auth": auth})


async def test_anonymous_and_wrong_passwords_are_refused(
    stack: Stack, secure_nats: EmbeddedNats, pki: dict[str, str]
) -> None:
    for cfg in (
        client_config(secure_nats, pki),
        client_config(secure_nats, pki, user="imrelay-worker", password="wrong"),
    ):
        with pytest.raises(NatsRefusedError, match="Authorization Violation"):
            await connect(cfg, "test")
    no_ca = NatsConfig.model_validate({"url": secure_nats.url, "auth": {"token": "x"}})
    with pytest.raises(NatsRefusedError, match="TLS"):
        await connect(no_ca, "test")


async def test_the_ingress_cannot_read_tokens_and_the_worker_cannot_inject_messages(
    stack: Stack, secure_nats: EmbeddedNats, pki: dict[str, str]
) -> None:
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e))

    for service in ("ingress", "worker"):
        user = client_config(secure_nats, pki, user=f"imrelay-{service}", password=PASSWORDS[service])
        nc = await nats.connect(
            secure_nats.url, error_cb=on_error, max_reconnect_attempts=0, **connect_options(user)
        )
        try:
            js = nc.jetstream(timeout=1.5)
            if service == "ingress":
                with pytest.raises(Exception):  # noqa: B017 - a timeout or a permission error, both refusals
                    kv = await js.key_value(subjects.KV_TOKENS)
                    await kv.get("wecom_app.wwintegration0001.1000002")
            else:
                with pytest.raises(Exception):  # noqa: B017
                    await js.publish("imrelay.in.wecom_app.app", b"{}", stream=subjects.STREAM_IN)
            await asyncio.sleep(0.2)
        finally:
            await nc.close()
    assert any("permissions violation" in e.lower() for e in errors), errors
    refused = "\n".join(violations(secure_nats))  # what the platform tests check is absent
    assert (
        f'Subject "$JS.API.STREAM.INFO.KV_{subjects.KV_TOKENS}"' in refused and "imrelay-ingress" in refused
    )
    assert 'Subject "imrelay.in.wecom_app.app"' in refused and "imrelay-worker" in refused
    # the sender's and the worker's users do read tokens (the worker downloads users' media with them)
    for service in ("sender", "worker"):
        user = client_config(secure_nats, pki, user=f"imrelay-{service}", password=PASSWORDS[service])
        nc = await connect(user, "test")
        try:
            kv = await nc.jetstream(timeout=2).key_value(subjects.KV_TOKENS)
            with pytest.raises(KeyNotFoundError):
                await kv.get("no-such-token")
        finally:
            await nc.close()


def test_a_wrong_password_stops_the_service_with_the_reason(stack: Stack) -> None:
    base = stack.services["worker"]
    env = as_service(base.env, "worker", password="not-the-password")
    env["IMRELAY_ADMIN_PORT"] = str(free_port())
    svc = Service(
        "worker-badpw",
        base.argv,
        env,
        f"http://127.0.0.1:{env['IMRELAY_ADMIN_PORT']}/readyz",
        stack.root / "worker-badpw.log",
    )
    with pytest.raises(RuntimeError) as err:
        svc.start(timeout=20)
    assert "refused the connection" in str(err.value) and "Authorization Violation" in str(err.value)
    assert PASSWORDS["worker"] not in str(err.value) and "not-the-password" not in str(err.value)
    assert svc.proc is not None and svc.proc.wait(5) == 2
