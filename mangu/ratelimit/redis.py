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
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from mangu.ratelimit.bucket import Quota

# KEYS: every bucket of every request, in order.
# ARGV: one per request, "cost,capacity,window_ms[,capacity,window_ms...]": a capacity and
# window per bucket of the request (one argument per request keeps the client's encoding
# work small: redis-py's cost grows with the number of arguments).
# Returns per request: allowed (1/0), then per bucket: remaining (whole tokens), retry-after
# (ms, 0 when the bucket had enough) and reset (ms until full).
SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local out = {}
local k = 0
local spec, levels, rates, caps = {}, {}, {}, {}
for r = 1, #ARGV do
  local j = 0
  for field in string.gmatch(ARGV[r], '[^,]+') do
    j = j + 1
    spec[j] = tonumber(field)
  end
  local cost = spec[1]
  local n = (j - 1) / 2
  local allowed = 1
  for i = 1, n do
    local cap = spec[2 * i]
    local rate = cap / spec[2 * i + 1]
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

log = logging.getLogger("mangu.ratelimit")

KEY_PREFIX = "mangu:rl:"
_GRACE_TURNS = 8  # event-loop turns a reply gets to be read after the deadline

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
                 max_in_flight: int = 4, on_batch: Callable[[int], None] | None = None) -> None:
        self.client = client
        self.timeout = timeout
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.max_in_flight = max_in_flight
        self._on_batch = on_batch
        self._pending: list[tuple[Take, asyncio.Future[tuple[bool, list[Quota]]]]] = []
        self._flushers: set[asyncio.Task[None]] = set()
        self._flush_scheduled = False

    async def connect(self, timeout: float) -> None:
        """Open a connection for each batch that may be in flight, and load the script (after
        a start or a Redis restart); raises RedisError when Redis does not answer in ``timeout``.

        Connecting takes several round trips: they are made here, off the request path,
        rather than by the first batches under load.
        """
        await asyncio.gather(*(self._bounded(self.client.ping(), timeout) for _ in range(self.max_in_flight)))
        await self._bounded(self.client.script_load(SCRIPT), timeout)

    def take(self, buckets: Sequence[tuple[str, int, int]], cost: int = 1) -> asyncio.Future[tuple[bool, list[Quota]]]:
        """Queue a take; the future gives (allowed, quotas) or raises RedisUnavailable.

        Raises Overloaded at once when ``max_pending`` takes are already waiting.
        """
        if len(self._pending) >= self.max_pending:
            raise Overloaded()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[bool, list[Quota]]] = loop.create_future()
        self._pending.append(((buckets, cost), future))
        # The flusher starts once this loop turn is over, so every take of the turn goes in
        # its batch; up to max_in_flight batches overlap, so the server keeps working (and
        # filling the next batch) while Redis answers the last one.
        if not self._flush_scheduled and len(self._flushers) < self.max_in_flight:
            self._flush_scheduled = True
            flusher = loop.create_task(self._flush())
            self._flushers.add(flusher)
            flusher.add_done_callback(self._flushers.discard)
        return future

    async def close(self) -> None:
        if self._flushers:
            await asyncio.gather(*self._flushers, return_exceptions=True)
        await self.client.aclose()

    async def _flush(self) -> None:
        self._flush_scheduled = False
        while self._pending:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            try:
                _resolve(batch, await self._evalsha(batch))
            except Exception as exc:
                if not isinstance(exc, (RedisError, OSError, asyncio.TimeoutError)):
                    log.error("rate-limit Redis call failed unexpectedly", exc_info=True)
                # Everything queued behind this batch would meet the same fate: fail it now,
                # and every request waiting is answered from memory (none is left hanging).
                failed, self._pending = batch + self._pending, []
                error = RedisUnavailable(f"{type(exc).__name__}: {exc}")
                for _, future in failed:
                    if not future.done():
                        future.set_exception(error)
                return

    async def _evalsha(self, batch: list[tuple[Take, asyncio.Future]]) -> list[int]:
        keys: list[bytes] = []
        specs: list[bytes] = []
        for (buckets, cost), _ in batch:
            spec = [str(cost)]
            for key, capacity, window_ms in buckets:
                keys.append(f"{KEY_PREFIX}{key}".encode())
                spec.append(f"{capacity},{window_ms}")
            specs.append(",".join(spec).encode())
        if self._on_batch is not None:
            self._on_batch(len(batch))
        try:
            return await self._bounded(self.client.evalsha(SCRIPT_SHA, len(keys), *keys, *specs))
        except NoScriptError:  # Redis restarted or its script cache was flushed
            await self._bounded(self.client.script_load(SCRIPT))
            return await self._bounded(self.client.evalsha(SCRIPT_SHA, len(keys), *keys, *specs))

    async def _bounded(self, call: Awaitable[T], timeout: float | None = None) -> T:
        """``call``, or RedisTimeout after ``timeout`` (default: the limiter's) seconds.

        The deadline is meant to catch a slow Redis, not a busy server: a busy event loop can
        run the timer before the callback of a reply that has already arrived, and a timer
        that fires late shows this process was held up (by its loop or by the machine). So
        a late timer is renewed once, and at the deadline the loop gets a few more turns to
        read what is there before giving up.
        """
        timeout = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(call)
        try:
            deadline = loop.time() + timeout
            await asyncio.wait((task,), timeout=timeout)
            if not task.done() and loop.time() - deadline > timeout / 2:
                await asyncio.wait((task,), timeout=timeout)
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
            raise RedisTimeout(f"no answer within {timeout * 1000:.0f} ms")
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
