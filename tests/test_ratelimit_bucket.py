"""The pure-Python token bucket and the bounded in-memory store (no server needed)."""

from __future__ import annotations

import math

import pytest

from mangu.ratelimit import Policy, TokenBucket
from mangu.ratelimit.bucket import MemoryBuckets


def test_bucket_allows_capacity_then_says_when_to_retry() -> None:
    bucket = TokenBucket(capacity=3, refill_per_second=2, now=100.0)
    assert [bucket.take(now=100.0) for _ in range(3)] == [(True, 0.0)] * 3
    assert bucket.take(now=100.0) == (False, 0.5)
    assert bucket.take(now=100.25) == (False, 0.25)
    assert bucket.take(now=100.5) == (True, 0.0)
    assert bucket.take(cost=2, now=101.0) == (False, 0.5)  # one token there, two asked
    assert bucket.take(cost=2, now=101.5) == (True, 0.0)


def test_bucket_never_holds_more_than_its_capacity_and_ignores_a_clock_stepping_back() -> None:
    bucket = TokenBucket(capacity=2, refill_per_second=1, now=0.0)
    assert bucket.take(now=3600.0) == (True, 0.0)
    assert bucket.take(now=3600.0) == (True, 0.0)
    assert bucket.take(now=3600.0)[0] is False  # an hour idle still gives only 2
    assert bucket.take(now=10.0)[0] is False  # an earlier time neither refills nor drains
    assert bucket.take(now=3601.0) == (True, 0.0)
    assert bucket.take(cost=5, now=9999.0) == (False, math.inf)  # more than it can ever hold


def test_bucket_rejects_a_zero_capacity_or_rate() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 1)
    with pytest.raises(ValueError):
        TokenBucket(1, 0)


def test_policy_names_are_header_safe() -> None:
    assert Policy("export", 10, 60_000).header_item == '"export";q=10;w=60'
    assert Policy("fast", 5, 200).header_item == '"fast";q=5;w=1'  # w is whole seconds, at least 1
    for name in ("Export", 'a"b', "", "x" * 33, "two words"):
        with pytest.raises(ValueError):
            Policy(name, 10, 60_000)


def test_memory_take_is_all_or_nothing() -> None:
    store = MemoryBuckets(max_keys=100, clock=lambda: 0.0)
    window, burst = ("window:k", 100, 900_000), ("burst:k", 2, 1000)
    assert store.take([window, burst])[0] and store.take([window, burst])[0]
    allowed, (window_quota, burst_quota) = store.take([window, burst])
    assert not allowed
    assert window_quota.remaining == 98 and window_quota.retry_after == 0.0  # not spent by the refusal
    assert burst_quota.remaining == 0 and burst_quota.retry_after == pytest.approx(0.5)


def test_memory_stays_bounded_after_a_million_distinct_keys() -> None:
    evicted = []
    store = MemoryBuckets(max_keys=1000, on_evict=lambda: evicted.append(1))
    for i in range(1_000_000):
        store.take([(f"general:ip:{i}", 100, 900_000)])
    assert len(store) == 1000
    assert len(evicted) == 999_000
    # the most recent keys are the ones kept, with their state
    assert store.take([("general:ip:999999", 100, 900_000)])[1][0].remaining == 98
    assert store.take([("general:ip:0", 100, 900_000)])[1][0].remaining == 99  # dropped: back full


def test_memory_sweeps_buckets_that_have_refilled_once_half_full() -> None:
    now = [0.0]
    store = MemoryBuckets(max_keys=100, clock=lambda: now[0])
    for i in range(60):
        store.take([(f"burst:ip:{i}", 10, 1000)])
    assert len(store) == 60  # none is full yet
    now[0] = 5.0  # every bucket refilled long ago
    for i in range(10):  # above half full, each new bucket sweeps two full ones
        store.take([(f"burst:ip:new{i}", 10, 1000)])
    assert len(store) == 60 + 10 - 20


def test_take_two_answers_as_take_does() -> None:
    # The request path's unrolled take of two buckets against the general one, step by step on
    # two stores: new buckets, allowed takes, refusals by either bucket, refills, a capacity
    # that changes (a policy divided in fallback), a key that comes back after eviction.
    import random

    rng = random.Random(7)
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    general, unrolled = MemoryBuckets(max_keys=6, clock=clock), MemoryBuckets(max_keys=6, clock=clock)
    outcomes = set()
    for _ in range(5000):
        now[0] += rng.choice((0.0, 0.0, 0.01, 0.3, 2.0))
        client = rng.randrange(4)
        window = (f"general:{client}", rng.choice((5, 5, 5, 2)), 10_000)
        burst = (f"burst:{client}", 3, 1000)
        cost = rng.choice((1, 1, 1, 2))
        expected = general.take([window, burst], cost)
        got = unrolled.take_two(*window, *burst, cost)
        assert got == (expected[0], tuple(expected[1]))
        assert all(type(quota) is type(expected[1][0]) for quota in got[1])
        outcomes.add(got[0])
    assert outcomes == {True, False}
    assert list(unrolled._buckets) == list(general._buckets)  # the same recency order, the same evictions
