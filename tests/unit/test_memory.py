from __future__ import annotations

from imrelay.events import Chat, ChatType, InboundMessage, Sender
from imrelay_worker.memory import Conversation, Turn, conversation_key, trim


def test_trim_keeps_the_newest_turns_within_both_limits() -> None:
    turns = [Turn(f"q{i}", "a" * 10) for i in range(20)]
    assert [t.user for t in trim(turns, 3, 10_000)] == ["q17", "q18", "q19"]
    assert [t.user for t in trim(turns, 20, 25)] == ["q19"]  # 13 characters a turn
    assert [t.user for t in trim(turns, 20, 26)] == ["q18", "q19"]
    assert trim([Turn("x" * 500, "y")], 5, 100) == [Turn("x" * 500, "y")]  # the newest always stays


def test_conversation_round_trip_and_messages() -> None:
    conv = Conversation([Turn("你好", "hi")], {"dify_conversation_id": "c1"})
    again = Conversation.from_json(conv.to_json())
    assert again == conv
    assert [(m.role, m.content) for m in again.messages()] == [("user", "你好"), ("assistant", "hi")]
    assert Conversation.from_json(b"garbage") == Conversation()


def test_group_conversations_are_per_member_unless_configured() -> None:
    def msg(user: str) -> InboundMessage:
        return InboundMessage(
            id="1",
            platform="feishu",
            bot_id="b",
            platform_message_id="k",
            chat=Chat(id="oc_1", type=ChatType.GROUP),
            sender=Sender(id=user),
        )

    assert conversation_key(msg("a"), True) != conversation_key(msg("b"), True)
    assert conversation_key(msg("a"), False) == conversation_key(msg("b"), False)
