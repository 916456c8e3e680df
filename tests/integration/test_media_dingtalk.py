"""DingTalk media end to end, with real processes: a robot on HTTP callbacks answered by a vision model,
and one in Stream mode (through a connector) answered by Dify. A user's picture reaches both byte-exact
(fetched with its download code and the temporary URL it gives), a PDF reaches Dify, a voice message is
read as DingTalk's recognition, an image in an answer is uploaded and shown as an image message
byte-exact, and a picture above ``media.max_bytes`` gets a polite line instead of a download."""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from imrelay.config import parse_settings
from imrelay.natsserver import EmbeddedNats
from imrelay.platforms.spec import SimMedia
from imrelay_sim.client import build_request, upload_media

from ..media_files import pdf, png, sha
from .stack import Stack
from .test_end_to_end import user

pytestmark = pytest.mark.nats

MAX_BYTES = 64 * 1024
PDF = pdf("imrelay DingTalk test")


@pytest.fixture(scope="module")
def ding(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("dingmedia")
    s = Stack.create(root, nats_server)
    sim = s.sim_url
    s.use_media_models(MAX_BYTES)
    s.config["bots"] = [
        {
            "id": "dt-vision",
            "platform": "dingtalk",
            "backend": "vision",
            "api_base": sim,
            "auth_base": sim,
            "credentials": {"app_key": "dingmediavision", "app_secret": "dt-vision-secret"},
        },
        {
            "id": "dt-dify",
            "platform": "dingtalk",
            "mode": "long_connection",
            "backend": "dify",
            "api_base": sim,
            "auth_base": sim,
            "credentials": {"app_key": "dingmediadify", "app_secret": "dt-dify-secret"},
        },
    ]
    s.config["connector"] = {"heartbeat_seconds": 2, "ack_timeout_seconds": 3, "reconnect_max_seconds": 2}
    s.add_service("connector", ["imrelay_ingress.connector"])
    with s.running():
        s.wait_for(
            lambda: httpx.get(f"{sim}/sim/dingtalk/connections", timeout=5).json().get("dt-dify"),
            30,
            "the Stream connection",
        )
        yield s


def post(
    stack: Stack, bot_id: str, text: str, user: str, media: tuple[SimMedia, ...] = (), chat: str = ""
) -> str:
    bot = parse_settings(stack.config, {}).bot(bot_id)
    assert bot is not None
    msg_id = str(secrets.randbelow(2**40))
    _, headers, body = build_request(bot, text, user, msg_id, time.time(), stack.sim_url, chat, media)
    resp = httpx.post(f"{stack.ingress_url}/callback/{bot_id}", content=body, headers=headers, timeout=10)
    assert resp.status_code == 200, resp.text
    return msg_id


def push(
    stack: Stack, text: str, user: str, media: tuple[SimMedia, ...] = (), chat: str = ""
) -> httpx.Response:
    return httpx.post(
        f"{stack.sim_url}/sim/dingtalk/push",
        json={
            "bot_id": "dt-dify",
            "text": text,
            "user": user,
            "chat": chat,
            "media": [dataclasses.asdict(m) for m in media],
        },
        timeout=10,
    )


def answer(stack: Stack, bot: str, user: str, what: str) -> str:
    return stack.latest_text(what, lambda m: m.get("msgtype") != "image", bot=bot, chat=f"cid_{user}")


def test_a_picture_reaches_the_vision_model_byte_exact(ding: Stack) -> None:
    data = png(2, 2)
    pic = upload_media(ding.sim_url, data, name="photo.png", kind="image")
    u = user()
    post(ding, "dt-vision", "", u, (pic,))  # a picture alone: no text
    text = answer(ding, "dt-vision", u, "the vision model's answer")
    assert f"[image image/png sha256={sha(data)}]" in text
    # with text, as rich text (pictures and words in one message), in a group
    u2, group = user(), f"cidgroup{secrets.token_hex(3)}"
    post(ding, "dt-vision", "what is this?", u2, (pic,), chat=group)
    found = ding.wait_for(lambda: ding.messages(bot="dt-vision", chat=group), 30, "the group answer")
    assert "what is this?" in found[-1]["content"] and pic.sha256 in found[-1]["content"]


def test_a_picture_and_a_pdf_reach_dify_over_stream_mode(ding: Stack) -> None:
    data = png(3, 3)
    pic = upload_media(ding.sim_url, data, name="scan.png", kind="image")
    u = user()
    assert push(ding, "", u, (pic,)).status_code == 200
    text = answer(ding, "dt-dify", u, "Dify's answer to the picture")
    # a picture has no name on DingTalk: one is made from its kind and type
    assert f"[image image-1.png sha256={sha(data)}]" in text
    doc = upload_media(ding.sim_url, PDF, name="report.pdf", kind="file")
    u2 = user()
    assert push(ding, "", u2, (doc,)).status_code == 200
    text = answer(ding, "dt-dify", u2, "Dify's answer to the PDF")
    assert f"[document report.pdf sha256={hashlib.sha256(PDF).hexdigest()}]" in text
    uploads = [r for r in httpx.get(f"{ding.sim_url}/sim/llm", timeout=5).json() if r.get("_api") == "dify"]
    assert uploads  # Dify was asked, with the files uploaded to /files/upload first


def test_voice_files_and_video_are_not_simulated_in_groups(ding: Stack) -> None:
    doc = upload_media(ding.sim_url, PDF, name="g.pdf", kind="file")
    resp = push(ding, "", user(), (doc,), chat="cidgroupx")
    assert resp.status_code == 400 and "groups" in resp.json()["error"]
    with pytest.raises(SystemExit):
        post(ding, "dt-vision", "", user(), (doc,), chat="cidgroupy")


def test_a_voice_message_is_read_as_dingtalks_recognition(ding: Stack) -> None:
    voice = upload_media(ding.sim_url, b"#!AMR\n" + b"\x3c" * 64, name="v.amr", kind="voice")
    u = user()
    post(ding, "dt-vision", "what time is it", u, (voice,))
    assert "You said: what time is it" in answer(ding, "dt-vision", u, "the answer to the voice message")


def test_an_image_in_an_answer_is_shown_byte_exact(ding: Stack) -> None:
    data = png(5, 5)
    chart = upload_media(ding.sim_url, data, name="chart.png", kind="image")
    u = user()
    post(ding, "dt-vision", f"here: ![chart]({ding.sim_url}/sim/media/{chart.id})", u)
    images = ding.wait_for(
        lambda: [m for m in ding.messages(bot="dt-vision", chat=u) if m.get("msgtype") == "image"],
        30,
        "the answer's image",
    )
    assert len(images) == 1
    assert images[0]["media"]["sha256"] == sha(data)
    assert images[0]["media"]["origin"] == "upload" and images[0]["via"] == "api"
    # the text went first, without the link
    text = answer(ding, "dt-vision", u, "the answer's text")
    assert "/sim/media/" not in text


def test_a_picture_above_the_limit_gets_a_polite_line(ding: Stack) -> None:
    big = png(noise=MAX_BYTES + 1024)
    pic = upload_media(ding.sim_url, big, name="huge.png", kind="image")
    u = user()
    before = ding.metric("worker", "imrelay_media_total", {"platform": "dingtalk", "outcome": "oversize"})
    post(ding, "dt-vision", "", u, (pic,))
    text = answer(ding, "dt-vision", u, "the line about the large picture")
    assert "could not read your picture" in text and "larger than" in text
    assert (
        ding.metric("worker", "imrelay_media_total", {"platform": "dingtalk", "outcome": "oversize"})
        == before + 1
    )
    assert hashlib.sha256(big).hexdigest() not in text
