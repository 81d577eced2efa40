"""CORS for the REST API: which browser origins may call it (``CLIENT_URL``) and the response
fields that let them. Tokens travel in the Authorization header, never in cookies, so no
credentials mode is offered."""

from __future__ import annotations

from urllib.parse import urlsplit

# What a browser page may send beyond the CORS-safelisted headers, and may read back.
ALLOWED_REQUEST_HEADERS = (
    "Authorization, Content-Type, If-None-Match, X-Correlation-Id, X-Request-Id, traceparent"
)
EXPOSED_RESPONSE_HEADERS = (
    "ETag, Location, Retry-After, WWW-Authenticate, X-Correlation-Id, RateLimit, RateLimit-Policy,"
    " X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset"
)
PREFLIGHT_MAX_AGE = 600  # seconds a browser may reuse a preflight answer


def allowed_origin(origin: str | None, allowed: tuple[str, ...]) -> str | None:
    """The ``Access-Control-Allow-Origin`` value for a request from ``origin``: the origin
    itself when ``allowed`` (CLIENT_URL, already normalised) lists it, ``*`` when it lists
    ``*``, else None."""
    if not origin:
        return None
    if "*" in allowed:
        return "*"
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    normalized = f"{parts.scheme}://{parts.netloc}".lower()
    return normalized if normalized in allowed else None
