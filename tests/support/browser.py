"""Headless Chromium through Playwright's sync API, and the demo page opened as one user.

The browser is Debian's (``/usr/bin/chromium``, installed by scripts/bootstrap); Playwright
never downloads one. The flags keep Chromium from reaching for the network, which this
machine does not have (it would stall on refused connections).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from playwright.async_api import Page as AsyncPage
from playwright.async_api import async_playwright
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.support.procs import ROOT
from tests.support.ws import make_token

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # tests run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"
DESKTOP = {"width": 1100, "height": 720}
PHONE = {"width": 390, "height": 844}


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium; each ``new_context()`` of it is a fresh profile (own storage)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@asynccontextmanager
async def client_page(base_url: str, user: str, room: str, **options: Any) -> AsyncIterator[AsyncPage]:
    """A page of ``base_url`` (the demo page, not logged in) with one ManguClient connected as
    ``user`` and joined to ``room``, through Playwright's async API (for tests whose app runs
    in their own event loop). In the page: ``window.client``; ``window.states``, every state
    change as ``[state, code, reason]``; ``window.details``, the same events whole;
    ``window.shown``, every ``message`` event; ``window.sent``, every frame handed to a
    socket, parsed. ``options`` go to the ManguClient."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{base_url}/")
            await page.evaluate("""async ([token, room, options]) => {
                const { ManguClient } = await import("/static/mangu-client.js");
                window.sent = [];
                const send = WebSocket.prototype.send;
                WebSocket.prototype.send = function (data) {
                    window.sent.push(JSON.parse(data));
                    return send.call(this, data);
                };
                const client = new ManguClient({ token, ...options });
                window.states = [];
                window.details = [];
                window.shown = [];
                window.client = client;
                client.on("state", (detail) => {
                    window.details.push(detail);
                    window.states.push([detail.state, detail.code ?? null, detail.reason ?? null]);
                });
                client.on("message", (message) => window.shown.push(message));
                client.connect();
                await client.join(room);
            }""", [make_token(user), room, options])
            yield page
        finally:
            await browser.close()


async def until(predicate: Callable[[], Awaitable[Any]], timeout: float = 10.0, what: str = "") -> Any:
    """Await until the async ``predicate()`` is true (its value is returned)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (result := await predicate()):
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what or predicate}"
        await asyncio.sleep(0.05)
    return result


PASSWORD = "correct horse battery staple"


class DemoPage:
    """The demo page in a browser context of its own. ``problems`` collects uncaught errors
    and the warnings the page's own scripts log (a duplicate message, for one);
    ``sent_frames`` every WebSocket frame the page sent, parsed."""

    def __init__(self, browser: Browser, viewport: dict[str, int] = DESKTOP) -> None:
        self.context = browser.new_context(viewport=viewport)
        self.context.set_default_timeout(15_000)
        self.page: Page = self.context.new_page()
        self.problems: list[str] = []
        self.sent_frames: list[dict[str, Any]] = []
        self.page.on("pageerror", lambda exc: self.problems.append(f"uncaught: {exc}"))
        self.page.on("console", self._console)
        self.page.on("websocket", lambda ws: ws.on("framesent", self._frame_sent))

    def _console(self, message: Any) -> None:
        source = (message.location or {}).get("url", "")
        if message.type in ("error", "warning") and source.endswith((".js", ".html", "/")):
            if "WebSocket connection to" not in message.text:  # the browser's own note on a refused reconnect
                self.problems.append(f"{message.type}: {message.text}")

    def _frame_sent(self, payload: str | bytes) -> None:
        if isinstance(payload, str):
            self.sent_frames.append(json.loads(payload))

    # -- logging in

    def sign_in(self, base_url: str, user: str, room: str | None = None) -> DemoPage:
        """Open the page and sign in as ``user`` through the form, as a new reader would: sign
        up, or log in when the account exists already (a second tab of the same user)."""
        query = f"?room={room}" if room else ""
        self.page.goto(f"{base_url}/{query}")
        self.page.locator("#username").fill(user)
        self.page.locator("#password").fill(PASSWORD)
        with self.page.expect_response(lambda r: r.url.endswith("/api/auth/register")) as answer:
            self.page.locator("#signup-button").click()
        if answer.value.status == 409:
            with self.page.expect_response(lambda r: r.url.endswith("/api/auth/login")) as answer:
                self.page.locator("#login-button").click()
        assert answer.value.status in (200, 201), answer.value.text()
        self.expect_connected()
        return self

    def sign_in_with_token(self, base_url: str, user: str, room: str | None = None) -> DemoPage:
        """Open the page with a token minted elsewhere (``/#token=...``), for a system that keeps
        its own login."""
        query = f"?room={room}" if room else ""
        self.page.goto(f"{base_url}/{query}#token={make_token(user, roles=['reader'])}")
        self.expect_connected()
        return self

    # -- what the user sees

    @property
    def badge(self) -> Any:
        return self.page.locator("#badge")

    def expect_connected(self, timeout: float = 15_000) -> None:
        expect(self.badge).to_have_text("connected", timeout=timeout)

    def member(self, user: str) -> Any:
        return self.page.locator(f"#members li[data-user='{user}']")

    def message(self, text: str) -> Any:
        """The messages of the current view whose text is exactly ``text``."""
        return self.page.locator(".message-list .msg", has=self.page.locator(".text", has_text=re.compile(
            f"^{re.escape(text)}$")))

    def texts(self) -> list[str]:
        """The texts of the current view's messages, top to bottom."""
        return self.page.locator(".message-list .msg .text").all_inner_texts()

    def seqs(self) -> list[int]:
        return [int(s) for s in self.page.locator(".message-list .msg[data-seq]").evaluate_all(
            "items => items.map(i => i.dataset.seq)")]

    def write(self, text: str, delay: float = 0) -> None:
        """Type ``text`` into the composer as a person would (``delay`` ms between keys) and send it."""
        self.page.locator("#text").press_sequentially(text, delay=delay)
        self.page.locator("#text").press("Enter")

    def sent(self, event: str) -> list[dict[str, Any]]:
        return [f for f in self.sent_frames if f.get("event") == event]

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()

