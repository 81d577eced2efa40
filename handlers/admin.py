"""The admin API (admin role, strict tier): publish a server-side event to a room, a user or
everyone (``system:maintenance`` notices and the like), and disconnect a user's sockets."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from handlers.base import APIHandler
from mangu.realtime import protocol as p
from mangu.store.fields import Fields

if TYPE_CHECKING:
    from mangu.realtime.hub import Hub

log = logging.getLogger("mangu.admin")

TARGETS = ("room", "user", "broadcast")
MAX_CLOSE_REASON = 100  # characters; a close frame's reason is at most 123 bytes
DEFAULT_REASON = "disconnected by an operator"


async def publish(hub: Hub, target: str, target_id: str | None, event: str, data: dict[str, Any]) -> int:
    """The one place admin events enter the hub; the number of connections of this process
    that took the event."""
    deliver = {"room": hub.send_to_room, "user": hub.send_to_user, "broadcast": hub.broadcast}[target]
    return deliver(*((event, data) if target == "broadcast" else (target_id, event, data)))


async def disconnect(hub: Hub, user_id: str, reason: str) -> int:
    """Close every socket of ``user_id`` with 4003; how many this process closed."""
    return hub.disconnect_user(user_id, p.CLOSE_FORBIDDEN, reason)


def _target_id(fields: Fields, target: str | None, value: Any) -> str | None:
    if target == "broadcast":
        if value is not None:
            fields.add("id", "not used with target broadcast; leave it out")
        return None
    if target == "room":
        return fields.text("id", value, max_length=64, pattern=p.ROOM_PATTERN, strip=False,
                           expected="expected a room name of 1-64 characters [A-Za-z0-9:_.-]")
    return _user_id(fields, "id", value)


def _user_id(fields: Fields, name: str, value: Any) -> str | None:
    return fields.text(name, value, max_length=p.MAX_USER_ID_LENGTH, pattern=p.USER_ID, strip=False,
                       expected=f"expected {p.USER_EXPECTED}")


class PublishHandler(APIHandler):
    rate_limit = "strict"

    async def post(self) -> None:
        """``{target: room | user | broadcast, id, event, data}`` → 202 with the local count."""
        admin = self.require_user("admin")
        fields = Fields()
        body = fields.only(self.get_json_body(), ("target", "id", "event", "data"))
        target = body.get("target")
        if target not in TARGETS:
            fields.add("target", f"expected one of {', '.join(TARGETS)}")
            target = None
        target_id = _target_id(fields, target, body.get("id")) if target else None
        event = body.get("event")
        if not p.publishable_event(event):
            fields.add("event", "expected system:<name> ([a-z0-9_.-], up to 48 characters), not an event the"
                                " server sends itself")
        data = body.get("data", {})
        if not isinstance(data, dict):
            fields.add("data", "expected an object")
        fields.check()
        assert target is not None and isinstance(event, str)
        delivered = await publish(self.services.hub, target, target_id, event, data)
        log.info("admin published %s to %s", event, target,
                 extra={"admin": admin.user_id, "event": event, "target": target, "target_id": target_id,
                        "local_deliveries": delivered})
        self.write_json({"target": target, "id": target_id, "event": event, "local_deliveries": delivered},
                        status=202)


class DisconnectHandler(APIHandler):
    rate_limit = "strict"

    async def post(self) -> None:
        """``{user_id, reason?}``: close the user's sockets with 4003 (do not reconnect)."""
        admin = self.require_user("admin")
        fields = Fields()
        body = fields.only(self.get_json_body(), ("user_id", "reason"))
        user_id = _user_id(fields, "user_id", body.get("user_id"))
        reason = fields.text("reason", body.get("reason"), max_length=MAX_CLOSE_REASON, required=False)
        if reason is not None and len(reason.encode()) > 123:
            fields.add("reason", "expected at most 123 bytes of UTF-8")
        fields.check()
        assert user_id is not None
        closed = await disconnect(self.services.hub, user_id, reason or DEFAULT_REASON)
        log.info("admin disconnected %s", user_id,
                 extra={"admin": admin.user_id, "target_id": user_id, "connections": closed})
        self.write_json({"user_id": user_id, "disconnected": closed})


default_handlers = [
    (r"/api/admin/publish", PublishHandler),
    (r"/api/admin/disconnect", DisconnectHandler),
]
