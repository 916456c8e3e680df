"""WeCom group robot media end to end, with real processes: two robots, one answered by a vision model
and one by Dify. A user's picture (an ``image`` message, or a ``mixed`` one with text) reaches both
byte-exact (fetched by its URL through the address guard), an image in an answer is shown inline
byte-exact (base64 + md5) and a larger one as an uploaded file, and a picture above ``media.max_bytes``
gets a polite line and is not downloaded in full."""

from __future__ import annotations

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

from ..media_files import png, sha
from .stack import KEY, Stack
from .test_end_to_end import user

pytestmark = pytest.mark.nats

MB = 1024 * 1024
MAX_BYTES = 3 * MB  # room for an answer's image above the robot's 2 MB inline limit


@pytest.fixture(scope="module")
def wr(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("wecomrobotmedia")
    s = Stack.create(root, nats_server)
    sim = s.sim_url
    s.use_media_models(MAX_BYTES)
    s.config["bots"] = [
        {
            "id": bot_id,
            "platform": "wecom_group_robot",
            "backend": backend,
            "api_base": sim,
            "credentials": {"token": f"{bot_id}token", "encoding_aes_key": KEY[::-1]},
        }
        for bot_id, backend in (("wr-vision", "vision"), ("wr-dify", "dify"))
    ]
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


def replies(stack: Stack, bot: str, user: str) -> list[dict[str, Any]]:
    """The text answers to ``user`` (a group answer @-mentions the asker)."""
    return [m for m in stack.messages(bot=bot) if m.get("mentioned_list") == [user]]


def answer(stack: Stack, bot: str, user: str, what: str) -> str:
    return stack.latest_text(what, lambda m: m.get("mentioned_list") == [user], bot=bot)


def test_a_picture_reaches_the_vision_model_byte_exact(wr: Stack) -> None:
    data = png(2, 2)
    pic = upload_media(wr.sim_url, data, name="photo.png", kind="image")
    u = user()
    post(wr, "wr-vision", "", u, (pic,))  # an image message: no text
    assert f"[image image/png sha256={sha(data)}]" in answer(wr, "wr-vision", u, "the vision model's answer")


def test_a_mixed_message_reaches_dify_with_its_text(wr: Stack) -> None:
    data = png(3, 3)
    pic = upload_media(wr.sim_url, data, name="scan.png", kind="image")
    u = user()
    post(wr, "wr-dify", "what is this?", u, (pic,))
    text = answer(wr, "wr-dify", u, "Dify's answer to the mixed message")
    assert "what is this?" in text and f"sha256={sha(data)}]" in text and "[image " in text
    uploads = [r for r in httpx.get(f"{wr.sim_url}/sim/llm", timeout=5).json() if r.get("_api") == "dify"]
    assert uploads


def test_files_are_not_simulated_for_robots(wr: Stack) -> None:
    doc = upload_media(wr.sim_url, b"%PDF-1.4\n%%EOF\n", name="r.pdf", kind="file")
    with pytest.raises(SystemExit):
        post(wr, "wr-dify", "", user(), (doc,))


def test_images_in_an_answer_are_shown_byte_exact(wr: Stack) -> None:
    small, large = png(5, 5), png(noise=2 * MB + 1024)
    ids = [
        upload_media(wr.sim_url, d, name=n, kind="image").id for d, n in ((small, "a.png"), (large, "b.png"))
    ]
    u = user()
    links = " ".join(f"![chart]({wr.sim_url}/sim/media/{i})" for i in ids)
    post(wr, "wr-vision", f"here: {links}", u)
    wanted = {sha(small), sha(large)}

    def both() -> list[dict[str, Any]]:
        found = [m for m in wr.messages(bot="wr-vision") if m.get("media", {}).get("sha256") in wanted]
        return found if len(found) == 2 else []

    shown = wr.wait_for(both, 30, "the answer's two images")
    by_sha = {m["media"]["sha256"]: m for m in shown}
    assert by_sha[sha(small)]["msgtype"] == "image"  # inline, base64 + md5
    assert by_sha[sha(large)]["msgtype"] == "file"  # above 2 MB: uploaded, sent as a file
    text = answer(wr, "wr-vision", u, "the answer's text")
    assert "/sim/media/" not in text


def test_a_picture_above_the_limit_gets_a_polite_line(wr: Stack) -> None:
    # far more than the sockets between the two ends hold: what the simulator wrote before the reader
    # left stays well below half of it however much the kernel buffered
    big = png(noise=12 * MAX_BYTES)
    pic = upload_media(wr.sim_url, big, name="huge.png", kind="image")
    u = user()
    labels = {"platform": "wecom_group_robot", "outcome": "oversize"}
    before = wr.metric("worker", "imrelay_media_total", labels)
    sent_before = wr.sim_stats().get("wecom_media_bytes", 0)
    post(wr, "wr-vision", "", u, (pic,))
    text = answer(wr, "wr-vision", u, "the line about the large picture")
    assert "could not read your picture" in text and "larger than" in text
    assert wr.metric("worker", "imrelay_media_total", labels) == before + 1
    assert wr.sim_stats().get("wecom_media_bytes", 0) - sent_before < len(big) // 2  # refused on its length
