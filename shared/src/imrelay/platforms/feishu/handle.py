"""Where a Feishu or Lark answer goes: a reply to the message."""

from __future__ import annotations

from typing import Literal

from ..handle import ReplyHandleBase


class FeishuHandle(ReplyHandleBase):
    kind: Literal["feishu", "lark"]
    message_id: str
    chat_id: str
    open_id: str
