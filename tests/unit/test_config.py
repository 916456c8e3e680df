from __future__ import annotations

from pathlib import Path

import pytest

from imrelay.config import load_settings, parse_settings
from imrelay.errors import ConfigError
from imrelay.platforms.wecom_app.config import WeComAppBot

KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


def app_bot(**over: object) -> dict[str, object]:
    bot: dict[str, object] = {
        "id": "hr-helper",
        "platform": "wecom_app",
        "credentials": {
            "corp_id": "ww1",
            "agent_id": 1000002,
            "secret": "${WECOM_SECRET}",
            "token": "tok",
            "encoding_aes_key": KEY,
        },
    }
    bot.update(over)
    return bot


def test_defaults_need_nothing() -> None:
    s = parse_settings(None, {})
    assert s.nats.url == "nats://127.0.0.1:4222"
    assert s.backends["default"].kind.value == "echo"
    assert s.ingress.port == 8080 and s.admin.port == 9464


def test_env_interpolation_and_masked_secrets() -> None:
    s = parse_settings({"bots": [app_bot()]}, {"WECOM_SECRET": "s3cr3t-value"})
    bot = s.bots[0]
    assert isinstance(bot, WeComAppBot)
    assert bot.credentials.secret.get_secret_value() == "s3cr3t-value"
    assert bot.credentials.agent_id == "1000002"
    for text in (repr(s), str(s), s.model_dump_json()):
        assert "s3cr3t-value" not in text


def test_missing_env_var_names_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings({"bots": [app_bot()]}, {})
    assert err.value.path == "bots.0.credentials.secret"
    assert "WECOM_SECRET" in str(err.value)


def test_env_default() -> None:
    bot = app_bot(
        credentials={
            "corp_id": "ww1",
            "agent_id": "1",
            "secret": "${X:-fallback}",
            "token": "t",
            "encoding_aes_key": KEY,
        }
    )
    s = parse_settings({"bots": [bot]}, {})
    assert s.bots[0].credentials.secret.get_secret_value() == "fallback"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"bots": [app_bot(id="Bad_ID")]}, "bots.0.id"),
        ({"bots": [app_bot(platform="icq")]}, "bots.0.platform"),
        (
            {
                "bots": [
                    app_bot(
                        credentials={
                            "corp_id": "ww1",
                            "agent_id": "1",
                            "secret": "s",
                            "token": "t",
                            "encoding_aes_key": "short",
                        }
                    )
                ]
            },
            "bots.0.credentials.encoding_aes_key",
        ),
        ({"bots": [app_bot(backend="nope")]}, "bots.0.backend"),
        ({"bots": [app_bot(), app_bot()]}, "bots.1.id"),
        ({"nats": {"urll": "x"}}, "nats.urll"),
        ({"nats": {"url": "nats-0:4222"}}, "nats.url"),
        ({"nats": {"url": "nats://a:4222,,nats://b:4222"}}, "nats.url"),
        ({"backends": {"default": {"kind": "openai"}}}, "backends.default"),
        ({"ingress": {"port": 0}}, "ingress.port"),
        ({"connector": {"stream_keepalive_seconds": 400}}, "connector.stream_keepalive_seconds"),
    ],
)
def test_bad_keys_are_named(data: dict[str, object], path: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings(data, {"WECOM_SECRET": "x"})
    assert err.value.path == path


def test_env_overrides() -> None:
    s = parse_settings(
        {}, {"IMRELAY_NATS_URL": "nats://nats:4222", "IMRELAY_PORT": "9000", "IMRELAY_ADMIN_PORT": "9999"}
    )
    assert (s.nats.url, s.ingress.port, s.admin.port) == ("nats://nats:4222", 9000, 9999)


def test_a_cluster_is_several_urls() -> None:
    s = parse_settings({"nats": {"url": "nats://n0:4222, nats://n1:4222,tls://n2:4222"}}, {})
    assert s.nats.servers == ["nats://n0:4222", "nats://n1:4222", "tls://n2:4222"]
    assert parse_settings({}, {}).nats.servers == ["nats://127.0.0.1:4222"]


def test_load_settings_from_file(tmp_path: Path) -> None:
    f = tmp_path / "imrelay.yaml"
    f.write_text(
        "backends:\n  default:\n    kind: openai\n    base_url: http://x/v1\n"
        "    model: m\n    api_key: ${OPENAI_API_KEY}\n"
    )
    s = load_settings(None, {"IMRELAY_CONFIG": str(f), "OPENAI_API_KEY": "sk-abc"})
    assert s.backends["default"].api_key is not None
    assert "sk-abc" not in repr(s)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.yaml", {})
    bad = tmp_path / "bad.yaml"
    bad.write_text("nats: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad, {})
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(scalar, {})
