"""Log lines about a platform code or a refused callback point at the section of docs/troubleshooting.md
that explains it, and every such section exists."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import httpx
import pytest

from imrelay import natslog
from imrelay.config import parse_settings
from imrelay.hints import callback_hint, platform_hint
from imrelay.platforms.wecom.crypto import WeComCrypto
from imrelay.platforms.wecom.sim import app_text_xml, encrypted_post
from imrelay_ingress.app import create_app

from ..helpers import FakePublisher

DOC = Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md"
KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
CORP, AGENT = "wwtest", "1000002"


def anchors() -> set[str]:
    return set(re.findall(r'<a id="([a-z0-9-]+)"></a>', DOC.read_text(encoding="utf-8")))


def test_every_linked_section_exists() -> None:
    from imrelay import platforms

    linked = {a for s in platforms.SPECS for a in s.hints.values()} | {
        "signature-failures",
        "replay-window",
        natslog.TROUBLESHOOTING.split("#")[1],
    }
    assert linked <= anchors()
    text = DOC.read_text(encoding="utf-8")
    for topic in ("60020", "45009", "40014", "99991663", "replay_window_seconds", "NTP", "trusted IPs"):
        assert topic in text


@pytest.mark.parametrize(
    ("platform", "code", "anchor"),
    [
        ("wecom_app", 60020, "wecom-60020"),
        ("wecom_app", "45009", "wecom-45009"),
        ("wecom_group_robot", 45009, "wecom-45009"),
        ("wecom_app", 42001, "wecom-40014"),
        ("feishu", 99991663, "feishu-99991663"),
        ("lark", "99991663", "feishu-99991663"),
    ],
)
def test_platform_codes_link_their_section(platform: str, code: object, anchor: str) -> None:
    assert platform_hint(platform, code) == f" (see docs/troubleshooting.md#{anchor})"


def test_unexplained_codes_get_no_link() -> None:
    assert platform_hint("wecom_app", 81013) == ""
    assert callback_hint("rejected_malformed") == ""


@pytest.mark.parametrize(("age", "anchor"), [(0, "signature-failures"), (3600, "replay-window")])
async def test_a_refused_callback_logs_where_to_look(
    age: int, anchor: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = parse_settings(
        {
            "bots": [
                {
                    "id": "app",
                    "platform": "wecom_app",
                    "credentials": {
                        "corp_id": CORP,
                        "agent_id": AGENT,
                        "secret": "s",
                        "token": "tok",
                        "encoding_aes_key": KEY,
                    },
                }
            ]
        },
        {},
    )
    # a signature made with another token, or a valid one made an hour ago
    crypto = WeComCrypto("other-token" if not age else "tok", KEY, CORP)
    then = int(time.time()) - age
    cb = encrypted_post(
        crypto, app_text_xml(CORP, AGENT, "alice", "hi", "7", then), then, to_user=CORP, agent_id=AGENT
    )
    app = create_app(settings, FakePublisher())
    caplog.set_level(logging.WARNING)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://i") as c:
        resp = await c.post(f"/callback/app?{cb.query}", content=cb.body)
    assert resp.status_code == 401
    [line] = [r.getMessage() for r in caplog.records if "callback rejected" in r.getMessage()]
    assert line.endswith(f"(see docs/troubleshooting.md#{anchor})")
