"""Presence: who is online, with which status, when each user was last seen, and which
users are in which room.

``LocalPresence`` is this process's view (memory-only mode, and the fallback while Redis is
down). ``ClusterPresence`` keeps the cluster's view in Redis: every process writes entries
for its own users with an expiry it refreshes by heartbeat, so the users of a process that
dies without cleaning up go offline within PRESENCE_TTL, announced by a surviving process.

The hub calls ``user_arrived`` / ``user_left`` on a user's first / last connection to this
process and ``room_joined`` / ``room_left`` on their first / last connection in a room.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from mangu.metrics import Metrics

log = logging.getLogger("mangu.presence")

ONLINE, AWAY, BUSY, OFFLINE = "online", "away", "busy", "offline"

_SEEN_TTL = 30 * 86_400  # seconds last_seen is kept for a user who stays away
_STATUS_TTL = 86_400


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    seconds = int(ts)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((ts - seconds) * 1000):03d}Z"


def entry(user_id: str, status: str, last_seen: float | None) -> dict[str, Any]:
    return {"user": user_id, "status": status, "last_seen": iso(last_seen)}


class Presence(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def user_arrived(self, user_id: str) -> bool:
        """The user's first connection to this process; True when they just came online."""

    async def user_left(self, user_id: str) -> bool:
        """The user's last connection to this process closed; True when now offline everywhere."""

    async def room_joined(self, room: str, user_id: str) -> None: ...

    async def room_left(self, room: str, user_id: str) -> None: ...

    async def room_users(self, room: str, limit: int) -> list[str]:
        """Up to ``limit`` users in the room, on other processes too (this process's own are
        known to the hub)."""

    async def room_size(self, room: str) -> int:
        """How many memberships the room has on every process (0 when only the hub knows)."""

    async def user_rooms(self, user_id: str) -> list[str]:
        """The rooms the user is in on other processes too."""

    async def set_status(self, user_id: str, status: str) -> dict[str, Any]: ...

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

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def entry(self, user_id: str) -> dict[str, Any]:
        status = self._status.get(user_id, OFFLINE)
        return entry(user_id, status, time.time() if status != OFFLINE else self._last_seen.get(user_id))

    def is_online(self, user_id: str) -> bool:
        return user_id in self._status

    async def user_arrived(self, user_id: str) -> bool:
        if user_id in self._status:
            return False
        self._status[user_id] = ONLINE
        self._last_seen.pop(user_id, None)
        return True

    async def user_left(self, user_id: str) -> bool:
        if self._status.pop(user_id, None) is None:
            return False
        self._last_seen[user_id] = time.time()
        self._last_seen.move_to_end(user_id)
        while len(self._last_seen) > self._max_offline:
            self._last_seen.popitem(last=False)
        return True

    async def room_joined(self, room: str, user_id: str) -> None:
        return None

    async def room_left(self, room: str, user_id: str) -> None:
        return None

    async def room_users(self, room: str, limit: int) -> list[str]:
        return []

    async def room_size(self, room: str) -> int:
        return 0

    async def user_rooms(self, user_id: str) -> list[str]:
        return []

    async def set_status(self, user_id: str, status: str) -> dict[str, Any]:
        if user_id in self._status:
            self._status[user_id] = status
        return self.entry(user_id)

    async def get(self, user_id: str) -> dict[str, Any]:
        return self.entry(user_id)

    async def get_many(self, user_ids: list[str]) -> list[dict[str, Any]]:
        return [self.entry(user_id) for user_id in user_ids]

    async def online_users(self) -> list[str]:
        return sorted(self._status)


# -- the cluster view, in Redis
#
#   mangu:nodes            ZSET node -> expiry (ms)        every live process
#   mangu:nu:<node>        SET of user ids                 the users a process holds
#   mangu:pres:<user>      ZSET node -> expiry             where a user is connected
#   mangu:online           ZSET user -> expiry             everyone online
#   mangu:rm:<room>        ZSET "user|node" -> expiry      who is in a room, from where
#   mangu:ur:<user>        ZSET "room|node" -> expiry      the rooms of a user, from where
#   mangu:status:<user>    STRING online|away|busy
#   mangu:seen:<user>      STRING last_seen (epoch ms)
#
# Readers count only entries whose expiry is in the future, so what a dead process left
# behind stops counting at once; a surviving process announces those users' departure.

_ARRIVE = """
local active = redis.call('ZCOUNT', KEYS[1], ARGV[2], '+inf')
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[2], 'GT', ARGV[3], ARGV[4])
redis.call('SADD', KEYS[3], ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[5])
if active == 0 then return 1 end
return 0
"""

_LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[3])
if redis.call('ZCOUNT', KEYS[1], ARGV[2], '+inf') == 0 then
  redis.call('ZREM', KEYS[2], ARGV[3])
  redis.call('SET', KEYS[4], ARGV[2], 'EX', ARGV[4])
  redis.call('DEL', KEYS[5])
  return 1
end
return 0
"""

Departure = Callable[[str, list[str], dict[str, Any]], Awaitable[None]]
"""``on_departure(user_id, rooms, entry)``: a user of a dead process went offline; ``rooms``
are the rooms they were in."""


class ClusterPresence:
    """Presence shared by every process through Redis, with this process's LocalPresence as
    the fallback while Redis does not answer (reads answer from it; writes are repaired by
    the next heartbeat)."""

    def __init__(self, redis: Redis, node_id: str, ttl: float, metrics: Metrics,
                 local_rooms: Callable[[], dict[str, set[str]]]) -> None:
        """``local_rooms()`` returns this process's users and the rooms each is in, for the
        heartbeat (the hub's registry is the source of truth)."""
        self._redis = redis
        self.node_id = node_id
        self.ttl = ttl
        self._metrics = metrics
        self._local = LocalPresence()
        self._local_rooms = local_rooms
        self._arrive = redis.register_script(_ARRIVE)
        self._leave = redis.register_script(_LEAVE)
        self._tasks: list[asyncio.Task] = []
        self._failing = False
        self.on_departure: Departure | None = None

    # -- lifecycle

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._every(self.ttl / 3, self.heartbeat), name="mangu-presence-heartbeat"),
            asyncio.create_task(self._every(self.ttl / 6, self.sweep), name="mangu-presence-sweep"),
        ]

    async def close(self) -> None:
        """Stop the heartbeat and take this process's entries out of Redis."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks = []
        await self._safely(self._forget_node(self.node_id))

    async def _every(self, interval: float, job: Callable[[], Awaitable[Any]]) -> None:
        while True:
            await asyncio.sleep(interval)
            await self._safely(job())

    async def _safely(self, work: Awaitable[Any], default: Any = None) -> Any:
        try:
            result = await work
        except (RedisError, OSError, TimeoutError) as exc:
            if not self._failing:
                self._failing = True
                log.warning("presence: Redis unavailable, answering from this process only",
                            extra={"error": type(exc).__name__})
            self._metrics.presence_errors.inc()
            return default
        if self._failing:
            self._failing = False
            log.info("presence: Redis answers again")
        return result

    # -- keys and clocks

    def _now(self) -> int:
        return int(time.time() * 1000)

    def _expiry(self) -> int:
        # Two thirds of the TTL: with a heartbeat every third, a dead process's entries stop
        # counting within the TTL of its death.
        return self._now() + int(self.ttl * 1000 * 2 / 3)

    def _key_ms(self) -> int:
        return int(self.ttl * 1000 * 4)

    # -- writes

    async def user_arrived(self, user_id: str) -> bool:
        came_local = await self._local.user_arrived(user_id)
        result = await self._safely(self._arrive(
            keys=[f"mangu:pres:{user_id}", "mangu:online", f"mangu:nu:{self.node_id}"],
            args=[self.node_id, self._now(), self._expiry(), user_id, self._key_ms()],
        ))
        return bool(result) if result is not None else came_local

    async def user_left(self, user_id: str) -> bool:
        left_local = await self._local.user_left(user_id)
        result = await self._safely(self._leave(
            keys=[f"mangu:pres:{user_id}", "mangu:online", f"mangu:nu:{self.node_id}", f"mangu:seen:{user_id}",
                  f"mangu:status:{user_id}"],
            args=[self.node_id, self._now(), user_id, _SEEN_TTL],
        ))
        return bool(result) if result is not None else left_local

    async def room_joined(self, room: str, user_id: str) -> None:
        expiry = self._expiry()
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(f"mangu:rm:{room}", {f"{user_id}|{self.node_id}": expiry})
        pipe.pexpire(f"mangu:rm:{room}", self._key_ms())
        pipe.zadd(f"mangu:ur:{user_id}", {f"{room}|{self.node_id}": expiry})
        pipe.pexpire(f"mangu:ur:{user_id}", self._key_ms())
        await self._safely(pipe.execute())

    async def room_left(self, room: str, user_id: str) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrem(f"mangu:rm:{room}", f"{user_id}|{self.node_id}")
        pipe.zrem(f"mangu:ur:{user_id}", f"{room}|{self.node_id}")
        await self._safely(pipe.execute())

    async def set_status(self, user_id: str, status: str) -> dict[str, Any]:
        await self._local.set_status(user_id, status)
        await self._safely(self._redis.set(f"mangu:status:{user_id}", status, ex=_STATUS_TTL))
        return await self.get(user_id)

    async def heartbeat(self) -> None:
        """Refresh every entry of this process (and write back any Redis lost meanwhile)."""
        expiry, key_ms = self._expiry(), self._key_ms()
        rooms_of = self._local_rooms()
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd("mangu:nodes", {self.node_id: expiry})
        node_users = f"mangu:nu:{self.node_id}"
        if rooms_of:
            pipe.sadd(node_users, *rooms_of)
            pipe.pexpire(node_users, key_ms)
            pipe.zadd("mangu:online", {user: expiry for user in rooms_of}, gt=True)
        by_room: dict[str, dict[str, int]] = {}
        for user, rooms in rooms_of.items():
            pipe.zadd(f"mangu:pres:{user}", {self.node_id: expiry})
            pipe.pexpire(f"mangu:pres:{user}", key_ms)
            if rooms:
                pipe.zadd(f"mangu:ur:{user}", {f"{room}|{self.node_id}": expiry for room in rooms})
                pipe.pexpire(f"mangu:ur:{user}", key_ms)
            for room in rooms:
                by_room.setdefault(room, {})[f"{user}|{self.node_id}"] = expiry
        for room, members in by_room.items():
            pipe.zadd(f"mangu:rm:{room}", members)
            pipe.pexpire(f"mangu:rm:{room}", key_ms)
        await pipe.execute()

    async def sweep(self) -> None:
        """Announce the users of processes whose heartbeat stopped, once per dead process."""
        now = self._now()
        dead = await self._redis.zrangebyscore("mangu:nodes", "-inf", now)
        for raw in dead:
            node = raw.decode() if isinstance(raw, bytes) else raw
            if node == self.node_id:
                continue
            if await self._redis.set(f"mangu:sweep:{node}", self.node_id, nx=True, ex=60):
                log.warning("presence: process %s stopped without cleaning up; its users are leaving", node,
                            extra={"dead_node": node})
                await self._forget_node(node, announce=True)

    async def _forget_node(self, node: str, announce: bool = False) -> None:
        """Remove every entry of ``node``; with ``announce``, report users now offline."""
        users = [u.decode() if isinstance(u, bytes) else u for u in await self._redis.smembers(f"mangu:nu:{node}")]
        now = self._now()
        suffix = f"|{node}"
        for user in users:
            members = await self._redis.zrange(f"mangu:ur:{user}", 0, -1)
            rooms = [m.decode()[: -len(suffix)] for m in members if m.decode().endswith(suffix)]
            pipe = self._redis.pipeline(transaction=False)
            for room in rooms:
                pipe.zrem(f"mangu:rm:{room}", f"{user}{suffix}")
                pipe.zrem(f"mangu:ur:{user}", f"{room}{suffix}")
            await pipe.execute()
            last_heartbeat = await self._redis.zscore(f"mangu:pres:{user}", node)
            offline = await self._leave(
                keys=[f"mangu:pres:{user}", "mangu:online", f"mangu:nu:{node}", f"mangu:seen:{user}",
                      f"mangu:status:{user}"],
                args=[node, now, user, _SEEN_TTL],
            )
            if announce and offline and self.on_departure is not None:
                seen = (last_heartbeat - self.ttl * 1000 * 2 / 3) / 1000 if last_heartbeat else now / 1000
                await self._redis.set(f"mangu:seen:{user}", int(seen * 1000), ex=_SEEN_TTL)
                await self.on_departure(user, rooms, entry(user, OFFLINE, seen))
        pipe = self._redis.pipeline(transaction=False)
        pipe.delete(f"mangu:nu:{node}")
        pipe.zrem("mangu:nodes", node)
        await pipe.execute()

    # -- reads

    async def get(self, user_id: str) -> dict[str, Any]:
        return (await self.get_many([user_id]))[0]

    async def get_many(self, user_ids: list[str]) -> list[dict[str, Any]]:
        if not user_ids:
            return []
        now = self._now()
        pipe = self._redis.pipeline(transaction=False)
        for user in user_ids:
            pipe.zcount(f"mangu:pres:{user}", now, "+inf")
            pipe.get(f"mangu:status:{user}")
            pipe.get(f"mangu:seen:{user}")
        answers = await self._safely(pipe.execute())
        if answers is None:
            return [self._local.entry(user) for user in user_ids]
        result = []
        for index, user in enumerate(user_ids):
            active, status, seen = answers[3 * index: 3 * index + 3]
            if active:
                result.append(entry(user, status.decode() if status else ONLINE, now / 1000))
            else:
                result.append(entry(user, OFFLINE, int(seen) / 1000 if seen else None))
        return result

    async def online_users(self) -> list[str]:
        users = await self._safely(self._redis.zrangebyscore("mangu:online", self._now(), "+inf"))
        if users is None:
            return await self._local.online_users()
        return sorted(u.decode() if isinstance(u, bytes) else u for u in users)

    async def room_users(self, room: str, limit: int) -> list[str]:
        # a user can be there from several processes: read a little more than asked
        members = await self._safely(
            self._redis.zrangebyscore(f"mangu:rm:{room}", self._now(), "+inf", start=0, num=limit * 2), []
        )
        return sorted({(m.decode() if isinstance(m, bytes) else m).rsplit("|", 1)[0] for m in members})[:limit]

    async def room_size(self, room: str) -> int:
        return await self._safely(self._redis.zcount(f"mangu:rm:{room}", self._now(), "+inf"), 0)

    async def user_rooms(self, user_id: str) -> list[str]:
        members = await self._safely(self._redis.zrangebyscore(f"mangu:ur:{user_id}", self._now(), "+inf"), [])
        return sorted({(m.decode() if isinstance(m, bytes) else m).rsplit("|", 1)[0] for m in members})
