"""Every command answers --version and --help without starting anything; the configuration reference is
generated from the models and up to date; what ``imrelay status`` shows of tokens, leases and errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from imrelay import __version__
from imrelay import config as c
from imrelay.configdoc import config_reference, config_schema, iter_keys
from imrelay.natslog import redact_url as _redact_url
from imrelay.ops import explain_platform_error, format_status, lease_summary, token_key, token_summary

ROOT = Path(__file__).resolve().parents[2]

COMMANDS = {  # command -> module run by ``python -m``
    "imrelay": "imrelay.cli",
    "imrelay-ingress": "imrelay_ingress",
    "imrelay-worker": "imrelay_worker",
    "imrelay-sender": "imrelay_sender",
    "imrelay-connector": "imrelay_ingress.connector",
    "imrelay-sim": "imrelay_sim",
}


def run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    # No config file and no NATS: a service that started instead of answering would fail or hang.
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "IMRELAY_CONFIG": "/nonexistent.yaml"},
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_version(command: str) -> None:
    r = run(COMMANDS[command], "--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{command} {__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command: str) -> None:
    r = run(COMMANDS[command], "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: {command} ")
    if command not in ("imrelay", "imrelay-sim"):
        assert "IMRELAY_CONFIG" in r.stdout and "IMRELAY_LOG_FORMAT" in r.stdout


def test_output_to_a_closed_pipe_ends_quietly() -> None:
    # `imrelay config schema | head`: the reader has gone before the schema is written
    read, write = os.pipe()
    os.close(read)
    try:
        r = subprocess.run(
            [sys.executable, "-m", "imrelay.cli", "config", "schema"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)
    assert r.returncode == 1
    assert r.stderr == ""


def test_a_service_refuses_an_unknown_argument() -> None:
    r = run("imrelay_sender", "--port", "1")
    assert r.returncode == 2
    assert "unrecognized arguments: --port 1" in r.stderr


def test_a_service_takes_its_config_from_the_command_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("nats: {url: 'http://nope'}\n", encoding="utf-8")
    r = run("imrelay_worker", "--config", str(bad))
    assert r.returncode == 2
    assert "configuration error: nats.url" in r.stderr


def test_the_configuration_reference_is_up_to_date() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == config_reference(), (
        "docs/configuration.md is out of date: uv run imrelay config reference > docs/configuration.md"
    )


def _models() -> list[tuple[type[BaseModel], str]]:
    from imrelay import platforms

    bots: list[tuple[type[BaseModel], str]] = [(s.bot_model, "bots[]") for s in platforms.SPECS]
    return [(c.Settings, ""), (c.BackendConfig, "backends.<name>"), *bots]


@pytest.mark.parametrize(("model", "prefix"), _models())
def test_every_key_has_a_type_default_and_meaning(model: type[BaseModel], prefix: str) -> None:
    rows = iter_keys(model, prefix)
    assert rows
    undocumented = [key for key, _, _, meaning in rows if not meaning.strip()]
    assert not undocumented, f"config keys without a meaning (add one in imrelay.configdoc): {undocumented}"


def test_the_reference_names_every_leaf_of_the_schema() -> None:
    ref = config_reference()
    for key in (
        "nats.url",
        "sender.rate_limit_margin_seconds",
        "backends.<name>.api_key",
        "bots[].replay_window_seconds",
        "bots[].credentials.encoding_aes_key",
        "bots[].allow_unsigned_events",
        "bots[].ws_url",
        "connector.lease_ttl_seconds",
    ):
        assert f"| `{key}` |" in ref


def test_the_schema_describes_the_config_file() -> None:
    schema = config_schema()
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert set(schema["properties"]) == set(c.Settings.model_fields)
    assert json.loads(json.dumps(schema)) == schema
    bot = schema["$defs"]["WeComAppCredentials"]
    assert bot["additionalProperties"] is False
    assert bot["properties"]["secret"]["writeOnly"] is True


def test_token_summary_never_shows_the_token() -> None:
    value = json.dumps({"token": "tok-secret", "expires_at": 1_000_100.0, "fetched_at": 1.0}).encode()
    summary = token_summary(value, now=1_000_000.0)
    assert summary == {"state": "valid", "expires_in_seconds": 100}
    assert "tok-secret" not in json.dumps(summary)
    assert token_summary(value, now=1_000_200.0)["state"] == "expired"
    assert token_summary(None, now=0)["state"] == "none"
    assert token_summary(b"garbage", now=0)["state"] == "unreadable"


def test_lease_summary() -> None:
    value = json.dumps({"owner": "host-1:42", "expires": 110.0}).encode()
    assert lease_summary(value, 100.0) == {"owner": "host-1:42", "state": "held", "expires_in_seconds": 10.0}
    assert lease_summary(value, 120.0)["state"] == "expired"
    assert lease_summary(None, 0)["state"] == "free"


def test_token_keys_are_the_senders() -> None:
    from imrelay.platforms.feishu.delivery import FeishuDelivery
    from imrelay.platforms.wecom_app.delivery import WeComAppDelivery

    settings = c.parse_settings(
        {
            "bots": [
                {
                    "id": "a",
                    "platform": "wecom_app",
                    "credentials": {
                        "corp_id": "ww1",
                        "agent_id": 7,
                        "secret": "s",
                        "token": "t",
                        "encoding_aes_key": "k" * 43,
                    },
                },
                {
                    "id": "f",
                    "platform": "lark",
                    "credentials": {
                        "app_id": "cli_1",
                        "app_secret": "s",
                        "encrypt_key": "e",
                        "verification_token": "v",
                    },
                },
            ]
        },
        {},
    )
    app, lark = settings.bots
    assert (
        token_key(app)
        == WeComAppDelivery(
            bot_id="a",
            corp_id="ww1",
            agent_id="7",
            secret="s",
            api_base="",
            client=None,  # type: ignore[arg-type]
            tokens=None,  # type: ignore[arg-type]
            timeout=1,
        ).token_key
    )
    assert token_key(lark) == FeishuDelivery.token_key.fget(  # type: ignore[attr-defined]
        type("D", (), {"platform": "lark", "app_id": "cli_1"})()
    )


def test_platform_errors_are_explained_with_a_troubleshooting_link() -> None:
    text = explain_platform_error("wecom_app", "60020", "not allow to access from your ip")
    assert "trusted IPs" in text and text.endswith("(see docs/troubleshooting.md#wecom-60020)")
    assert "wrong app secret" in explain_platform_error("lark", "10014", "app secret invalid")
    assert explain_platform_error("qq", "11", "odd").startswith("qq error 11: odd")


def test_format_status() -> None:
    text = format_status(
        {
            "streams": [
                {
                    "name": "IMRELAY_IN",
                    "present": True,
                    "messages": 3,
                    "bytes": 10,
                    "first_seq": 1,
                    "last_seq": 3,
                    "replicas": 1,
                },
                {"name": "IMRELAY_OUT", "present": False},
            ],
            "consumers": [
                {
                    "stream": "IMRELAY_IN",
                    "name": "llm-worker",
                    "pending": 2,
                    "ack_pending": 1,
                    "redelivered": 0,
                    "waiting": 1,
                }
            ],
            "bots": [
                {
                    "id": "a",
                    "platform": "wecom_app",
                    "mode": "callback",
                    "token": {"state": "valid", "expires_in_seconds": 5400},
                },
                {
                    "id": "b",
                    "platform": "wecom_aibot",
                    "mode": "long_connection",
                    "token": {"state": "not used", "expires_in_seconds": None},
                    "lease": {"owner": "pod-1", "state": "held", "expires_in_seconds": 8},
                },
            ],
            "dead_letters": {"sender": 2},
        }
    )
    assert "IMRELAY_OUT  missing" in text
    assert "llm-worker  2" in text
    assert "valid     1.5h" in text
    assert "pod-1 (held)" in text
    assert text.endswith("DEAD LETTERS\nsender: 2")


def test_nats_passwords_are_not_logged() -> None:
    assert _redact_url("nats://imrelay:s3cret@nats:4222") == "nats://imrelay:***@nats:4222"
    assert _redact_url("nats://tok3n@nats:4222") == "nats://***@nats:4222"
    assert _redact_url("nats://nats:4222") == "nats://nats:4222"


def test_the_readme_media_table_is_up_to_date() -> None:
    from imrelay.configdoc import media_table

    readme = (ROOT / "README.md").read_text()
    assert media_table() in readme, (
        "paste the output of `imrelay config media` into README.md's media section"
    )
