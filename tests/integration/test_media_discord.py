"""Discord media end to end, with real processes: an application answering ``/ask`` on its interactions
endpoint with a vision model, and a Gateway bot (through a connector) answering mentions and DMs with
Dify. A user's picture reaches both byte-exact (fetched from its signed CDN URL), a PDF reaches Dify, an
image in an answer is sent as an attachment and recorded byte-exact (a follow-up of the interaction, a
reply in the channel), and a picture above ``media.max_bytes`` gets a polite line without being
downloaded."""

from __future__ import annotations

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
from imrelay.platforms.discord.config import DiscordBot
from imrelay.platforms.discord.sim import public_key_for
from imrelay.platforms.discord.sim_cli import push_over_gateway
from imrelay.platforms.spec import SimMedia, SimMessage, SimSend
from imrelay_sim.client import build_request, upload_media

from ..media_files import pdf, png, sha
from .stack import Stack

pytestmark = pytest.mark.nats

MAX_BYTES = 64 * 1024
SEED = secrets.token_hex(32)
CURSOR = " ▌"
PDF = pdf("imrelay Discord test")


@pytest.fixture(scope="module")
def dc(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("discordmedia")
    env = pytest.MonkeyPatch()  # the seed is this module's own: later tests must not see it
    env.setenv("DISCORD_SIM_SEED", SEED)
    s = Stack.create(
        root, nats_server, extra_env={"DISCORD_SIM_SEED": SEED, "DISCORD_SIM_HEARTBEAT_MS": "2000"}
    )
    sim = s.sim_url
    s.use_media_models(MAX_BYTES)
    s.config["bots"] = [
        {
            "id": "dc-vision",
            "platform": "discord",
            "backend": "vision",
            "api_base": sim,
            "credentials": {
                "application_id": "700000000000000001",
                "public_key": public_key_for(SEED),
                "bot_token": "dc-vision-token",
            },
        },
        {
            "id": "dc-dify",
            "platform": "discord",
            "mode": "long_connection",
            "backend": "dify",
            "api_base": sim,
            "credentials": {
                "application_id": "700000000000000002",
                "public_key": public_key_for(SEED),
                "bot_token": "dc-dify-token",
            },
        },
    ]
    s.config["connector"] = {"reconnect_max_seconds": 2, "healthy_seconds": 1}
    s.add_service("connector", ["imrelay_ingress.connector"])
    try:
        with s.running():
            s.wait_for(
                lambda: httpx.get(f"{sim}/sim/discord/sessions", timeout=5).json()["dc-dify"]["on_socket"],
                30,
                "the Gateway session",
            )
            yield s
    finally:
        env.undo()


def token_of(msg_id: str) -> str:
    return "aW50ZXJhY3Rpb24" + hashlib.sha256(msg_id.encode()).hexdigest()[:40]


def ask(stack: Stack, text: str, user: str, media: tuple[SimMedia, ...] = ()) -> str:
    """``/ask`` on the vision bot's interactions endpoint; the interaction's token."""
    bot = parse_settings(stack.config, {}).bot("dc-vision")
    assert bot is not None
    msg_id = str(secrets.randbelow(2**40))
    _, headers, body = build_request(bot, text, user, msg_id, time.time(), stack.sim_url, "c-ask", media)
    resp = httpx.post(f"{stack.ingress_url}/callback/dc-vision", content=body, headers=headers, timeout=10)
    assert resp.status_code == 200 and resp.json() == {"type": 5}, resp.text
    return token_of(msg_id)


def answered(stack: Stack, token: str, what: str) -> str:
    """The interaction's answer, once written whole."""
    found: list[dict[str, Any]] = stack.wait_for(
        lambda: [
            m
            for m in stack.messages(token=token)
            if m.get("kind") == "original" and not str(m["content"]).endswith(CURSOR)
        ],
        30,
        what,
    )
    content: str = found[-1]["content"]
    return content


def push(stack: Stack, text: str, media: tuple[SimMedia, ...] = (), channel: str = "c-gw") -> str:
    """A message to the Gateway bot (a mention in a channel; a DM without ``channel``); its id."""
    resp = httpx.post(
        f"{stack.sim_url}/sim/discord/push",
        json={
            "bot": "dc-dify",
            "text": text,
            "user": f"u{secrets.token_hex(3)}",
            "channel": channel,
            "media": [dataclasses.asdict(m) for m in media],
        },
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    msg_id: str = resp.json()["msg_id"]
    return msg_id


def replied(stack: Stack, msg_id: str, what: str) -> str:
    found: list[dict[str, Any]] = stack.wait_for(
        lambda: [
            m
            for m in stack.messages(bot="dc-dify", reply_to=msg_id)
            if not m.get("msgtype") and not str(m["content"]).endswith(CURSOR)
        ],
        30,
        what,
    )
    content: str = found[0]["content"]
    return content


def test_a_picture_reaches_the_vision_model_byte_exact(dc: Stack) -> None:
    data = png(2, 2)
    pic = upload_media(dc.sim_url, data, name="photo.png", kind="image")
    token = ask(dc, "", "alice", (pic,))  # a picture alone: no text
    text = answered(dc, token, "the vision model's answer")
    assert f"[image image/png sha256={sha(data)}]" in text
    token = ask(dc, "what is this?", "bob", (pic,))
    text = answered(dc, token, "the answer to words and a picture")
    assert "what is this?" in text and pic.sha256 in text


def test_a_picture_and_a_pdf_reach_dify_over_the_gateway(dc: Stack) -> None:
    data = png(3, 3)
    pic = upload_media(dc.sim_url, data, name="scan.png", kind="image")
    text = replied(dc, push(dc, "", (pic,)), "Dify's answer to the picture")
    assert f"[image scan.png sha256={sha(data)}]" in text
    doc = upload_media(dc.sim_url, PDF, name="report.pdf", kind="file")
    text = replied(dc, push(dc, "read this", (doc,), channel=""), "Dify's answer to the PDF (a DM)")
    assert f"[document report.pdf sha256={hashlib.sha256(PDF).hexdigest()}]" in text
    uploads = [r for r in httpx.get(f"{dc.sim_url}/sim/llm", timeout=5).json() if r.get("_api") == "dify"]
    assert uploads  # Dify was asked, with the files uploaded to /files/upload first


def test_an_image_in_an_answer_is_sent_byte_exact(dc: Stack) -> None:
    data = png(5, 5)
    chart = upload_media(dc.sim_url, data, name="chart.png", kind="image")
    link = f"![chart]({dc.sim_url}/sim/media/{chart.id})"
    # /ask: the answer's text in the original response, the image a follow-up
    token = ask(dc, f"here: {link}", "carol")
    [image] = dc.wait_for(
        lambda: [m for m in dc.messages(token=token) if m.get("msgtype") == "image"], 30, "the follow-up"
    )
    assert image["kind"] == "followup" and image["media"]["origin"] == "upload"
    assert image["media"]["sha256"] == sha(data)
    assert image["media"]["name"].endswith(".png")  # Discord shows it as an image by its name
    assert "/sim/media/" not in answered(dc, token, "the answer's text")
    # the Gateway: a reply with the image after the text reply
    msg_id = push(dc, f"and here: {link}")
    [reply] = dc.wait_for(
        lambda: [m for m in dc.messages(bot="dc-dify", reply_to=msg_id) if m.get("msgtype") == "image"],
        30,
        "the image reply",
    )
    assert reply["media"]["sha256"] == sha(data)
    assert "/sim/media/" not in replied(dc, msg_id, "the text reply")


def test_a_picture_above_the_limit_gets_a_polite_line(dc: Stack) -> None:
    big = png(noise=MAX_BYTES + 1024)
    pic = upload_media(dc.sim_url, big, name="huge.png", kind="image")
    labels = {"platform": "discord", "outcome": "oversize"}
    before = dc.metric("worker", "imrelay_media_total", labels)
    downloads = dc.sim_stats().get("discord_cdn_download", 0)
    text = answered(dc, ask(dc, "", "dave", (pic,)), "the line about the large picture")
    assert "could not read your picture" in text and "larger than" in text
    assert dc.metric("worker", "imrelay_media_total", labels) == before + 1
    assert dc.sim_stats().get("discord_cdn_download", 0) == downloads  # its declared size was enough


def test_imrelay_sim_send_with_an_image_over_the_gateway(
    dc: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    data = png(6, 6)
    pic = upload_media(dc.sim_url, data, name="sent.png", kind="image")
    bot = parse_settings(dc.config, {}).bot("dc-dify")
    assert isinstance(bot, DiscordBot)
    msg_id = str(secrets.randbelow(2**60))
    message = SimMessage("look", "erin", msg_id, time.time(), dc.sim_url, "c-cli", (pic,))
    assert push_over_gateway(bot, SimSend(message, dc.ingress_url, 30)) == 0
    assert f"[image sent.png sha256={sha(data)}]" in capsys.readouterr().out


def test_a_voice_message_without_speech_to_text_is_told(dc: Stack) -> None:
    voice = upload_media(dc.sim_url, b"OggS" + b"\0" * 60, name="voice-message.ogg", kind="voice")
    text = replied(dc, push(dc, "", (voice,), channel=""), "the line about the voice message")
    assert "could not read your voice message" in text
