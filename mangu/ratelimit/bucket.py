"""The token bucket in pure Python: one bucket (``TokenBucket``, also used for per-connection
WebSocket message limits) and the bounded in-memory store of many (``MemoryBuckets``).

A bucket holds up to ``capacity`` tokens and refills continuously at ``refill_per_second``;
a take of ``cost`` tokens succeeds when that many are there. The Redis backend runs the same
arithmetic in Lua, so both answer alike.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import NamedTuple

_ALLOWED = (True, 0.0)  # shared: an allowed take allocates nothing
_MIN_KEYS = 16  # far more than the buckets of one take (two or three)
# Seconds to which MemoryBuckets counts recency: a bucket used again sooner than this after
# its last move to the recent end of the order stays where it is (two OrderedDict moves
# fewer on most requests, RateLimiter.take_request_now's hot path among them).
RECENCY_STEP = 1.0


class TokenBucket:
    """One bucket. ``take`` is O(1) and allocation-free when it allows.

    Times are seconds on any monotonic clock (``time.monotonic`` unless ``now`` is given).
    """

    __slots__ = ("capacity", "rate", "tokens", "stamp", "moved")

    def __init__(self, capacity: float, refill_per_second: float, now: float | None = None) -> None:
        if capacity <= 0 or refill_per_second <= 0:
            raise ValueError("capacity and refill_per_second must be positive")
        self.capacity = float(capacity)
        self.rate = float(refill_per_second)
        self.tokens = self.capacity
        self.stamp = self.moved = time.monotonic() if now is None else now

    def refill(self, now: float) -> float:
        """Bring the bucket up to ``now`` and return the tokens in it."""
        elapsed = now - self.stamp
        if elapsed > 0:  # a clock that steps back never drains the bucket
            tokens = self.tokens + elapsed * self.rate
            self.tokens = tokens if tokens < self.capacity else self.capacity
            self.stamp = now
        return self.tokens

    def take(self, cost: float = 1, now: float | None = None) -> tuple[bool, float]:
        """Take ``cost`` tokens: (True, 0.0), or (False, seconds until they are there)."""
        tokens = self.refill(time.monotonic() if now is None else now)
        if tokens >= cost:
            self.tokens = tokens - cost
            return _ALLOWED
        if cost > self.capacity:
            return False, math.inf
        return False, (cost - tokens) / self.rate

    def full_at(self) -> float:
        """The time at which the bucket is full again (it is then as good as new)."""
        return self.stamp + (self.capacity - self.tokens) / self.rate


class Quota(NamedTuple):
    """One bucket's state after a take, as the response headers show it."""

    remaining: int  # whole tokens left
    reset: float  # seconds until the bucket is full again
    retry_after: float  # seconds until the take could succeed; 0.0 when it had enough


_new_quota = tuple.__new__  # Quota(...) without NamedTuple's __new__ in Python: MemoryBuckets.take is hot


class MemoryBuckets:
    """Buckets by key in this process, with bounded memory.

    At most ``max_keys`` buckets are kept; the least recently used is dropped first (a
    dropped bucket comes back full, as an expired Redis key does). Recency is counted to
    within ``RECENCY_STEP``: a bucket goes to the recent end of the order when it is used
    that long or longer after it last went there (``moved``), so a busy client's takes
    seldom reorder anything. Once the store is half full, each new bucket also sweeps the
    oldest ones that have refilled completely, so a flood of keys that has passed does not
    keep the store full.

    A bucket that leaves the store (evicted, swept, or replaced by one of another capacity)
    is emptied to capacity 0 (``_drop``): whoever still holds it (the limiter keeps the
    buckets of the clients it saw lately) sees that it is no longer the stored one.
    """

    _SWEEP_PER_INSERT = 2  # more than one, so the sweep outpaces the inserts

    def __init__(self, max_keys: int, on_evict: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_keys < _MIN_KEYS:
            # A take must never evict (and so empty, _drop) a bucket it has already found.
            raise ValueError(f"max_keys must be at least {_MIN_KEYS}")
        self.max_keys = max_keys
        # Below half full, a full bucket is kept: finding it again is cheaper than a new one.
        self._sweep_above = max_keys // 2
        # By key, least recently used first. RateLimiter.take_request_now updates two of them
        # in place as ``take`` does (the same refill, recency order and take), on its hot path.
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._on_evict = on_evict
        self._clock = clock

    def __len__(self) -> int:
        return len(self.buckets)

    def take(self, buckets: Sequence[tuple[str, int, int]], cost: float = 1,
             now: float | None = None) -> tuple[bool, list[Quota]]:
        """Take ``cost`` from every bucket ``(key, capacity, window in ms)``, or from none.

        The take is all-or-nothing, so a refused request spends nothing. Returns whether it
        was allowed and one ``Quota`` per bucket, in order.
        """
        if now is None:
            now = self._clock()
        store = self.buckets
        found = []
        allowed = True
        inserted = False
        for key, capacity, window_ms in buckets:
            bucket = store.get(key)
            if bucket is None or bucket.capacity != capacity:
                if bucket is not None:
                    _drop(bucket)
                bucket = self._insert(key, capacity, window_ms, now)
                inserted = True
            else:
                if now - bucket.moved >= RECENCY_STEP:
                    store.move_to_end(key)
                    bucket.moved = now
                elapsed = now - bucket.stamp
                if elapsed > 0:  # TokenBucket.refill, inlined: this is the hot path
                    tokens = bucket.tokens + elapsed * bucket.rate
                    bucket.tokens = tokens if tokens < bucket.capacity else bucket.capacity
                    bucket.stamp = now
            if bucket.tokens < cost:
                allowed = False
            found.append(bucket)
        quotas = []
        for bucket in found:
            tokens = bucket.tokens
            if allowed:
                tokens = bucket.tokens = tokens - cost
                retry = 0.0
            else:
                retry = 0.0 if tokens >= cost else (cost - tokens) / bucket.rate
            quotas.append(_new_quota(Quota, (int(tokens), (bucket.capacity - tokens) / bucket.rate, retry)))
        if inserted and len(store) > self._sweep_above:
            self._sweep(now)
        return allowed, quotas

    def _insert(self, key: str, capacity: int, window_ms: int, now: float) -> TokenBucket:
        store = self.buckets
        bucket = store[key] = TokenBucket(capacity, refill_rate(capacity, window_ms), now)
        if len(store) > self.max_keys:
            _drop(store.popitem(last=False)[1])
            if self._on_evict is not None:
                self._on_evict()
        return bucket

    def _sweep(self, now: float) -> None:
        # The oldest buckets are the likeliest to have refilled; a full bucket is as good as
        # none, so dropping it changes no answer.
        store = self.buckets
        for _ in range(self._SWEEP_PER_INSERT):
            oldest = next(iter(store))
            bucket = store[oldest]
            if bucket.full_at() > now:
                return
            del store[oldest]
            _drop(bucket)
            if not store:
                return


def refill_rate(capacity: float, window_ms: int) -> float:
    """Tokens a second of a bucket of ``capacity`` that refills completely in ``window_ms``:
    the rate of the buckets ``MemoryBuckets`` makes (the limiter's ready field lines rely on
    getting the very same float)."""
    return capacity * 1000 / window_ms


def _drop(bucket: TokenBucket) -> None:
    """Empty a bucket that has left the store: capacity 0 tells a holder it is gone."""
    bucket.capacity = bucket.tokens = 0.0


# Stands for a bucket the store does not hold (capacity 0, as a dropped one).
GONE = TokenBucket(1, 1, 0.0)
_drop(GONE)
