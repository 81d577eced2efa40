"""The WebSocket endpoint ``/ws``: authentication, frame validation, flow control; every
event is served by the hub (mangu/realtime/hub.py). docs/protocol.md is the reference."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

import tornado.web
import tornado.websocket
from tornado import httputil
from tornado.iostream import StreamBufferFullError, StreamClosedError
from tornado.websocket import WebSocketClosedError

from handlers.base import APIError, MaguHandlerMixin
from mangu.auth import AuthError, Principal
from mangu.db import DatabaseUnavailable
from mangu.ratelimit.bucket import TokenBucket
from mangu.realtime import frames
from mangu.realtime import protocol as p
from mangu.store.errors import ValidationError

log = logging.getLogger("mangu.socket")


class SocketHandler(MaguHandlerMixin, tornado.websocket.WebSocketHandler):
    """One browser (or other) client connection."""

    rate_limit = None  # connections are bounded by WS_MAX_CONNECTIONS and per-user caps instead
    # Class-level defaults: an idle connection's instance holds only what differs (memory per
    # connection is a goal: docs/benchmarks.md).
    principal: Principal | None = None
    user_id: str = ""
    mangu_close_sent: int | None = None
    _timer: asyncio.TimerHandle | None = None  # the auth deadline, then the expiry warning, then the expiry
    _abuse = 0
    _registered = False
    pinged_at: float | None = None
    rooms: tuple[str, ...] = ()  # the hub's to change

    # -- handshake

    def set_security_headers(self) -> None:
        """Only on error answers: a 101's headers would live as long as the connection, and
        a browser makes no use of them on an upgrade."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        super().set_security_headers()
        super().write_error(status_code, **kwargs)

    def check_origin(self, origin: str) -> bool:
        """Origins from CLIENT_URL, the server's own origin (the demo page), or none at all
        (non-browser clients send no Origin)."""
        allowed = self.config.client_url
        if "*" in allowed:
            return True
        parts = urlsplit(origin)
        normalized = f"{parts.scheme}://{parts.netloc}".lower()
        if normalized in allowed:
            return True
        return parts.netloc.lower() == (self.request.headers.get("Host") or "").lower()

    def get_compression_options(self) -> dict[str, Any] | None:
        return {} if self.config.ws_compression else None

    def get_websocket_protocol(self) -> Any:
        protocol = super().get_websocket_protocol()
        if protocol is None:
            return None
        server = frames.ServerProtocol(self, False, protocol.params)
        return server

    async def get(self, *args: Any, **kwargs: Any) -> None:
        # Tornado answers these in plain text; this server answers every error in JSON.
        headers = self.request.headers
        if self.services.draining:
            raise APIError(503, "unavailable", "server is shutting down", headers={"Retry-After": "5"})
        if headers.get("Upgrade", "").lower() != "websocket":
            raise APIError(400, "upgrade_required", "this endpoint speaks WebSocket only (Upgrade: websocket)")
        if "upgrade" not in [part.strip().lower() for part in headers.get("Connection", "").split(",")]:
            raise APIError(400, "upgrade_required", "Connection must include Upgrade")
        if headers.get("Sec-WebSocket-Version") not in ("7", "8", "13"):
            raise APIError(426, "upgrade_required", "unsupported WebSocket version",
                           headers={"Sec-WebSocket-Version": "13"})
        origin = headers.get("Origin") or headers.get("Sec-Websocket-Origin")
        if origin is not None and not self.check_origin(origin):
            log.warning("websocket origin refused", extra={"origin": origin[:200]})
            raise APIError(403, "forbidden", "origin not allowed")
        await super().get(*args, **kwargs)

    # -- connection

    def open(self, *args: Any, **kwargs: Any) -> None:
        self.request_done()
        self.conn_id = secrets.token_hex(6)
        self.alive_at = asyncio.get_running_loop().time()
        self._bucket = TokenBucket(self.config.ws_message_burst, self.config.ws_message_rate)
        self._max_frames = self.config.ws_send_queue_frames  # read on every delivery
        self.services.metrics.ws_connections_opened.inc()
        stream = self.ws_connection.stream  # type: ignore[union-attr]
        stream.max_write_buffer_size = self.config.ws_send_queue_bytes
        token = self.get_query_argument("token", None)
        header = self.request.headers.get("Authorization", "")
        if not token and header[:7].lower() == "bearer ":
            token = header[7:].strip()
        self._forget_handshake()
        if token:
            return self._start_session(token, None)
        self._schedule(self.config.ws_auth_timeout, self._auth_timeout)
        return None

    def _forget_handshake(self) -> None:
        """Drop what only the upgrade needed: the request's headers and query (the token
        among them) would otherwise live as long as the connection."""
        request = self.request
        request.headers = httputil.HTTPHeaders()
        request.query_arguments = request.arguments = {}
        request.uri, request.query = request.path, ""

    def _schedule(self, delay: float, callback: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(max(0.0, delay), callback)

    def _auth_timeout(self) -> None:
        if self.principal is None:
            self._refuse("auth_timeout", "no auth frame in time")

    def _refuse(self, reason: str, message: str) -> None:
        self.services.metrics.ws_auth_failures.labels(reason=reason).inc()
        log.warning("websocket authentication failed: %s", message, extra={"reason": reason})
        self.close_connection(p.CLOSE_UNAUTHORIZED, message)

    def _start_session(self, token: str, ref: str | None) -> Any:
        try:
            principal = self.services.tokens.verify(token)
        except AuthError as exc:
            self._refuse(exc.reason, exc.message)
            return None
        hub = self.services.hub
        if hub.connection_count >= self.config.ws_max_connections:
            self.close_connection(p.CLOSE_TRY_AGAIN_LATER, "server at capacity")
            return None
        if hub.user_connection_count(principal.user_id) >= self.config.ws_max_connections_per_user:
            self.close_connection(p.CLOSE_POLICY_VIOLATION, "too many connections for this user")
            return None
        self._set_principal(principal)
        return self._register(ref)

    async def _register(self, ref: str | None) -> None:
        await self.services.hub.add(self)
        self._registered = True
        if self.ws_connection is None or self.ws_connection.is_closing():
            await self.services.hub.remove(self)
            return
        assert self.principal is not None
        data = {
            "user": self.user_id, "roles": list(self.principal.roles), "connection_id": self.conn_id,
            "node_id": self.services.node_id, "expires_at": int(self.principal.expires_at),
            "server_time": time.time(),
        }
        self._send(p.encode(p.SESSION_READY, data))
        if ref is not None:
            self._send(p.ack(ref, data))
        log.info("websocket session started", extra={"conn_id": self.conn_id})

    def _set_principal(self, principal: Principal) -> None:
        self.principal = principal
        self.user_id = self.current_user_id = principal.user_id
        self._schedule(principal.expires_at - time.time() - self.config.ws_expiry_warning, self._warn_expiry)

    def _warn_expiry(self) -> None:
        if self.principal is not None:
            expires_at = self.principal.expires_at
            self._send(p.encode(p.AUTH_EXPIRING, {
                "expires_at": int(expires_at), "expires_in": max(0, round(expires_at - time.time())),
            }))
            self._schedule(expires_at - time.time(), self._expire)

    def _expire(self) -> None:
        self.services.metrics.ws_auth_failures.labels(reason="expired").inc()
        log.info("websocket token expired", extra={"conn_id": self.conn_id})
        self.close_connection(p.CLOSE_UNAUTHORIZED, "token expired")

    def on_close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        code = self.mangu_close_sent or self.close_code or 1006
        self.services.metrics.ws_connections_closed.labels(code=str(code)).inc()
        if self._registered:
            self._registered = False
            task = asyncio.ensure_future(self.services.hub.remove(self))
            task.add_done_callback(_log_failure)

    # -- keep-alive (the hub pings every connection from one task)

    def ping(self, now: float) -> None:
        if self.ws_connection is not None and not self.ws_connection.is_closing():
            self.pinged_at = now
            try:
                self.ws_connection.write_ping(b"")
            except (StreamClosedError, StreamBufferFullError):
                pass  # closing already, or a slow consumer about to be closed

    def drop(self, reason: str) -> None:
        protocol = self.ws_connection  # close() lets go of it
        self.close_connection(p.CLOSE_GOING_AWAY, reason)
        frames.abort(protocol)

    def on_pong(self, data: bytes) -> None:
        self.alive_at = asyncio.get_running_loop().time()

    # -- incoming frames

    async def on_message(self, message: str | bytes) -> None:
        metrics = self.services.metrics
        if isinstance(message, bytes):
            metrics.ws_messages.labels("in", "unknown").inc()
            self._reject(p.ProtocolError(p.E_UNSUPPORTED, "binary frames are not supported; send JSON text"))
            return
        try:
            frame = p.parse_frame(message)
        except p.ProtocolError as exc:
            metrics.ws_messages.labels("in", "unknown").inc()
            self._reject(exc)
            return
        metrics.ws_messages.labels("in", frame.event).inc()
        allowed, retry_after = self._bucket.take()
        if not allowed:
            # A fast client is not an abusive one: rate_limited does not count toward 1008.
            self._send(p.error(p.E_RATE_LIMITED, "too many frames", frame.ref,
                               retry_after_ms=int(retry_after * 1000) + 1))
            return
        try:
            await self._dispatch(frame)
        except p.ProtocolError as exc:
            exc.ref = frame.ref
            self._reject(exc)
        except ValidationError as exc:
            field = next(iter(exc.fields), None)
            self._reject(p.ProtocolError(p.E_INVALID_PAYLOAD, str(exc), frame.ref, field=field))
        except DatabaseUnavailable:
            self._send(p.error(p.E_UNAVAILABLE, "storage is unavailable; try again shortly", frame.ref,
                               retry_after_ms=1000))
        except WebSocketClosedError:
            pass
        except Exception:
            log.exception("error serving %s", frame.event, extra={"event": frame.event})
            self._send(p.error(p.E_INTERNAL, "internal error", frame.ref))

    def _reject(self, exc: p.ProtocolError) -> None:
        """Answer a refused frame with ``error``; WS_ABUSE_LIMIT of them close the connection with 1008."""
        self._send(p.error(exc.code, exc.message, exc.ref, **exc.extra))
        self._abuse += 1
        log.info("websocket frame refused: %s", exc.message, extra={"code": exc.code, "conn_id": self.conn_id})
        if self._abuse >= self.config.ws_abuse_limit:
            log.warning("closing abusive websocket connection",
                        extra={"conn_id": self.conn_id, "invalid_frames": self._abuse})
            self.close_connection(p.CLOSE_POLICY_VIOLATION, "too many invalid frames")

    async def _dispatch(self, frame: p.Frame) -> None:
        event = frame.event
        if self.principal is None:
            if event != p.AUTH:
                raise p.ProtocolError(p.E_UNAUTHORIZED, "send an auth frame first")
            await _maybe_await(self._start_session(p.token_field(frame), frame.ref))
            return
        hub = self.services.hub
        if event == p.MESSAGE_SEND:
            message = await hub.send_message(
                self, p.room_field(frame), p.text_field(frame), p.client_msg_id_field(frame)
            )
            self._ack(frame, {"id": message["id"], "seq": message["seq"], "ts": message["ts"], "room": message["room"]})
        elif event == p.TYPING_START or event == p.TYPING_STOP:
            hub.typing(self, p.room_field(frame), event == p.TYPING_START)
            self._ack(frame)
        elif event == p.JOIN_ROOM:
            room = p.room_field(frame)
            members, truncated = await hub.join(self, self.principal, room)
            self._ack(frame, {"room": room, "members": members, "truncated": truncated})
        elif event == p.LEAVE_ROOM:
            room = p.room_field(frame)
            await hub.leave(self, room)
            self._ack(frame, {"room": room})
        elif event == p.MESSAGE_DIRECT:
            to = p.user_field(frame, "to")
            message = await hub.send_direct(self, to, p.text_field(frame), p.client_msg_id_field(frame))
            self._ack(frame, {"id": message["id"], "seq": message["seq"], "ts": message["ts"],
                              "conversation": message["conversation"]})
        elif event == p.HISTORY_FETCH:
            await self._history(frame)
        elif event == p.PRESENCE_UPDATE:
            entry = await hub.set_presence(self, p.status_field(frame))
            self._ack(frame, entry)
        elif event == p.AUTH_REFRESH:
            self._refresh(frame)
        elif event == p.PING:
            self._ack(frame, {"server_time": time.time()})
        elif event == p.AUTH:
            raise p.ProtocolError(p.E_INVALID_FRAME, "already authenticated; use auth:refresh")

    async def _history(self, frame: p.Frame) -> None:
        has_room, has_with = "room" in frame.data, "with" in frame.data
        if has_room == has_with:
            raise p.ProtocolError(p.E_INVALID_PAYLOAD, "give exactly one of room or with", field="room")
        before, after = p.seq_field(frame, "before"), p.seq_field(frame, "after")
        if before is not None and after is not None:
            raise p.ProtocolError(p.E_INVALID_PAYLOAD, "give at most one of before or after", field="before")
        room = p.room_field(frame) if has_room else None
        with_user = p.user_field(frame, "with") if has_with else None
        limit = p.limit_field(frame)
        messages = await self.services.hub.history(self.principal, room, with_user, before, after, limit)
        key = {"room": room} if room is not None else {"with": with_user}
        self._ack(frame, {**key, "messages": messages, "has_more": len(messages) == limit})

    def _refresh(self, frame: p.Frame) -> None:
        try:
            principal = self.services.tokens.verify(p.token_field(frame))
        except AuthError as exc:
            code = p.E_TOKEN_EXPIRED if exc.reason == "expired" else p.E_UNAUTHORIZED
            raise p.ProtocolError(code, exc.message) from None
        if principal.user_id != self.user_id:
            raise p.ProtocolError(p.E_FORBIDDEN, "a refreshed token must be for the same user")
        self._set_principal(principal)
        self._ack(frame, {"expires_at": int(principal.expires_at)})

    # -- outgoing frames

    def _ack(self, frame: p.Frame, data: Any = None) -> None:
        if frame.ref is not None:
            self._send(p.ack(frame.ref, data))

    def _send(self, payload: bytes) -> None:
        self.send_frame(frames.text_frame(payload), payload)

    def send_frame(self, frame: bytes, payload: bytes) -> bool:
        """Queue a pre-built frame (the hub's delivery path); closes the connection with 1013
        when its send queue overflows."""
        try:
            frames.write_frame(self.ws_connection, frame, payload, self._max_frames)
            return True
        except WebSocketClosedError:
            return False
        except frames.SlowConsumer:
            metrics = self.services.metrics
            metrics.ws_slow_consumers.inc()
            metrics.ws_frames_dropped.labels(reason="slow_consumer").inc()
            log.warning("closing slow websocket consumer", extra={
                "conn_id": self.conn_id, "queued_bytes": frames.queued_bytes(self.ws_connection),
            })
            frames.lift_write_bound(self.ws_connection)
            self.close_connection(p.CLOSE_TRY_AGAIN_LATER, "slow consumer")
            return False

    def close_connection(self, code: int, reason: str) -> None:
        if self.ws_connection is not None and not self.ws_connection.is_closing():
            self.mangu_close_sent = code
            self.close(code, reason)


async def _maybe_await(value: Any) -> None:
    if value is not None:
        await value


def _log_failure(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("error while closing a websocket session", exc_info=task.exception())


default_handlers = [(r"/ws", SocketHandler)]
