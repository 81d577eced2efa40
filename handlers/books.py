"""The books catalogue: ``/api/books`` (list, create) and ``/api/books/{book_id}`` (read,
replace, change, delete). Any signed-in user reads; editors and admins write."""

from __future__ import annotations

from handlers.base import APIHandler

WRITERS = ("editor", "admin")


class BooksHandler(APIHandler):
    async def get(self) -> None:
        """A page of books: filters ``author``, ``genre``, ``title_prefix``; ``limit`` (1-100,
        default 20); ``cursor`` from the previous page's ``next_cursor``."""
        self.require_user()
        query = self.query_arguments(strings=("author", "genre", "title_prefix", "cursor"), integers=("limit",))
        page = await self.services.books.list(**query)
        self.write_json({"items": page.items, "next_cursor": page.next_cursor})

    async def post(self) -> None:
        self.require_user(*WRITERS)
        book = await self.services.books.create(self.get_json_body())
        self.set_header("Location", f"/api/books/{book['id']}")
        self.write_json(book, status=201)


class BookHandler(APIHandler):
    async def get(self, book_id: str) -> None:
        """One book, with an ETag (Tornado's, from the body): If-None-Match gets a 304."""
        self.require_user()
        book = await self.services.books.get(book_id)
        # Not per-user data: a client may keep it, as long as it revalidates with the ETag.
        self.set_header("Cache-Control", "private, no-cache")
        self.write_json(book)

    async def put(self, book_id: str) -> None:
        self.require_user(*WRITERS)
        self.write_json(await self.services.books.replace(book_id, self.get_json_body()))

    async def patch(self, book_id: str) -> None:
        self.require_user(*WRITERS)
        self.write_json(await self.services.books.update(book_id, self.get_json_body()))

    async def delete(self, book_id: str) -> None:
        self.require_user(*WRITERS)
        await self.services.books.delete(book_id)
        self.set_status(204)


default_handlers = [
    (r"/api/books", BooksHandler),
    (r"/api/books/(?P<book_id>[^/]+)", BookHandler),
]
