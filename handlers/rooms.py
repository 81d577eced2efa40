"""Room history and presence over REST: what ``history:fetch`` and the presence events give a
WebSocket client, for clients without one. Any signed-in user; the connected-users list is
for admins."""

from __future__ import annotations

from handlers.base import APIError, APIHandler
from mangu.auth import Principal
from mangu.realtime import protocol as p
from mangu.store.errors import ValidationError
from mangu.store.fields import Fields


class _RoomHandler(APIHandler):
    def room(self, principal: Principal, name: str) -> str:
        """``name`` when it is a room the caller may read: 400 when malformed, 403 when reserved."""
        if not p.ROOM_PATTERN.fullmatch(name):
            raise ValidationError({"room": "expected a room name of 1-64 characters [A-Za-z0-9:_.-]"})
        if not self.services.hub.room_policy(principal, name):
            raise APIError(403, "forbidden", f"reading {name!r} is not allowed")
        return name


class RoomMessagesHandler(_RoomHandler):
    async def get(self, room: str) -> None:
        """Stored messages in ascending ``seq``, as ``history:fetch``: ``after=N`` the oldest
        above N (replay), ``before=N`` the newest below N (scroll-back), neither the newest;
        ``limit`` 1-100 (default 50); ``has_more`` when the page is full."""
        principal = self.require_user()
        room = self.room(principal, room)
        query = self.query_arguments(integers=("before", "after", "limit"))
        fields = Fields()
        limit = fields.integer("limit", query.get("limit", p.DEFAULT_HISTORY), lo=1, hi=p.MAX_HISTORY)
        if "before" in query and "after" in query:
            fields.add("before", "give at most one of before or after")
        fields.check()
        assert limit is not None
        messages = await self.services.hub.history(
            principal, room, None, query.get("before"), query.get("after"), limit
        )
        self.write_json({"room": room, "messages": messages, "has_more": len(messages) == limit})


class RoomPresenceHandler(_RoomHandler):
    async def get(self, room: str) -> None:
        """The members of the room online now, with their status and last_seen."""
        room = self.room(self.require_user(), room)
        self.write_json({"room": room, "members": await self.services.hub.get_room_presence(room)})


class UserPresenceHandler(APIHandler):
    async def get(self, user_id: str) -> None:
        """``{user, status, last_seen}``; ``offline`` for a user never seen."""
        self.require_user()
        if not p.valid_user_id(user_id):
            raise ValidationError({"user_id": f"expected {p.USER_EXPECTED}"})
        self.write_json(await self.services.hub.get_user_presence(user_id))


class ConnectedUsersHandler(APIHandler):
    async def get(self) -> None:
        """The users connected now (admin)."""
        self.require_user("admin")
        users = await self.services.hub.get_connected_users()
        self.write_json({"users": users, "count": len(users)})


default_handlers = [
    (r"/api/rooms/(?P<room>[^/]+)/messages", RoomMessagesHandler),
    (r"/api/rooms/(?P<room>[^/]+)/presence", RoomPresenceHandler),
    (r"/api/presence", ConnectedUsersHandler),
    (r"/api/presence/(?P<user_id>[^/]+)", UserPresenceHandler),
]
