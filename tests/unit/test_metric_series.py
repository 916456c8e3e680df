"""Metric series that exist from a service's start, and subjects folded into subscription patterns."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from imrelay import subjects
from imrelay.config import Settings
from imrelay.telemetry import start_series

KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
SETTINGS = Settings.model_validate(
    {
        "backends": {
            "default": {"kind": "echo"},
            "gpt": {"kind": "openai", "base_url": "http://llm/v1", "model": "gpt-x"},
        },
        "bots": [
            {
                "id": "hr",
                "platform": "wecom_app",
                "backend": "gpt",
                "credentials": {
                    "corp_id": "ww1",
                    "agent_id": "1",
                    "secret": "s",
                    "token": "t",
                    "encoding_aes_key": KEY,
                },
            },
            {
                "id": "grp",
                "platform": "wecom_group_robot",
                "credentials": {"token": "t", "encoding_aes_key": KEY},
            },
            {
                "id": "ws",
                "platform": "wecom_aibot",
                "mode": "long_connection",
                "credentials": {"token": "t", "encoding_aes_key": KEY, "bot_id": "aib1", "secret": "s"},
            },
        ],
    }
)


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_counters_a_service_can_increment_start_at_zero() -> None:
    start_series("sender", SETTINGS)
    assert value("imrelay_dlq_total", platform="wecom_app", bot="hr", stage="sender") == 0
    assert value("imrelay_deliveries_total", platform="wecom_group_robot", bot="grp", outcome="failed") == 0
    assert value("imrelay_token_refreshes_total", platform="wecom_app", bot="hr", outcome="error") == 0
    # a group robot fetches no token: no series that could never move
    assert (
        value("imrelay_token_refreshes_total", platform="wecom_group_robot", bot="grp", outcome="error")
        is None
    )
    start_series("worker", SETTINGS)
    assert value("imrelay_dlq_total", platform="wecom_app", bot="hr", stage="worker") == 0
    assert value("imrelay_llm_tokens_total", backend="gpt", model="gpt-x", type="output") == 0
    assert value("imrelay_llm_tokens_total", backend="default", model="default", type="output") is None
    start_series("ingress", SETTINGS)
    assert value("imrelay_callbacks_total", platform="wecom_app", bot="hr", outcome="rejected_signature") == 0
    assert value("imrelay_callbacks_total", platform="wecom_aibot", bot="ws", outcome="accepted") is None


def test_build_info_and_the_configured_bots() -> None:
    from imrelay import __version__

    start_series("ingress", SETTINGS)
    assert value("imrelay_build_info", version=__version__) == 1
    assert value("imrelay_bot_configured", platform="wecom_aibot", bot="ws", mode="long_connection") == 1
    assert value("imrelay_bot_configured", platform="wecom_app", bot="hr", mode="callback") == 1


@pytest.mark.parametrize(
    ("subject", "pattern"),
    [
        (subjects.inbound_subject("wecom_app", "hr"), "imrelay.in.>"),
        (subjects.outbound_subject("feishu", "b-2", 15), "imrelay.out.>"),
        (subjects.dlq_subject("sender"), "imrelay.dlq.>"),
        (subjects.connector_subject("wecom_aibot", "ws"), "imrelay.conn.>"),
        ("$KV.imrelay_tokens.wecom_app.hr", "$KV.imrelay_tokens.>"),
        ("$KV.someone_else.key", "$KV.>"),
        ("_INBOX.abc.def", "other"),
        ("imrelay.outer", "other"),
    ],
)
def test_subjects_fold_into_their_subscription_pattern(subject: str, pattern: str) -> None:
    assert subjects.pattern_of(subject) == pattern
