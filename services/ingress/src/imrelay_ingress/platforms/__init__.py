"""One module per platform: pure verify / decrypt / parse / normalize, no I/O.

Each adapter turns a :class:`CallbackRequest` into a :class:`CallbackResult` (the HTTP answer for the
platform, and the normalized message to store, if any) or raises a
:class:`~imrelay.errors.CallbackError`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from imrelay.aibot_streams import StreamRecord
from imrelay.config import BotConfig, Platform
from imrelay.errors import ParseError
from imrelay.events import InboundMessage


@dataclass(frozen=True, slots=True)
class CallbackRequest:
    method: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes
    now: float


@dataclass(frozen=True, slots=True)
class CallbackResult:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain"
    message: InboundMessage | None = None
    dedupe_key: str | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)
    stream_open: str | None = None  # an AI-bot answer stream to start once the message is stored
    stream_poll: str | None = None  # an AI-bot poll: answer from the stream store


def parse_json(body: bytes) -> dict[str, Any]:
    """The JSON object of a request body; anything else is a ParseError (HTTP 400)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ParseError("body is not JSON") from exc
    if not isinstance(data, dict):
        raise ParseError("body is not a JSON object")
    return data


def json_body(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class Adapter(Protocol):
    def handle(self, request: CallbackRequest) -> CallbackResult: ...


@runtime_checkable
class StreamingAdapter(Adapter, Protocol):
    def poll_reply(self, request: CallbackRequest, sid: str, record: StreamRecord | None) -> bytes: ...


AdapterFactory = Callable[[BotConfig], Adapter]


def adapter_for(bot: BotConfig) -> Adapter:
    """The adapter for a bot; raises ValueError for a platform this version cannot receive."""
    from . import dingtalk, discord, feishu, qq, wecom_aibot, wecom_app, wecom_group_robot

    factories: Mapping[Platform, AdapterFactory] = {
        Platform.WECOM_APP: wecom_app.WeComAppAdapter.from_bot,
        Platform.WECOM_GROUP_ROBOT: wecom_group_robot.WeComGroupRobotAdapter.from_bot,
        Platform.WECOM_AIBOT: wecom_aibot.WeComAIBotAdapter.from_bot,
        Platform.FEISHU: feishu.FeishuAdapter.from_bot,
        Platform.LARK: feishu.FeishuAdapter.from_bot,
        Platform.DINGTALK: dingtalk.DingTalkAdapter.from_bot,
        Platform.QQ: qq.QQAdapter.from_bot,
        Platform.DISCORD: discord.DiscordAdapter.from_bot,
    }
    factory = factories.get(bot.platform)
    if factory is None:
        raise ValueError(f"platform {bot.platform.value!r} is not supported by this ingress yet")
    return factory(bot)
