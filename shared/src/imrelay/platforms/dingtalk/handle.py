"""Where a DingTalk answer goes: the message's session webhook while it is valid, else the robot API."""

from __future__ import annotations

from typing import Literal

from ..handle import ReplyHandleBase, SecretURL


class DingTalkHandle(ReplyHandleBase):
    kind: Literal["dingtalk"] = "dingtalk"
    conversation_id: str
    robot_code: str = ""
    sender_staff_id: str = ""
    session_webhook: SecretURL = ""  # its ``session`` is the credential
    session_webhook_expires_ms: int = 0  # epoch milliseconds
