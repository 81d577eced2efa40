"""Every error is JSON, with a code, a message and the correlation id; never a traceback."""

from __future__ import annotations

import json

import tornado.web
from tornado.httpclient import AsyncHTTPClient

from handlers.base import APIHandler
from tests.support.app import RunningApp, json_body


class EchoHandler(APIHandler):
    def post(self) -> None:
        self.write_json({"got": self.get_json_body()})


class CrashHandler(APIHandler):
    def get(self) -> None:
        raise KeyError("internal_secret_table_name")


def add_routes(app: RunningApp) -> None:
    app.app.add_handlers(r".*", [
        tornado.web.url(r"/test/echo", EchoHandler, {"route": "/test/echo"}),
        tornado.web.url(r"/test/crash", CrashHandler, {"route": "/test/crash"}),
    ])


def assert_json_error(response, status: int, code: str) -> dict:
    assert response.code == status
    assert response.headers["Content-Type"].startswith("application/json")
    body = json_body(response)
    error = body["error"]
    assert error["status"] == status and error["code"] == code and error["message"]
    assert error["correlation_id"] == response.headers["X-Correlation-Id"]
    text = response.body.decode()
    assert "Traceback" not in text and "<html" not in text.lower()
    return error


async def test_unknown_api_path_is_json_404(app: RunningApp) -> None:
    for path in ("/api/nothing", "/api/books/x/y/z", "/nowhere"):
        assert_json_error(await app.fetch(path), 404, "not_found")
    assert_json_error(await app.fetch("/api/nothing", method="DELETE"), 404, "not_found")


async def test_wrong_method_is_json_405_with_allow(app: RunningApp) -> None:
    response = await app.fetch("/ping", method="POST", body=b"")
    assert_json_error(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "GET"
    response = await app.fetch("/ping", method="BREW")
    assert_json_error(response, 405, "method_not_allowed")


async def test_500_says_only_internal_error(app: RunningApp) -> None:
    add_routes(app)
    response = await app.fetch("/test/crash")
    error = assert_json_error(response, 500, "internal")
    assert error["message"] == "internal error"
    assert "internal_secret_table_name" not in response.body.decode() and "KeyError" not in response.body.decode()


async def test_json_body_errors(app: RunningApp) -> None:
    add_routes(app)
    ok = await app.fetch("/test/echo", method="POST", body={"title": "Dune"})
    assert ok.code == 200 and json_body(ok) == {"got": {"title": "Dune"}}

    error = assert_json_error(
        await app.fetch("/test/echo", method="POST", body='{"title": "Dune",}',
                        headers={"Content-Type": "application/json"}),
        400, "malformed_json",
    )
    assert "line 1 column" in error["message"] and error["position"] == 16

    assert_json_error(await app.fetch("/test/echo", method="POST", body="[1, 2]",
                                      headers={"Content-Type": "application/json"}), 400, "malformed_json")
    assert_json_error(await app.fetch("/test/echo", method="POST", body="title=Dune",
                                      headers={"Content-Type": "application/x-www-form-urlencoded"}), 415,
                      "unsupported_media_type")
    assert_json_error(await app.fetch("/test/echo", method="POST", body=b"\xff\xfe",
                                      headers={"Content-Type": "application/json"}), 400, "malformed_json")


async def test_oversize_body_is_413(start_app) -> None:
    app = await start_app(MAX_BODY_SIZE="2048")
    add_routes(app)
    body = json.dumps({"text": "x" * 4000})
    assert_json_error(await app.fetch("/test/echo", method="POST", body=body,
                                      headers={"Content-Type": "application/json"}), 413, "payload_too_large")


async def test_body_far_over_the_limit_is_json_413_too(start_app, log_capture) -> None:
    app = await start_app(MAX_BODY_SIZE="2048")
    add_routes(app)
    big = json.dumps({"text": "x" * 64_000})  # 30x the limit: past any cap Tornado itself has
    for path in ("/test/echo", "/api/books", "/api/nothing"):
        response = await app.fetch(path, method="POST", body=big, headers={"Content-Type": "application/json"})
        error = assert_json_error(response, 413, "payload_too_large")
        assert error["message"] == "request body over 2048 bytes"
        assert response.headers["Connection"] == "close"  # the rest of the body is not read
    # a body sent in chunks, with no Content-Length to refuse it by, gets the same answer
    chunks = [b'{"text": "' + b"x" * 1000, *[b"x" * 1000] * 20, b'"}']

    async def send(write) -> None:
        for chunk in chunks:
            await write(chunk)

    response = await AsyncHTTPClient().fetch(app.url("/test/echo"), method="POST", body_producer=send,
                                             headers={"Content-Type": "application/json"}, raise_error=False)
    assert_json_error(response, 413, "payload_too_large")
    access = log_capture.find(logger="mangu.access", status=413)
    assert [line["route"] for line in access] == ["/test/echo", "/api/books", "unmatched", "/test/echo"]
    # a body within the limit still reaches its handler
    ok = await app.fetch("/test/echo", method="POST", body={"text": "x" * 1000})
    assert ok.code == 200 and json_body(ok)["got"]["text"] == "x" * 1000


async def test_security_headers_on_every_response(app: RunningApp) -> None:
    for path in ("/ping", "/api/health/live", "/api/nothing"):
        response = await app.fetch(path)
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert "Server" not in response.headers


async def test_ping_and_liveness(app: RunningApp) -> None:
    response = await app.fetch("/ping")
    assert response.code == 200 and response.body == b"pong"
    assert response.headers["Content-Type"].startswith("text/plain")
    live = await app.fetch("/api/health/live")
    assert live.code == 200 and json_body(live)["status"] == "ok"
