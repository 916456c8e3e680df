"""NATS client settings: one way to authenticate, a service's own credentials from its environment, TLS,
and the permission sets generated into docs/."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from faststream.nats.security import NatsToken, NatsUserPassword

from imrelay.config import parse_settings
from imrelay.errors import ConfigError
from imrelay.jetstream import connect_options, security
from imrelay.natsadmin import server_config
from imrelay.permissions import PERMISSIONS, SERVICES, authorization_block, markdown

DOCS = Path(__file__).parents[2] / "docs" / "nats-permissions.md"


def test_no_auth_and_no_tls_by_default() -> None:
    cfg = parse_settings({}, {}).nats
    assert cfg.auth.method == "none" and security(cfg) is None and connect_options(cfg) == {}


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({"user": "u"}, "user and password go together"),
        ({"user": "u", "password": "p", "token": "t"}, "not user/password and token"),
        ({"token": "t", "creds_file": "/x.creds"}, "not token and creds_file"),
    ],
)
def test_one_way_to_authenticate(auth: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings({"nats": {"auth": auth}}, {})
    assert err.value.path == "nats.auth" and message in str(err.value)


def test_a_service_environment_replaces_the_file_credentials() -> None:
    data = {"nats": {"auth": {"token": "shared-token"}}}
    env = {"IMRELAY_NATS_USER": "imrelay-worker", "IMRELAY_NATS_PASSWORD": "pw-from-env"}
    cfg = parse_settings(data, env).nats
    assert cfg.auth.user == "imrelay-worker" and cfg.auth.token is None
    sec = security(cfg)
    assert isinstance(sec, NatsUserPassword) and sec.password == "pw-from-env"
    assert "pw-from-env" not in repr(cfg) and "pw-from-env" not in str(cfg)
    token = parse_settings(data, {}).nats
    assert isinstance(security(token), NatsToken)


def test_tls_urls_and_settings_make_a_verifying_context(tmp_path: Path) -> None:
    cfg = parse_settings({"nats": {"url": "tls://nats.example:4222"}}, {}).nats
    opts = connect_options(cfg)
    ctx = opts["tls"]
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname
    with pytest.raises(ConfigError, match="cert_file and key_file go together"):
        parse_settings({"nats": {"tls": {"cert_file": "/c.pem"}}}, {})
    named = parse_settings({"nats": {"url": "tls://10.0.0.1:4222", "tls": {"server_name": "nats"}}}, {})
    assert connect_options(named.nats)["tls_hostname"] == "nats"


def test_permissions_page_is_generated_from_the_definition() -> None:
    assert DOCS.read_text(encoding="utf-8") == markdown(), "run: imrelay nats permissions --markdown"


def test_least_privilege_sets() -> None:
    def can_publish(svc: str, subject: str) -> bool:
        return any(
            p == subject or (p.endswith(".>") and subject.startswith(p[:-1])) or p == ">"
            for p in PERMISSIONS[svc].publish
        )

    assert can_publish("ingress", "imrelay.in.wecom_app.hr")
    assert not can_publish("ingress", "$KV.imrelay_memory.conv.x")
    assert not can_publish("ingress", "$JS.API.STREAM.INFO.KV_imrelay_tokens")
    # the worker downloads users' media with the platforms' tokens; it records the messages it answered,
    # never a reply's delivery records
    assert can_publish("worker", "$JS.API.DIRECT.GET.KV_imrelay_tokens.$KV.imrelay_tokens.x")
    assert not can_publish("worker", "$KV.imrelay_deliveries.reply.x.0")
    assert can_publish("worker", "$KV.imrelay_deliveries.inbound.x.answer")
    assert can_publish("worker", "$O.imrelay_media.C.abc") and can_publish("sender", "$O.imrelay_media.C.abc")
    assert not can_publish("ingress", "$O.imrelay_media.C.abc")  # it reads answers' images, writes none
    assert can_publish("ingress", "$JS.API.STREAM.INFO.OBJ_imrelay_media")
    assert not can_publish("ingress", "$JS.API.STREAM.CREATE.OBJ_imrelay_media")
    assert not can_publish("worker", "imrelay.in.wecom_app.hr")
    assert can_publish("sender", "$JS.API.DIRECT.GET.KV_imrelay_tokens.$KV.imrelay_tokens.x")
    assert can_publish("connector", "$KV.imrelay_leases.wecom_aibot.bot")
    assert not can_publish("sender", "$KV.imrelay_leases.wecom_aibot.bot")
    for svc in ("ingress", "connector", "worker", "sender"):
        assert not any("STREAM.UPDATE" in p or "STREAM.DELETE" in p for p in PERMISSIONS[svc].publish)


def test_server_config_needs_the_passwords() -> None:
    with pytest.raises(ConfigError, match="IMRELAY_NATS_PASSWORD_"):
        server_config({})
    block = server_config({"IMRELAY_NATS_PASSWORD_WORKER": "w-pass"})
    assert '"user": "imrelay-worker"' in block and '"w-pass"' in block and "imrelay-sender" not in block
    assert authorization_block({s: "x" for s in SERVICES}).count('"user"') == len(SERVICES)
