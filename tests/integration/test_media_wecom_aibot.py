"""WeCom AI bot media end to end, with real processes (simulator, ingress, worker, sender, connector): a
user's picture reaches a vision model and Dify byte-exact (the answers name its sha256), a PDF reaches
Dify, in callback mode and over the long connection; an answer's image reaches the user byte-exact (in the
finished stream's ``msg_item`` in callback mode, uploaded in chunks and recorded by the simulated gateway
over the long connection); a picture over ``media.max_bytes`` gets the polite line and is not downloaded in
full."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
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
from imrelay.platforms.wecom_aibot import sim as sim_aibot
from imrelay.platforms.wecom_aibot.config import WeComAIBot
from imrelay_sim.client import upload_media

from ..media_files import pdf, png, sha
from .stack import KEY, Stack

pytestmark = pytest.mark.nats

BOT_ID, SECRET = "aibMediaWs01", "media-ws-secret"
MAX_BYTES = 1024 * 1024


@pytest.fixture(scope="module")
def media_stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("aibot-media")
    s = Stack.create(root, nats_server)
    s.use_media_models(MAX_BYTES)
    s.config["bots"] = [
        {
            "id": "cbv",
            "platform": "wecom_aibot",
            "backend": "vision",
            "credentials": {"token": "cbvtoken", "encoding_aes_key": KEY},
        },
        {
            "id": "cbd",
            "platform": "wecom_aibot",
            "backend": "dify",
            "credentials": {"token": "cbdtoken", "encoding_aes_key": KEY[::-1]},
        },
        {
            "id": "wsv",
            "platform": "wecom_aibot",
            "backend": "vision",
            "mode": "long_connection",
            "ws_url": s.sim_url.replace("http://", "ws://") + "/ws/aibot",
            "credentials": {"token": "t", "encoding_aes_key": KEY, "bot_id": BOT_ID, "secret": SECRET},
        },
    ]
    s.add_service("connector", ["imrelay_ingress.connector"])
    with s.running():
        yield s


def bot(stack: Stack, bot_id: str) -> WeComAIBot:
    b = parse_settings(stack.config, {}).bot(bot_id)
    assert isinstance(b, WeComAIBot)
    return b


def ask(stack: Stack, bot_id: str, text: str, media: tuple[SimMedia, ...] = ()) -> dict[str, Any]:
    """Send a callback-mode message and poll its stream as WeCom does; the finished stream."""
    b, user, msgid = bot(stack, bot_id), f"u{secrets.token_hex(3)}", secrets.token_hex(16)
    query, headers, body = sim_aibot.message_callback(
        b, text, user, msgid, "", time.time(), stack.sim_url, media
    )
    url = f"{stack.ingress_url}/callback/{bot_id}"
    resp = httpx.post(f"{url}?{query}", content=body, headers=headers, timeout=10)
    assert resp.status_code == 200, resp.text
    sid = sim_aibot.read_reply(b, resp.content)["stream"]["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        query, headers, body = sim_aibot.refresh_callback(b, sid, user, time.time())
        resp = httpx.post(f"{url}?{query}", content=body, headers=headers, timeout=30)
        stream: dict[str, Any] = sim_aibot.read_reply(b, resp.content)["stream"]
        if stream["finish"]:
            return stream
        time.sleep(0.3)
    raise AssertionError(f"the stream did not finish; logs in {stack.root}")


def push(stack: Stack, text: str, media: tuple[SimMedia, ...] = ()) -> str:
    """A long-connection message; its req_id."""
    body = {
        "bot_id": BOT_ID,
        "text": text,
        "user": f"u{secrets.token_hex(3)}",
        "media": [dataclasses.asdict(m) for m in media],
    }
    resp = stack.wait_for(
        lambda: (
            (r := httpx.post(f"{stack.sim_url}/sim/aibot/push", json=body, timeout=10)).status_code == 200
            and r
        ),
        timeout=30,
        what="the connector's socket",
    )
    req_id: str = resp.json()["req_id"]
    return req_id


def finished(stack: Stack, req_id: str) -> list[dict[str, Any]]:
    return [m for m in stack.messages(bot="wsv") if m.get("req_id") == req_id and m.get("finish")]


def test_a_picture_reaches_the_vision_model_and_dify_byte_exact(media_stack: Stack) -> None:
    picture = png(24, 24)
    sent = upload_media(media_stack.sim_url, picture, name="photo.png", kind="image")
    assert sent.sha256 == hashlib.sha256(picture).hexdigest()
    vision = ask(media_stack, "cbv", "what is in this picture", (sent,))
    assert f"[image image/png sha256={sent.sha256}]" in vision["content"]
    assert vision["content"].startswith("You said: what is in this picture")
    dify = ask(media_stack, "cbd", "", (sent,))  # a picture alone; Dify names what /files/upload took
    assert f"sha256={sent.sha256}" in dify["content"] and "[image " in dify["content"]


def test_a_pdf_reaches_dify(media_stack: Stack) -> None:
    document = pdf("quarterly numbers")
    sent = upload_media(media_stack.sim_url, document, name="report.pdf", kind="file")
    answer = ask(media_stack, "cbd", "", (sent,))
    assert f"sha256={hashlib.sha256(document).hexdigest()}" in answer["content"]
    assert "[document " in answer["content"]


def test_an_answers_image_is_shown_with_the_finished_stream(media_stack: Stack) -> None:
    chart = png(40, 30)
    item = upload_media(media_stack.sim_url, chart, name="chart.png", kind="image")
    stream = ask(media_stack, "cbv", f"here: ![chart]({media_stack.sim_url}/sim/media/{item.id})")
    (shown,) = stream["msg_item"]
    data = base64.b64decode(shown["image"]["base64"])
    assert sha(data) == item.sha256
    assert shown["image"]["md5"] == item.md5


def test_long_connection_pictures_in_and_out(media_stack: Stack) -> None:
    picture = png(20, 20)
    sent = upload_media(media_stack.sim_url, picture, name="in.png", kind="image")
    rid = push(media_stack, "describe it", (sent,))
    (answer,) = media_stack.wait_for(lambda: finished(media_stack, rid), timeout=60, what="the answer")
    assert f"sha256={sent.sha256}" in answer["content"]

    chart = png(50, 20, noise=700 * 1024)  # two chunks of the upload
    item = upload_media(media_stack.sim_url, chart, name="chart.png", kind="image")
    rid = push(media_stack, f"see ![chart]({media_stack.sim_url}/sim/media/{item.id})")
    image = media_stack.wait_for(
        lambda: [m for m in finished(media_stack, rid) if m.get("msgtype") == "image"],
        timeout=60,
        what="the answer's image",
    )[0]
    assert image["media"]["sha256"] == item.sha256 and image["media"]["origin"] == "upload"
    text = [m for m in finished(media_stack, rid) if m.get("msgtype") != "image"]
    assert text and text[0]["content"].startswith("You said: see")


def test_a_picture_over_the_limit_is_refused_politely_and_not_downloaded(media_stack: Stack) -> None:
    big = png(noise=24 * MAX_BYTES)  # far more than the sockets between the two ends hold
    sent = upload_media(media_stack.sim_url, big, name="huge.png", kind="image")
    before = media_stack.sim_stats().get("aibot_media_served", 0)
    answer = ask(media_stack, "cbv", "look at this", (sent,))
    assert "(I could not read your picture: it is larger than 1 MB.)" in answer["content"]
    served = media_stack.sim_stats().get("aibot_media_served", 0) - before
    assert served < len(big)  # refused on its declared length, not read to the end
