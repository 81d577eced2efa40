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

import orjson

from mangu.config import Settings
from mangu.metrics import Metrics
from mangu.realtime import protocol as p
from mangu.realtime.frames import text_frame
from mangu.realtime.presence import OFFLINE, LocalPresence, Presence
from mangu.store.messages import conversation_id

BROADCAST_CHANNEL = "mangu:broadcast"


def room_channel(room: str) -> str:
    return f"mangu:room:{room}"


def user_channel(user_id: str) -> str:
    return f"mangu:user:{user_id}"

log = logging.getLogger("mangu.realtime")

TYPING_RELAY_INTERVAL = 1.0  # seconds between two relays of typing:start for one user and room


class Peer(Protocol):
    """What the hub needs of a connection."""

    conn_id: str
    user_id: str
    rooms: tuple[str, ...]  # a tuple: changed rarely, and a fraction of a set's size per connection

    alive_at: float  # loop time of the last pong (or of the connection)
    pinged_at: float | None  # loop time of the last ping sent

    def send_frame(self, frame: bytes, payload: bytes) -> bool:
        """Queue a pre-built frame; False (and the connection closing) when it could not."""

    def ping(self, now: float) -> None: ...

    def drop(self, reason: str) -> None:
        """Close without waiting for the peer (it is not answering)."""

    def close_connection(self, code: int, reason: str) -> None: ...


RoomPolicy = Callable[[Any, str], bool]


def default_room_policy(principal: Any, room: str) -> bool:
    """Any valid room name except the reserved prefixes (``user:``, ``_``, ``dm:``)."""
    return not room.startswith(p.RESERVED_ROOM_PREFIXES)


def _refusing_reserved(policy: RoomPolicy) -> RoomPolicy:
    if policy is default_room_policy:
        return policy

    def check(principal: Any, room: str) -> bool:
        return default_room_policy(principal, room) and bool(policy(principal, room))

    return check


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
    """Local registry and delivery; the server-side API other modules call.

    With a bus (Redis), every delivery also goes to the other processes: this process
    delivers to its own members at once and publishes one bus message; every other process
    subscribed to that channel delivers to its members. A process skips what it published
    itself, so each member receives each message once.
    """

    def __init__(self, settings: Settings, metrics: Metrics, node_id: str, messages: Any = None,
                 presence: Presence | None = None, bus: Any = None,
                 room_policy: RoomPolicy = default_room_policy) -> None:
        self.settings = settings
        self.metrics = metrics
        self.node_id = node_id
        self.messages = messages
        self.presence: Presence = presence or LocalPresence()
        self.bus = bus
        self.room_policy = room_policy
        self._peers: set[Any] = set()
        self._users: dict[str, set[Any]] = {}
        self._rooms: dict[str, set[Any]] = {}
        self._typing: dict[tuple[str, str], _Typing] = {}
        self._out: dict[str, Any] = {}  # outgoing-frame counters by event, labelled once
        self._keepalive: asyncio.Task | None = None
        self._origin = orjson.dumps(node_id)
        if hasattr(self.presence, "on_departure"):
            self.presence.on_departure = self._announce_departure

    @property
    def room_policy(self) -> RoomPolicy:
        """Who may join or read a room: ``policy(principal, room) -> bool``, called on
        ``join:room`` and on room history (WebSocket and REST); False answers ``forbidden``.
        An application assigns its own (``services.hub.room_policy = policy``); reserved
        names stay refused whatever it says (``dm:`` rooms hold direct messages)."""
        return self._room_policy

    @room_policy.setter
    def room_policy(self, policy: RoomPolicy) -> None:
        self._room_policy = _refusing_reserved(policy)

    async def start(self) -> None:
        if self.bus is not None:
            self.bus.want(BROADCAST_CHANNEL, self._on_bus)
            self.bus.on_connect(self._on_bus_connected)
        await self.presence.start()
        if self.settings.ws_ping_interval > 0:
            self._keepalive = asyncio.create_task(self._keep_alive(), name="mangu-keepalive")

    async def close(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            try:
                await self._keepalive
            except asyncio.CancelledError:
                pass
            self._keepalive = None
        await self.presence.close()

    async def _keep_alive(self) -> None:
        """Ping every connection every WS_PING_INTERVAL seconds and close those that do not
        answer within WS_PING_TIMEOUT: one task for the process instead of one per connection
        (a task and its frame are about a kilobyte, per connection)."""
        interval, timeout = self.settings.ws_ping_interval, self.settings.ws_ping_timeout
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, interval / 2))
            now = loop.time()
            for index, peer in enumerate(tuple(self._peers)):
                if index % 2000 == 1999:
                    await asyncio.sleep(0)  # a large process does not stall its loop
                pinged = peer.pinged_at
                if pinged is not None and peer.alive_at < pinged and now - pinged >= timeout:
                    log.info("dropping a websocket that stopped answering pings", extra={"conn_id": peer.conn_id})
                    peer.drop("ping timeout")
                elif now - max(peer.alive_at, pinged or 0.0) >= interval:
                    peer.ping(now)

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

    def local_rooms_by_user(self) -> dict[str, set[str]]:
        """Each local user and the rooms they are in here (for the presence heartbeat)."""
        return {user: set().union(*(peer.rooms for peer in peers)) for user, peers in self._users.items()}

    async def add(self, peer: Any) -> None:
        self._peers.add(peer)
        conns = self._users.setdefault(peer.user_id, set())
        conns.add(peer)
        self.metrics.ws_connections.set(len(self._peers))
        self.metrics.users_online.set(len(self._users))
        if len(conns) == 1:
            if self.bus is not None:
                self.bus.want(user_channel(peer.user_id), self._on_bus)
            await self.presence.user_arrived(peer.user_id)

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
        left = [room for room in list(peer.rooms) if self._leave(peer, room)]
        self.metrics.ws_connections.set(len(self._peers))
        self.metrics.users_online.set(len(self._users))
        for room in left:
            await self.presence.room_left(room, user_id)
        if conns:
            await self._announce_left(left, user_id)
            return
        if self.bus is not None:
            self.bus.unwant(user_channel(user_id))
        if await self.presence.user_left(user_id):
            await self._announce_departure(user_id, left, await self.presence.get(user_id))
        else:
            await self._announce_left(left, user_id)

    async def _announce_departure(self, user_id: str, rooms: list[str], entry: dict[str, Any]) -> None:
        """A user went offline: their rooms hear presence:updated, then room:left."""
        rooms = await self._presence_rooms(rooms, left=1)
        self.publish_rooms(rooms, p.encode(p.PRESENCE_UPDATED, entry), p.PRESENCE_UPDATED)
        for room in rooms:
            self.publish_room(room, p.encode(p.ROOM_LEFT, {"room": room, "user": user_id}), p.ROOM_LEFT)

    async def _announce_left(self, rooms: list[str], user_id: str) -> None:
        elsewhere = set(await self.presence.user_rooms(user_id))  # still there through another process
        for room in await self._presence_rooms((r for r in rooms if r not in elsewhere), left=1):
            self.publish_room(room, p.encode(p.ROOM_LEFT, {"room": room, "user": user_id}), p.ROOM_LEFT)

    async def _room_size(self, room: str) -> int:
        return max(len(self._rooms.get(room, ())), await self.presence.room_size(room))

    async def _presence_rooms(self, rooms: Iterable[str], left: int = 0) -> list[str]:
        """The rooms small enough for join, leave and presence events (WS_ROOM_PRESENCE_MAX):
        in a room of thousands they would cost more than they tell. ``left``: members who
        have just left and still count."""
        limit = self.settings.ws_room_presence_max
        return [room for room in rooms if await self._room_size(room) + left <= limit]

    # -- rooms

    async def join(self, peer: Any, principal: Any, room: str) -> tuple[list[dict[str, Any]], bool]:
        """Add the connection to a room; returns the members online with their presence (at
        most WS_ROOM_PRESENCE_MAX) and whether there are more."""
        if not self.room_policy(principal, room):
            raise p.ProtocolError(p.E_FORBIDDEN, f"joining {room!r} is not allowed")
        if room not in peer.rooms:
            if len(peer.rooms) >= self.settings.ws_max_rooms:
                raise p.ProtocolError(p.E_ROOM_LIMIT, f"at most {self.settings.ws_max_rooms} rooms per connection")
            members = self._rooms.get(room)
            if members is None:
                members = self._rooms[room] = set()
                if self.bus is not None:
                    self.bus.want(room_channel(room), self._on_bus)
            first_here = not any(m.user_id == peer.user_id for m in members)
            members.add(peer)
            peer.rooms = (*peer.rooms, room)
            if first_here:
                elsewhere = room in await self.presence.user_rooms(peer.user_id)
                await self.presence.room_joined(room, peer.user_id)
                if not elsewhere and await self._presence_rooms([room]):
                    entry = await self.presence.get(peer.user_id)
                    self.publish_room(room, p.encode(p.ROOM_JOINED, {"room": room, **entry}), p.ROOM_JOINED,
                                      exclude_user=peer.user_id)
        limit = self.settings.ws_room_presence_max
        members = await self.get_room_presence(room, limit + 1)
        return members[:limit], len(members) > limit

    async def leave(self, peer: Any, room: str) -> None:
        if room in peer.rooms and self._leave(peer, room):
            await self.presence.room_left(room, peer.user_id)
            await self._announce_left([room], peer.user_id)

    def _leave(self, peer: Any, room: str) -> bool:
        """Remove the connection from a room; True when its user has no connection left there."""
        peer.rooms = tuple(r for r in peer.rooms if r != room)
        members = self._rooms.get(room)
        if members is None:
            return False
        members.discard(peer)
        if not members:
            del self._rooms[room]
            if self.bus is not None:
                self.bus.unwant(room_channel(room))
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
            for user in {to, peer.user_id}:
                self._publish(user_channel(user), "u", p.MESSAGE_DIRECT, payload, user=user)
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
        self.publish_room(room, p.encode(event, {"room": room, "user": user_id}), event, exclude_user=user_id)

    async def set_presence(self, peer: Any, status: str) -> dict[str, Any]:
        """Set the user's status; the members of every room they are in (on any process) hear it."""
        user_id = peer.user_id
        entry = await self.presence.set_status(user_id, status)
        rooms = set().union(*(c.rooms for c in self._users.get(user_id, ()))) | set(
            await self.presence.user_rooms(user_id)
        )
        self.publish_rooms(await self._presence_rooms(rooms), p.encode(p.PRESENCE_UPDATED, entry), p.PRESENCE_UPDATED)
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

    def _deliver_many(self, rooms: Iterable[str], payload: bytes, event: str, exclude_user: str | None = None) -> int:
        """Deliver to the members of several rooms, each connection once."""
        peers: set[Any] = set()
        for room in rooms:
            peers.update(self._rooms.get(room, ()))
        if exclude_user is not None:
            peers = {m for m in peers if m.user_id != exclude_user}
        return self.deliver(peers, payload, event)

    def publish_room(self, room: str, payload: bytes, event: str, exclude_user: str | None = None) -> int:
        """Deliver to the room's members on every process (``exclude_user``: not to that user)."""
        members = self._rooms.get(room, ())
        if exclude_user is not None:
            members = [m for m in members if m.user_id != exclude_user]
        sent = self.deliver(members, payload, event)
        self._publish(room_channel(room), "r", event, payload, room=room, exclude=exclude_user)
        return sent

    def publish_rooms(self, rooms: Iterable[str], payload: bytes, event: str) -> int:
        """Deliver to the members of several rooms on every process, each connection once."""
        rooms = sorted(set(rooms))
        if not rooms:
            return 0
        sent = self._deliver_many(rooms, payload, event)
        self._publish(BROADCAST_CHANNEL, "m", event, payload, rooms=rooms)
        return sent

    # -- the bus

    def _publish(self, channel: str, kind: str, event: str, payload: bytes, **fields: Any) -> None:
        if self.bus is None:
            return
        header = {"o": self.node_id, "k": kind, "e": event, **{k: v for k, v in fields.items() if v is not None}}
        self.bus.send(channel, orjson.dumps(header) + b"\n" + payload)

    def _on_bus(self, channel: str, data: bytes) -> None:
        """A message from another process: deliver it to the members here."""
        if data.startswith(b'{"o":' + self._origin):
            return  # published here, and delivered here already
        newline = data.find(b"\n")
        header = orjson.loads(data[:newline])
        payload = data[newline + 1:]
        kind, event = header["k"], header.get("e", "")
        if kind == "r":
            members = self._rooms.get(header["room"], ())
            exclude = header.get("exclude")
            if exclude is not None:
                members = [m for m in members if m.user_id != exclude]
            self.deliver(members, payload, event)
        elif kind == "m":
            self._deliver_many(header["rooms"], payload, event)
        elif kind == "u":
            self.deliver(self._users.get(header["user"], ()), payload, event)
        elif kind == "b":
            self.deliver(self._peers, payload, event)
        elif kind == "c":
            self._close_user(header["user"], header["code"], header["reason"])

    async def _on_bus_connected(self) -> None:
        """Redis is back (perhaps restarted, empty): write this process's presence again."""
        heartbeat = getattr(self.presence, "heartbeat", None)
        if heartbeat is not None:
            try:
                await heartbeat()
            except Exception:
                log.warning("presence resync after reconnect failed; the next heartbeat retries", exc_info=True)

    # -- the server-side API (cluster-wide; each returns the deliveries made by this process)

    def send_to_user(self, user_id: str, event: str, data: Any) -> int:
        payload = p.encode(event, data)
        self._publish(user_channel(user_id), "u", event, payload, user=user_id)
        return self.deliver(self._users.get(user_id, ()), payload, event)

    def send_to_room(self, room: str, event: str, data: Any) -> int:
        return self.publish_room(room, p.encode(event, data), event)

    def broadcast(self, event: str, data: Any) -> int:
        payload = p.encode(event, data)
        self._publish(BROADCAST_CHANNEL, "b", event, payload)
        return self.deliver(self._peers, payload, event)

    async def get_user_presence(self, user_id: str) -> dict[str, Any]:
        return await self.presence.get(user_id)

    async def get_connected_users(self) -> list[str]:
        return await self.presence.online_users()

    async def get_room_presence(self, room: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Members of ``room`` online now, on every process, with their presence: the first
        ``limit`` (default WS_ROOM_PRESENCE_MAX) by user id."""
        limit = limit or self.settings.ws_room_presence_max
        users = {m.user_id for m in self._rooms.get(room, ())}
        users.update(await self.presence.room_users(room, limit))
        return await self.presence.get_many(sorted(users)[:limit])

    def disconnect_user(self, user_id: str, code: int = p.CLOSE_FORBIDDEN, reason: str = "disconnected") -> int:
        """Close every connection of the user, on every process."""
        if self.bus is not None:
            header = {"o": self.node_id, "k": "c", "user": user_id, "code": code, "reason": reason}
            self.bus.send(user_channel(user_id), orjson.dumps(header) + b"\n")
        return self._close_user(user_id, code, reason)

    def _close_user(self, user_id: str, code: int, reason: str) -> int:
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
