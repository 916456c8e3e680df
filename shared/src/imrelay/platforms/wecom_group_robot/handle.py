"""Where a WeCom group robot's answer goes: the chat's webhook that came with the message."""

from __future__ import annotations

from typing import Literal

from ..handle import ReplyHandleBase, SecretURL


class WeComGroupRobotHandle(ReplyHandleBase):
    kind: Literal["wecom_group_robot"] = "wecom_group_robot"
    chat_id: str
    webhook_url: SecretURL = ""  # its ``key`` is the credential; empty when the message came without one
