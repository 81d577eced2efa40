"""The WebSocket protocol: every event name, error code and close code, and the validation
of client frames. docs/protocol.md is the reference for clients.

A frame is a JSON object ``{"event": str, "data": object, "ref": str?}``. A client frame with
a ``ref`` gets exactly one reply carrying the same ``ref``: ``ack`` or ``error``.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any

import orjson

from mangu.store.messages import MAX_USER_ID_LENGTH, USER_ID

# -- events a client sends
AUTH = "auth"
AUTH_REFRESH = "auth:refresh"
JOIN_ROOM = "join:room"
LEAVE_ROOM = "leave:room"
MESSAGE_SEND = "message:send"
MESSAGE_DIRECT = "message:direct"
TYPING_START = "typing:start"
TYPING_STOP = "typing:stop"
PRESENCE_UPDATE = "presence:update"
HISTORY_FETCH = "history:fetch"
PING = "ping"

CLIENT_EVENTS = frozenset(
    {AUTH, AUTH_REFRESH, JOIN_ROOM, LEAVE_ROOM, MESSAGE_SEND, MESSAGE_DIRECT, TYPING_START, TYPING_STOP,
     PRESENCE_UPDATE, HISTORY_FETCH, PING}
)

# -- events the server sends
ACK = "ack"
ERROR = "error"
SESSION_READY = "session:ready"
MESSAGE_RECEIVED = "message:received"
PRESENCE_UPDATED = "presence:updated"
ROOM_JOINED = "room:joined"
ROOM_LEFT = "room:left"
AUTH_EXPIRING = "auth:expiring"
SYSTEM_SHUTDOWN = "system:shutdown"
SYSTEM_PREFIX = "system:"

SERVER_EVENTS = frozenset(
    {ACK, ERROR, SESSION_READY, MESSAGE_RECEIVED, MESSAGE_DIRECT, TYPING_START, TYPING_STOP, PRESENCE_UPDATED,
     ROOM_JOINED, ROOM_LEFT, AUTH_EXPIRING, SYSTEM_SHUTDOWN}
)
# Events operators may publish through the admin API: ``system:<name>``, except the ones the
# server sends itself (a published ``system:shutdown`` would tell clients to reconnect).
PUBLISHABLE_EVENT = re.compile(r"system:[a-z0-9][a-z0-9_.\-]{0,47}")


def publishable_event(name: Any) -> bool:
    return isinstance(name, str) and bool(PUBLISHABLE_EVENT.fullmatch(name)) and name not in SERVER_EVENTS


# metric label values: every known event, anything else is "unknown" (bounded cardinality)
METRIC_EVENTS = CLIENT_EVENTS | SERVER_EVENTS | {"system", "unknown"}

# -- error codes (data.code of an "error" frame)
E_INVALID_JSON = "invalid_json"
E_INVALID_FRAME = "invalid_frame"
E_UNKNOWN_EVENT = "unknown_event"
E_INVALID_PAYLOAD = "invalid_payload"
E_UNAUTHORIZED = "unauthorized"
E_TOKEN_EXPIRED = "token_expired"
E_FORBIDDEN = "forbidden"
E_NOT_MEMBER = "not_member"
E_ROOM_LIMIT = "room_limit"
E_RATE_LIMITED = "rate_limited"
E_UNAVAILABLE = "unavailable"
E_UNSUPPORTED = "unsupported_data"
E_INTERNAL = "internal"

# -- close codes
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_UNAUTHORIZED = 4001
CLOSE_FORBIDDEN = 4003


def valid_close_code(code: int) -> bool:
    """Codes a peer may send in a close frame (RFC 6455 7.4, IANA registry): 1000-1003,
    1007-1014, and the application range 3000-4999. 1004-1006 and 1015 are reserved."""
    return code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999


# -- limits and formats
ROOM_PATTERN = re.compile(r"[A-Za-z0-9:_.\-]{1,64}")
RESERVED_ROOM_PREFIXES = ("user:", "_", "dm:")
ID_PATTERN = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
MAX_TEXT = 4000
MAX_HISTORY = 100
DEFAULT_HISTORY = 50
PRESENCE_STATUSES = ("online", "away", "busy")


class ProtocolError(Exception):
    """A client frame that cannot be served; becomes an ``error`` reply."""

    def __init__(self, code: str, message: str, ref: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref
        self.extra = extra


@dataclass(slots=True)
class Frame:
    event: str
    data: dict[str, Any]
    ref: str | None


def parse_frame(raw: str | bytes) -> Frame:
    """Decode and shape-check a client frame (the payload is checked per event)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(E_INVALID_JSON, f"malformed JSON at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(E_INVALID_FRAME, "a frame is a JSON object")
    ref = obj.get("ref")
    if ref is not None and (not isinstance(ref, str) or not ID_PATTERN.fullmatch(ref)):
        raise ProtocolError(E_INVALID_FRAME, "ref must be a string of up to 64 characters [A-Za-z0-9._:-]")
    event = obj.get("event")
    if not isinstance(event, str):
        raise ProtocolError(E_INVALID_FRAME, "event must be a string", ref)
    if event not in CLIENT_EVENTS:
        raise ProtocolError(E_UNKNOWN_EVENT, f"unknown event {event[:64]!r}", ref)
    data = obj.get("data", {})
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProtocolError(E_INVALID_PAYLOAD, "data must be an object", ref, field="data")
    return Frame(event, data, ref)


# -- field validation: each returns the clean value or raises ProtocolError(invalid_payload)


def _bad(frame: Frame, name: str, expected: str) -> ProtocolError:
    return ProtocolError(E_INVALID_PAYLOAD, f"{name}: expected {expected}", frame.ref, field=name)


def room_field(frame: Frame, name: str = "room") -> str:
    value = frame.data.get(name)
    if not isinstance(value, str) or not ROOM_PATTERN.fullmatch(value):
        raise _bad(frame, name, "a room name of 1-64 characters [A-Za-z0-9:_.-]")
    return sys.intern(value)  # one copy for the thousands of connections in a room


def text_field(frame: Frame, name: str = "text") -> str:
    value = frame.data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise _bad(frame, name, "a non-empty string")
    if len(value) > MAX_TEXT:
        raise _bad(frame, name, f"at most {MAX_TEXT} characters")
    return value


def client_msg_id_field(frame: Frame) -> str | None:
    value = frame.data.get("client_msg_id")
    if value is None:
        return None
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise _bad(frame, "client_msg_id", "a string of up to 64 characters [A-Za-z0-9._:-]")
    return value


USER_EXPECTED = f"a user id of 1-{MAX_USER_ID_LENGTH} characters [A-Za-z0-9._@-]"


def valid_user_id(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_USER_ID_LENGTH and bool(USER_ID.fullmatch(value))


def user_field(frame: Frame, name: str) -> str:
    value = frame.data.get(name)
    if not valid_user_id(value):
        raise _bad(frame, name, USER_EXPECTED)
    return value


def seq_field(frame: Frame, name: str) -> int | None:
    value = frame.data.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value > 2**53:
        raise _bad(frame, name, "a non-negative integer")
    return value


def limit_field(frame: Frame) -> int:
    value = frame.data.get("limit", DEFAULT_HISTORY)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_HISTORY:
        raise _bad(frame, "limit", f"an integer from 1 to {MAX_HISTORY}")
    return value


def status_field(frame: Frame) -> str:
    value = frame.data.get("status")
    if value not in PRESENCE_STATUSES:
        raise _bad(frame, "status", f"one of {', '.join(PRESENCE_STATUSES)}")
    return value


def token_field(frame: Frame) -> str:
    value = frame.data.get("token")
    if not isinstance(value, str) or not value or len(value) > 8192:
        raise _bad(frame, "token", "a JWT string")
    return value


# -- encoding


def encode(event: str, data: Any, ref: str | None = None) -> bytes:
    """One server frame as JSON bytes (encoded once, sent to as many members as needed)."""
    frame: dict[str, Any] = {"event": event, "data": data}
    if ref is not None:
        frame["ref"] = ref
    return orjson.dumps(frame)


def ack(ref: str | None, data: Any = None) -> bytes:
    return encode(ACK, {} if data is None else data, ref)


def error(code: str, message: str, ref: str | None = None, **extra: Any) -> bytes:
    return encode(ERROR, {"code": code, "message": message, **extra}, ref)


def metric_event(event: str) -> str:
    if event in METRIC_EVENTS:
        return event
    return "system" if event.startswith(SYSTEM_PREFIX) else "unknown"
