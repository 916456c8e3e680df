"""WeCom self-built app media end to end, with real processes: two apps, one answered by a vision model
and one by Dify. A user's picture reaches both byte-exact (fetched with ``media/get`` by its MediaId), a
PDF reaches Dify, a voice message is read as WeCom's recognition, an image in an answer is uploaded with
``media/upload`` and shown as an image message byte-exact, and a picture above ``media.max_bytes`` gets a
polite line after at most the limit plus one byte was fetched (``media/get`` is asked in ranges)."""

from __future__ import annotations

import secrets
import signal
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
from .stack import KEY, Stack
from .test_end_to_end import user

pytestmark = pytest.mark.nats

MAX_BYTES = 64 * 1024
CORP = "wwmediaintegration"
PDF = pdf("imrelay WeCom app test")


def _app(bot_id: str, backend: str, agent: str) -> dict[str, Any]:
    return {
        "id": bot_id,
        "platform": "wecom_app",
        "backend": backend,
        "api_base": "",
        "credentials": {
            "corp_id": CORP,
            "agent_id": agent,
            "secret": f"{bot_id}-secret",
            "token": f"{bot_id}token",
            "encoding_aes_key": KEY,
        },
    }


@pytest.fixture(scope="module")
def wa(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("wecomappmedia")
    s = Stack.create(root, nats_server)
    sim = s.sim_url
    s.use_media_models(MAX_BYTES, speech_to_text={"base_url": f"{sim}/v1", "api_key": "sk-stt"})
    bots = [_app("wa-vision", "vision", "1000011"), _app("wa-dify", "dify", "1000012")]
    for bot in bots:
        bot["api_base"] = sim
    s.config["bots"] = bots
    with s.running():
        yield s


def post(stack: Stack, bot_id: str, text: str, user: str, media: tuple[SimMedia, ...] = ()) -> None:
    bot = parse_settings(stack.config, {}).bot(bot_id)
    assert bot is not None
    msg_id = str(secrets.randbelow(2**40))
    query, headers, body = build_request(bot, text, user, msg_id, time.time(), stack.sim_url, "", media)
    resp = httpx.post(
        f"{stack.ingress_url}/callback/{bot_id}?{query}", content=body, headers=headers, timeout=10
    )
    assert resp.status_code == 200, resp.text


def answer(stack: Stack, bot: str, user: str, what: str) -> str:
    return stack.latest_text(what, lambda m: m.get("msgtype") in ("text", "markdown"), bot=bot, touser=user)


def test_a_picture_reaches_the_vision_model_byte_exact(wa: Stack) -> None:
    data = png(2, 2)
    pic = upload_media(wa.sim_url, data, name="photo.png", kind="image")
    u = user()
    post(wa, "wa-vision", "", u, (pic,))  # a picture alone: no text
    assert f"[image image/png sha256={sha(data)}]" in answer(wa, "wa-vision", u, "the vision model's answer")


def test_a_picture_and_a_pdf_reach_dify(wa: Stack) -> None:
    data = png(3, 3)
    pic = upload_media(wa.sim_url, data, name="scan.png", kind="image")
    u = user()
    post(wa, "wa-dify", "", u, (pic,))
    # the name WeCom's media/get gave (Content-Disposition)
    assert f"[image scan.png sha256={sha(data)}]" in answer(wa, "wa-dify", u, "Dify's answer to the picture")
    doc = upload_media(wa.sim_url, PDF, name="report.pdf", kind="file")
    u2 = user()
    post(wa, "wa-dify", "", u2, (doc,))
    text = answer(wa, "wa-dify", u2, "Dify's answer to the PDF")
    assert f"[document report.pdf sha256={sha(PDF)}]" in text
    uploads = [r for r in httpx.get(f"{wa.sim_url}/sim/llm", timeout=5).json() if r.get("_api") == "dify"]
    assert uploads


def test_a_voice_message_is_read_as_wecoms_recognition(wa: Stack) -> None:
    voice = upload_media(wa.sim_url, b"#!AMR\n" + b"\x3c" * 64, name="v.amr", kind="voice")
    before = wa.sim_stats().get("media_get", 0)
    u = user()
    post(wa, "wa-vision", "what time is it", u, (voice,))
    assert "You said: what time is it" in answer(wa, "wa-vision", u, "the answer to the voice message")
    assert wa.sim_stats().get("media_get", 0) == before  # a transcribed voice message is not downloaded


def test_a_voice_message_without_recognition_goes_to_speech_to_text(wa: Stack) -> None:
    audio = b"#!AMR\n" + secrets.token_bytes(256)
    voice = upload_media(wa.sim_url, audio, name="v.amr", kind="voice")
    u = user()
    post(wa, "wa-vision", "", u, (voice,))  # no Recognition: downloaded, then transcribed
    assert f"You said: voice sha256={sha(audio)}" in answer(wa, "wa-vision", u, "the transcribed voice")


def test_an_image_in_an_answer_is_shown_byte_exact(wa: Stack) -> None:
    data = png(5, 5)
    chart = upload_media(wa.sim_url, data, name="chart.png", kind="image")
    u = user()
    post(wa, "wa-vision", f"here: ![chart]({wa.sim_url}/sim/media/{chart.id})", u)
    images = wa.wait_for(
        lambda: [m for m in wa.messages(bot="wa-vision", touser=u) if m.get("msgtype") == "image"],
        30,
        "the answer's image",
    )
    assert len(images) == 1
    assert images[0]["media"]["sha256"] == sha(data) and images[0]["media"]["origin"] == "upload"
    text = answer(wa, "wa-vision", u, "the answer's text")
    assert "/sim/media/" not in text
    texts = [m for m in wa.messages(bot="wa-vision", touser=u) if m.get("msgtype") != "image"]
    assert texts[0]["seq"] < images[0]["seq"]  # the text went first


def test_a_picture_above_the_limit_gets_a_polite_line(wa: Stack) -> None:
    big = png(noise=1024 * 1024)
    pic = upload_media(wa.sim_url, big, name="huge.png", kind="image")
    u = user()
    labels = {"platform": "wecom_app", "outcome": "oversize"}
    before = wa.metric("worker", "imrelay_media_total", labels)
    sent_before = wa.sim_stats().get("wecom_media_bytes", 0)
    post(wa, "wa-vision", "", u, (pic,))
    text = answer(wa, "wa-vision", u, "the line about the large picture")
    assert "could not read your picture" in text and "larger than" in text
    assert wa.metric("worker", "imrelay_media_total", labels) == before + 1
    # asked in ranges: never more than the limit plus one byte
    assert wa.sim_stats().get("wecom_media_bytes", 0) - sent_before <= MAX_BYTES + 1
    assert sha(big) not in text


def test_a_message_redelivered_after_a_worker_is_killed_reuses_its_stored_picture(wa: Stack) -> None:
    """The worker stored the picture, then died before answering: the message comes back (after the ack
    wait) to a new worker, which answers from the stored bytes without asking WeCom again."""
    labels = {"direction": "in", "platform": "wecom_app", "kind": "image"}
    data = png(7, 7)
    pic = upload_media(wa.sim_url, data, name="kept.png", kind="image")
    httpx.post(f"{wa.sim_url}/sim/llm", json={"stall_after": 0}, timeout=5)  # the model never answers
    try:
        before = wa.sim_stats().get("media_get", 0)
        stored = wa.metric("worker", "imrelay_media_total", {**labels, "outcome": "ok"})
        u = user()
        post(wa, "wa-vision", "", u, (pic,))
        wa.wait_for(
            lambda: wa.metric("worker", "imrelay_media_total", {**labels, "outcome": "ok"}) > stored,
            what="the picture stored",
        )
        downloads = wa.sim_stats().get("media_get", 0) - before
        assert downloads >= 1
        wa.services["worker"].stop(signal.SIGKILL)
    finally:
        httpx.post(f"{wa.sim_url}/sim/llm", json={"stall_after": None}, timeout=5)
    wa.services["worker"].start()
    assert f"[image image/png sha256={sha(data)}]" in answer(wa, "wa-vision", u, "the answer after the kill")
    assert wa.sim_stats().get("media_get", 0) - before == downloads  # not downloaded again
    assert wa.metric("worker", "imrelay_media_total", {**labels, "outcome": "reused"}) == 1
