"""Token buckets in Redis: one Lua script takes from every bucket of many requests at once.

The script reads the clock with ``TIME``, so every process shares Redis's clock; it refills,
takes all-or-nothing per request, and sets a PEXPIRE of the time to a full refill (a full
bucket is as good as no key). Concurrent takes are coalesced: while one EVALSHA is in flight,
the takes that arrive queue up and go together in the next one, so the client's CPU cost per
request shrinks as load grows.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from mangu.ratelimit.bucket import Quota

# KEYS: every bucket of every request, in order.
# ARGV[1]: the number of requests; then per request: its bucket count and cost, then per
# bucket: capacity and window (ms).
# Returns per request: allowed (1/0), then per bucket: remaining (whole tokens), retry-after
# (ms, 0 when the bucket had enough) and reset (ms until full).
SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local out = {}
local k = 0
local a = 1
local levels, rates, caps = {}, {}, {}
for _ = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[a + 1])
  local cost = tonumber(ARGV[a + 2])
  a = a + 2
  local allowed = 1
  for i = 1, n do
    local cap = tonumber(ARGV[a + 1])
    local rate = cap / tonumber(ARGV[a + 2])
    a = a + 2
    local level = cap
    local state = redis.call('HMGET', KEYS[k + i], 'tokens', 'ts')
    if state[1] then
      local elapsed = now - tonumber(state[2])
      if elapsed < 0 then elapsed = 0 end
      level = math.min(cap, tonumber(state[1]) + elapsed * rate)
    end
    levels[i], rates[i], caps[i] = level, rate, cap
    if level < cost then allowed = 0 end
  end
  out[#out + 1] = allowed
  for i = 1, n do
    local level = levels[i]
    local retry = 0
    if allowed == 1 then
      level = level - cost
      redis.call('HSET', KEYS[k + i], 'tokens', level, 'ts', now)
      redis.call('PEXPIRE', KEYS[k + i], math.ceil((caps[i] - level) / rates[i]))
    elseif level < cost then
      retry = (cost - level) / rates[i]
    end
    out[#out + 1] = math.floor(level)
    out[#out + 1] = math.ceil(retry)
    out[#out + 1] = math.ceil((caps[i] - level) / rates[i])
  end
  k = k + n
end
return out
"""
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()

KEY_PREFIX = "mangu:rl:"
_GRACE_TURNS = 4  # event-loop turns a reply gets to be read after the deadline

T = TypeVar("T")

# One take: its buckets as (key, capacity, window in ms), and its cost.
Take = tuple[Sequence[tuple[str, int, int]], int]


class RedisTimeout(RedisError):
    """Redis did not answer one call in time."""


class RedisUnavailable(Exception):
    """Redis did not answer a take (error or timeout); the caller answers from memory."""


class Overloaded(Exception):
    """More takes are waiting for Redis than the queue holds."""


class RedisBuckets:
    """Takes from buckets in Redis, coalescing concurrent takes into one EVALSHA.

    Every call is bounded by ``timeout`` seconds; ``client`` should make no retries of its
    own: a slow answer is worse than the memory fallback.
    """

    def __init__(self, client: Redis, timeout: float, max_batch: int = 256, max_pending: int = 10_000,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.client = client
        self.timeout = timeout
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._on_batch = on_batch
        self._pending: list[tuple[Take, asyncio.Future[tuple[bool, list[Quota]]]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def load(self) -> None:
        """Load the script (after a start or a Redis restart); raises RedisError when down."""
        await self._bounded(self.client.script_load(SCRIPT))

    async def ping(self) -> None:
        await self._bounded(self.client.ping())

    def take(self, buckets: Sequence[tuple[str, int, int]], cost: int = 1) -> asyncio.Future[tuple[bool, list[Quota]]]:
        """Queue a take; the future gives (allowed, quotas) or raises RedisUnavailable.

        Raises Overloaded at once when ``max_pending`` takes are already waiting.
        """
        if len(self._pending) >= self.max_pending:
            raise Overloaded()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[bool, list[Quota]]] = loop.create_future()
        self._pending.append(((buckets, cost), future))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush())
        return future

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self.client.aclose()

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                try:
                    reply = await self._evalsha(batch)
                except (RedisError, OSError, asyncio.TimeoutError) as exc:
                    # Everything queued behind this batch would meet the same fate: fail it now.
                    failed, self._pending = batch + self._pending, []
                    error = RedisUnavailable(f"{type(exc).__name__}: {exc}")
                    for _, future in failed:
                        if not future.done():
                            future.set_exception(error)
                    return
                _resolve(batch, reply)
        finally:
            self._flusher = None

    async def _evalsha(self, batch: list[tuple[Take, asyncio.Future]]) -> list[int]:
        keys: list[str] = []
        args: list[int] = [len(batch)]
        for (buckets, cost), _ in batch:
            args.append(len(buckets))
            args.append(cost)
            for key, capacity, window_ms in buckets:
                keys.append(KEY_PREFIX + key)
                args.append(capacity)
                args.append(window_ms)
        if self._on_batch is not None:
            self._on_batch(len(batch))
        try:
            return await self._bounded(self.client.evalsha(SCRIPT_SHA, len(keys), *keys, *args))
        except NoScriptError:  # Redis restarted or its script cache was flushed
            await self.load()
            return await self._bounded(self.client.evalsha(SCRIPT_SHA, len(keys), *keys, *args))

    async def _bounded(self, call: Awaitable[T]) -> T:
        """``call``, or RedisTimeout after ``timeout`` seconds of event-loop time.

        A busy event loop can run the timer before the callback of a reply that has already
        arrived; a deadline that fired first would then blame Redis for the loop's own lag. So
        at the deadline the loop gets a few more turns to read what is there before giving up.
        """
        task = asyncio.ensure_future(call)
        try:
            await asyncio.wait((task,), timeout=self.timeout)
            for _ in range(_GRACE_TURNS):
                if task.done():
                    break
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not task.done():
            task.cancel()  # redis-py drops the connection of a cancelled call
            await asyncio.gather(task, return_exceptions=True)
            raise RedisTimeout(f"no answer within {self.timeout * 1000:.0f} ms")
        return task.result()


def _resolve(batch: list[tuple[Take, asyncio.Future]], reply: list[int]) -> None:
    i = 0
    for (buckets, _), future in batch:
        allowed = reply[i] == 1
        i += 1
        quotas = []
        for _ in buckets:
            quotas.append(Quota(reply[i], reply[i + 2] / 1000, reply[i + 1] / 1000))
            i += 3
        if not future.done():
            future.set_result((allowed, quotas))
