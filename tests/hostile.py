"""A bot of every platform, its signed callbacks as the platform sends them (through the simulator's
builders), and the ingress app in-process around a fake publisher: shared by the hostile-input tests."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from imrelay.config import BotConfig, Settings, parse_settings
from imrelay.platforms.discord import sim as discord
from imrelay.platforms.discord.config import DiscordBot
from imrelay_ingress.app import create_app
from imrelay_sim.client import build_request

from .helpers import FakePublisher, FakeReplayGuard, FakeStreamStore

SIM = "http://127.0.0.1:8090"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"

BOTS: list[dict[str, Any]] = [
    {
        "id": "app",
        "platform": "wecom_app",
        "credentials": {
            "corp_id": "wwcorp",
            "agent_id": "1000002",
            "secret": "s",
            "token": "apptoken",
            "encoding_aes_key": AES_KEY,
        },
    },
    {
        "id": "robot",
        "platform": "wecom_group_robot",
        "api_base": SIM,
        "credentials": {"token": "robottoken", "encoding_aes_key": AES_KEY},
    },
    {
        "id": "aibot",
        "platform": "wecom_aibot",
        "credentials": {"token": "aibottoken", "encoding_aes_key": AES_KEY},
    },
    {
        "id": "fs",
        "platform": "feishu",
        "credentials": {
            "app_id": "cli_fs",
            "app_secret": "s",
            "encrypt_key": "fs-encrypt-key",
            "verification_token": "fs-token",
        },
    },
    {
        "id": "lk",
        "platform": "lark",
        "credentials": {
            "app_id": "cli_lk",
            "app_secret": "s",
            "encrypt_key": "lk-encrypt-key",
            "verification_token": "lk-token",
        },
    },
    {
        "id": "dt",
        "platform": "dingtalk",
        "api_base": SIM,
        "credentials": {"app_key": "dingapp", "app_secret": "dt-secret"},
    },
    {"id": "qq", "platform": "qq", "credentials": {"app_id": "1020304", "app_secret": "qqsecret0123456789"}},
    {
        "id": "dc",
        "platform": "discord",
        "credentials": {
            "application_id": "998877",
            "public_key": discord.public_key_for(discord.DEMO_SEED),
            "bot_token": "unused",
        },
    },
]
BOT_IDS = [b["id"] for b in BOTS]


def settings(**overrides: Any) -> Settings:
    bots = [{**b, **overrides.get(b["id"], {})} for b in BOTS]
    return parse_settings({"bots": bots}, {})


def bot(bot_id: str, s: Settings | None = None) -> BotConfig:
    found = (s or settings()).bot(bot_id)
    assert found is not None
    return found


@dataclass
class Request:
    bot_id: str
    query: str
    headers: dict[str, str]
    body: bytes
    method: str = "POST"

    def replace(self, **changes: Any) -> Request:
        return Request(**{**self.__dict__, **changes})


def signed(bot_id: str, text: str, msg_id: str, now: float, s: Settings | None = None) -> Request:
    """A text message to ``bot_id`` exactly as its platform sends it, signed at ``now``."""
    b = bot(bot_id, s)
    if isinstance(b, DiscordBot):  # signed with the demo seed, whatever DISCORD_SIM_SEED says
        headers, body = discord.callback(
            b, text, "alice", "dm-alice", msg_id, f"token-{msg_id}", now, discord.DEMO_SEED
        )
        return Request(bot_id, "", headers, body)
    query, headers, body = build_request(b, text, "alice", msg_id, now, SIM)
    return Request(bot_id, query, headers, body)


@dataclass
class Ingress:
    """The ingress app with fakes for JetStream, the AI-bot streams and the replay record."""

    s: Settings = field(default_factory=settings)
    now: float = 0.0
    publisher: FakePublisher = field(default_factory=FakePublisher)
    replay: FakeReplayGuard = field(default_factory=FakeReplayGuard)

    def __post_init__(self) -> None:
        self.app = create_app(
            self.s, self.publisher, clock=lambda: self.now, streams=FakeStreamStore(), replay=self.replay
        )

    async def send(self, req: Request) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(self.app), base_url="http://i") as c:
            url = f"/callback/{req.bot_id}" + (f"?{req.query}" if req.query else "")
            return await c.request(req.method, url, content=req.body, headers=req.headers)


def _wecom_crypto(bot_id: str) -> Any:
    from imrelay.platforms.wecom.crypto import crypto_for

    b = bot(bot_id)
    return crypto_for(b.credentials)  # type: ignore[arg-type]


def plaintext_of(req: Request) -> bytes:
    """What the platform signed and, where it encrypts, encrypted: the payload the adapter parses."""
    from urllib.parse import parse_qs

    from imrelay.platforms.feishu import crypto as feishu_crypto
    from imrelay.platforms.wecom.callbacks import parse_xml

    b = bot(req.bot_id)
    if b.platform in ("wecom_app", "wecom_group_robot"):
        return bytes(_wecom_crypto(req.bot_id).decrypt(parse_xml(req.body)["Encrypt"]))
    if b.platform == "wecom_aibot":
        assert parse_qs(req.query)
        return bytes(_wecom_crypto(req.bot_id).decrypt(json.loads(req.body)["encrypt"]))
    if b.platform in ("feishu", "lark"):
        key = b.credentials.encrypt_key.get_secret_value()  # type: ignore[attr-defined]
        return feishu_crypto.decrypt(key, json.loads(req.body)["encrypt"])
    return req.body


def sign_plaintext(bot_id: str, plain: bytes, now: float) -> Request:
    """``plain`` sent as the platform would send it: encrypted where it encrypts, signed at ``now``. This
    is what someone holding the bot's keys can send: the parsers behind the signature must cope with it."""
    from urllib.parse import urlencode

    from imrelay import ed25519
    from imrelay.platforms.dingtalk import crypto as dingtalk_crypto
    from imrelay.platforms.feishu import crypto as feishu_crypto
    from imrelay.platforms.qq.keys import qq_seed

    b = bot(bot_id)
    ts, nonce, p = str(int(now)), "4242", b.platform
    if p in ("wecom_app", "wecom_group_robot", "wecom_aibot"):
        crypto = _wecom_crypto(bot_id)
        enc = crypto.encrypt(plain)
        query = urlencode({"msg_signature": crypto.sign(ts, nonce, enc), "timestamp": ts, "nonce": nonce})
        body = (
            json.dumps({"encrypt": enc}).encode()
            if p == "wecom_aibot"
            else f"<xml><Encrypt><![CDATA[{enc}]]></Encrypt></xml>".encode()
        )
        return Request(bot_id, query, {"Content-Type": "text/xml"}, body)
    if p in ("feishu", "lark"):
        key = b.credentials.encrypt_key.get_secret_value()  # type: ignore[attr-defined]
        body = json.dumps({"encrypt": feishu_crypto.encrypt(key, plain)}).encode()
        return Request(
            bot_id,
            "",
            {
                "X-Lark-Request-Timestamp": ts,
                "X-Lark-Request-Nonce": nonce,
                "X-Lark-Signature": feishu_crypto.signature(ts, nonce, key, body),
            },
            body,
        )
    if p == "dingtalk":
        ms = str(int(now * 1000))
        secret = b.credentials.app_secret.get_secret_value()  # type: ignore[attr-defined]
        return Request(bot_id, "", {"timestamp": ms, "sign": dingtalk_crypto.sign(ms, secret)}, plain)
    if p == "qq":
        key = ed25519.signing_key(qq_seed(b.credentials.app_secret.get_secret_value()))  # type: ignore[attr-defined]
    else:
        key = ed25519.signing_key(bytes.fromhex(discord.DEMO_SEED))
    return Request(
        bot_id,
        "",
        {"X-Signature-Timestamp": ts, "X-Signature-Ed25519": ed25519.sign(key, ts.encode() + plain)},
        plain,
    )
