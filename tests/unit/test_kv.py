"""Compare-and-set on KV (imrelay.kv) and the stores built on it, against the in-memory bucket."""

from __future__ import annotations

import json

import pytest
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from imrelay import kv as cas
from imrelay.answer_streams import KVStreamStore
from imrelay.config import MemoryConfig
from imrelay.kv import DELETE, read_modify_write
from imrelay_sender.ratelimit import Limit, RateLimiter
from imrelay_worker.memory import Conversation, MemoryStore, Turn
from tests.fakes import FakeKV


async def test_the_fake_bucket_keeps_the_servers_rules() -> None:
    kv = FakeKV()
    first = await kv.create("k", b"1")
    with pytest.raises(KeyWrongLastSequenceError):
        await kv.create("k", b"2")
    with pytest.raises(KeyWrongLastSequenceError):
        await kv.update("k", b"2", last=first + 1)
    second = await kv.update("k", b"2", last=first)
    with pytest.raises(APIError) as err:
        await kv.delete("k", last=first)
    assert err.value.err_code == 10071
    await kv.delete("k", last=second)
    with pytest.raises(KeyNotFoundError):
        await kv.get("k")
    assert await kv.create("k", b"3") > second  # a deleted key may be created again


async def test_create_if_absent_and_update_if_revision() -> None:
    kv = FakeKV()
    rev = await cas.create_if_absent(kv, "k", b"a")
    assert rev is not None
    assert await cas.create_if_absent(kv, "k", b"b") is None
    assert await cas.update_if_revision(kv, "k", b"c", rev + 100) is None
    assert await cas.update_if_revision(kv, "other", b"x", None) is not None  # None: only while absent
    assert await cas.update_if_revision(kv, "other", b"y", None) is None
    assert await cas.update_if_revision(kv, "k", b"c", rev) is not None
    assert kv.value("k") == b"c"


async def test_delete_if_unchanged_reports_a_lost_race_and_raises_other_errors() -> None:
    kv = FakeKV()
    rev = await kv.put("k", b"a")
    await kv.put("k", b"b")
    assert await cas.delete_if_unchanged(kv, "k", rev) is False
    assert kv.value("k") == b"b"
    entry = await cas.read(kv, "k")
    assert entry is not None and await cas.delete_if_unchanged(kv, "k", entry.revision) is True
    assert await cas.read(kv, "k") is None
    kv.fail_with = APIError(code=503, err_code=10008, description="unavailable")
    with pytest.raises(APIError):
        await cas.delete_if_unchanged(kv, "k", 1)


async def test_read_modify_write_applies_the_change_to_what_another_writer_stored() -> None:
    kv = FakeKV()
    await kv.put("n", b"1")

    async def meanwhile() -> None:
        await kv.put("n", b"10")

    kv.before_next_write(meanwhile)
    seen: list[bytes | None] = []

    def double(value: bytes | None) -> bytes:
        seen.append(value)
        return str(int(value or b"0") * 2).encode()

    assert await read_modify_write(kv, "n", double) is True
    assert seen == [b"1", b"10"]  # the first result lost its race and was computed again
    assert kv.value("n") == b"20"


async def test_read_modify_write_deletes_or_leaves_alone() -> None:
    kv = FakeKV()
    assert await read_modify_write(kv, "absent", lambda v: DELETE) is False
    await kv.put("k", b"x")
    assert await read_modify_write(kv, "k", lambda v: None) is False
    assert kv.value("k") == b"x"

    async def meanwhile() -> None:
        await kv.put("k", b"y")

    kv.before_next_write(meanwhile)
    assert await read_modify_write(kv, "k", lambda v: DELETE if v == b"x" else b"z") is True
    assert kv.value("k") == b"z"  # the delete lost its race; the value read again decided
    assert await read_modify_write(kv, "k", lambda v: DELETE) is True
    assert kv.value("k") is None


async def test_read_modify_write_gives_up_after_its_attempts() -> None:
    kv = FakeKV()
    await kv.put("k", b"0")
    count = 0

    async def meanwhile() -> None:
        nonlocal count
        count += 1
        await kv.put("k", str(count).encode())

    for _ in range(6):
        kv.before_next_write(meanwhile)
    assert await read_modify_write(kv, "k", lambda v: b"mine", attempts=3) is False
    assert kv.value("k") == b"3"


def memory(kv: FakeKV) -> MemoryStore:
    return MemoryStore(kv, MemoryConfig(max_turns=10, max_chars=10_000))


async def test_memory_keeps_both_turns_of_concurrent_answers() -> None:
    kv = FakeKV()
    store = memory(kv)
    await store.remember("conv.a", Turn("q1", "a1", "u1"), {})

    async def other_replica() -> None:
        await memory(kv).remember("conv.a", Turn("q2", "a2", "u2"), {"session": "s"})

    kv.before_next_write(other_replica)
    await store.remember("conv.a", Turn("q3", "a3", "u1"), {})
    conv = await store.load("conv.a")
    assert [t.user for t in conv.turns] == ["q1", "q2", "q3"]
    assert conv.session == {"session": "s"}


async def test_forget_user_erases_their_turns_even_when_a_record_changes_meanwhile() -> None:
    kv = FakeKV()
    store = memory(kv)
    shared = "conv.feishu.b.group"
    await kv.put(shared, Conversation([Turn("mine", "x", "alice")]).to_json())
    both = Conversation([Turn("q", "x", "alice"), Turn("q", "y", "bob")])
    await kv.put("conv.feishu.b.group2", both.to_json())
    await kv.put("conv.feishu.b.alice", Conversation([Turn("q", "x", "alice")]).to_json())

    async def bob_asks() -> None:
        await memory(kv).remember(shared, Turn("bob's", "y", "bob"), {})

    kv.before_next_write(bob_asks)  # lands between the read and the delete of the shared record
    assert await store.forget_user("feishu", "b", "alice") == 3
    assert [t.user for t in (await store.load(shared)).turns] == ["bob's"]
    assert [t.sender for t in (await store.load("conv.feishu.b.group2")).turns] == ["bob"]
    assert kv.value("conv.feishu.b.alice") is None
    assert await store.forget_user("feishu", "b", "alice") == 0


async def test_rate_limiter_decides_again_after_losing_a_race() -> None:
    kv = FakeKV()
    now = [100.0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(kv, margin=0.0, clock=lambda: now[0], sleep=sleep)

    async def other_replica_sends() -> None:
        await kv.put("rl.k", json.dumps([now[0]]).encode())

    kv.before_next_write(other_replica_sends)
    assert await limiter.acquire("rl.k", Limit(1, 10.0)) == pytest.approx(sum(waits))
    assert len(waits) == 1 and waits[0] >= 10.0  # the slot went to the other replica: wait a window
    assert json.loads(kv.value("rl.k") or b"[]") == [now[0]]


async def test_answer_stream_open_keeps_an_existing_stream() -> None:
    store = KVStreamStore(FakeKV())
    await store.open("b", "s1")
    await store.put("b", "s1", "so far", False)
    await store.open("b", "s1")  # the platform retried the message
    rec = await store.get("b", "s1")
    assert rec is not None and (rec.content, rec.finish) == ("so far", False)
    assert await store.get("b", "missing") is None


class CountingKV(FakeKV):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def get(self, key: str, revision: int | None = None, validate_keys: bool = True) -> KeyValue.Entry:
        self.reads += 1
        return await super().get(key, revision, validate_keys)


async def test_rate_limiter_writes_once_per_send_while_no_other_replica_writes() -> None:
    kv = CountingKV()
    now = [100.0]
    limiter = RateLimiter(kv, margin=0.0, clock=lambda: now[0])
    for _ in range(3):
        assert await limiter.acquire("rl.k", Limit(5, 10.0)) == 0.0
        now[0] += 1.0
    assert kv.writes == [("create", "rl.k"), ("update", "rl.k"), ("update", "rl.k")]
    assert kv.reads == 0
    # another replica sends: this one's next write fails on the revision, then it reads and decides again
    await kv.put("rl.k", json.dumps([101.0, 102.0, 103.0, now[0]]).encode())
    assert await limiter.acquire("rl.k", Limit(5, 10.0)) == 0.0
    assert kv.reads == 1
    assert len(json.loads(kv.value("rl.k") or b"[]")) == 5  # its send counted beside the other's four
