"""DingTalk robot delivery: the message's ``sessionWebhook`` while it is valid (no token needed), then the
robot send API with an access token (``/v1.0/robot/oToMessages/batchSend`` for one person,
``/v1.0/robot/groupMessages/send`` for a group). Answers go out as markdown; in groups the asker is @-ed.
The robot's limit (20 messages a minute) is kept by the sender's rate limiter.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from imrelay.delivery import DeliveryContext
from imrelay.delivery.chunking import split_utf8
from imrelay.delivery.http import call, json_or_none, post_for_token, retry_after, with_token
from imrelay.delivery.tokens import TokenCache
from imrelay.errors import (
    PermanentUpstreamError,
    RateLimitedError,
    TokenExpiredError,
    TransientUpstreamError,
)
from imrelay.events import ChatType, ReplyChunk
from imrelay.platforms.dingtalk.config import DingTalkBot
from imrelay.platforms.dingtalk.handle import DingTalkHandle
from imrelay.subjects import kv_key

PLATFORM = "dingtalk"
TEXT_LIMIT_BYTES = 5000
SESSION_MARGIN_MS = 60_000  # do not start a session-webhook call in its last minute
SESSION_HOSTS = {("https", "oapi.dingtalk.com")}
TOKEN_CODES = {"InvalidAuthentication", "Forbidden.AccessDenied.AccessTokenInvalid", "40014", "42001"}


def check(payload: Any, status: int, wait: float | None, default_wait: float) -> None:
    """Both answer styles: the webhook's ``errcode`` and the new API's HTTP status + ``code``."""
    if isinstance(payload, dict) and "errcode" in payload:
        code, msg = payload.get("errcode"), str(payload.get("errmsg", ""))[:200]
        if code == 0:
            return
        if code in (130101, 90018):
            raise RateLimitedError(PLATFORM, code, msg, retry_after=wait or default_wait)
        if code in (-1, 88):
            raise TransientUpstreamError(PLATFORM, code, msg)
        raise PermanentUpstreamError(PLATFORM, str(code), msg)
    code = str(payload.get("code", "")) if isinstance(payload, dict) else ""
    msg = str(payload.get("message", ""))[:200] if isinstance(payload, dict) else ""
    if status < 300:
        return
    if status == 429:
        raise RateLimitedError(PLATFORM, code or status, msg, retry_after=wait or default_wait)
    if status == 401 or code in TOKEN_CODES:
        raise TokenExpiredError(PLATFORM, code or status, msg)
    if status >= 500:
        raise TransientUpstreamError(PLATFORM, code or status, msg or "server error")
    raise PermanentUpstreamError(PLATFORM, code or status, msg)


def markdown(part: str, mention: str | None) -> tuple[str, str]:
    """(title, text) of a markdown message; DingTalk shows the title in notifications."""
    title = part.strip().splitlines()[0][:20] if part.strip() else "reply"
    return title, (f"@{mention} " if mention else "") + part


def session_allowed(url: str, api_base: str) -> bool:
    u = urlsplit(url)
    base = urlsplit(api_base)
    return (
        (u.scheme, u.netloc) in SESSION_HOSTS or (u.scheme, u.netloc) == (base.scheme, base.netloc)
    ) and u.path.startswith("/robot/")


@dataclass
class DingTalkDelivery:
    bot_id: str
    app_key: str
    app_secret: str
    api_base: str
    client: httpx.AsyncClient
    tokens: TokenCache
    timeout: float
    rate_limit_backoff: float = 60.0
    platform: str = PLATFORM

    @classmethod
    def from_bot(cls, bot: DingTalkBot, ctx: DeliveryContext) -> DingTalkDelivery:
        c = bot.credentials
        return cls(
            bot_id=bot.id,
            app_key=c.app_key,
            app_secret=c.app_secret.get_secret_value(),
            api_base=ctx.api_base(bot),
            client=ctx.client,
            tokens=ctx.tokens,
            timeout=ctx.http_timeout,
            rate_limit_backoff=ctx.rate_limit_backoff,
        )

    def __repr__(self) -> str:
        return f"DingTalkDelivery(bot_id={self.bot_id!r}, app_key={self.app_key!r}, app_secret=***)"

    def render(self, chunk: ReplyChunk) -> list[str]:
        text = chunk.full_text if chunk.full_text is not None else chunk.delta
        return split_utf8(text, TEXT_LIMIT_BYTES) if text.strip() else []

    def limits(self, chunk: ReplyChunk) -> list[tuple[str, str]]:
        return [("dingtalk.per_robot", kv_key(self.app_key))]

    async def _fetch_token(self) -> tuple[str, float]:
        return await post_for_token(
            self.client,
            f"{self.api_base}/v1.0/oauth2/accessToken",
            {"appKey": self.app_key, "appSecret": self.app_secret},
            platform=PLATFORM,
            bot=self.bot_id,
            http_timeout=self.timeout,
            check=lambda p, s, w: check(p, s, w, self.rate_limit_backoff),
            answer_keys=("accessToken", "expireIn"),
        )

    async def _post(self, url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        resp = await call(
            self.client,
            "POST",
            url,
            platform=PLATFORM,
            bot=self.bot_id,
            http_timeout=self.timeout,
            json=body,
            headers=headers,
        )
        check(json_or_none(resp), resp.status_code, retry_after(resp), self.rate_limit_backoff)

    async def send(self, chunk: ReplyChunk, part: str, index: int) -> None:
        handle = DingTalkHandle.of(chunk)
        staff = handle.sender_staff_id or chunk.recipient.id
        group = chunk.chat.type is ChatType.GROUP
        mention = staff if group and index == 0 else None
        title, text = markdown(part, mention)
        session, expires = handle.session_webhook, handle.session_webhook_expires_ms
        if (
            session
            and time.time() * 1000 < expires - SESSION_MARGIN_MS
            and session_allowed(session, self.api_base)
        ):
            body: dict[str, Any] = {"msgtype": "markdown", "markdown": {"title": title, "text": text}}
            if mention:
                body["at"] = {"atUserIds": [mention]}
            await self._post(session, body)
            return
        # The session webhook has expired: the robot API, with an access token.
        robot = handle.robot_code or self.app_key
        param = json.dumps({"title": title, "text": text}, ensure_ascii=False)
        if group:
            url = f"{self.api_base}/v1.0/robot/groupMessages/send"
            body = {
                "robotCode": robot,
                "openConversationId": chunk.chat.id,
                "msgKey": "sampleMarkdown",
                "msgParam": param,
            }
        else:
            url = f"{self.api_base}/v1.0/robot/oToMessages/batchSend"
            body = {"robotCode": robot, "userIds": [staff], "msgKey": "sampleMarkdown", "msgParam": param}
        await with_token(
            self.tokens,
            kv_key(PLATFORM, self.app_key),
            self._fetch_token,
            lambda token: self._post(url, body, {"x-acs-dingtalk-access-token": token}),
            renew_early=True,
        )
