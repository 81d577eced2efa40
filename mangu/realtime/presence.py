"""Presence: who is online, with which status, and when each user was last seen.

``LocalPresence`` keeps this process's view. The cluster-wide view (Redis) implements the
same interface, so the hub does not care which one it talks to.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Protocol

ONLINE, AWAY, BUSY, OFFLINE = "online", "away", "busy", "offline"


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    seconds = int(ts)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((ts - seconds) * 1000):03d}Z"


class Presence(Protocol):
    async def connected(self, user_id: str) -> bool:
        """Record a new connection; True when the user just came online."""

    async def disconnected(self, user_id: str, remaining: int) -> bool:
        """Record a closed connection (``remaining`` local ones left); True when now offline."""

    async def set_status(self, user_id: str, status: str) -> dict[str, Any]:
        """Set online/away/busy; returns the user's presence."""

    async def get(self, user_id: str) -> dict[str, Any]:
        """``{"user", "status", "last_seen"}``; status offline for unknown users."""

    async def get_many(self, user_ids: list[str]) -> list[dict[str, Any]]: ...

    async def online_users(self) -> list[str]: ...


class LocalPresence:
    """This process's presence book: status of connected users, last_seen of the others
    (bounded: the least recently seen offline users are forgotten first)."""

    def __init__(self, max_offline: int = 100_000) -> None:
        self._status: dict[str, str] = {}
        self._last_seen: OrderedDict[str, float] = OrderedDict()
        self._max_offline = max_offline

    def _entry(self, user_id: str) -> dict[str, Any]:
        status = self._status.get(user_id, OFFLINE)
        last_seen = time.time() if status != OFFLINE else self._last_seen.get(user_id)
        return {"user": user_id, "status": status, "last_seen": iso(last_seen)}

    async def connected(self, user_id: str) -> bool:
        if user_id in self._status:
            return False
        self._status[user_id] = ONLINE
        self._last_seen.pop(user_id, None)
        return True

    async def disconnected(self, user_id: str, remaining: int) -> bool:
        if remaining > 0 or user_id not in self._status:
            return False
        del self._status[user_id]
        self._last_seen[user_id] = time.time()
        self._last_seen.move_to_end(user_id)
        while len(self._last_seen) > self._max_offline:
            self._last_seen.popitem(last=False)
        return True

    async def set_status(self, user_id: str, status: str) -> dict[str, Any]:
        if user_id in self._status:
            self._status[user_id] = status
        return self._entry(user_id)

    async def get(self, user_id: str) -> dict[str, Any]:
        return self._entry(user_id)

    async def get_many(self, user_ids: list[str]) -> list[dict[str, Any]]:
        return [self._entry(user_id) for user_id in user_ids]

    async def online_users(self) -> list[str]:
        return sorted(self._status)
