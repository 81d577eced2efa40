"""The books catalogue: title, author, ISBN (unique), genres, publication date, description.

ISBNs are stored as ISBN-13 digits, so an ISBN-10 and its ISBN-13 are the same book.
Listing pages by keyset (``mangu.store.paging``) with filters by author and genre and a
title prefix search; author and title match regardless of case.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from pymongo.errors import DuplicateKeyError

from mangu import clock
from mangu.db import Database
from mangu.store.errors import Conflict
from mangu.store.fields import Fields
from mangu.store.paging import MAX_LIMIT, Page, keyset_page, read_cursor
from mangu.store.records import delete_by_id, get_by_id, update_by_id

MAX_TITLE, MAX_AUTHOR, MAX_DESCRIPTION = 300, 200, 5000
MAX_GENRES, MAX_GENRE = 10, 50
MAX_PREFIX = 100
FIELDS = ("title", "author", "isbn", "genres", "published", "description")
_NOT_FOUND = "no such book"
_ISBN_SEPARATORS = re.compile(r"[\s\-]")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def isbn13(raw: str) -> str | None:
    """The ISBN-13 digits of an ISBN-10 or ISBN-13 (hyphens and spaces allowed) with a valid
    check digit; None otherwise."""
    digits = _ISBN_SEPARATORS.sub("", raw).upper()
    if re.fullmatch(r"\d{9}[\dX]", digits):
        values = [10 if c == "X" else int(c) for c in digits]
        if sum((10 - i) * v for i, v in enumerate(values)) % 11:
            return None
        digits = "978" + digits[:9]
        return digits + _isbn13_check(digits)
    if re.fullmatch(r"97[89]\d{10}", digits) and _isbn13_check(digits[:12]) == digits[12]:
        return digits
    return None


def _isbn13_check(first12: str) -> str:
    total = sum(int(c) * (3 if i % 2 else 1) for i, c in enumerate(first12))
    return str((10 - total % 10) % 10)


def _read(fields: Fields, data: dict[str, Any], partial: bool) -> dict[str, Any]:
    """The stored form of the fields present in ``data`` (all required ones unless ``partial``)."""
    doc: dict[str, Any] = {}
    required = not partial

    def present(name: str) -> bool:
        return required or name in data

    if present("title"):
        title = fields.text("title", data.get("title"), max_length=MAX_TITLE)
        if title is not None:
            doc.update(title=title, title_key=title.casefold())
    if present("author"):
        author = fields.text("author", data.get("author"), max_length=MAX_AUTHOR)
        if author is not None:
            doc.update(author=author, author_key=author.casefold())
    if present("isbn"):
        raw = fields.text("isbn", data.get("isbn"), max_length=32)
        if raw is not None:
            normalized = isbn13(raw)
            if normalized is None:
                fields.add("isbn", "not a valid ISBN-10 or ISBN-13 (check digit included)")
            doc["isbn"] = normalized
    if "genres" in data:
        doc["genres"] = fields.text_list("genres", data["genres"], max_items=MAX_GENRES, max_length=MAX_GENRE,
                                         lower=True)
        if data["genres"] is None:
            fields.add("genres", "expected a list of strings")
    elif required:
        doc["genres"] = []
    if "published" in data:
        doc["published"] = _published(fields, data["published"])
    if "description" in data:
        doc["description"] = fields.text("description", data["description"], min_length=0,
                                         max_length=MAX_DESCRIPTION, required=False)
    return doc


def _published(fields: Fields, value: Any) -> str | None:
    text = fields.text("published", value, max_length=10, pattern=_DATE, expected="expected a date YYYY-MM-DD",
                       required=False)
    if text is None:
        return None
    try:
        date.fromisoformat(text)
    except ValueError:
        fields.add("published", "not a calendar date; expected YYYY-MM-DD")
        return None
    return text


def _public(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(doc["_id"]),
        "title": doc["title"],
        "author": doc["author"],
        "isbn": doc["isbn"],
        "genres": list(doc.get("genres") or []),
        "published": doc.get("published"),
        "description": doc.get("description"),
        "created_at": clock.iso(doc["created_at"]),
        "updated_at": clock.iso(doc["updated_at"]),
    }


def _conflict(isbn: str | None) -> Conflict:
    return Conflict("isbn", f"a book with ISBN {isbn} exists already")


class BookStore:
    """Books in the ``books`` collection."""

    def __init__(self, db: Database) -> None:
        self._db = db
        db.on_setup(self.create_indexes)

    async def create_indexes(self) -> None:
        books = self._db.collection("books")
        await books.create_index("isbn", unique=True, name="isbn")
        # Single-field indexes, and none on genres: nx-27017 cannot index _id inside a
        # compound key, and finds nothing by array element once the array is indexed.
        await books.create_index("author_key", name="author")
        await books.create_index("title_key", name="title")

    async def create(self, data: dict[str, Any]) -> dict[str, Any]:
        """A new book from ``data`` (title, author, isbn required; genres, published,
        description optional). ValidationError lists every bad or unknown field."""
        fields = Fields()
        doc = _read(fields, fields.only(data, FIELDS), partial=False)
        fields.check()
        doc["created_at"] = doc["updated_at"] = clock.now()
        async with self._db.operation() as db:
            try:
                await db.books.insert_one(doc)
            except DuplicateKeyError:
                raise _conflict(doc["isbn"]) from None
        return _public(doc)

    async def get(self, book_id: str) -> dict[str, Any]:
        return _public(await get_by_id(self._db, "books", book_id, _NOT_FOUND))

    async def update(self, book_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Change some fields (the same rules as ``create``); the updated book."""
        fields = Fields()
        changes = fields.only(changes, FIELDS)
        doc = _read(fields, changes, partial=True)
        if not changes and not fields.problems:
            fields.add("body", f"expected at least one of {', '.join(FIELDS)}")
        fields.check()
        try:
            return _public(await update_by_id(self._db, "books", book_id, doc, _NOT_FOUND))
        except DuplicateKeyError:
            raise _conflict(doc.get("isbn")) from None

    async def replace(self, book_id: str, data: dict[str, Any]) -> dict[str, Any]:
        """Replace every field (the rules of ``create``): an optional field left out is cleared."""
        fields = Fields()
        doc = _read(fields, fields.only(data, FIELDS), partial=False)
        fields.check()
        doc.setdefault("published", None)
        doc.setdefault("description", None)
        try:
            return _public(await update_by_id(self._db, "books", book_id, doc, _NOT_FOUND))
        except DuplicateKeyError:
            raise _conflict(doc["isbn"]) from None

    async def delete(self, book_id: str) -> None:
        await delete_by_id(self._db, "books", book_id, _NOT_FOUND)

    async def list(
        self, author: str | None = None, genre: str | None = None, title_prefix: str | None = None,
        cursor: str | None = None, limit: int = 20,
    ) -> Page:
        """Books in creation order, filtered by author (exact, any case), genre and the
        start of the title (any case); ``Page.next_cursor`` fetches the next page."""
        fields = Fields()
        author = fields.text("author", author, max_length=MAX_AUTHOR, required=False)
        genre = fields.text("genre", genre, max_length=MAX_GENRE, required=False)
        prefix = fields.text("title_prefix", title_prefix, max_length=MAX_PREFIX, required=False)
        after = read_cursor(fields, cursor)
        limit = fields.integer("limit", limit, lo=1, hi=MAX_LIMIT, required=True)
        fields.check()
        assert limit is not None
        query: dict[str, Any] = {}
        if author is not None:
            query["author_key"] = author.casefold()
        if genre is not None:
            query["genres"] = genre.lower()
        if prefix is not None:
            # MongoDB refuses a pattern holding a NUL byte: spell it as the escape \x00.
            query["title_key"] = {"$regex": "^" + re.escape(prefix.casefold()).replace("\x00", "\\x00")}
        async with self._db.operation() as db:
            return await keyset_page(db.books, query, after, limit, _public)
