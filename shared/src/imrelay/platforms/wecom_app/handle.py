"""Where a WeCom app's answer goes: ``message/send`` to the member, as the app."""

from __future__ import annotations

from typing import Literal

from ..handle import ReplyHandleBase


class WeComAppHandle(ReplyHandleBase):
    kind: Literal["wecom_app"] = "wecom_app"
    touser: str  # the member's UserId
    agentid: str  # the app the message came to
