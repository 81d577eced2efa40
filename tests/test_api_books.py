"""The books catalogue over real HTTP: every endpoint's success and error answers, roles,
ETags, filters, pagination that holds while books are being added, and the rate limit."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.support.api import UNLIMITED, call, error_of
from tests.support.procs import MongoProcess

DUNE = {"title": "Dune", "author": "Frank Herbert", "isbn": "0-441-17271-7", "genres": ["SF", "classic"],
        "published": "1965-08-01", "description": "Spice."}


def isbn(n: int) -> str:
    """A valid ISBN-13 for any n (978 + 9 digits + check digit)."""
    body = f"978{n:09d}"
    check = (10 - sum(int(c) * (3 if i % 2 else 1) for i, c in enumerate(body)) % 10) % 10
    return body + str(check)


@pytest.fixture
async def api(start_app):
    return await start_app(**UNLIMITED)


async def as_editor(api, method: str, path: str, body=None, **kwargs):
    return await call(api, method, path, body, as_user="eve", roles=("editor",), **kwargs)


async def test_editor_creates_reads_replaces_changes_and_deletes_a_book(api) -> None:
    status, book, response = await as_editor(api, "POST", "/api/books", DUNE)
    assert status == 201
    assert response.headers["Location"] == f"/api/books/{book['id']}"
    assert (book["isbn"], book["genres"], book["published"]) == ("9780441172719", ["sf", "classic"], "1965-08-01")

    status, got, response = await call(api, "GET", f"/api/books/{book['id']}", as_user="rita")
    assert status == 200 and got == book
    etag = response.headers["ETag"]
    status, _, response = await call(api, "GET", f"/api/books/{book['id']}", as_user="rita",
                                     headers={"If-None-Match": etag})
    assert status == 304 and response.body == b""

    status, changed, _ = await as_editor(api, "PATCH", f"/api/books/{book['id']}", {"description": "Spice must flow."})
    assert status == 200 and changed["description"] == "Spice must flow." and changed["title"] == "Dune"
    status, _, response = await call(api, "GET", f"/api/books/{book['id']}", as_user="rita",
                                     headers={"If-None-Match": etag})
    assert status == 200 and response.headers["ETag"] != etag  # changed: the old ETag no longer matches

    status, replaced, _ = await as_editor(api, "PUT", f"/api/books/{book['id']}",
                                          {"title": "Dune Messiah", "author": "Frank Herbert", "isbn": isbn(0)})
    assert status == 200
    assert (replaced["title"], replaced["genres"], replaced["published"], replaced["description"]) == (
        "Dune Messiah", [], None, None)  # what PUT left out is cleared

    status, body, response = await as_editor(api, "DELETE", f"/api/books/{book['id']}")
    assert status == 204 and response.body == b""
    error_of(*(await call(api, "GET", f"/api/books/{book['id']}", as_user="rita"))[:2], 404, "not_found")


async def test_only_editors_and_admins_write_and_everyone_needs_a_token(api) -> None:
    status, book, _ = await call(api, "POST", "/api/books", DUNE, as_user="root", roles=("admin",))
    assert status == 201
    path = f"/api/books/{book['id']}"
    for method, target, body in (("POST", "/api/books", {**DUNE, "isbn": isbn(1)}), ("PUT", path, DUNE),
                                 ("PATCH", path, {"title": "X"}), ("DELETE", path, None)):
        for roles in (("reader",), ("author",), ("reader", "author")):
            status, payload, _ = await call(api, method, target, body, as_user="rita", roles=roles)
            assert "editor or admin" in error_of(status, payload, 403, "forbidden")["message"]
        status, payload, response = await call(api, method, target, body)
        error_of(status, payload, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    for target in ("/api/books", path):
        error_of(*(await call(api, "GET", target))[:2], 401, "unauthorized")
    assert (await call(api, "GET", path, as_user="rita"))[1]["title"] == "Dune"  # untouched


async def test_invalid_book_gets_a_400_listing_every_invalid_field(api) -> None:
    status, body, _ = await as_editor(api, "POST", "/api/books", {
        "title": "  ", "isbn": "0-441-17271-8", "genres": "sf", "published": "1965-13-01", "price": 9,
    })
    fields = error_of(status, body, 400, "invalid_input")["fields"]
    assert set(fields) == {"title", "author", "isbn", "genres", "published", "price"}
    assert fields["author"] == "required" and fields["price"] == "unknown field"
    assert "check digit" in fields["isbn"]

    status, book, _ = await as_editor(api, "POST", "/api/books", DUNE)
    status, body, _ = await as_editor(api, "PATCH", f"/api/books/{book['id']}", {})
    assert "body" in error_of(status, body, 400, "invalid_input")["fields"]
    status, body, _ = await as_editor(api, "PUT", f"/api/books/{book['id']}", {"title": "Only a title"})
    assert set(error_of(status, body, 400, "invalid_input")["fields"]) == {"author", "isbn"}
    status, body, _ = await as_editor(api, "POST", "/api/books", "[]", headers={"Content-Type": "application/json"})
    error_of(status, body, 400, "malformed_json")


async def test_a_duplicate_isbn_is_a_409_in_either_form(api) -> None:
    status, dune, _ = await as_editor(api, "POST", "/api/books", DUNE)
    status, body, _ = await as_editor(api, "POST", "/api/books", {**DUNE, "isbn": "978-0-441-17271-9"})
    assert error_of(status, body, 409, "conflict")["field"] == "isbn"
    status, other, _ = await as_editor(api, "POST", "/api/books", {**DUNE, "isbn": isbn(2)})
    for method, body in (("PATCH", {"isbn": "0441172717"}), ("PUT", DUNE)):
        status, payload, _ = await as_editor(api, method, f"/api/books/{other['id']}", body)
        assert error_of(status, payload, 409, "conflict")["field"] == "isbn"


async def test_unknown_ids_are_404(api) -> None:
    for book_id in ("0123456789abcdef01234567", "not-an-id", "%24ne"):
        path = f"/api/books/{book_id}"
        error_of(*(await call(api, "GET", path, as_user="rita"))[:2], 404, "not_found")
        for method, body in (("PUT", DUNE), ("PATCH", {"title": "X"}), ("DELETE", None)):
            error_of(*(await as_editor(api, method, path, body))[:2], 404, "not_found")


async def test_filters_and_paging_parameters(api) -> None:
    for n, (title, author, genres) in enumerate([
        ("Dune", "Frank Herbert", ["sf"]), ("Dune Messiah", "Frank Herbert", ["sf"]),
        ("Emma", "Jane Austen", ["romance", "classic"]), ("Persuasion", "Jane Austen", ["romance"]),
        ("The Dispossessed", "Ursula K. Le Guin", ["sf", "classic"]),
    ]):
        assert (await as_editor(api, "POST", "/api/books",
                                {"title": title, "author": author, "isbn": isbn(n), "genres": genres}))[0] == 201

    async def titles(query: str) -> list[str]:
        status, body, _ = await call(api, "GET", f"/api/books?{query}", as_user="rita")
        assert status == 200, body
        return [book["title"] for book in body["items"]]

    assert await titles("author=jane%20austen") == ["Emma", "Persuasion"]
    assert await titles("genre=CLASSIC") == ["Emma", "The Dispossessed"]
    assert await titles("title_prefix=dune") == ["Dune", "Dune Messiah"]
    assert await titles("genre=sf&author=Frank%20Herbert&title_prefix=Dune%20M") == ["Dune Messiah"]
    assert await titles("title_prefix=.*") == []  # plain text, not a pattern
    status, body, _ = await call(api, "GET", "/api/books?limit=2", as_user="rita")
    assert len(body["items"]) == 2 and body["next_cursor"]

    for query, field, problem in (
        ("limit=0", "limit", "expected an integer from 1 to 100"), ("limit=101", "limit", None),
        ("limit=ten", "limit", "expected an integer"), ("limit=2.5", "limit", "expected an integer"),
        ("cursor=bogus", "cursor", None), ("author=", "author", "must not be empty"),
        ("sort=title", "sort", "unknown parameter"), ("genre=sf&genre=classic", "genre", "given more than once"),
    ):
        status, body, _ = await call(api, "GET", f"/api/books?{query}", as_user="rita")
        fields = error_of(status, body, 400, "invalid_input")["fields"]
        assert field in fields and (problem is None or fields[field] == problem), (query, fields)


async def test_paging_returns_every_book_exactly_once_while_books_are_added(api) -> None:
    before = set()
    for n in range(30):
        status, book, _ = await as_editor(api, "POST", "/api/books",
                                          {"title": f"Book {n}", "author": "A", "isbn": isbn(n)})
        before.add(book["id"])
    added: set[str] = set()

    async def add_twenty() -> None:
        for n in range(1000, 1020):
            status, book, _ = await as_editor(api, "POST", "/api/books", {"title": f"New {n}", "author": "A",
                                                                         "isbn": isbn(n)})
            assert status == 201
            added.add(book["id"])
            await asyncio.sleep(0.005)

    writer = asyncio.create_task(add_twenty())
    seen: list[str] = []
    cursor = None
    while True:
        query = "limit=7" + (f"&cursor={cursor}" if cursor else "")
        status, page, _ = await call(api, "GET", f"/api/books?{query}", as_user="rita")
        assert status == 200
        seen.extend(book["id"] for book in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        await asyncio.sleep(0.01)  # let the writer in between pages
    await writer
    assert len(seen) == len(set(seen)), "a book came twice"
    assert before <= set(seen), "a book that existed before the listing went missing"
    assert set(seen) - before <= added
    assert added & set(seen), "books added during the listing should show up at its end"


async def test_storage_down_is_a_503_with_retry_after(start_app, tmp_path: Path) -> None:
    nothing_there = MongoProcess(tmp_path / "mongo")  # a free port, never started
    app = await start_app(**UNLIMITED, MONGODB_URL=nothing_there.url, DATABASE_HEARTBEAT_INTERVAL="500")
    deadline = time.monotonic() + 10
    while True:  # until the driver has seen that nothing answers there
        status, body, response = await call(app, "GET", "/api/books", as_user="rita")
        if status == 503 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    error_of(status, body, 503, "unavailable")
    assert int(response.headers["Retry-After"]) >= 1
    error_of(*(await as_editor(app, "POST", "/api/books", DUNE))[:2], 503, "unavailable")


async def test_listing_past_the_general_limit_is_a_429_per_user(start_app) -> None:
    app = await start_app(RATE_LIMIT_MAX=3, RATE_LIMIT_BURST=1_000)
    statuses = [(await call(app, "GET", "/api/books", as_user="rita"))[0] for _ in range(3)]
    assert statuses == [200, 200, 200]
    status, payload, response = await call(app, "GET", "/api/books", as_user="rita")
    error = error_of(status, payload, 429, "rate_limited")
    assert error["policy"] == "general" and int(response.headers["Retry-After"]) == error["retry_after"] >= 1
    assert response.headers["RateLimit-Policy"].startswith('"general";q=3;w=900')
    # the limit is per user: another reader still gets the list
    assert (await call(app, "GET", "/api/books", as_user="otto"))[0] == 200
