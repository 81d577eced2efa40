"""Keyset pagination by ``_id``: an opaque cursor names the last item of a page, and the next
page starts after it, so items inserted meanwhile never shift a page (no repeats, no skips)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bson import ObjectId
from pymongo.asynchronous.collection import AsyncCollection

from mangu.store.fields import Fields

MAX_LIMIT = 100


@dataclass(frozen=True)
class Page:
    """One page of a listing; ``next_cursor`` is None on the last page."""

    items: list[dict[str, Any]] = field(default_factory=list)
    next_cursor: str | None = None


def encode_cursor(last_id: ObjectId) -> str:
    return base64.urlsafe_b64encode(last_id.binary).decode().rstrip("=")


def read_cursor(fields: Fields, value: Any) -> ObjectId | None:
    """The ``_id`` a client's cursor names (None: the first page)."""
    if value is None:
        return None
    if isinstance(value, str) and len(value) == 16:
        try:
            return ObjectId(base64.urlsafe_b64decode(value + "=="))
        except (binascii.Error, ValueError, TypeError):
            pass
    fields.add("cursor", "malformed cursor; pass back the next_cursor of the previous page")
    return None


async def keyset_page(
    collection: AsyncCollection, query: dict[str, Any], after: ObjectId | None, limit: int,
    to_public: Callable[[dict[str, Any]], dict[str, Any]],
) -> Page:
    """Up to ``limit`` documents matching ``query`` after ``after``, in ``_id`` order."""
    if after is not None:
        query = {**query, "_id": {"$gt": after}}
    docs = await collection.find(query).sort("_id", 1).limit(limit + 1).to_list()
    more = len(docs) > limit
    docs = docs[:limit]
    return Page([to_public(doc) for doc in docs], encode_cursor(docs[-1]["_id"]) if more else None)
