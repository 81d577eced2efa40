"""The hub: this process's registry of connections, users and rooms, and every delivery.

A connection is anything with the ``Peer`` shape (the WebSocket handler is one). A frame for
many members is encoded and framed once (``deliver``) and the same bytes are queued on each
member's stream. Storage comes first: a room message is delivered only once stored.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from mangu.config import Settings
from mangu.metrics import Metrics
from mangu.realtime import protocol as p
from mangu.realtime.frames import text_frame
from mangu.realtime.presence import OFFLINE, LocalPresence, Presence
from mangu.store.messages import conversation_id

log = logging.getLogger("mangu.realtime")

TYPING_RELAY_INTERVAL = 1.0  # seconds between two relays of typing:start for one user and room


class Peer(Protocol):
    """What the hub needs of a connection."""

    conn_id: str
    user_id: str
    rooms: set[str]

    def send_frame(self, frame: bytes, payload: bytes) -> bool:
        """Queue a pre-built frame; False (and the connection closing) when it could not."""

    def close_connection(self, code: int, reason: str) -> None: ...


RoomPolicy = Callable[[Any, str], bool]


def default_room_policy(principal: Any, room: str) -> bool:
    """Any valid room name except the reserved prefixes (``user:``, ``_``, ``dm:``)."""
    return not room.startswith(p.RESERVED_ROOM_PREFIXES)


def direct_event(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored direct message as clients see it: the conversation, sender and recipient."""
    return {
        "id": stored["id"], "conversation": stored["room"], "seq": stored["seq"], "sender": stored["sender"],
        "to": stored.get("recipient"), "text": stored["text"], "ts": stored["ts"],
        "client_msg_id": stored.get("client_msg_id"),
    }


class _Typing:
    __slots__ = ("last_relay", "timer")

    def __init__(self) -> None:
        self.last_relay = 0.0
        self.timer: asyncio.TimerHandle | None = None


class Hub:
    """Local registry and delivery; the server-side API other modules call."""

    def __init__(self, settings: Settings, metrics: Metrics, node_id: str, messages: Any = None,
                 presence: Presence | None = None, room_policy: RoomPolicy = default_room_policy) -> None:
        self.settings = settings
        self.metrics = metrics
        self.node_id = node_id
        self.messages = messages
        self.presence: Presence = presence or LocalPresence()
        self.room_policy = room_policy
        self._peers: set[Any] = set()
        self._users: dict[str, set[Any]] = {}
        self._rooms: dict[str, set[Any]] = {}
        self._typing: dict[tuple[str, str], _Typing] = {}
        self._out: dict[str, Any] = {}  # outgoing-frame counters by event, labelled once

    # -- registry

    @property
    def connection_count(self) -> int:
        return len(self._peers)

    def user_connection_count(self, user_id: str) -> int:
        return len(self._users.get(user_id, ()))

    def room_members(self, room: str) -> set[Any]:
        return self._rooms.get(room, set())

    def local_users(self) -> list[str]:
        return sorted(self._users)

    async def add(self, peer: Any) -> None:
        self._peers.add(peer)
        self._users.setdefault(peer.user_id, set()).add(peer)
        self.metrics.ws_connections.set(len(self._peers))
        self.metrics.users_online.set(len(self._users))
        await self.presence.connected(peer.user_id)

    async def remove(self, peer: Any) -> None:
        """Forget a closed connection: its rooms, its typing, and the user's presence."""
        if peer not in self._peers:
            return
        self._peers.discard(peer)
        user_id = peer.user_id
        conns = self._users.get(user_id, set())
        conns.discard(peer)
        if not conns:
            self._users.pop(user_id, None)
        rooms = list(peer.rooms)
        left = [room for room in rooms if self._leave(peer, room)]
        self.metrics.ws_connections.set(len(self._peers))
        self.metrics.users_online.set(len(self._users))
        if await self.presence.disconnected(user_id, len(conns)):
            entry = await self.presence.get(user_id)
            self._deliver_many(left, p.encode(p.PRESENCE_UPDATED, entry), p.PRESENCE_UPDATED)
        for room in left:
            self.deliver(self._rooms.get(room, ()), p.encode(p.ROOM_LEFT, {"room": room, "user": user_id}), p.ROOM_LEFT)

    # -- rooms

    async def join(self, peer: Any, principal: Any, room: str) -> list[dict[str, Any]]:
        """Add the connection to a room; returns the members online with their presence."""
        if not self.room_policy(principal, room):
            raise p.ProtocolError(p.E_FORBIDDEN, f"joining {room!r} is not allowed")
        if room not in peer.rooms:
            if len(peer.rooms) >= self.settings.ws_max_rooms:
                raise p.ProtocolError(p.E_ROOM_LIMIT, f"at most {self.settings.ws_max_rooms} rooms per connection")
            members = self._rooms.setdefault(room, set())
            first_of_user = not any(m.user_id == peer.user_id for m in members)
            members.add(peer)
            peer.rooms.add(room)
            if first_of_user:
                entry = await self.presence.get(peer.user_id)
                self.deliver(
                    (m for m in members if m.user_id != peer.user_id),
                    p.encode(p.ROOM_JOINED, {"room": room, **entry}), p.ROOM_JOINED,
                )
        return await self.get_room_presence(room)

    async def leave(self, peer: Any, room: str) -> None:
        if room in peer.rooms and self._leave(peer, room):
            self.deliver(
                self._rooms.get(room, ()), p.encode(p.ROOM_LEFT, {"room": room, "user": peer.user_id}), p.ROOM_LEFT
            )

    def _leave(self, peer: Any, room: str) -> bool:
        """Remove the connection from a room; True when its user has no connection left there."""
        peer.rooms.discard(room)
        members = self._rooms.get(room)
        if members is None:
            return False
        members.discard(peer)
        if not members:
            del self._rooms[room]
        gone = not any(m.user_id == peer.user_id for m in members)
        if gone:
            self._stop_typing(peer.user_id, room, relay=True)
        return gone

    # -- messages

    async def send_message(self, peer: Any, room: str, text: str, client_msg_id: str | None) -> dict[str, Any]:
        """Store, then deliver to every member; returns the stored message (for the ack).
        A retried client_msg_id returns the stored message and delivers nothing again."""
        if room not in peer.rooms:
            raise p.ProtocolError(p.E_NOT_MEMBER, f"join {room!r} before sending to it")
        message, created = await self.messages.append(room, peer.user_id, text, client_msg_id)
        if created:
            started = time.perf_counter()
            self.publish_room(room, p.encode(p.MESSAGE_RECEIVED, message), p.MESSAGE_RECEIVED)
            self.metrics.ws_delivery_latency.observe(time.perf_counter() - started)
        return message

    async def send_direct(self, peer: Any, to: str, text: str, client_msg_id: str | None) -> dict[str, Any]:
        """Store a direct message, deliver it to every connection of the recipient and to
        the sender's other connections."""
        stored, created = await self.messages.append_direct(peer.user_id, to, text, client_msg_id)
        message = direct_event(stored)
        if created:
            payload = p.encode(p.MESSAGE_DIRECT, message)
            recipients = set(self._users.get(to, ())) | self._users.get(peer.user_id, set())
            recipients.discard(peer)
            self.deliver(recipients, payload, p.MESSAGE_DIRECT)
        return message

    async def history(self, principal: Any, room: str | None, with_user: str | None, before: int | None,
                      after: int | None, limit: int) -> list[dict[str, Any]]:
        if with_user is not None:
            messages = await self.messages.history(
                conversation_id(principal.user_id, with_user), before=before, after=after, limit=limit
            )
            return [direct_event(m) for m in messages]
        assert room is not None
        if not self.room_policy(principal, room):
            raise p.ProtocolError(p.E_FORBIDDEN, f"reading {room!r} is not allowed")
        return await self.messages.history(room, before=before, after=after, limit=limit)

    # -- typing and presence

    def typing(self, peer: Any, room: str, started: bool) -> None:
        if room not in peer.rooms:
            raise p.ProtocolError(p.E_NOT_MEMBER, f"join {room!r} first")
        if not started:
            self._stop_typing(peer.user_id, room, relay=True)
            return
        key = (peer.user_id, room)
        state = self._typing.get(key)
        if state is None:
            state = self._typing[key] = _Typing()
        now = time.monotonic()
        if now - state.last_relay >= TYPING_RELAY_INTERVAL:
            state.last_relay = now
            self._relay_typing(peer.user_id, room, p.TYPING_START)
        if state.timer is not None:
            state.timer.cancel()
        state.timer = asyncio.get_running_loop().call_later(
            self.settings.ws_typing_timeout, self._stop_typing, peer.user_id, room, True
        )

    def _stop_typing(self, user_id: str, room: str, relay: bool) -> None:
        state = self._typing.pop((user_id, room), None)
        if state is None:
            return
        if state.timer is not None:
            state.timer.cancel()
        if relay:
            self._relay_typing(user_id, room, p.TYPING_STOP)

    def _relay_typing(self, user_id: str, room: str, event: str) -> None:
        payload = p.encode(event, {"room": room, "user": user_id})
        self.deliver((m for m in self._rooms.get(room, ()) if m.user_id != user_id), payload, event)

    async def set_presence(self, peer: Any, status: str) -> dict[str, Any]:
        entry = await self.presence.set_status(peer.user_id, status)
        rooms = set().union(*(c.rooms for c in self._users.get(peer.user_id, ())))
        self._deliver_many(rooms, p.encode(p.PRESENCE_UPDATED, entry), p.PRESENCE_UPDATED)
        return entry

    # -- delivery

    def deliver(self, peers: Iterable[Any], payload: bytes, event: str) -> int:
        """Queue one payload on many connections, framed once; returns how many took it."""
        frame = text_frame(payload)
        sent = 0
        for peer in tuple(peers):
            if peer.send_frame(frame, payload):
                sent += 1
        if sent:
            counter = self._out.get(event)
            if counter is None:
                counter = self._out[event] = self.metrics.ws_messages.labels("out", p.metric_event(event))
            counter.inc(sent)
        return sent

    def _deliver_many(self, rooms: Iterable[str], payload: bytes, event: str) -> int:
        """Deliver to the members of several rooms, each connection once."""
        peers: set[Any] = set()
        for room in rooms:
            peers.update(self._rooms.get(room, ()))
        return self.deliver(peers, payload, event)

    def publish_room(self, room: str, payload: bytes, event: str) -> int:
        return self.deliver(self._rooms.get(room, ()), payload, event)

    # -- the server-side API

    def send_to_user(self, user_id: str, event: str, data: Any) -> int:
        return self.deliver(self._users.get(user_id, ()), p.encode(event, data), event)

    def send_to_room(self, room: str, event: str, data: Any) -> int:
        return self.publish_room(room, p.encode(event, data), event)

    def broadcast(self, event: str, data: Any) -> int:
        return self.deliver(self._peers, p.encode(event, data), event)

    async def get_user_presence(self, user_id: str) -> dict[str, Any]:
        return await self.presence.get(user_id)

    async def get_connected_users(self) -> list[str]:
        return await self.presence.online_users()

    async def get_room_presence(self, room: str) -> list[dict[str, Any]]:
        """The members of ``room`` online now, with their presence."""
        users = sorted({m.user_id for m in self._rooms.get(room, ())})
        return await self.presence.get_many(users)

    def disconnect_user(self, user_id: str, code: int = p.CLOSE_FORBIDDEN, reason: str = "disconnected") -> int:
        peers = tuple(self._users.get(user_id, ()))
        for peer in peers:
            peer.close_connection(code, reason)
        return len(peers)

    async def is_online(self, user_id: str) -> bool:
        return (await self.presence.get(user_id))["status"] != OFFLINE

    # -- shutdown

    async def drain(self, duration_ms: int) -> int:
        """Tell every connection ``system:shutdown`` and close it with 1001, spread over
        ``duration_ms`` with jitter so clients do not all reconnect at once."""
        peers = list(self._peers)
        if not peers:
            return 0
        random.shuffle(peers)
        payload = p.encode(p.SYSTEM_SHUTDOWN, {"reason": "server restarting", "reconnect": True})
        frame = text_frame(payload)
        loop = asyncio.get_running_loop()
        slot = duration_ms / 1000 / len(peers)

        def close(peer: Any) -> None:
            peer.send_frame(frame, payload)
            peer.close_connection(p.CLOSE_GOING_AWAY, "server shutting down")

        for index, peer in enumerate(peers):
            loop.call_later(index * slot + random.uniform(0, slot), close, peer)
        deadline = loop.time() + duration_ms / 1000 + 2
        while self._peers and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return len(peers)
