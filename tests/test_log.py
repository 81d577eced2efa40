"""Structured logging: JSON fields, correlation ids through requests and the tasks they spawn,
redaction on every way in, the access log."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re

import tornado.web

from handlers.base import APIHandler
from mangu.log import JsonFormatter, PrettyFormatter, bind_context, configure_logging, get_logger, reset_context
from mangu.services import DRAINING
from tests.support.app import LogCapture, RunningApp

SECRET = "s3cr3t-value-xyz"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"

log = logging.getLogger("tests.work")


async def _child_work(step: str) -> None:
    await asyncio.sleep(0)
    log.info("child task step %s", step)


class WorkHandler(APIHandler):
    """Logs directly, in an awaited call, and in a task it spawns."""

    async def get(self) -> None:
        log.info("handler start")
        await _child_work("awaited")
        await asyncio.create_task(_child_work("spawned"))
        self.write_json({"ok": True})


class BoomHandler(APIHandler):
    def get(self) -> None:
        raise RuntimeError(f"lost connection to mongodb://mangu:{SECRET}@db/ at offset 7")


class SlowHandler(APIHandler):
    async def get(self) -> None:
        await asyncio.sleep(0.06)
        self.write_json({"ok": True})


def add_routes(app: RunningApp) -> None:
    app.app.add_handlers(r".*", [
        tornado.web.url(r"/test/work", WorkHandler, {"route": "/test/work"}),
        tornado.web.url(r"/test/boom", BoomHandler, {"route": "/test/boom"}),
        tornado.web.url(r"/test/slow", SlowHandler, {"route": "/test/slow"}),
    ])


def format_json(logger: logging.Logger | logging.LoggerAdapter, *args, **kwargs) -> dict:
    """Log one record through the JSON formatter and parse it back."""
    capture = LogCapture()
    target = logger.logger if isinstance(logger, logging.LoggerAdapter) else logger
    target.addHandler(capture)
    target.setLevel(logging.DEBUG)
    try:
        logger.info(*args, **kwargs)
    finally:
        target.removeHandler(capture)
    (line,) = capture.lines
    return json.loads(line)


def test_json_fields_and_timestamp_format() -> None:
    record = format_json(logging.getLogger("tests.fields"), "hello %s", "world", extra={"book_id": 42})
    assert list(record)[:5] == ["timestamp", "level", "logger", "message", "correlation_id"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["timestamp"])
    assert (record["level"], record["logger"], record["message"]) == ("INFO", "tests.fields", "hello world")
    assert record["book_id"] == 42 and record["correlation_id"] is None


def test_exception_is_structured() -> None:
    logger = logging.getLogger("tests.exc")
    capture = LogCapture()
    logger.addHandler(capture)
    try:
        try:
            raise ValueError("bad things")
        except ValueError:
            logger.exception("it failed")
    finally:
        logger.removeHandler(capture)
    (record,) = capture.records
    assert record["exception"]["type"] == "ValueError"
    assert record["exception"]["message"] == "bad things"
    assert "raise ValueError" in record["exception"]["stack"]


def test_redaction_every_way_in() -> None:
    logger = logging.getLogger("tests.redact")
    cases = [
        format_json(logger, "extra", extra={"password": SECRET, "Authorization": f"Bearer {SECRET}"}),
        format_json(logger, "nested", extra={"req": {"headers": {"Cookie": SECRET, "X-Api-Key": SECRET},
                                                     "items": [{"refresh_token": SECRET}, {"ok": 1}]}}),
        format_json(logger, "dict argument %s", {"user": "alice", "PASSWD": SECRET}),
        format_json(logger, "named %(user)s", {"user": "alice", "client_secret": SECRET}),
        format_json(logger, "list argument %s", [{"apikey": SECRET}]),
        format_json(logger, "url GET /ws?room=a&token=%s&access_token=%s", SECRET, SECRET),
        format_json(logger, "dsn mongodb://mangu:%s@db:27017/x", SECRET),
        format_json(logger, "header Authorization: Bearer %s", SECRET),
        format_json(logger, "jwt %s", JWT),
        format_json(logger, "form password=%s&user=alice", SECRET),
        format_json(get_logger("tests.redact", api_key=SECRET, set_cookie=SECRET), "bound logger"),
        format_json(get_logger("tests.redact").bind(session={"Set-Cookie": SECRET}), "bound nested"),
    ]
    token = bind_context(correlation_id="c-1", auth={"token": SECRET})
    try:
        cases.append(format_json(logger, "bound context"))
    finally:
        reset_context(token)
    cases += [
        format_json(logger, {"user": "alice", "password": SECRET}),  # a dict as the message itself
        format_json(logger, [("Authorization", SECRET), ("Accept", "*/*")]),
        format_json(logger, "body %s", f'{{"room": "a", "token": "{SECRET}"}}'),  # JSON text
        format_json(logger, "escaped %s", json.dumps(json.dumps({"api_key": SECRET}))),
        format_json(logger, "request headers:\nCookie: sid=%s; theme=dark\nAccept: */*", SECRET),
        format_json(logger, "response Set-Cookie: sid=%s; HttpOnly", SECRET),
        format_json(logger, "login failed, password: %s", SECRET),
        format_json(logger, "form password=\"%s\"", SECRET),
        format_json(logger, "header X-Api-Key: %s", SECRET),
        format_json(logger, "numeric", extra={"pin_password": 123456789, "headers": [("Cookie", SECRET)]}),
    ]
    try:
        raise ValueError({"api_key": SECRET})  # an exception built from a dict
    except ValueError:
        cases.append(format_json(logger, "it failed", exc_info=True))
    for index, record in enumerate(cases):
        text = json.dumps(record)
        assert SECRET not in text and JWT not in text, text
        if index != 3:  # the named-format case never prints the secret at all
            assert "[REDACTED]" in text, text
    assert cases[0]["password"] == "[REDACTED]"
    assert cases[1]["req"]["items"][1] == {"ok": 1}  # what is not secret stays
    assert cases[3]["message"] == "named alice"
    assert "room=a" in cases[5]["message"]
    assert cases[12]["correlation_id"] == "c-1"
    assert "'user': 'alice'" in cases[13]["message"]
    assert json.loads(cases[15]["message"][len("body "):]) == {"room": "a", "token": "[REDACTED]"}
    assert cases[17]["message"].endswith("\nAccept: */*")  # only the cookie line is blanked
    assert cases[22]["pin_password"] == "[REDACTED]"
    assert "'api_key': '[REDACTED]'" in cases[23]["exception"]["message"]
    assert "ValueError: {'api_key': '[REDACTED]'}" in cases[23]["exception"]["stack"]


def test_pretty_format_is_one_readable_line_and_redacted() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "pretty", stream=stream)
    try:
        logging.getLogger("tests.pretty").info("joined %s", "book:1", extra={"room": "book:1", "token": SECRET})
    finally:
        configure_logging("INFO", "json", stream=io.StringIO())
    line = stream.getvalue().strip()
    assert "\n" not in line
    assert re.match(r"\d\d:\d\d:\d\d\.\d{3} INFO\s+tests\.pretty: joined book:1", line)
    assert "room=book:1" in line and SECRET not in line


async def test_correlation_id_in_out_and_on_every_line_of_the_request(app: RunningApp, log_capture: LogCapture) -> None:
    add_routes(app)
    response = await app.fetch("/test/work", headers={"X-Correlation-Id": "req-42.a:b"})
    assert response.code == 200
    assert response.headers["X-Correlation-Id"] == "req-42.a:b"
    lines = [r for r in log_capture.records if r["logger"] in ("tests.work", "mangu.access")]
    assert [r["message"] for r in lines] == [
        "handler start", "child task step awaited", "child task step spawned",
        "GET /test/work 200 " + lines[-1]["message"].split()[-1],
    ]
    assert {r["correlation_id"] for r in lines} == {"req-42.a:b"}


async def test_unsafe_or_missing_correlation_id_is_replaced(app: RunningApp, log_capture: LogCapture) -> None:
    add_routes(app)
    for header in ({}, {"X-Correlation-Id": "bad id with spaces"}, {"X-Correlation-Id": "x" * 129},
                   {"X-Correlation-Id": "<script>"}):
        response = await app.fetch("/test/work", headers=header)
        cid = response.headers["X-Correlation-Id"]
        assert re.fullmatch(r"[0-9a-f]{32}", cid)
        assert log_capture.find(logger="mangu.access", correlation_id=cid)
    response = await app.fetch("/ping", headers={"X-Request-Id": "from-proxy-1"})
    assert response.headers["X-Correlation-Id"] == "from-proxy-1"


async def test_traceparent_trace_id_is_logged(app: RunningApp, log_capture: LogCapture) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    await app.fetch("/ping", headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"})
    await app.fetch("/ping", headers={"traceparent": "00-zzzz-00f067aa0ba902b7-01"})
    access = log_capture.find(logger="mangu.access")
    assert access[0]["trace_id"] == trace
    assert "trace_id" not in access[1]


async def test_access_log_fields_and_levels(start_app, log_capture: LogCapture) -> None:
    app = await start_app(SLOW_REQUEST_THRESHOLD="50", TRUSTED_PROXIES="127.0.0.1", LOG_PROBES="true")
    add_routes(app)
    await app.fetch("/ping?token=abc&x=1", headers={"User-Agent": "reader-app/1.0", "X-Forwarded-For": "203.0.113.9"})
    await app.fetch("/api/missing")
    await app.fetch("/test/boom")
    await app.fetch("/test/slow")
    ok, missing, boom, slow = log_capture.find(logger="mangu.access")
    assert ok["level"] == "INFO" and missing["level"] == "WARNING" and boom["level"] == "ERROR"
    assert ok["method"] == "GET" and ok["route"] == "/ping" and ok["status"] == 200
    assert ok["path"] == "/ping?token=[REDACTED]&x=1"
    assert ok["bytes"] == 4 and ok["user_agent"] == "reader-app/1.0" and ok["remote_ip"] == "203.0.113.9"
    assert isinstance(ok["duration_ms"], float) and ok["slow"] is False and "user_id" in ok
    assert missing["route"] == "unmatched" and missing["status"] == 404
    assert boom["status"] == 500
    assert slow["slow"] is True and slow["level"] == "WARNING" and slow["duration_ms"] >= 50
    # the 500's own error line has the stack for operators, redacted
    (error,) = log_capture.find(logger="mangu.http", level="ERROR")
    assert SECRET not in json.dumps(error)  # the URL's password is blanked in message and stack
    assert error["exception"]["type"] == "RuntimeError" and "raise RuntimeError" in error["exception"]["stack"]
    assert error["correlation_id"] == boom["correlation_id"]


async def test_probes_are_logged_quietly_unless_failing(app: RunningApp, log_capture: LogCapture) -> None:
    for path in ("/ping", "/api/health/live", "/readyz", "/metrics"):
        assert (await app.fetch(path)).code == 200
    app.services.state = DRAINING
    assert (await app.fetch("/api/health/ready")).code == 503
    await app.fetch("/api/missing")
    levels = {line["path"]: line["level"] for line in log_capture.find(logger="mangu.access")}
    assert levels == {"/ping": "DEBUG", "/api/health/live": "DEBUG", "/readyz": "DEBUG", "/metrics": "DEBUG",
                      "/api/health/ready": "ERROR", "/api/missing": "WARNING"}
    requests = await app.fetch("/metrics")
    assert 'route="/ping",status="200"' in requests.body.decode()  # counted all the same


async def test_access_log_names_the_authenticated_user(app: RunningApp, log_capture: LogCapture) -> None:
    token, _ = app.services.tokens.issue("reader-7731")
    me = await app.fetch("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.code == 200
    anonymous = await app.fetch("/api/auth/me")
    forged = await app.fetch("/api/auth/me", headers={"Authorization": f"Bearer {token[:-4]}AAAA"})
    assert (anonymous.code, forged.code) == (401, 401)
    signed_in, nobody, refused = log_capture.find(logger="mangu.access", route="/api/auth/me")
    assert signed_in["user_id"] == "reader-7731" and signed_in["status"] == 200
    assert nobody["user_id"] is None and refused["user_id"] is None  # a bad token names no one
    assert token not in log_capture.text()


async def test_spoofed_forwarded_for_from_untrusted_peer_is_ignored(app: RunningApp, log_capture: LogCapture) -> None:
    await app.fetch("/ping", headers={"X-Forwarded-For": "198.51.100.7"})
    (line,) = log_capture.find(logger="mangu.access")
    assert line["remote_ip"] == "127.0.0.1"


def test_json_formatter_handles_odd_values() -> None:
    record = format_json(logging.getLogger("tests.odd"), "odd", extra={"when": object(), "raw": b"\xff", "n": {1: 2}})
    assert record["n"] == {"1": 2} and isinstance(record["when"], str)


def test_formatter_is_the_python_json_logger_one() -> None:
    from pythonjsonlogger.core import BaseJsonFormatter

    assert isinstance(JsonFormatter(), BaseJsonFormatter)
    assert not isinstance(PrettyFormatter(), BaseJsonFormatter)
