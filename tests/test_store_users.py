"""User accounts against a real nx-27017 (or MONGODB_URL): unique usernames, scrypt hashes,
authentication that does not tell unknown users from wrong passwords, roles, paging."""

from __future__ import annotations

import statistics
import time

import pytest

from mangu.store import Conflict, NotFound, ValidationError
from tests.support.app import RunningApp


async def test_create_get_and_unique_username(app: RunningApp) -> None:
    users = app.services.users
    ana = await users.create("Ana", "correct horse battery", ["author", "reader"])
    assert ana["username"] == "ana"
    assert ana["roles"] == ["author", "reader"]
    assert "password_hash" not in ana and "password" not in ana
    assert ana["created_at"] == ana["updated_at"]
    assert await users.get(ana["id"]) == ana
    assert await users.get_by_username("ANA") == ana

    with pytest.raises(Conflict) as err:
        await users.create("ana", "another password")
    assert err.value.field == "username"
    default = await users.create("bob", "password123")
    assert default["roles"] == ["reader"]


async def test_authenticate_right_wrong_and_unknown(app: RunningApp) -> None:
    users = app.services.users
    ana = await users.create("ana", "correct horse battery")
    assert (await users.authenticate("Ana", "correct horse battery"))["id"] == ana["id"]
    assert await users.authenticate("ana", "wrong horse battery") is None
    assert await users.authenticate("nobody", "correct horse battery") is None
    assert await users.authenticate("x", "too short a name") is None


async def test_unknown_user_costs_as_much_as_a_wrong_password(app: RunningApp) -> None:
    users = app.services.users
    await users.create("ana", "correct horse battery")

    async def timed(username: str) -> float:
        started = time.perf_counter()
        assert await users.authenticate(username, "wrong horse battery") is None
        return time.perf_counter() - started

    wrong = statistics.median([await timed("ana") for _ in range(5)])
    unknown = statistics.median([await timed("nobody") for _ in range(5)])
    # Both run one scrypt check (tens of ms); an early return for unknown users would be ~1 ms.
    assert wrong > 0.005
    assert 0.5 < unknown / wrong < 2.0


async def test_set_password_roles_and_delete(app: RunningApp) -> None:
    users = app.services.users
    ana = await users.create("ana", "first password")
    await users.set_password(ana["id"], "second password")
    assert await users.authenticate("ana", "first password") is None
    assert await users.authenticate("ana", "second password") is not None

    editor = await users.set_roles(ana["id"], ["editor", "editor", "admin"])
    assert editor["roles"] == ["editor", "admin"]
    assert editor["updated_at"] >= editor["created_at"]

    await users.delete(ana["id"])
    with pytest.raises(NotFound):
        await users.get(ana["id"])
    with pytest.raises(NotFound):
        await users.delete(ana["id"])
    assert await users.authenticate("ana", "second password") is None
    with pytest.raises(NotFound):
        await users.get("not-an-id")


async def test_list_pages_through_every_user_once(app: RunningApp) -> None:
    users = app.services.users
    created = [(await users.create(f"user{i:02d}", "password123"))["id"] for i in range(7)]
    seen: list[str] = []
    cursor = None
    while True:
        page = await users.list(cursor=cursor, limit=3)
        seen.extend(u["id"] for u in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == created


async def test_invalid_values_are_reported_per_field(app: RunningApp) -> None:
    users = app.services.users
    with pytest.raises(ValidationError) as err:
        await users.create("a", "short", ["reader", "overlord"])
    assert set(err.value.fields) == {"username", "password", "roles"}
    assert "overlord" in err.value.fields["roles"]
    with pytest.raises(ValidationError) as err:
        await users.create("ana", "password123", [])
    assert err.value.fields == {"roles": "expected at least one role"}
    with pytest.raises(ValidationError) as err:
        await users.list(cursor="garbage", limit=0)
    assert set(err.value.fields) == {"cursor", "limit"}
