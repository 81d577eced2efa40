"""REST API test helpers: a bearer token for a user with roles, and JSON calls that return
the status and the decoded body."""

from __future__ import annotations

import json
from typing import Any

from tornado.httpclient import HTTPResponse

from tests.support.app import RunningApp
from tests.support.ws import make_token

# Rate limits are tested on their own; elsewhere they would only slow the tests down.
UNLIMITED = {"RATE_LIMIT_ENABLED": "false"}


def bearer(user: str = "alice", *roles: str, **claims: Any) -> dict[str, str]:
    """An Authorization header for ``user`` with ``roles`` (reader when none)."""
    return {"Authorization": f"Bearer {make_token(user, roles=list(roles or ('reader',)), **claims)}"}


async def call(app: RunningApp, method: str, path: str, body: Any = None, as_user: str | None = None,
               roles: tuple[str, ...] = (), headers: dict[str, str] | None = None) -> tuple[int, Any, HTTPResponse]:
    """``(status, JSON body or None, response)`` of one request, as ``as_user`` when given."""
    headers = {**(bearer(as_user, *roles) if as_user else {}), **(headers or {})}
    response = await app.fetch(path, method=method, body=body, headers=headers)
    payload = json.loads(response.body) if response.body and b"json" in response.headers.get(
        "Content-Type", "").encode() else None
    return response.code, payload, response


def error_of(status: int, payload: Any, expected: int, code: str | None = None) -> dict[str, Any]:
    """The ``error`` object of a JSON error response, after checking its status and code."""
    assert status == expected, payload
    error = payload["error"]
    assert error["status"] == expected and error["message"] and error["correlation_id"]
    if code is not None:
        assert error["code"] == code, error
    return error
