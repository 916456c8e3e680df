"""QQ media end to end, with real processes (simulator, ingress, worker, sender): two webhook bots, one
answered by a vision model and one by Dify. A user's picture (fetched from the URL in the message's
``attachments``, through the address guard) reaches both byte-exact; a PDF reaches Dify; a voice message is
read as QQ's recognition; an image in an answer is uploaded as base64 and shown as a media reply
byte-exact; an attachment declared above ``media.max_bytes`` gets a polite line and is not downloaded."""

from __future__ import annotations

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
PDF = pdf("imrelay QQ test")


@pytest.fixture(scope="module")
def qq(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("qqmedia")
    s = Stack.create(root, nats_server)
    sim = s.sim_url
    s.use_media_models(MAX_BYTES)
    s.config["bots"] = [
        {
            "id": "qq-vision",
            "platform": "qq",
            "backend": "vision",
            "api_base": sim,
            "auth_base": sim,
            "credentials": {"app_id": "102030601", "app_secret": "qqmediavisionsecret0001"},
        },
        {
            "id": "qq-dify",
            "platform": "qq",
            "backend": "dify",
            "api_base": sim,
            "auth_base": sim,
            "credentials": {"app_id": "102030602", "app_secret": "qqmediadifysecret00002"},
        },
    ]
    with s.running():
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


def answer(stack: Stack, bot: str, chat: str, what: str) -> str:
    return stack.latest_text(what, lambda m: m.get("msgtype") is None, bot=bot, chat=chat)


def test_a_picture_reaches_the_vision_model_byte_exact(qq: Stack) -> None:
    data = png(2, 2)
    pic = upload_media(qq.sim_url, data, name="photo.png", kind="image")
    u = user()
    post(qq, "qq-vision", "", u, (pic,))  # a picture alone: no text
    text = answer(qq, "qq-vision", u, "the vision model's answer")
    assert f"[image image/png sha256={sha(data)}]" in text
    # with text, in a group
    group = f"grp{secrets.token_hex(4)}"
    post(qq, "qq-vision", "what is this?", user(), (pic,), chat=group)
    text = answer(qq, "qq-vision", group, "the group answer")
    assert "what is this?" in text and pic.sha256 in text


def test_a_picture_and_a_pdf_reach_dify(qq: Stack) -> None:
    data = png(3, 3)
    pic = upload_media(qq.sim_url, data, name="scan.png", kind="image")
    u = user()
    post(qq, "qq-dify", "", u, (pic,))
    text = answer(qq, "qq-dify", u, "Dify's answer to the picture")
    assert f"[image scan.png sha256={sha(data)}]" in text
    doc = upload_media(qq.sim_url, PDF, name="report.pdf", kind="file")
    u2 = user()
    post(qq, "qq-dify", "summarise", u2, (doc,))
    text = answer(qq, "qq-dify", u2, "Dify's answer to the PDF")
    assert f"[document report.pdf sha256={hashlib.sha256(PDF).hexdigest()}]" in text
    uploads = [r for r in httpx.get(f"{qq.sim_url}/sim/llm", timeout=5).json() if r.get("_api") == "dify"]
    assert uploads  # Dify was asked, with the files uploaded to /files/upload first


def test_a_voice_message_is_read_as_qqs_recognition(qq: Stack) -> None:
    voice = upload_media(qq.sim_url, b"\x02#!SILK_V3" + b"\x3c" * 64, name="v.silk", kind="voice")
    u = user()
    post(qq, "qq-vision", "what time is it", u, (voice,))
    assert "You said: what time is it" in answer(qq, "qq-vision", u, "the answer to the voice message")


def test_an_image_in_an_answer_is_shown_byte_exact(qq: Stack) -> None:
    data = png(5, 5)
    chart = upload_media(qq.sim_url, data, name="chart.png", kind="image")
    u = user()
    msg_id = post(qq, "qq-vision", f"here: ![chart]({qq.sim_url}/sim/media/{chart.id})", u)
    images = qq.wait_for(
        lambda: [m for m in qq.messages(bot="qq-vision", chat=u) if m.get("msgtype") == "image"],
        30,
        "the answer's image",
    )
    assert len(images) == 1
    assert images[0]["media"]["sha256"] == sha(data)
    assert images[0]["media"]["origin"] == "upload"
    # a reply to the question, after the text: the next msg_seq
    text_replies = [m for m in qq.messages(bot="qq-vision", chat=u) if m.get("msgtype") is None]
    assert images[0]["reply_to"] == f"ROBOT1.0_{msg_id}"
    assert images[0]["msg_seq"] == max(m["msg_seq"] for m in text_replies) + 1
    assert "/sim/media/" not in text_replies[-1]["content"]


def test_a_picture_above_the_limit_gets_a_polite_line_and_is_not_downloaded(qq: Stack) -> None:
    big = png(noise=MAX_BYTES + 1024)
    pic = upload_media(qq.sim_url, big, name="huge.png", kind="image")
    u = user()
    labels = {"platform": "qq", "outcome": "oversize"}
    before = qq.metric("worker", "imrelay_media_total", labels)
    bytes_in = qq.metric("worker", "imrelay_media_bytes_total", {"platform": "qq", "direction": "in"})
    post(qq, "qq-vision", "", u, (pic,))
    text = answer(qq, "qq-vision", u, "the line about the large picture")
    assert "could not read your picture" in text and "larger than" in text
    assert qq.metric("worker", "imrelay_media_total", labels) == before + 1
    assert qq.metric("worker", "imrelay_media_bytes_total", {"platform": "qq", "direction": "in"}) == bytes_in
    assert hashlib.sha256(big).hexdigest() not in text
