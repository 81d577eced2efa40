"""Injection attempts through every query parameter, path parameter and body field of the REST
API: each gets a precise 4xx naming what was wrong, or is taken as the literal text it is;
none reaches MongoDB as an operator, none finds records it should not, none is a 500."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from tests.support.api import UNLIMITED, call, error_of
from tests.support.app import RunningApp
from tests.support.ws import WSClient, make_token

OPERATORS: list[Any] = [{"$gt": ""}, {"$ne": None}, {"$regex": ".*"}, ["$where"], True]
QUERY_TEXT = ['{"$ne": null}', "$where", ".*", "^D", "\\", "' OR '1'='1", "a\u0000b"]
BOOK = {"title": "Dune", "author": "Frank Herbert", "isbn": "9780441172719"}


@pytest.fixture
async def seeded(start_app) -> RunningApp:
    app = await start_app(**UNLIMITED)
    await app.services.users.create("ann", "correct horse battery", ["admin"])
    status, _, _ = await call(app, "POST", "/api/books", BOOK, as_user="root", roles=("admin",))
    assert status == 201
    return app


def body_fields() -> list[tuple[str, str, dict[str, Any], str]]:
    """(method, path, a valid body, field to tamper with) for every body field of the API."""
    return [
        ("POST", "/api/auth/login", {"username": "ann", "password": "correct horse battery"}, "username"),
        ("POST", "/api/auth/login", {"username": "ann", "password": "correct horse battery"}, "password"),
        ("POST", "/api/auth/register", {"username": "zed", "password": "password123"}, "username"),
        ("POST", "/api/auth/register", {"username": "zed", "password": "password123"}, "password"),
        *[("POST", "/api/books", {**BOOK, "isbn": "0-306-40615-2"}, name)
          for name in ("title", "author", "isbn", "genres", "published", "description")],
        *[("PATCH", "/api/books/{id}", {"title": "Dune"}, name)
          for name in ("title", "author", "isbn", "genres", "published", "description")],
        *[("PUT", "/api/books/{id}", dict(BOOK), name)
          for name in ("title", "author", "isbn", "genres", "published", "description")],
        *[("POST", "/api/admin/publish", {"target": "room", "id": "book:1", "event": "system:x", "data": {}}, name)
          for name in ("target", "id", "event")],
        *[("POST", "/api/admin/disconnect", {"user_id": "bob", "reason": "bye"}, name)
          for name in ("user_id", "reason")],
    ]


@pytest.mark.parametrize("bad", OPERATORS, ids=["gt", "ne", "regex", "list", "bool"])
async def test_operators_in_any_body_field_are_a_400_naming_the_field(seeded: RunningApp, bad: Any) -> None:
    _, books, _ = await call(seeded, "GET", "/api/books", as_user="rita")
    book_id = books["items"][0]["id"]
    fields_checked = body_fields()
    if not isinstance(bad, dict):  # a dict is an object, which publish's data is: see the test below
        fields_checked.append(("POST", "/api/admin/publish",
                               {"target": "room", "id": "book:1", "event": "system:x"}, "data"))
    for method, path, body, name in fields_checked:
        value = [bad] if name == "genres" else bad  # genres is a list: the operator goes inside it
        status, payload, _ = await call(seeded, method, path.format(id=book_id), {**body, name: value},
                                        as_user="root", roles=("admin",))
        fields = error_of(status, payload, 400, "invalid_input")["fields"]
        assert name in fields, (method, path, name, fields)
    # Nothing was changed or created on the way.
    _, after, _ = await call(seeded, "GET", "/api/books", as_user="rita")
    assert after["items"] == books["items"]
    assert [u["username"] for u in (await seeded.services.users.list()).items] == ["ann"]


async def test_a_body_that_is_itself_an_operator_is_refused(seeded: RunningApp) -> None:
    for method, path in (("POST", "/api/books"), ("POST", "/api/admin/publish"), ("POST", "/api/admin/disconnect"),
                         ("POST", "/api/auth/register")):
        status, payload, _ = await call(seeded, method, path, {"$where": "1 == 1"}, as_user="root", roles=("admin",))
        assert "$where" in error_of(status, payload, 400, "invalid_input")["fields"], path


async def test_publish_data_with_operator_keys_reaches_subscribers_as_plain_data(seeded: RunningApp) -> None:
    # data is never queried nor stored: an admin's object, "$" keys and all, is what members get
    data = {"$where": "1 == 1", "$gt": {"$ne": None}, "list": [{"$regex": ".*"}]}
    member = await WSClient.connect(seeded.ws_url(), make_token("bob"))
    try:
        await member.ok("join:room", {"room": "book:1"})
        status, payload, _ = await call(seeded, "POST", "/api/admin/publish",
                                        {"target": "room", "id": "book:1", "event": "system:notice", "data": data},
                                        as_user="root", roles=("admin",))
        assert status == 202 and payload["local_deliveries"] == 1
        assert (await member.expect("system:notice"))["data"] == data
    finally:
        await member.close()


@pytest.mark.parametrize("name", ["author", "genre", "title_prefix", "cursor", "limit"])
async def test_book_query_parameters_are_literal_or_refused(seeded: RunningApp, name: str) -> None:
    for text in QUERY_TEXT:
        status, payload, _ = await call(seeded, "GET", f"/api/books?{name}={quote(text)}", as_user="rita")
        if name in ("cursor", "limit"):
            assert name in error_of(status, payload, 400, "invalid_input")["fields"]
        else:
            assert status == 200 and payload["items"] == [], (name, text)  # matched as text: nothing is
    # PHP/Express-style nested parameters are unknown parameters, not operators.
    status, payload, _ = await call(seeded, "GET", f"/api/books?{name}%5B%24ne%5D=x", as_user="rita")
    assert f"{name}[$ne]" in error_of(status, payload, 400, "invalid_input")["fields"]


@pytest.mark.parametrize("name", ["before", "after", "limit"])
async def test_history_query_parameters_are_integers_or_refused(seeded: RunningApp, name: str) -> None:
    for text in QUERY_TEXT + ['{"$gt": 0}', "1e3", "0x10"]:
        status, payload, _ = await call(seeded, "GET", f"/api/rooms/book:1/messages?{name}={quote(text)}",
                                        as_user="rita")
        assert error_of(status, payload, 400, "invalid_input")["fields"] == {name: "expected an integer"}
    status, payload, _ = await call(seeded, "GET", f"/api/rooms/book:1/messages?{name}%5B%24gt%5D=0", as_user="rita")
    assert f"{name}[$gt]" in error_of(status, payload, 400, "invalid_input")["fields"]


async def test_path_parameters_are_validated_before_any_query(seeded: RunningApp) -> None:
    for text in QUERY_TEXT + ['{"$gt": ""}']:
        segment = quote(text, safe="")
        error_of(*(await call(seeded, "GET", f"/api/books/{segment}", as_user="rita"))[:2], 404, "not_found")
        for path in (f"/api/rooms/{segment}/messages", f"/api/rooms/{segment}/presence", f"/api/presence/{segment}"):
            status, payload, _ = await call(seeded, "GET", path, as_user="rita")
            assert status == 400, (path, payload)
