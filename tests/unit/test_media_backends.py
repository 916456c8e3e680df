"""Each backend given a user's media, against the simulator's models (which name the sha256 of each piece
they were given): OpenAI-compatible vision as data URLs, Dify through /files/upload, FastGPT as content
parts, echo; and what each backend says it takes."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import httpx
import pytest

from imrelay.config import BackendConfig
from imrelay.errors import BackendError
from imrelay.media import MediaKind, MediaRef
from imrelay_sim.server import create_app
from imrelay_worker.backends import Backend, ChatMessage, ChatRequest, InputMedia, build_backend
from imrelay_worker.backends.openai import request_body

from ..media_files import pdf, png

SIM = "http://sim.test"


def media(data: bytes, kind: MediaKind, name: str, mime: str) -> InputMedia:
    ref = MediaRef(
        kind=kind,
        key=f"in/x/{name}",
        name=name,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        mime=mime,
    )
    return InputMedia(ref, data)


IMAGE = media(png(8, 8), MediaKind.IMAGE, "photo.png", "image/png")
PDF = media(pdf(), MediaKind.FILE, "report.pdf", "application/pdf")


def request(*items: InputMedia, text: str = "what is this?") -> ChatRequest:
    return ChatRequest(
        messages=[ChatMessage("system", "be brief"), ChatMessage("user", text)],
        user="u-1",
        conversation="c-1",
        media=list(items),
    )


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app()), base_url=SIM) as c:
        yield c


async def answer(backend: Backend, req: ChatRequest) -> str:
    return "".join([p async for p in backend.stream(req) if isinstance(p, str)])


def backend(kind: str, client: httpx.AsyncClient, **cfg: object) -> Backend:
    base = {"dify": f"{SIM}/v1", "fastgpt": f"{SIM}/api", "openai": f"{SIM}/v1"}.get(kind)
    conf = BackendConfig.model_validate(
        {"kind": kind, "base_url": base, "api_key": "sk-test", "model": "m", **cfg}
    )
    return build_backend(kind, conf, client)


async def test_a_vision_model_gets_the_image_byte_exact(client: httpx.AsyncClient) -> None:
    vision = backend("openai", client, vision=True)
    assert vision.accepts(MediaKind.IMAGE) and not vision.accepts(MediaKind.FILE)
    text = await answer(vision, request(IMAGE))
    assert text == f"You said: what is this? [image image/png sha256={IMAGE.ref.sha256}]"


def test_a_model_without_vision_is_sent_text_only() -> None:
    conf = BackendConfig.model_validate({"kind": "openai", "base_url": SIM, "model": "m"})
    body = request_body(conf, request(IMAGE))
    assert body["messages"][-1] == {"role": "user", "content": "what is this?"}
    assert not build_backend("t", conf, httpx.AsyncClient()).accepts(MediaKind.IMAGE)
    vision = BackendConfig.model_validate({"kind": "openai", "base_url": SIM, "model": "m", "vision": True})
    parts = request_body(vision, request(IMAGE))["messages"][-1]["content"]
    assert parts[0] == {"type": "text", "text": "what is this?"}
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,iVBORw0KGgo")


async def test_dify_uploads_each_file_for_the_same_user(client: httpx.AsyncClient) -> None:
    dify = backend("dify", client)
    assert all(dify.accepts(k) for k in MediaKind)
    text = await answer(dify, request(IMAGE, PDF))
    assert text == (
        f"You said: what is this? [image photo.png sha256={IMAGE.ref.sha256}]"
        f" [document report.pdf sha256={PDF.ref.sha256}]"
    )


async def test_dify_refuses_a_file_too_large_for_it(client: httpx.AsyncClient) -> None:
    big = media(png(noise=16 * 1024 * 1024), MediaKind.IMAGE, "big.png", "image/png")
    with pytest.raises(BackendError, match="file_too_large"):
        await answer(backend("dify", client), request(big))


async def test_fastgpt_gets_images_and_files_as_content_parts(client: httpx.AsyncClient) -> None:
    fastgpt = backend("fastgpt", client)
    assert fastgpt.accepts(MediaKind.FILE) and not fastgpt.accepts(MediaKind.VOICE)
    text = await answer(fastgpt, request(IMAGE, PDF))
    assert f"[image image/png sha256={IMAGE.ref.sha256}]" in text
    assert f"[file report.pdf sha256={PDF.ref.sha256}]" in text


async def test_echo_names_what_it_was_given() -> None:
    echo = build_backend("echo", BackendConfig(), httpx.AsyncClient())
    text = await answer(echo, request(IMAGE))
    assert text.endswith(f"[image photo.png image/png {IMAGE.ref.size} bytes sha256={IMAGE.ref.sha256}]")


def test_dify_answer_images_become_links_on_the_dify_server() -> None:
    from imrelay_worker.backends.dify import file_link

    assert file_link({"type": "image", "url": "/files/tools/a.png?sign=s"}, "https://dify.corp/v1") == (
        "\n\n![image](https://dify.corp/files/tools/a.png?sign=s)\n\n"
    )
    assert file_link({"type": "document", "url": "https://x/a.pdf"}, "https://dify.corp/v1") is None
    assert file_link({"type": "image", "url": "javascript:1"}, "https://dify.corp/v1") is None


async def test_voice_without_a_platform_transcript_goes_to_the_speech_to_text_endpoint(
    client: httpx.AsyncClient,
) -> None:
    from imrelay.events import Chat, ChatType, InboundMessage, Sender
    from imrelay.sections import MediaConfig
    from imrelay_worker.media import MediaStep

    voice = media(b"#!AMR\n" + bytes(range(200)), MediaKind.VOICE, "voice-1.amr", "audio/amr")
    msg = InboundMessage(
        id="m",
        platform="qq",
        bot_id="b",
        platform_message_id="k",
        chat=Chat(id="c", type=ChatType.DIRECT),
        sender=Sender(id="u"),
    )
    off = MediaStep(MediaConfig(), None, {}, client, client)  # type: ignore[arg-type]
    assert await off.transcribe(msg, voice) is None  # not configured: the user is told instead
    cfg = MediaConfig.model_validate(
        {"speech_to_text": {"base_url": f"{SIM}/v1", "api_key": "sk-stt", "model": "whisper-1"}}
    )
    step = MediaStep(cfg, None, {}, client, client)  # type: ignore[arg-type]
    assert await step.transcribe(msg, voice) == f"voice sha256={voice.ref.sha256}"
