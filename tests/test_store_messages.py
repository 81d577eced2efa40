"""Room and direct messages against a real nx-27017 (or MONGODB_URL): sequence numbers,
idempotent retries, history windows, direct conversations, validation."""

from __future__ import annotations

import asyncio
import re

import pytest

from mangu.store import ValidationError
from mangu.store.messages import conversation_id, participants
from tests.support.app import RunningApp

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


async def test_200_concurrent_appends_number_a_room_without_gap_or_duplicate(app: RunningApp) -> None:
    messages = app.services.messages
    results = await asyncio.gather(
        *(messages.append("book:42", f"user{i % 7}", f"message {i}", f"c-{i}") for i in range(200))
    )
    assert all(created for _, created in results)
    assert sorted(m["seq"] for m, _ in results) == list(range(1, 201))
    assert len({m["id"] for m, _ in results}) == 200

    history = await messages.history("book:42", limit=200)
    assert [m["seq"] for m in history] == list(range(1, 201))
    # another room counts from 1 on its own
    other, _ = await messages.append("book:43", "ana", "hi", "c-0")
    assert other["seq"] == 1


async def test_a_retried_client_msg_id_returns_the_stored_message_and_stores_nothing(app: RunningApp) -> None:
    messages = app.services.messages
    first, created = await messages.append("book:1", "ana", "hello", "c-91")
    assert created
    assert set(first) == {"id", "room", "seq", "sender", "text", "client_msg_id", "ts"}
    assert ISO_UTC.fullmatch(first["ts"])

    again, created = await messages.append("book:1", "ana", "hello (retry)", "c-91")
    assert not created
    assert again == first
    # concurrent retries of one send: one copy, every caller gets it
    results = await asyncio.gather(*(messages.append("book:1", "ana", "twice", "c-92") for _ in range(10)))
    assert sum(created for _, created in results) == 1
    assert len({m["id"] for m, _ in results}) == 1

    # the same client_msg_id from another sender is another message
    bob, created = await messages.append("book:1", "bob", "hello", "c-91")
    assert created and bob["id"] != first["id"]
    history = await messages.history("book:1")
    assert [m["text"] for m in history] == ["hello", "twice", "hello"]


async def test_a_retry_through_another_process_is_stored_once(app: RunningApp) -> None:
    from mangu.store.messages import MessageStore

    first_process = app.services.messages
    other_process = MessageStore(app.services.db)  # its own memory of recent sends: none
    first, _ = await first_process.append("book:5", "ana", "hello", "c-7")
    again, created = await other_process.append("book:5", "ana", "hello", "c-7")
    assert not created and again == first
    later, created = await other_process.append("book:5", "ana", "next", "c-8")
    assert created and later["seq"] > first["seq"]
    assert [m["text"] for m in await first_process.history("book:5")] == ["hello", "next"]


async def test_history_windows(app: RunningApp) -> None:
    messages = app.services.messages
    for i in range(1, 11):
        await messages.append("book:7", "ana", f"m{i}", f"c-{i}")

    def seqs(items: list[dict]) -> list[int]:
        return [m["seq"] for m in items]

    assert seqs(await messages.history("book:7", limit=3)) == [8, 9, 10]  # the newest, ascending
    assert seqs(await messages.history("book:7", before=8, limit=3)) == [5, 6, 7]  # scrolling back
    assert seqs(await messages.history("book:7", after=6, limit=3)) == [7, 8, 9]  # catching up
    assert seqs(await messages.history("book:7", after=6)) == [7, 8, 9, 10]
    assert seqs(await messages.history("book:7", after=2, before=6, limit=10)) == [3, 4, 5]
    assert await messages.history("book:7", after=10) == []
    assert await messages.history("book:nothing-here") == []


async def test_direct_messages_share_one_conversation_and_record_the_recipient(app: RunningApp) -> None:
    messages = app.services.messages
    room = conversation_id("zoe", "adam")
    assert room == conversation_id("adam", "zoe") == "dm:adam:zoe"
    assert participants(room) == ("adam", "zoe")
    assert participants("book:1") is None

    sent, _ = await messages.append_direct("zoe", "adam", "hi adam", "z-1")
    reply, _ = await messages.append(room, "adam", "hi zoe", "a-1")
    assert (sent["room"], sent["recipient"], sent["seq"]) == (room, "adam", 1)
    assert (reply["room"], reply["recipient"], reply["seq"]) == (room, "zoe", 2)
    assert [m["text"] for m in await messages.history(room)] == ["hi adam", "hi zoe"]

    with pytest.raises(ValidationError) as err:
        await messages.append(room, "eve", "let me in", "e-1")
    assert err.value.fields == {"room": "the sender is not one of this conversation's users"}
    with pytest.raises(ValidationError) as err:
        await messages.append("dm:zoe:adam", "zoe", "unsorted id", "z-2")
    assert "malformed direct conversation id" in err.value.fields["room"]


async def test_every_invalid_field_is_reported_at_once(app: RunningApp) -> None:
    with pytest.raises(ValidationError) as err:
        await app.services.messages.append("", "a:b", "x" * 4001, "has space")
    assert set(err.value.fields) == {"room", "sender", "text", "client_msg_id"}
    assert err.value.fields["text"] == "expected at most 4000 characters"

    with pytest.raises(ValidationError) as err:
        await app.services.messages.history("book:1", before=0, after=-1, limit=1000)
    assert set(err.value.fields) == {"before", "after", "limit"}
    with pytest.raises(ValidationError) as err:
        await app.services.messages.history("book:1", after=True)
    assert err.value.fields == {"after": "expected an integer"}
