"""The demo page and static/mangu-client.js in a real headless Chromium, against server.py
children and a real MongoDB-protocol server: two readers chat (typing, messages once,
presence, direct messages), scroll-back, token renewal, the login form, leaving a room, the
offline badge after an operator's disconnect, and a server restart that the page rides out by
itself. Screenshots go to test-artifacts/.

The pages log in with tokens signed with the server's JWT secret (tests/support/browser.py,
``DemoPage.sign_in``); the login form itself is checked against the REST contract it calls.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from playwright.sync_api import Browser, expect

from tests.support.app import TEST_SECRET
from tests.support.browser import PHONE, DemoPage, chromium
from tests.support.procs import ServerProcess, free_port
from tests.support.ws import make_token

BASE = {
    "MANGU_ENV": "test", "PORT": "0", "LOG_FORMAT": "json", "LOG_LEVEL": "INFO", "JWT_SECRET": TEST_SECRET,
    "SHUTDOWN_DRAIN_MS": "200",
    "WS_MESSAGE_RATE": "200", "WS_MESSAGE_BURST": "200",  # the scroll-back test writes 70 messages at once
}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def mongo(request: pytest.FixtureRequest) -> str:
    return os.environ.get("MONGODB_URL") or request.getfixturevalue("mongo_server").url


@pytest.fixture(scope="module")
def server(mongo: str) -> Iterator[ServerProcess]:
    process = ServerProcess({**BASE, "MONGODB_URL": mongo, "MONGODB_DB": f"demo_page_{os.getpid()}"}).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def pages(browser: Browser) -> Iterator[Any]:
    """``pages(viewport=...)`` opens a DemoPage; all are closed after the test, and none may
    have logged an error or a duplicate message."""
    opened: list[DemoPage] = []

    def open_page(**kwargs: Any) -> DemoPage:
        page = DemoPage(browser, **kwargs)
        opened.append(page)
        return page

    yield open_page
    problems = [problem for page in opened for problem in page.problems]
    for page in opened:
        page.close()
    assert problems == []


def test_two_readers_chat_see_typing_presence_and_direct_messages(server: ServerProcess, pages: Any) -> None:
    base = server.url()
    # alice arrives with a token minted elsewhere, bob signs up through the form
    alice = pages().sign_in_with_token(base, "alice", room="book:42")
    bob = pages(viewport=PHONE).sign_in(base, "bob", room="book:42")

    expect(alice.page.locator("#view-title")).to_have_text("book:42")
    assert alice.page.url == f"{base}/?room=book:42"  # the token left the address bar
    expect(alice.member("bob")).to_have_attribute("data-status", "online")
    expect(bob.member("alice")).to_have_attribute("data-status", "online")
    expect(alice.page.locator("#member-count")).to_have_text("(2)")

    # bob types: alice sees it, and bob's page does not send a typing frame per keystroke
    bob.page.locator("#text").press_sequentially("Chapter 3 is wonderful", delay=40)
    expect(alice.page.locator("#typing")).to_have_text("bob is typing…")
    alice.screenshot("demo-typing-desktop")
    assert len(bob.sent("typing:start")) == 1, bob.sent("typing:start")  # 22 keys in under 2 s

    bob.page.locator("#text").press("Enter")
    for page in (alice, bob):
        expect(page.message("Chapter 3 is wonderful")).to_have_count(1)
        expect(page.page.locator(".msg.pending")).to_have_count(0)
    expect(alice.page.locator("#typing")).to_have_text("")  # sending stops the typing indicator
    alice.write("Agreed, and wait for chapter 4!")
    expect(bob.message("Agreed, and wait for chapter 4!")).to_have_count(1)
    assert alice.texts() == bob.texts() == ["Chapter 3 is wonderful", "Agreed, and wait for chapter 4!"]

    # bob goes away: alice's member list shows it
    bob.page.locator("#my-status").select_option("away")
    expect(alice.member("bob")).to_have_attribute("data-status", "away")
    expect(alice.member("bob")).to_contain_text("away")
    expect(bob.page.locator("#my-dot")).to_have_attribute("data-status", "away")
    alice.screenshot("demo-presence-desktop")

    # a direct message from the member list
    alice.member("bob").click()
    expect(alice.page.locator("#view-title")).to_have_text("@bob")
    alice.write("Psst: the author joins tonight")
    expect(alice.message("Psst: the author joins tonight")).to_have_count(1)
    conversation = bob.page.locator("#conversations li", has_text="alice")
    expect(conversation.locator(".unread")).to_have_text("1")
    conversation.click()
    expect(bob.page.locator("#view-title")).to_have_text("@alice")
    expect(bob.message("Psst: the author joins tonight")).to_have_count(1)
    bob.screenshot("demo-direct-phone")

    # bob leaves: alice sees him go
    bob.close()
    alice.page.locator("#rooms li", has_text="book:42").click()
    expect(alice.member("bob")).to_have_count(0)
    expect(alice.page.locator("#member-count")).to_have_text("(1)")


def test_concurrent_senders_show_once_in_order_and_scroll_back_loads_older(server: ServerProcess, pages: Any) -> None:
    base = server.url()
    reader = pages(viewport=PHONE).sign_in(base, "dave", room="book:1984")
    expect(reader.page.locator("#view-title")).to_have_text("book:1984")
    # four connections write 60 messages at once: their seqs interleave and may arrive out of order
    writer = pages()
    writer.page.goto(base + "/")
    writer.page.evaluate("""async ([token, count]) => {
        const { ManguClient } = await import("/static/mangu-client.js");
        const writers = [0, 1, 2, 3].map(() => new ManguClient({ token }));
        for (const w of writers) w.connect();
        await Promise.all(writers.map((w) => w.join("book:1984")));
        await Promise.all(writers.map(async (w, k) => {
            for (let i = k + 1; i <= count; i += writers.length) await w.send("book:1984", `line ${i}`);
        }));
        for (const w of writers) w.close();
    }""", [make_token("carol"), 60])
    everything = sorted(f"line {i}" for i in range(1, 61))
    expect(reader.page.locator(".message-list .msg")).to_have_count(60)
    assert reader.seqs() == list(range(1, 61))
    assert sorted(reader.texts()) == everything

    # a new visit shows the newest 50; scrolling to the top loads the rest, each once
    reader.page.reload()
    reader.expect_connected()
    expect(reader.page.locator(".message-list .msg")).to_have_count(50)
    assert reader.seqs() == list(range(11, 61))
    expect(reader.page.locator("#load-earlier")).to_be_visible()
    reader.page.locator("#messages").hover()
    reader.page.mouse.wheel(0, -20_000)
    expect(reader.page.locator(".message-list .msg")).to_have_count(60)
    assert reader.seqs() == list(range(1, 61))
    assert sorted(reader.texts()) == everything
    expect(reader.page.locator("#load-earlier")).to_be_hidden()
    reader.screenshot("demo-scroll-back-phone")


def test_client_asks_for_a_new_token_after_4001_and_before_expiry(server: ServerProcess, pages: Any) -> None:
    blank = pages()
    blank.page.goto(server.url("/"))  # not logged in: the login form, and no connection
    expired, fresh = make_token("erin", ttl=-10), make_token("erin", ttl=3600)
    # 4001 at the handshake (an expired token): the callback is asked, the client reconnects
    result = blank.page.evaluate("""async ([expired, fresh]) => {
        const { ManguClient } = await import("/static/mangu-client.js");
        const asked = [], states = [];
        const client = new ManguClient({
          token: expired, refreshToken: async ({ reason }) => { asked.push(reason); return fresh; },
        });
        client.on("state", ({ state, code }) => states.push([state, code ?? null]));
        const ready = new Promise((resolve) => client.on("ready", resolve));
        client.connect();
        const session = await ready;
        client.close();
        return { asked, states, user: session.user };
    }""", [expired, fresh])
    assert result["asked"] == ["unauthorized"]
    assert result["user"] == "erin"
    assert ["reconnecting", 4001] in result["states"]
    assert result["states"][-2:] == [["connected", None], ["offline", None]]

    # auth:expiring (60 s before exp) → auth:refresh with the callback's token, same connection
    expiring = make_token("erin", ttl=62)
    result = blank.page.evaluate("""async ([expiring, fresh]) => {
        const { ManguClient } = await import("/static/mangu-client.js");
        const asked = [];
        const client = new ManguClient({
          token: expiring, refreshToken: async ({ reason }) => { asked.push(reason); return fresh; },
        });
        const ready = new Promise((resolve) => client.on("ready", resolve));
        const renewed = new Promise((resolve) => client.on("token", resolve));
        client.connect();
        const first = (await ready).connection_id;
        const { expiresAt } = await renewed;
        const pong = await client.ping();  // the connection is still the same one, and answers
        const result = { asked, expiresAt, first, now: client.session.connection_id, pong: typeof pong.server_time };
        client.close();
        return result;
    }""", [expiring, fresh])
    assert result["asked"] == ["expiring"]
    assert result["expiresAt"] == jwt.decode(fresh, options={"verify_signature": False})["exp"]
    assert result["now"] == result["first"] and result["pong"] == "number"


def test_sign_up_log_out_and_log_in_through_the_form(server: ServerProcess, pages: Any) -> None:
    visitor = pages(viewport=PHONE)
    visitor.page.goto(server.url("/"))
    expect(visitor.page.locator("#login")).to_be_visible()
    form = visitor.page.locator

    def submit(button: str, path: str, password: str) -> Any:
        form("#username").fill("Frank")
        form("#password").fill(password)
        with visitor.page.expect_response(lambda r: r.url.endswith(path)) as answer:
            form(button).click()
        request = answer.value.request
        assert request.method == "POST" and request.headers["content-type"] == "application/json"
        assert request.post_data_json == {"username": "frank", "password": password}
        return answer.value

    # no such account yet: the server's answer is shown and the form stays
    assert submit("#login-button", "/api/auth/login", "correct horse battery").status == 401
    expect(form("#login-error")).to_be_visible()
    expect(form("#login-error")).not_to_be_empty()
    expect(form("#chat")).to_be_hidden()
    # sign up: straight into the chat, connected, as frank
    assert submit("#signup-button", "/api/auth/register", "correct horse battery").status == 201
    visitor.expect_connected()
    expect(form("#my-name")).to_have_text("frank")
    visitor.screenshot("demo-signed-up-phone")
    form("#logout").click()
    expect(form("#login")).to_be_visible()
    assert submit("#login-button", "/api/auth/login", "wrong horse battery").status == 401
    expect(form("#login-error")).to_be_visible()
    assert submit("#login-button", "/api/auth/login", "correct horse battery").status == 200
    visitor.expect_connected()
    expect(form("#login-error")).to_be_hidden()
    visitor.screenshot("demo-login-phone")


def test_leave_button_and_the_offline_badge_after_an_operator_disconnect(server: ServerProcess, pages: Any) -> None:
    alice = pages().sign_in_with_token(server.url(), "alice", room="book:11")
    bob = pages(viewport=PHONE).sign_in_with_token(server.url(), "bob", room="book:11")
    expect(bob.member("alice")).to_have_count(1)

    # Leave: the room goes from alice's page (and stays gone when she comes back); bob sees her go
    alice.page.locator("#leave").click()
    expect(alice.page.locator("#view-title")).to_have_text("Pick a room")
    expect(alice.page.locator("#rooms li")).to_have_count(0)
    expect(bob.member("alice")).to_have_count(0)
    alice.page.goto(server.url("/"))  # the page again, without ?room=
    alice.expect_connected()
    expect(alice.page.locator("#rooms li")).to_have_count(0)

    # An operator disconnects bob: the badge says offline, the notice says why, and it stays so
    request = urllib.request.Request(
        server.url("/api/admin/disconnect"), data=json.dumps({"user_id": "bob"}).encode(), method="POST",
        headers={"Content-Type": "application/json",
                 "Authorization": f"Bearer {make_token('root', roles=['admin'])}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert json.load(answer)["disconnected"] == 1
    expect(bob.badge).to_have_text("offline")
    expect(bob.badge).to_have_attribute("data-state", "offline")
    expect(bob.page.locator("#notice")).to_have_text("You were disconnected by the server.")
    bob.page.wait_for_timeout(1500)  # longer than the first reconnect delays: it does not come back
    expect(bob.badge).to_have_text("offline")
    assert len(bob.sent("join:room")) == 1  # joined once, never again
    bob.screenshot("demo-disconnected-phone")


def test_page_rides_out_a_server_restart_and_shows_what_it_missed_once(
    browser: Browser, pages: Any, mongo: str, tmp_path: Path
) -> None:
    # Two processes of one cluster share MongoDB: node 1 is restarted (fixed port, persistent
    # DATA_DIR), node 2 keeps serving meanwhile.
    env = {**BASE, "MONGODB_URL": mongo, "MONGODB_DB": f"demo_restart_{os.getpid()}"}
    node1_env = {**env, "PORT": str(free_port()), "DATA_DIR": str(tmp_path / "node1")}
    node1 = ServerProcess(node1_env).start()
    node2 = ServerProcess(env).start()
    try:
        alice = pages().sign_in(node1.url(), "alice", room="book:7")
        bob = pages(viewport=PHONE).sign_in(node2.url(), "bob", room="book:7")
        alice.write("Before the restart")
        expect(alice.message("Before the restart")).to_have_count(1)

        node1.signal(signal.SIGTERM)  # system:shutdown, then close 1001
        expect(alice.badge).to_have_text("reconnecting…")
        expect(alice.page.locator("#notice")).to_have_text("The server is restarting; reconnecting…")
        assert node1.wait(15) == 0

        for text in ("Missed one", "Missed two", "Missed three"):
            bob.write(text)
            expect(bob.message(text)).to_have_count(1)
        expect(bob.page.locator(".msg.pending")).to_have_count(0)
        alice.write("Written while offline")  # kept, and sent once the server is back
        pending = alice.page.locator(".msg.pending")
        expect(pending).to_have_count(1)
        client_msg_id = pending.get_attribute("data-client-msg-id")
        alice.screenshot("demo-restart-offline-desktop")

        node1 = ServerProcess(node1_env).start()  # same port, same data
        alice.expect_connected(timeout=30_000)
        expect(alice.message("Written while offline")).to_have_count(1)
        expect(alice.page.locator(".msg.pending")).to_have_count(0)
        expected = ["Before the restart", "Missed one", "Missed two", "Missed three", "Written while offline"]
        assert alice.texts() == expected
        sent = alice.message("Written while offline")
        assert sent.get_attribute("data-client-msg-id") == client_msg_id  # the retry, not a copy
        expect(alice.page.locator("#notice")).to_be_hidden()

        # the room was joined again: bob, now on node 1 too, is seen and heard live
        bob.sign_in(node1.url(), "bob", room="book:7")
        expect(alice.member("bob")).to_have_attribute("data-status", "online")
        expect(bob.message("Written while offline")).to_have_count(1)
        bob.write("Back again")
        expect(alice.message("Back again")).to_have_count(1)
        assert alice.texts() == [*expected, "Back again"]
        assert bob.texts() == [*expected, "Back again"]
        assert alice.seqs() == list(range(1, 7))
        alice.screenshot("demo-restart-reconnected-desktop")
    finally:
        node1.stop()
        node2.stop()
