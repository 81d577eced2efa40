"""The books catalogue against a real nx-27017 (or MONGODB_URL): ISBNs, validation, updates,
filters, title prefix search and pagination that holds under concurrent inserts."""

from __future__ import annotations

import asyncio

import pytest

from mangu.store import Conflict, NotFound, ValidationError
from mangu.store.books import isbn13
from tests.support.app import RunningApp

DUNE = {"title": "Dune", "author": "Frank Herbert", "isbn": "0-441-17271-7", "genres": ["SF", "classic"],
        "published": "1965-08-01", "description": "Spice."}


def test_isbn_normalization() -> None:
    assert isbn13("0-441-17271-7") == "9780441172719"
    assert isbn13("978-0-441-17271-9") == "9780441172719"
    assert isbn13("0-8044-2957-X") == "9780804429573"
    assert isbn13("0-441-17271-8") is None  # bad check digit
    assert isbn13("978-0-441-17271-0") is None
    assert isbn13("12345") is None


async def test_create_get_update_delete(app: RunningApp) -> None:
    books = app.services.books
    dune = await books.create(DUNE)
    assert dune["isbn"] == "9780441172719"
    assert dune["genres"] == ["sf", "classic"]
    assert dune["published"] == "1965-08-01"
    assert await books.get(dune["id"]) == dune

    updated = await books.update(dune["id"], {"description": "Spice must flow.", "genres": ["sf"]})
    assert (updated["description"], updated["genres"], updated["title"]) == ("Spice must flow.", ["sf"], "Dune")
    assert updated["updated_at"] >= dune["updated_at"]

    await books.delete(dune["id"])
    with pytest.raises(NotFound):
        await books.get(dune["id"])
    with pytest.raises(NotFound):
        await books.update(dune["id"], {"title": "Gone"})


async def test_isbn_is_unique_in_either_form(app: RunningApp) -> None:
    books = app.services.books
    await books.create(DUNE)
    with pytest.raises(Conflict) as err:
        await books.create({**DUNE, "isbn": "978-0441172719"})
    assert err.value.field == "isbn"
    other = await books.create({**DUNE, "title": "Dune Messiah", "isbn": "9780441172696"})
    with pytest.raises(Conflict):
        await books.update(other["id"], {"isbn": "0441172717"})


async def test_every_invalid_field_is_reported(app: RunningApp) -> None:
    with pytest.raises(ValidationError) as err:
        await app.services.books.create({
            "title": "", "author": 7, "isbn": "0-441-17271-8", "genres": "sf", "published": "1965-02-30",
            "description": "x" * 5001, "rating": 5,
        })
    assert set(err.value.fields) == {"title", "author", "isbn", "genres", "published", "description", "rating"}
    assert err.value.fields["rating"] == "unknown field"
    assert err.value.fields["published"] == "not a calendar date; expected YYYY-MM-DD"
    with pytest.raises(ValidationError) as err:
        await app.services.books.create({"title": "Only a title"})
    assert set(err.value.fields) == {"author", "isbn"}
    with pytest.raises(ValidationError) as err:
        await app.services.books.update("0" * 24, {})
    assert "body" in err.value.fields


async def test_filters_and_title_prefix_search(app: RunningApp) -> None:
    books = app.services.books
    await books.create(DUNE)
    await books.create({"title": "Dune Messiah", "author": "Frank Herbert", "isbn": "9780441172696", "genres": ["sf"]})
    await books.create({"title": "Emma", "author": "Jane Austen", "isbn": "9780141439587", "genres": ["classic"]})
    await books.create({"title": "C++ (a.k.a. C plus plus)", "author": "B. Stroustrup", "isbn": "9780321563842"})

    async def titles(**filters) -> list[str]:
        return [b["title"] for b in (await books.list(**filters)).items]

    assert await titles(author="frank herbert") == ["Dune", "Dune Messiah"]
    assert await titles(genre="Classic") == ["Dune", "Emma"]
    assert await titles(title_prefix="dune m") == ["Dune Messiah"]
    assert await titles(title_prefix="DUNE") == ["Dune", "Dune Messiah"]
    assert await titles(author="Frank Herbert", genre="classic") == ["Dune"]
    # regular-expression characters in a prefix are plain text
    assert await titles(title_prefix="c++ (a.k") == ["C++ (a.k.a. C plus plus)"]
    assert await titles(title_prefix=".*") == []
    assert await titles(author="nobody") == []


async def test_pagination_is_stable_under_concurrent_inserts(app: RunningApp) -> None:
    books = app.services.books

    def isbn(n: int) -> str:
        first12 = f"978000{n:06d}"
        total = sum(int(c) * (3 if i % 2 else 1) for i, c in enumerate(first12))
        return first12 + str((10 - total % 10) % 10)

    original = [(await books.create({"title": f"Book {n}", "author": "A", "isbn": isbn(n)}))["id"] for n in range(20)]
    seen: list[str] = []
    cursor = None
    n = 100
    while True:
        page, *_ = await asyncio.gather(
            books.list(cursor=cursor, limit=6),
            *(books.create({"title": f"Book {n + k}", "author": "A", "isbn": isbn(n + k)}) for k in range(3)),
        )
        n += 3
        seen.extend(b["id"] for b in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert len(seen) == len(set(seen))  # nothing twice
    assert set(original) <= set(seen)  # nothing that existed before was skipped
    assert seen[:20] == original  # in creation order


async def test_bad_list_arguments(app: RunningApp) -> None:
    with pytest.raises(ValidationError) as err:
        await app.services.books.list(author="", genre=["sf"], cursor="AAAA", limit=500)
    assert set(err.value.fields) == {"author", "genre", "cursor", "limit"}
