"""Reading, changing and deleting one record by the id a client gave, the same way in every
store: a non-string id is a ``ValidationError``, an id no record can have is ``NotFound``."""

from __future__ import annotations

import re
from typing import Any

from bson import ObjectId

from mangu.db import Database
from mangu.store.errors import NotFound, ValidationError

_OBJECT_ID = re.compile(r"[0-9a-f]{24}")


def record_id(value: Any, not_found: str) -> ObjectId:
    """The ObjectId a client's id names (``not_found`` is the NotFound message)."""
    if not isinstance(value, str):
        raise ValidationError({"id": "expected a string"})
    if not _OBJECT_ID.fullmatch(value):
        raise NotFound(not_found)
    return ObjectId(value)


async def get_by_id(db: Database, collection: str, value: Any, not_found: str) -> dict[str, Any]:
    oid = record_id(value, not_found)
    async with db.operation() as mdb:
        doc = await mdb[collection].find_one({"_id": oid})
    if doc is None:
        raise NotFound(not_found)
    return doc


async def update_by_id(
    db: Database, collection: str, value: Any, changes: dict[str, Any], not_found: str
) -> dict[str, Any]:
    """Set ``changes`` and stamp ``updated_at``; the updated document. A unique-index
    violation comes out as the driver's DuplicateKeyError."""
    oid = record_id(value, not_found)
    async with db.operation() as mdb:
        # update_one then find_one, not find_one_and_update: nx-27017 answers a unique
        # violation there with "no document" instead of the duplicate-key error.
        result = await mdb[collection].update_one({"_id": oid}, _set_and_touch(changes))
        doc = await mdb[collection].find_one({"_id": oid}) if result.matched_count else None
    if doc is None:
        raise NotFound(not_found)
    return doc


async def delete_by_id(db: Database, collection: str, value: Any, not_found: str) -> None:
    oid = record_id(value, not_found)
    async with db.operation() as mdb:
        result = await mdb[collection].delete_one({"_id": oid})
    if result.deleted_count == 0:
        raise NotFound(not_found)


def _set_and_touch(changes: dict[str, Any]) -> dict[str, Any]:
    """Set ``changes`` and stamp ``updated_at`` with the database's clock. ($currentDate,
    not a datetime in $set: nx-27017 stores the latter as a string.)"""
    return {"$set": changes, "$currentDate": {"updated_at": True}}
