"""Times as the stores keep them: UTC, millisecond precision (what BSON stores), and shown as
ISO 8601 with a ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def now() -> datetime:
    """The current UTC time, cut to milliseconds so what is returned equals what is stored."""
    t = datetime.now(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def iso(t: datetime) -> str:
    """``2026-11-29T16:01:04.277Z``."""
    t = t.astimezone(UTC)
    return f"{t:%Y-%m-%dT%H:%M:%S}.{t.microsecond // 1000:03d}Z"


def set_and_touch(changes: dict[str, Any]) -> dict[str, Any]:
    """An update that sets ``changes`` and stamps ``updated_at`` with the database's clock.
    ($currentDate rather than a datetime in $set: nx-27017 stores the latter as a string.)"""
    return {"$set": changes, "$currentDate": {"updated_at": True}}
