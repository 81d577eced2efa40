"""The demo page and the client's files over HTTP: types, security headers, revalidation,
JSON errors, and the ENABLE_DEMO_PAGE switch (off by default in production)."""

from __future__ import annotations

import asyncio
import re

from tests.support.app import RunningApp, json_body


async def test_page_and_its_files_are_served_with_a_policy_that_allows_only_themselves(app: RunningApp) -> None:
    page = await app.fetch("/")
    assert page.code == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    html = page.body.decode()
    assert "<title>MANGU live rooms</title>" in html
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "style-src 'self'" in csp
    assert "connect-src 'self' ws: wss:" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Cache-Control"] == "no-cache"
    assert "<script>" not in html and " style=" not in html  # nothing inline: the policy would block it

    # every file the page loads is there, with a type a browser accepts under nosniff
    types = {"js": "text/javascript", "css": "text/css"}
    for path in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
        answer = await app.fetch(path)
        assert answer.code == 200, path
        assert answer.headers["Content-Type"] == f"{types[path.rsplit('.', 1)[1]]}; charset=utf-8"
    client = await app.fetch("/static/mangu-client.js")
    assert client.code == 200 and b"export class ManguClient" in client.body
    assert (await app.fetch("/", method="HEAD")).code == 200


async def test_unchanged_files_are_revalidated_with_304(app: RunningApp) -> None:
    first = await app.fetch("/static/mangu-client.js")
    again = await app.fetch("/static/mangu-client.js", headers={"If-None-Match": first.headers["Etag"]})
    assert again.code == 304 and again.body == b""


async def test_missing_files_and_paths_outside_static_answer_json(app: RunningApp) -> None:
    missing = await app.fetch("/static/nothing-here.js")
    assert missing.code == 404
    assert json_body(missing)["error"]["code"] == "not_found"
    assert "Content-Security-Policy" in missing.headers
    assert missing.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"
    # a raw request, so that nothing normalizes the ../ on the way
    for path in ("/static/../server.py", "/static/..%2fserver.py", "/static/%2e%2e/mangu/config.py"):
        status, body = await _raw_get(app.port, path)
        assert status in (403, 404), (path, status)
        assert b'"error"' in body and b"import" not in body


async def test_demo_page_off_means_404_for_the_page_and_its_files(start_app) -> None:
    off = await start_app(ENABLE_DEMO_PAGE="false")
    production = await start_app(MANGU_ENV="production")  # off by default there
    for app in (off, production):
        for path in ("/", "/static/mangu-client.js", "/static/index.html"):
            answer = await app.fetch(path)
            assert answer.code == 404, (path, answer.code)
            assert json_body(answer)["error"]["code"] == "not_found"


async def _raw_get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body
