"""CORS on the REST API: the CLIENT_URL origins may call it from a browser (preflight
included, errors readable too); any other origin gets no CORS permission."""

from __future__ import annotations

import pytest

from tests.support.api import UNLIMITED, bearer, call, error_of

APP = "https://app.mangu.example"


@pytest.fixture
async def api(start_app):
    return await start_app(**UNLIMITED, CLIENT_URL=f"{APP},http://localhost:3000")


async def test_preflight_from_a_client_origin_allows_the_routes_methods(api) -> None:
    status, _, response = await call(api, "OPTIONS", "/api/books/0123456789abcdef01234567", headers={
        "Origin": APP, "Access-Control-Request-Method": "PATCH",
        "Access-Control-Request-Headers": "authorization, content-type",
    })
    assert status == 204 and response.body == b""
    assert response.headers["Access-Control-Allow-Origin"] == APP
    assert response.headers["Access-Control-Allow-Methods"] == "GET, DELETE, PATCH, PUT"
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "if-none-match"} <= allowed
    assert int(response.headers["Access-Control-Max-Age"]) > 0
    assert "Origin" in response.headers["Vary"]


async def test_preflight_from_another_origin_is_refused(api) -> None:
    status, body, response = await call(api, "OPTIONS", "/api/books", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    error_of(status, body, 403, "forbidden")
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Methods" not in response.headers


async def test_responses_and_errors_carry_cors_headers_for_client_origins_only(api) -> None:
    status, _, response = await call(api, "GET", "/api/books", headers={**bearer("rita"), "Origin": APP})
    assert status == 200
    assert response.headers["Access-Control-Allow-Origin"] == APP
    exposed = response.headers["Access-Control-Expose-Headers"]
    assert "X-Correlation-Id" in exposed and "ETag" in exposed and "Retry-After" in exposed
    # An error must be readable by the page too, or it only sees a network failure.
    status, body, response = await call(api, "POST", "/api/auth/login", {"username": "x", "password": "y"},
                                        headers={"Origin": "http://LOCALHOST:3000"})
    error_of(status, body, 401, "invalid_credentials")
    assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"

    _, _, response = await call(api, "GET", "/api/books", headers={**bearer("rita"), "Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers
    _, _, response = await call(api, "GET", "/api/books", headers=bearer("rita"))
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_a_plain_options_request_lists_the_methods(api) -> None:
    status, _, response = await call(api, "OPTIONS", "/api/admin/publish")
    assert status == 204 and response.headers["Allow"] == "POST"
    assert "Access-Control-Allow-Methods" not in response.headers


async def test_preflights_do_not_spend_the_rate_limit(start_app) -> None:
    app = await start_app(CLIENT_URL=APP, RATE_LIMIT_BURST="2")
    for _ in range(5):
        status, _, _ = await call(app, "OPTIONS", "/api/books", headers={
            "Origin": APP, "Access-Control-Request-Method": "GET"})
        assert status == 204
    assert (await call(app, "GET", "/api/books", headers=bearer("rita")))[0] == 200


async def test_any_origin_when_client_url_is_a_wildcard(start_app) -> None:
    app = await start_app(**UNLIMITED, CLIENT_URL="*")
    _, _, response = await call(app, "GET", "/api/books", headers={**bearer("rita"), "Origin": "https://x.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"
