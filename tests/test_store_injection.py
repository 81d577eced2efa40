"""Operator injection through every store input is a validation error naming the field, never
a query: each call below would match existing records if the value reached MongoDB as is."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from mangu.store import ValidationError
from tests.support.app import RunningApp

OPERATORS: list[Any] = [{"$gt": ""}, {"$ne": None}, {"$regex": ".*"}, ["$where"], 1, True]

S = Any  # the services, for the lambdas' annotations
BOOK = {"title": "T", "author": "A", "isbn": "9780441172719"}
BOOK_FIELDS = ("title", "author", "isbn", "genres", "published", "description")


def book_value(name: str, bad: Any) -> Any:
    # genres is a list of strings: ["$where"] is a genre named "$where", so the operator goes inside
    return [bad] if name == "genres" else bad


def calls(bad: Any) -> list[tuple[str, str, Callable[[S], Awaitable[Any]]]]:
    """(name, field expected in the error, call) for every client value of every store."""
    return [
        ("messages.append room", "room", lambda s: s.messages.append(bad, "ana", "hi", "c-1")),
        ("messages.append sender", "sender", lambda s: s.messages.append("book:1", bad, "hi", "c-1")),
        ("messages.append text", "text", lambda s: s.messages.append("book:1", "ana", bad, "c-1")),
        ("messages.append client_msg_id", "client_msg_id", lambda s: s.messages.append("book:1", "ana", "hi", bad)),
        ("messages.append_direct sender", "sender", lambda s: s.messages.append_direct(bad, "ana", "hi")),
        ("messages.append_direct recipient", "recipient", lambda s: s.messages.append_direct("ana", bad, "hi")),
        ("messages.history room", "room", lambda s: s.messages.history(bad)),
        ("messages.history before", "before", lambda s: s.messages.history("book:1", before=bad)),
        ("messages.history after", "after", lambda s: s.messages.history("book:1", after=bad)),
        ("messages.history limit", "limit", lambda s: s.messages.history("book:1", limit=bad)),
        ("users.create username", "username", lambda s: s.users.create(bad, "password123")),
        ("users.create password", "password", lambda s: s.users.create("zed", bad)),
        ("users.create roles", "roles", lambda s: s.users.create("zed", "password123", bad)),
        ("users.get id", "id", lambda s: s.users.get(bad)),
        ("users.get_by_username", "username", lambda s: s.users.get_by_username(bad)),
        ("users.authenticate username", "username", lambda s: s.users.authenticate(bad, "password123")),
        ("users.authenticate password", "password", lambda s: s.users.authenticate("ana", bad)),
        ("users.set_password id", "id", lambda s: s.users.set_password(bad, "password123")),
        ("users.set_password password", "password", lambda s: s.users.set_password("0" * 24, bad)),
        ("users.set_roles id", "id", lambda s: s.users.set_roles(bad, ["reader"])),
        ("users.set_roles roles", "roles", lambda s: s.users.set_roles("0" * 24, bad)),
        ("users.delete id", "id", lambda s: s.users.delete(bad)),
        ("users.list cursor", "cursor", lambda s: s.users.list(cursor=bad)),
        ("users.list limit", "limit", lambda s: s.users.list(limit=bad)),
        *[(f"books.create {name}", name, lambda s, name=name: s.books.create({**BOOK, name: book_value(name, bad)}))
          for name in BOOK_FIELDS],
        *[(f"books.replace {name}", name,
           lambda s, name=name: s.books.replace("0" * 24, {**BOOK, name: book_value(name, bad)}))
          for name in BOOK_FIELDS],
        ("books.replace id", "id", lambda s: s.books.replace(bad, BOOK)),
        # a dict body is read field by field: its operator key is an unknown field
        ("books.create body", next(iter(bad)) if isinstance(bad, dict) else "body", lambda s: s.books.create(bad)),
        ("books.get id", "id", lambda s: s.books.get(bad)),
        ("books.update id", "id", lambda s: s.books.update(bad, {"title": "T"})),
        *[(f"books.update {name}", name, lambda s, name=name: s.books.update("0" * 24, {name: book_value(name, bad)}))
          for name in BOOK_FIELDS],
        ("books.delete id", "id", lambda s: s.books.delete(bad)),
        ("books.list author", "author", lambda s: s.books.list(author=bad)),
        ("books.list genre", "genre", lambda s: s.books.list(genre=bad)),
        ("books.list title_prefix", "title_prefix", lambda s: s.books.list(title_prefix=bad)),
        ("books.list cursor", "cursor", lambda s: s.books.list(cursor=bad)),
        ("books.list limit", "limit", lambda s: s.books.list(limit=bad)),
    ]


@pytest.fixture
async def seeded(app: RunningApp) -> RunningApp:
    s = app.services
    await s.users.create("ana", "password123")
    await s.messages.append("book:1", "ana", "hi", "c-0")
    await s.books.create({"title": "Dune", "author": "Frank Herbert", "isbn": "9780441172719", "genres": ["sf"]})
    return app


async def test_operator_values_are_validation_errors_for_every_input(seeded: RunningApp) -> None:
    checked = 0
    for bad in OPERATORS:
        for name, field, call in calls(bad):
            if type(bad) is int and field in ("before", "after", "limit"):
                continue  # a number is a valid value there (True, a bool, is not)
            with pytest.raises(ValidationError) as err:
                await call(seeded.services)
            assert field in err.value.fields, (name, bad, err.value.fields)
            checked += 1
    assert checked > 300

