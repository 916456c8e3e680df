"""Feishu / Lark media end to end (real processes: simulator, ingress, connector, worker, sender): a picture
a user sends reaches a vision model and Dify byte-exact, through the message resource API; a PDF reaches
Dify; a picture in an answer is uploaded and shown in the streamed card byte-exact; an attachment above
``media.max_bytes`` gets the polite line and is not downloaded in full; the long connection carries media
messages too."""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from imrelay.config import parse_settings
from imrelay.natsserver import EmbeddedNats
from imrelay.platforms.spec import SimMedia
from imrelay_sim.client import build_request, upload_media

from ..media_files import pdf, png, sha
from .stack import Stack

pytestmark = pytest.mark.nats

MAX_BYTES = 2 * 1024 * 1024
WS_APP = "cli_mediaws01"


@pytest.fixture(scope="module")
def stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("feishu-media")
    s = Stack.create(root, nats_server)
    sim = s.sim_url
    s.use_media_models(MAX_BYTES)
    s.config["bots"] = [
        {
            "id": "fs-vision",
            "platform": "feishu",
            "backend": "vision",
            "api_base": sim,
            "credentials": {
                "app_id": "cli_media01",
                "app_secret": "fs-media-secret",
                "encrypt_key": "fs-media-encrypt-key",
                "verification_token": "fs-media-token",
            },
        },
        {
            "id": "lk-dify",
            "platform": "lark",
            "backend": "dify",
            "api_base": sim,
            "credentials": {
                "app_id": "cli_media02",
                "app_secret": "lk-media-secret",
                "encrypt_key": "lk-media-encrypt-key",
                "verification_token": "lk-media-token",
            },
        },
        {
            "id": "fsws-vision",
            "platform": "feishu",
            "mode": "long_connection",
            "backend": "vision",
            "api_base": sim,
            "credentials": {"app_id": WS_APP, "app_secret": "fsws-media-secret"},
        },
    ]
    s.config["connector"] = {"reconnect_max_seconds": 2, "healthy_seconds": 1}
    s.add_service("connector", ["imrelay_ingress.connector"])
    with s.running():
        yield s


def send(stack: Stack, bot_id: str, text: str, *media: SimMedia, chat: str = "") -> str:
    """A user's message (with media) as the platform's signed, encrypted callback; its message id."""
    bot = parse_settings(stack.config, {}).bot(bot_id)
    assert bot is not None
    msg_id = secrets.token_hex(6)
    query, headers, body = build_request(
        bot, text, "ou_alice", msg_id, time.time(), stack.sim_url, chat, tuple(media)
    )
    resp = httpx.post(f"{stack.ingress_url}/callback/{bot_id}", content=body, headers=headers, timeout=10)
    assert resp.status_code == 200, resp.text
    return f"om_{msg_id}"


def answer(stack: Stack, bot_id: str, message_id: str, *, has: str, timeout: float = 30) -> dict[str, Any]:
    """The finished answer to ``message_id`` that shows ``has``."""

    def done() -> dict[str, Any] | None:
        for m in stack.messages(bot=bot_id, reply_to=message_id):
            if has in str(m.get("content")) and not m.get("streaming"):
                return m
        return None

    found: dict[str, Any] = stack.wait_for(done, timeout, f"an answer to {message_id} with {has!r}")
    return found


def resource_bytes(stack: Stack) -> int:
    return int(stack.sim_stats().get("feishu_resource_bytes", 0))


def test_a_picture_reaches_the_vision_model_byte_exact(stack: Stack) -> None:
    photo = png(24, 16)
    media = upload_media(stack.sim_url, photo, name="photo.png", kind="image")
    message_id = send(stack, "fs-vision", "", media)
    got = answer(stack, "fs-vision", message_id, has=f"sha256={sha(photo)}")
    assert "[image image/png" in got["content"]


def test_a_picture_with_text_in_a_group_post(stack: Stack) -> None:
    photo = png(8, 30)
    media = upload_media(stack.sim_url, photo, name="group.png", kind="image")
    message_id = send(stack, "fs-vision", "what is in it?", media, chat="oc_media_group")
    got = answer(stack, "fs-vision", message_id, has=f"sha256={sha(photo)}")
    assert "what is in it?" in got["content"]


def test_a_picture_and_a_pdf_reach_dify_through_its_upload(stack: Stack) -> None:
    photo = png(12, 12)
    image = upload_media(stack.sim_url, photo, name="scan.png", kind="image")
    message_id = send(stack, "lk-dify", "", image)
    assert "sha256=" in answer(stack, "lk-dify", message_id, has=sha(photo))["content"]
    document = pdf("quarterly report")
    file = upload_media(stack.sim_url, document, name="report.pdf", kind="file")
    message_id = send(stack, "lk-dify", "", file)
    got = answer(stack, "lk-dify", message_id, has=sha(document))
    assert "report.pdf" in got["content"]


def test_an_answer_picture_is_shown_in_the_card_byte_exact(stack: Stack) -> None:
    chart = png(40, 20)
    stored = upload_media(stack.sim_url, chart, name="chart.png", kind="image")
    url = f"{stack.sim_url}/sim/media/{stored.id}"
    message_id = send(stack, "fs-vision", f"here: ![chart]({url})")

    def with_picture() -> dict[str, Any] | None:
        for m in stack.messages(bot="fs-vision", reply_to=message_id):
            if m.get("media") and not m.get("streaming"):
                return m
        return None

    card = stack.wait_for(with_picture, 30, "the card with the picture")
    assert card["msgtype"] == "interactive"
    assert [p["sha256"] for p in card["media"]] == [sha(chart)]
    assert card["media"][0]["origin"] == "upload"
    assert url not in card["content"]  # the link became the picture


def test_an_attachment_above_the_limit_gets_a_line_and_is_not_downloaded(stack: Stack) -> None:
    big = png(noise=24 * 1024 * 1024)
    media = upload_media(stack.sim_url, big, name="huge.png", kind="file")
    before = resource_bytes(stack)
    message_id = send(stack, "lk-dify", "", media)
    got = answer(stack, "lk-dify", message_id, has="could not read your file")
    assert "larger than 2 MB" in got["content"]
    assert resource_bytes(stack) - before < len(big) // 2  # refused on its declared length


def test_the_long_connection_carries_pictures(stack: Stack) -> None:
    photo = png(10, 10)
    media = upload_media(stack.sim_url, photo, name="ws.png", kind="image")
    message_id = f"om_{secrets.token_hex(6)}"

    def pushed() -> bool:
        resp = httpx.post(
            f"{stack.sim_url}/sim/feishu/push",
            json={
                "app_id": WS_APP,
                "text": "",
                "user": "ou_bob",
                "message_id": message_id,
                "media": [dataclasses.asdict(media)],
            },
            timeout=5,
        )
        return resp.status_code == 200

    stack.wait_for(pushed, 30, "the connector's socket")
    answer(stack, "fsws-vision", message_id, has=f"sha256={sha(photo)}")
