"""static/mangu-client.js in a real headless Chromium against the in-process app: how it
honours the server's close codes (reconnect on 1013 and re-join, stay closed on 4003 and
1008). The server closes the connections through its hub, as an operator's action or the
overload guard would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Page

from tests.support.app import RunningApp
from tests.support.browser import client_page, until


@pytest.fixture
async def page(app: RunningApp) -> AsyncIterator[Page]:
    """One ManguClient connected as ``gina`` and joined to ``book:5``."""
    async with client_page(app.url(), "gina", "book:5", reconnect={"initial": 100, "max": 400}) as page:
        yield page


async def states(page: Page) -> list[list[Any]]:
    return await page.evaluate("window.states")


async def test_1013_reconnects_and_rejoins_the_room(app: RunningApp, page: Page) -> None:
    hub = app.services.hub
    assert hub.user_connection_count("gina") == 1
    first = next(iter(hub.room_members("book:5")))
    first.close_connection(1013, "try again later")
    await until(lambda: _rejoined(app, first))
    seen = await states(page)
    assert ["reconnecting", 1013, None] in seen
    assert seen[-1][0] == "connected"
    # the new connection is a member again: it can send there
    sent = await page.evaluate("window.client.send('book:5', 'back in the room')")
    assert sent["seq"] == 1


async def _rejoined(app: RunningApp, old: Any) -> bool:
    members = app.services.hub.room_members("book:5")
    return bool(members) and old not in members


@pytest.mark.parametrize(("code", "reason"), [(4003, "forbidden"), (1008, "ended")])
async def test_4003_and_1008_leave_the_client_offline(app: RunningApp, page: Page, code: int, reason: str) -> None:
    hub = app.services.hub
    if code == 4003:
        assert hub.disconnect_user("gina") == 1  # what an operator's disconnect does
    else:
        next(iter(hub.room_members("book:5"))).close_connection(1008, "too many connections for this user")
    await until(lambda: _offline(page))
    await asyncio.sleep(1.0)  # well past the longest backoff: nothing comes back
    assert hub.user_connection_count("gina") == 0
    seen = await states(page)
    assert seen[-1] == ["offline", code, reason]
    assert not any(state == "reconnecting" for state, *_ in seen)
    # what is written now fails at once, saying why
    error = await page.evaluate("window.client.send('book:5', 'hello?').then(() => null, (err) => err.code)")
    assert error == ("forbidden" if code == 4003 else "closed")


async def _offline(page: Page) -> bool:
    seen = await states(page)
    return bool(seen) and seen[-1][0] == "offline"
