"""Times as the server shows and stores them: UTC, millisecond precision (what BSON keeps),
written as ISO 8601 with a ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    """The current UTC time, cut to milliseconds so what is returned equals what is stored."""
    t = datetime.now(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def iso(t: datetime) -> str:
    """``2026-11-29T16:01:04.277Z``."""
    t = t.astimezone(UTC)
    return f"{t:%Y-%m-%dT%H:%M:%S}.{t.microsecond // 1000:03d}Z"

