"""APIHandler: JSON errors, JSON bodies, correlation ids, security headers, the access log."""

from __future__ import annotations

import http.client
import logging
import re
import secrets
from typing import TYPE_CHECKING, Any

import orjson
import tornado.web

from mangu import cors, http1
from mangu.auth import AuthError, Principal
from mangu.clientip import client_ip
from mangu.db import DatabaseUnavailable
from mangu.log import bind_context, redact_text
from mangu.ratelimit import Decision, Policy, RateLimitUnavailable
from mangu.ratelimit.headers import response_headers, retry_after_seconds
from mangu.ratelimit.limiter import ReadyTake, ready_decision
from mangu.store.errors import Conflict, NotFound, ValidationError

if TYPE_CHECKING:
    from mangu.config import Settings
    from mangu.services import Services

access_log = logging.getLogger("mangu.access")
app_log = logging.getLogger("mangu.http")

_SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_QUERY_INTEGER = re.compile(r"-?[0-9]{1,19}")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")

ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    409: "conflict",
    411: "length_required",
    412: "precondition_failed",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "unprocessable_entity",
    429: "rate_limited",
    500: "internal",
    501: "not_implemented",
    503: "unavailable",
}

_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class APIError(tornado.web.HTTPError):
    """An error answered as JSON: status, a stable code, a message for humans, extra fields."""

    def __init__(self, status: int, code: str | None = None, message: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        reason = http.client.responses.get(status, "Unknown")
        super().__init__(status, None, reason=reason)
        self.code = code or ERROR_CODES.get(status, "error")
        self.message = message or reason
        self.headers = headers or {}  # set on the error response (send_error clears earlier ones)
        self.extra = extra


def api_error(exc: BaseException | None) -> APIError | None:
    """The answer to an error of the layers below (stores, database), or None when it has
    none and is a bug: every handler's errors are mapped here, in one place."""
    if isinstance(exc, ValidationError):
        return APIError(400, "invalid_input", f"invalid {', '.join(exc.fields)}", fields=exc.fields)
    if isinstance(exc, Conflict):
        return APIError(409, "conflict", str(exc), field=exc.field)
    if isinstance(exc, NotFound):
        return APIError(404, "not_found", str(exc))
    if isinstance(exc, DatabaseUnavailable):
        return APIError(503, "unavailable", "storage is unavailable; retry shortly", headers={"Retry-After": "1"})
    return None


def request_correlation_id(headers: Any) -> str:
    """The caller's X-Correlation-Id (else X-Request-Id) when it is a safe token, else a new one."""
    for name in ("X-Correlation-Id", "X-Request-Id"):
        value = headers.get(name)
        if value and _SAFE_ID.fullmatch(value):
            return value
    return secrets.token_hex(16)


def request_trace_id(headers: Any) -> str | None:
    """The trace-id of a valid W3C traceparent header."""
    match = _TRACEPARENT.fullmatch((headers.get("traceparent") or "").strip())
    if match and match.group(1) != "0" * 32 and not headers.get("traceparent").startswith("ff"):
        return match.group(1)
    return None


class MaguHandlerMixin:
    """What every handler of this server shares, HTTP or WebSocket: the route template,
    the request's correlation id bound to the log context, the services, the client address,
    security headers, and JSON errors."""

    route: str = "unmatched"
    current_user_id: str | None = None
    _correlation_id: str | None = None
    _in_flight = False
    # this request's rate-limit decisions (APIHandler), in order: _rate_limit_taken()
    _rate_limit_decisions: tuple[Decision, ...] = ()
    _rate_limit_ready: ReadyTake | None = None  # the first, as the limiter answered it (prepare)

    def __init__(self, application: Any, request: Any, route: str = "unmatched", **kwargs: Any) -> None:
        self.route = route
        self._response_bytes = 0
        super().__init__(application, request, **kwargs)  # type: ignore[call-arg]

    @property
    def services(self) -> Services:
        return self.settings["services"]  # type: ignore[attr-defined]

    @property
    def config(self) -> Settings:
        return self.settings["config"]  # type: ignore[attr-defined]

    @property
    def correlation_id(self) -> str:
        if self._correlation_id is None:
            self._correlation_id = request_correlation_id(self.request.headers)  # type: ignore[attr-defined]
        return self._correlation_id

    @property
    def client_ip(self) -> str:
        request = self.request  # type: ignore[attr-defined]
        return client_ip(request.remote_ip, request.headers.get("X-Forwarded-For"), self.config.trusted_proxies)

    async def _execute(self, transforms: Any, *args: Any, **kwargs: Any) -> None:
        # Tornado runs each request's _execute in a task of its own, so context bound here
        # belongs to this request and to every task it spawns, and to no other request.
        context = {"correlation_id": self.correlation_id}
        trace_id = request_trace_id(self.request.headers)  # type: ignore[attr-defined]
        if trace_id:
            context["trace_id"] = trace_id
        bind_context(**context)
        # Counted so that a graceful shutdown lets this request finish before closing its
        # connection.
        self.services.in_flight.begin()
        self._in_flight = True
        try:
            await super()._execute(transforms, *args, **kwargs)  # type: ignore[misc]
        finally:
            self.request_done()

    def request_done(self) -> None:
        """Stop counting this request as in flight (at its end, or at a WebSocket upgrade:
        the connection that follows is not an HTTP request; it is drained instead)."""
        if self._in_flight:
            self._in_flight = False
            self.services.in_flight.end()

    def set_default_headers(self) -> None:
        self.clear_header("Server")
        self.set_security_headers()
        self.set_header("X-Correlation-Id", self.correlation_id)

    def flush(self, include_footers: bool = False) -> Any:
        headers = self._headers  # type: ignore[attr-defined]
        written = self._headers_written  # type: ignore[attr-defined]
        if not written and self.services.draining and "Connection" not in headers:
            # Decided as the response's fields go out, not when the request arrived: a request
            # that was read before the shutdown began (Tornado decides keep-alive then) but is
            # answered during it also tells the client to take its next request elsewhere.
            # A WebSocket upgrade has set its own "Connection: Upgrade".
            headers["Connection"] = "close"
        return super().flush(include_footers)  # type: ignore[misc]

    def set_security_headers(self) -> None:
        for name, value in _SECURITY_HEADERS.items():
            self.set_header(name, value)
        if self.config.production:
            self.set_header("Strict-Transport-Security", "max-age=31536000; includeSubDomains")

    def write(self, chunk: str | bytes | dict) -> None:  # type: ignore[override]
        if isinstance(chunk, str):
            chunk = chunk.encode()
        if isinstance(chunk, bytes):
            self._response_bytes += len(chunk)
        super().write(chunk)

    def write_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.write(orjson.dumps(payload, default=str))

    def _rate_limit_taken(self) -> tuple[Decision, ...]:
        """This request's rate-limit decisions so far, in order; the first made a Decision
        now if the limiter answered it as a ReadyTake."""
        ready = self._rate_limit_ready
        if ready is not None:
            self._rate_limit_ready = None
            self._rate_limit_decisions = (ready_decision(ready), *self._rate_limit_decisions)
        return self._rate_limit_decisions

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        mapped = None if isinstance(exc, APIError) else api_error(exc)
        if mapped is not None:  # Tornado took it for a 500; it is the client's error or a known outage
            exc, status_code = mapped, mapped.status_code
            self.set_status(status_code)
        error: dict[str, Any] = {"status": status_code}
        decisions = self._rate_limit_taken()
        if decisions:  # send_error cleared the fields: they go in HTTPHeaders now
            connection = self.request.connection  # type: ignore[attr-defined]
            if isinstance(connection, http1.Connection):
                connection.extra_field_lines = ""
            for name, value in response_headers(decisions).items():
                self.set_header(name, value)
        if isinstance(exc, APIError):
            error.update(code=exc.code, message=exc.message, **exc.extra)
            for name, value in exc.headers.items():
                self.set_header(name, value)
        elif status_code >= 500:
            # Never the exception's text: it can carry internals.
            error.update(code=ERROR_CODES.get(status_code, "internal"), message="internal error")
        else:
            error.update(
                code=ERROR_CODES.get(status_code, "error"),
                message=self._reason or http.client.responses.get(status_code, "error"),
            )
        if status_code == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        error["correlation_id"] = self.correlation_id
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(orjson.dumps({"error": error}))

    def allowed_methods(self) -> list[str]:
        """The methods this route serves (OPTIONS, answered on every API route for CORS, aside)."""
        base = tornado.web.RequestHandler
        return [
            m for m in self.SUPPORTED_METHODS
            if m != "OPTIONS" and getattr(type(self), m.lower(), None) is not getattr(base, m.lower(), None)
        ]

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        value = api_error(value) or value
        if isinstance(value, tornado.web.HTTPError):
            if value.status_code >= 500 or value.log_message:
                app_log.warning(
                    "%s %s -> %d %s", self.request.method, self.route, value.status_code,
                    getattr(value, "message", value.log_message) or "",
                )
            return
        app_log.error(
            "unhandled error in %s %s", self.request.method, self.route, exc_info=(typ, value, tb),
            extra={"route": self.route},
        )


class APIHandler(MaguHandlerMixin, tornado.web.RequestHandler):
    """Base of every REST handler: JSON in, JSON out, JSON errors, rate limits."""

    # The rate-limit tier of this handler's requests: "general", "strict", a Policy of its own
    # (rate_limit = Policy("export", 10, 60_000)), or None to exempt it (probes, metrics).
    rate_limit: str | Policy | None = "general"

    # -- rate limiting (mangu.ratelimit): the handler's tier on every request, the auth tier on demand

    async def prepare(self) -> None:
        """Enforce this handler's rate-limit tier and the burst policy: 429 when spent.

        A subclass that overrides ``prepare`` starts with ``await super().prepare()``.
        """
        limiter = self.services.limiter
        # A CORS preflight is the browser's, not the caller's: it does not spend their quota.
        if self.rate_limit is None or not limiter.enabled or self.request.method == "OPTIONS":
            return
        request = self.request
        headers = request.headers
        connection = request.connection
        ours = isinstance(connection, http1.Connection)
        if ours:
            # On this server's connection, the values HTTPHeaders keeps by field name, read
            # directly (Tornado's private state, as mangu.http1 relies on): no method call or
            # name normalization per field.
            values = headers._as_list
            authorized = "Authorization" in values
            forwarded = values.get("X-Forwarded-For", ())
        else:
            authorized = "Authorization" in headers
            forwarded = headers.get_list("X-Forwarded-For")
        user = self.current_user if authorized else None
        user_id = user.user_id if user else None
        peer = request.remote_ip
        forwarded_for = ",".join(forwarded) or None  # several lines joined by commas, as headers.get does
        answer = limiter.take_request_now(self.rate_limit, user_id, peer, forwarded_for)
        if answer is None:
            answer = await limiter.take_request(self.rate_limit, limiter.request_key(user_id, peer, forwarded_for))
        elif type(answer) is tuple:  # a ReadyTake: allowed, its fields as ready lines
            if ours:  # the common case: this server's connection writes them (mangu.http1)
                self._rate_limit_ready = answer
                connection.extra_field_lines = answer[0]
                return
            answer = ready_decision(answer)
        self._apply_rate_limit(answer)

    async def limit_auth_attempt(self, username: str) -> None:
        """Count one login attempt for the client address and for ``username`` (the auth tier).

        429 when either is spent; 503 while Redis is down if RATE_LIMIT_AUTH_FAIL_CLOSED is set.
        """
        limiter = self.services.limiter
        if not limiter.enabled:
            return
        try:
            client = limiter.request_key(None, self.request.remote_ip, self.request.headers.get("X-Forwarded-For"))
            decision = await limiter.take_auth_attempt(client, username)
        except RateLimitUnavailable as exc:
            retry = str(max(1, round(exc.retry_after)))
            raise APIError(503, "unavailable", "login attempts cannot be counted right now; retry later",
                           headers={"Retry-After": retry}) from None
        self._apply_rate_limit(decision)

    def _apply_rate_limit(self, decision: Decision) -> None:
        decisions = self._rate_limit_decisions = self._rate_limit_taken() + (decision,)
        if not decision.allowed:
            policy = decision.refused_by
            assert policy is not None
            retry = retry_after_seconds(decision)
            # write_error sets the rate-limit fields, after send_error has cleared the others
            raise APIError(
                429, "rate_limited", f"too many requests ({policy.name} limit); retry in {retry}s",
                headers={"Retry-After": str(retry)}, policy=policy.name, retry_after=retry,
            )
        connection = self.request.connection
        if isinstance(connection, http1.Connection):
            connection.extra_field_lines = ""  # an earlier decision's: the fields are those of all of them now
        # Straight into the response's headers: these values are ours, built from numbers and
        # policy names, so set_header's validation of each would be spent on nothing.
        headers = self._headers
        for name, value in response_headers(decisions).items():
            headers[name] = value

    # -- CORS (mangu.cors): the CLIENT_URL origins may call the API from a browser

    def set_default_headers(self) -> None:
        super().set_default_headers()
        if "*" not in self.config.client_url:
            self.set_header("Vary", "Origin")
        origin = cors.allowed_origin(self.request.headers.get("Origin"), self.config.client_url)
        if origin is not None:
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Access-Control-Expose-Headers", cors.EXPOSED_RESPONSE_HEADERS)

    def options(self, *args: Any, **kwargs: Any) -> None:
        """A CORS preflight (or a plain OPTIONS): 204 with what this route accepts; 403 for a
        preflight from an origin CLIENT_URL does not list."""
        methods = ", ".join(self.allowed_methods())
        origin = self.request.headers.get("Origin")
        if origin and self.request.headers.get("Access-Control-Request-Method"):
            if cors.allowed_origin(origin, self.config.client_url) is None:
                raise APIError(403, "forbidden", "origin not allowed")
            self.set_header("Access-Control-Allow-Methods", methods)
            self.set_header("Access-Control-Allow-Headers", cors.ALLOWED_REQUEST_HEADERS)
            self.set_header("Access-Control-Max-Age", str(cors.PREFLIGHT_MAX_AGE))
        self.set_header("Allow", methods)
        self.set_status(204)

    # -- request parsing

    def query_arguments(self, strings: tuple[str, ...] = (), integers: tuple[str, ...] = ()) -> dict[str, Any]:
        """The query parameters given, by name: ``strings`` as text, ``integers`` as ints.

        ValidationError (a 400 listing each) for a parameter that is unknown, repeated or not
        a whole number: a typo or an ``author[$ne]=`` never passes silently.
        """
        values: dict[str, Any] = {}
        problems: dict[str, str] = {}
        for name, given in self.request.query_arguments.items():
            shown = name[:64]
            if name not in strings and name not in integers:
                problems[shown] = "unknown parameter"
            elif len(given) > 1:
                problems[shown] = "given more than once"
            else:
                text = self.decode_argument(given[0], name)
                if name in strings:
                    values[name] = text
                elif _QUERY_INTEGER.fullmatch(text.strip()):
                    values[name] = int(text)
                else:
                    problems[shown] = "expected an integer"
        if problems:
            raise ValidationError(problems)
        return values

    def get_current_user(self) -> Principal | None:
        """The principal of a valid ``Authorization: Bearer`` token; None when absent or invalid
        (``require_user`` tells the two apart)."""
        try:
            return self._authenticate()
        except AuthError:
            return None

    def _authenticate(self) -> Principal:
        header = self.request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            raise AuthError("missing", "an Authorization: Bearer token is required")
        principal = self.services.tokens.verify(token.strip())
        self.current_user_id = principal.user_id
        return principal

    def require_user(self, *roles: str) -> Principal:
        """The caller's principal; 401 without a valid token, 403 without one of ``roles``."""
        try:
            principal = self._authenticate()
        except AuthError as exc:
            raise APIError(
                401, "token_expired" if exc.reason == "expired" else "unauthorized", exc.message,
                headers={"WWW-Authenticate": 'Bearer realm="mangu"'},
            ) from None
        if roles and not principal.has_role(*roles):
            raise APIError(403, "forbidden", f"requires the {' or '.join(roles)} role")
        return principal

    def get_json_body(self) -> dict[str, Any]:
        """The request body as a JSON object; 415, 413 or 400 (with the position) otherwise."""
        content_type = self.request.headers.get("Content-Type", "")
        if content_type.split(";", 1)[0].strip().lower() != "application/json":
            raise APIError(415, message="expected Content-Type: application/json")
        body = self.request.body
        if len(body) > self.config.max_body_size:
            raise APIError(413, message=f"request body over {self.config.max_body_size} bytes")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise APIError(
                400, "malformed_json", f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
                position=exc.pos,
            ) from None
        if not isinstance(payload, dict):
            raise APIError(400, "malformed_json", "expected a JSON object")
        return payload


class PayloadTooLargeHandler(APIHandler):
    """Any request whose body is over MAX_BODY_SIZE, whatever its route: a JSON 413, answered
    as soon as that is known (mangu.app routes such requests here)."""

    async def prepare(self) -> None:
        await super().prepare()  # oversize requests spend the general tier like any other
        # The connection closes after this answer unless the whole body was already read.
        raise APIError(413, message=f"request body over {self.config.max_body_size} bytes",
                       headers={"Connection": "close"})


class NotFoundHandler(APIHandler):
    """Any path no route matches: a JSON 404, whatever the method."""

    async def prepare(self) -> None:
        await super().prepare()  # scanning for endpoints spends the general tier too
        raise APIError(404, message=f"no such endpoint: {self.request.method} {self.request.path}")


def log_request(handler: tornado.web.RequestHandler) -> None:
    """The access log line and the HTTP metrics: one per request, level by status."""
    status = handler.get_status()
    request = handler.request
    duration = request.request_time()
    route = getattr(handler, "route", "unmatched")
    services = handler.settings["services"]
    config = handler.settings["config"]
    metrics = services.metrics
    metrics.http_requests.labels(request.method, route, str(status)).inc()
    metrics.http_request_duration.labels(request.method, route).observe(duration)
    duration_ms = round(duration * 1000, 2)
    slow = duration_ms >= config.slow_request_threshold
    if status < 400:
        if slow:
            level = logging.WARNING
        elif getattr(handler, "probe", False) and not config.log_probes:
            level = logging.DEBUG  # every few seconds from each balancer and scraper: noise at INFO
        else:
            level = logging.INFO
    elif status < 500:
        level = logging.WARNING
    else:
        level = logging.ERROR
    if not access_log.isEnabledFor(level):
        return
    path = redact_text(request.uri or "")
    fields = {
        "method": request.method,
        "route": route,
        "path": path,
        "status": status,
        "duration_ms": duration_ms,
        "bytes": getattr(handler, "_response_bytes", 0),
        "remote_ip": client_ip(request.remote_ip, request.headers.get("X-Forwarded-For"), config.trusted_proxies),
        "user_id": getattr(handler, "current_user_id", None),
        "user_agent": request.headers.get("User-Agent"),
        "slow": slow,
    }
    access_log.log(level, "%s %s %d %.1fms", request.method, path, status, duration_ms, extra=fields)
