"""Room and direct messages. Each room numbers its messages 1, 2, 3, ... (``seq``, from a
counter document incremented atomically), so a client that reconnects asks for what came
after the last number it saw. A retried send, the same ``(sender, client_msg_id)``, returns
the stored message instead of storing a second copy.

Direct messages live in conversations named ``dm:<user>:<user>`` (the two ids sorted), a
namespace no room can use; who may read one is the caller's decision (``participants``).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from mangu import clock
from mangu.db import Database
from mangu.store.fields import Fields

ROOM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]*")
USER_ID = re.compile(r"[A-Za-z0-9_.@\-]+")  # no ':', so a conversation id splits unambiguously
CLIENT_MSG_ID = re.compile(r"[A-Za-z0-9_.:\-]+")
DIRECT_PREFIX = "dm:"
MAX_ROOM_LENGTH = 200
MAX_USER_ID_LENGTH = 64
MAX_CLIENT_MSG_ID_LENGTH = 64
MAX_TEXT_LENGTH = 4000
DEFAULT_HISTORY = 50
MAX_HISTORY = 200
MAX_SEQ = 2**62

_ROOM_EXPECTED = "expected letters, digits and _ . : - (starting with a letter or digit)"
_USER_EXPECTED = "expected letters, digits and _ . @ -"


def conversation_id(user_a: str, user_b: str) -> str:
    """The direct conversation of two users: the same whichever way round they are given."""
    fields = Fields()
    a = _user(fields, "user_a", user_a)
    b = _user(fields, "user_b", user_b)
    fields.check()
    assert a is not None and b is not None
    first, second = sorted((a, b))
    return f"{DIRECT_PREFIX}{first}:{second}"


def participants(room: str) -> tuple[str, str] | None:
    """The two users of a direct conversation id; None for a room (or a malformed id)."""
    if not isinstance(room, str) or not room.startswith(DIRECT_PREFIX):
        return None
    parts = room[len(DIRECT_PREFIX):].split(":")
    if len(parts) != 2 or not all(USER_ID.fullmatch(p) and len(p) <= MAX_USER_ID_LENGTH for p in parts):
        return None
    if parts != sorted(parts):
        return None
    return parts[0], parts[1]


def _user(fields: Fields, name: str, value: Any) -> str | None:
    return fields.text(name, value, max_length=MAX_USER_ID_LENGTH, pattern=USER_ID, expected=_USER_EXPECTED,
                       strip=False)


def _room(fields: Fields, value: Any) -> str | None:
    room = fields.text("room", value, max_length=MAX_ROOM_LENGTH, pattern=ROOM, expected=_ROOM_EXPECTED,
                       strip=False)
    if room is not None and room.startswith(DIRECT_PREFIX) and participants(room) is None:
        fields.add("room", "malformed direct conversation id; expected dm:<user>:<user>, the ids sorted")
        return None
    return room


def _public(doc: dict[str, Any]) -> dict[str, Any]:
    message = {
        "id": str(doc["_id"]),
        "room": doc["room"],
        "seq": doc["seq"],
        "sender": doc["sender"],
        "text": doc["text"],
        "client_msg_id": doc.get("client_msg_id"),
        "ts": clock.iso(doc["ts"]),
    }
    if "recipient" in doc:
        message["recipient"] = doc["recipient"]
    return message


class MessageStore:
    """Messages of rooms and direct conversations, in the ``messages`` collection; the
    per-room counters in ``counters``."""

    def __init__(self, db: Database, recent_sends: int = 10_000) -> None:
        self._db = db
        # (sender, client_msg_id) of recent sends, so that the usual retry (same client, same
        # process) is answered without a query. Anything else is caught by the unique index.
        self._recent: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._recent_max = recent_sends
        db.on_setup(self.create_indexes)

    async def create_indexes(self) -> None:
        messages = self._db.collection("messages")
        await messages.create_index([("room", 1), ("seq", 1)], unique=True, name="room_seq")
        await messages.create_index(
            [("sender", 1), ("client_msg_id", 1)], unique=True, name="sender_client_msg_id",
            partialFilterExpression={"client_msg_id": {"$type": "string"}},
        )

    async def append(
        self, room: str, sender: str, text: str, client_msg_id: str | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Store a message; ``(message, created)``. With a ``client_msg_id`` the sender already
        used, the stored message comes back with ``created`` False and nothing is stored.
        In a direct conversation the sender must be one of its two users; the other is
        recorded as ``recipient``."""
        fields = Fields()
        room = _room(fields, room)
        sender = _user(fields, "sender", sender)
        # Kept as written (a poem's indentation matters); only all-blank text is refused.
        text = fields.text("text", text, max_length=MAX_TEXT_LENGTH, strip=False)
        if text is not None and not text.strip():
            fields.add("text", "must not be blank")
        client_msg_id = fields.text(
            "client_msg_id", client_msg_id, max_length=MAX_CLIENT_MSG_ID_LENGTH, pattern=CLIENT_MSG_ID,
            expected="expected letters, digits and _ . : -", required=False, strip=False,
        )
        users = participants(room) if room else None
        if users is not None and sender is not None and sender not in users:
            fields.add("room", "the sender is not one of this conversation's users")
        fields.check()
        assert room is not None and sender is not None and text is not None

        doc: dict[str, Any] = {"room": room, "sender": sender, "text": text}
        if client_msg_id is not None:
            doc["client_msg_id"] = client_msg_id
        if users is not None:
            doc["recipient"] = users[1] if users[0] == sender else users[0]
        key = (sender, client_msg_id) if client_msg_id is not None else None
        if key is not None and key in self._recent:
            return self._recent[key], False
        async with self._db.operation() as db:
            counter = await db.counters.find_one_and_update(
                {"_id": room}, {"$inc": {"seq": 1}}, upsert=True, return_document=ReturnDocument.AFTER
            )
            doc["seq"] = counter["seq"]
            doc["ts"] = clock.now()
            try:
                await db.messages.insert_one(doc)
            except DuplicateKeyError:
                # A retry of a send stored earlier (through another process, or long ago):
                # the stored copy wins. The number taken here stays unused: a gap in the
                # room's sequence, never a duplicate.
                stored = await db.messages.find_one({"sender": sender, "client_msg_id": client_msg_id})
                if client_msg_id is None or stored is None:
                    raise
                return self._remember(key, _public(stored)), False
        return self._remember(key, _public(doc)), True

    def _remember(self, key: tuple[str, str] | None, message: dict[str, Any]) -> dict[str, Any]:
        if key is not None:
            self._recent[key] = message
            if len(self._recent) > self._recent_max:
                self._recent.popitem(last=False)
        return message

    async def append_direct(
        self, sender: str, recipient: str, text: str, client_msg_id: str | None = None
    ) -> tuple[dict[str, Any], bool]:
        """``append`` to the conversation of ``sender`` and ``recipient``."""
        fields = Fields()
        _user(fields, "sender", sender)
        _user(fields, "recipient", recipient)
        fields.check()
        return await self.append(conversation_id(sender, recipient), sender, text, client_msg_id)

    async def history(
        self, room: str, before: int | None = None, after: int | None = None, limit: int = DEFAULT_HISTORY
    ) -> list[dict[str, Any]]:
        """Messages of ``room`` in ascending ``seq``: with ``after``, the ``limit`` oldest above
        it (catching up after a reconnect); with ``before``, the ``limit`` newest below it
        (scrolling back); with both, the oldest of the range between; with neither, the
        newest ``limit``."""
        fields = Fields()
        room = _room(fields, room)
        before = fields.integer("before", before, lo=1, hi=MAX_SEQ)
        after = fields.integer("after", after, lo=0, hi=MAX_SEQ)
        limit = fields.integer("limit", limit, lo=1, hi=MAX_HISTORY, required=True)
        fields.check()
        assert limit is not None

        seq: dict[str, int] = {}
        if after is not None:
            seq["$gt"] = after
        if before is not None:
            seq["$lt"] = before
        query: dict[str, Any] = {"room": room}
        if seq:
            query["seq"] = seq
        oldest_first = after is not None
        async with self._db.operation() as db:
            cursor = db.messages.find(query).sort("seq", 1 if oldest_first else -1).limit(limit)
            docs = await cursor.to_list()
        if not oldest_first:
            docs.reverse()
        return [_public(doc) for doc in docs]
