"""static/mangu-client.js in a real headless Chromium against the in-process app, through a
TCP relay that plays the network: a send whose connection is lost before its ack is sent
again and stored and shown once; the server's refusals reach send()'s caller; reconnect
attempts back off with jitter; a room left stays left across a reconnect."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from playwright.async_api import Page

from tests.support.app import RunningApp
from tests.support.browser import client_page, until
from tests.support.relay import TcpRelay

RECONNECT = {"initial": 100, "factor": 2, "max": 1600}


@pytest.fixture
def relay(app: RunningApp) -> Iterator[TcpRelay]:
    """The network between the browser and the app: the page itself is loaded through it too,
    so the socket's Origin is the page's own."""
    relay = TcpRelay(app.port).start()
    try:
        yield relay
    finally:
        relay.close()


@pytest.fixture
async def page(relay: TcpRelay) -> AsyncIterator[Page]:
    """One ManguClient connected as ``gina`` and joined to ``book:5``, through the relay."""
    async with client_page(f"http://127.0.0.1:{relay.port}", "gina", "book:5", reconnect=RECONNECT) as page:
        yield page


def rooms_of(app: RunningApp, user: str) -> set[str]:
    return app.services.hub.local_rooms_by_user().get(user, set())


async def connected_again(page: Page) -> bool:
    states = await page.evaluate("window.states")
    return any(s[0] == "reconnecting" for s in states) and states[-1][0] == "connected"


async def test_a_send_cut_off_before_its_ack_is_sent_again_stored_once_and_shown_once(
    app: RunningApp, relay: TcpRelay, page: Page
) -> None:
    relay.hold()  # the server's answers no longer reach the browser...
    await page.evaluate("() => { window.sending = window.client.send('book:5', 'Lost in the post'); }")
    messages = app.services.messages

    async def stored() -> list[dict[str, Any]]:
        return await messages.history("book:5")

    await until(stored, what="the message to be stored")  # ...so the frame went out, the ack did not come back
    relay.cut()  # the link drops: the ack and message:received are lost with it

    ack = await page.evaluate("window.sending")  # settled only by the retry on the next connection
    assert ack["seq"] == 1 and ack["room"] == "book:5"
    history = await messages.history("book:5")
    assert [(m["text"], m["seq"]) for m in history] == [("Lost in the post", 1)]
    shown = await page.evaluate("window.shown")
    assert [(m["text"], m["seq"]) for m in shown] == [("Lost in the post", 1)]
    sends = [f["data"] for f in await page.evaluate("window.sent") if f["event"] == "message:send"]
    assert len(sends) == 2 and sends[0] == sends[1]  # the same client_msg_id, text and room
    assert ["reconnecting", 1006, None] in await page.evaluate("window.states")
    assert await page.evaluate("window.client.unsent") == []


async def test_send_to_a_room_not_joined_rejects_with_the_servers_code(app: RunningApp, page: Page) -> None:
    error = await page.evaluate("""window.client.send('book:99', 'Anyone here?').then(
        () => null, (err) => ({ name: err.name, code: err.code, message: err.message }))""")
    assert error["name"] == "ManguError" and error["code"] == "not_member" and error["message"]
    assert await page.evaluate("window.client.unsent") == []  # not kept for a retry
    assert await app.services.messages.history("book:99") == []
    # the connection is unharmed: a send to the joined room goes through
    assert (await page.evaluate("window.client.send('book:5', 'Here instead')"))["seq"] == 1


async def test_backoff_grows_to_its_cap_with_jitter(page: Page) -> None:
    delays = await page.evaluate("""async () => {
        const { backoffDelay } = await import("/static/mangu-client.js");
        const options = { initial: 500, factor: 2, max: 10000 };
        const attempts = [0, 1, 2, 3, 4, 5, 6, 7];
        return {
            low: attempts.map((n) => backoffDelay(n, options, () => 0)),
            high: attempts.map((n) => backoffDelay(n, options, () => 0.999999)),
            drawn: Array.from({ length: 40 }, () => backoffDelay(3, options)),
        };
    }""")
    ceilings = [500, 1000, 2000, 4000, 8000, 10000, 10000, 10000]
    assert delays["low"] == [c // 2 for c in ceilings]  # half of each delay is fixed...
    assert delays["high"] == ceilings  # ...the other half random
    assert all(2000 <= d <= 4000 for d in delays["drawn"])
    assert len(set(delays["drawn"])) > 5  # clients of one restarted server do not come back together


async def test_observed_retry_delays_back_off_while_the_server_is_unreachable(relay: TcpRelay, page: Page) -> None:
    relay.refuse()  # every reconnect attempt is refused...
    relay.cut()  # ...from the moment the link drops

    async def five_attempts() -> list[dict[str, Any]]:
        details = await page.evaluate("window.details")
        waits = [d for d in details if d["state"] == "reconnecting" and "retryIn" in d]
        return waits if len(waits) >= 5 else []

    waits = await until(five_attempts, timeout=30, what="five reconnect attempts")
    for n, wait in enumerate(waits[:5]):
        ceiling = min(RECONNECT["max"], RECONNECT["initial"] * RECONNECT["factor"] ** n)
        assert wait["attempt"] == n + 1
        assert ceiling / 2 <= wait["retryIn"] <= ceiling, (n, wait)
    relay.start()  # reachable again: the next attempt connects
    await until(lambda: connected_again(page), timeout=15, what="the client to connect again")


async def test_a_room_left_is_not_joined_again_after_a_reconnect(app: RunningApp, relay: TcpRelay, page: Page) -> None:
    await page.evaluate("window.client.join('book:6')")
    assert rooms_of(app, "gina") == {"book:5", "book:6"}

    assert await page.evaluate("window.client.leave('book:5')") == {"room": "book:5"}
    assert rooms_of(app, "gina") == {"book:6"}
    error = await page.evaluate("window.client.send('book:5', 'Still here?').then(() => null, (err) => err.code)")
    assert error == "not_member"

    relay.cut()
    await until(lambda: connected_again(page), timeout=15, what="the client to reconnect")
    await until(lambda: _rooms_are(app, {"book:6"}), what="book:6 to be joined again")
    assert (await page.evaluate("window.client.send('book:6', 'Only here')"))["room"] == "book:6"


async def _rooms_are(app: RunningApp, rooms: set[str]) -> bool:
    return rooms_of(app, "gina") == rooms
