"""The pure-Python token bucket and the bounded in-memory store (no server needed)."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from mangu.ratelimit import Policy, TokenBucket
from mangu.ratelimit.bucket import RECENCY_STEP, MemoryBuckets, Quota


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


def test_a_store_too_small_for_one_take_is_refused() -> None:
    # A bucket leaving the store is emptied (capacity 0); a store so small that a take could
    # evict a bucket it has just found would answer from an emptied bucket, so it is refused.
    with pytest.raises(ValueError, match="max_keys must be at least 16"):
        MemoryBuckets(max_keys=1)
    assert MemoryBuckets(max_keys=16).max_keys == 16


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


def test_memory_counts_recency_to_within_the_recency_step() -> None:
    # A bucket used again sooner than RECENCY_STEP after it last went to the recent end keeps
    # its place; used a step or more later, it goes there again. So the store evicts a client
    # in steady use after one that has gone quiet, without reordering on every take.
    now = [0.0]
    store = MemoryBuckets(max_keys=16, clock=lambda: now[0])
    window = 900_000  # no bucket refills within the test, so the sweep drops none
    for i in range(16):
        store.take([(f"k{i}", 10, window)])
    now[0] = RECENCY_STEP / 2
    store.take([("k0", 10, window)])
    assert next(iter(store.buckets)) == "k0"  # within the step: still the least recent
    now[0] = RECENCY_STEP
    store.take([("k0", 10, window)])
    assert list(store.buckets)[-1] == "k0"  # a step after its last move: the most recent
    store.take([("k16", 10, window)])  # a 17th key evicts the least recently used
    assert "k1" not in store.buckets
    assert store.take([("k0", 10, window)])[1][0].remaining == 6  # k0 kept: its fourth take leaves 6


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


def test_the_limiters_request_path_answers_as_take_does() -> None:
    # RateLimiter.take_request_now works out an allowed take of two existing buckets itself;
    # step by step against MemoryBuckets.take on a store of its own: new buckets, allowed
    # takes, refusals by either bucket, refills, several clients and tiers, a key that comes
    # back after eviction, two endpoint policies of one name and different limits (each
    # replaces the other's bucket), one that takes the burst policy's name and size but not
    # its window (the burst bucket then refills at its rate), and a limit divided among
    # processes (fallback in a cluster).
    import random

    from mangu.config import load_settings
    from mangu.metrics import Metrics
    from mangu.ratelimit.headers import response_headers
    from mangu.ratelimit.limiter import RateLimiter, ready_decision

    rng = random.Random(7)
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    settings = load_settings({
        "JWT_SECRET": "x" * 32, "RATE_LIMIT_MAX": "10", "RATE_LIMIT_WINDOW": "10000", "RATE_LIMIT_STRICT_MAX": "4",
        "RATE_LIMIT_BURST": "6", "RATE_LIMIT_PROCESSES": "2", "RATE_LIMIT_MEMORY_MAX_KEYS": "100",
    })
    limiter = RateLimiter(settings, Metrics(version="test"), clock=clock)
    reference = MemoryBuckets(max_keys=100, clock=clock)
    tiers = {"general": limiter.tiers.resolve("general"), "strict": limiter.tiers.resolve("strict"),
             "export_a": Policy("export", 6, 10_000), "export_b": Policy("export", 8, 10_000),
             "slow_burst": Policy("burst", 6, 5_000)}
    burst = limiter.tiers.burst.divided(2)
    outcomes = Counter()
    for step in range(20_000):
        now[0] += rng.choice((0.0, 0.0, 0.001, 0.03, 0.2))
        # a few busy clients, and from time to time many more (a store over its 100 keys)
        clients = 4 if step % 5000 < 4000 else 80
        address, tier = f"10.0.0.{rng.randrange(clients)}", rng.choice(list(tiers))
        user_id = "u1" if rng.random() < 0.1 else None  # a signed-in user: keyed by user id
        client = f"user:{user_id}" if user_id else f"ip:{address}"
        policy = tiers[tier].divided(2)
        expected_allowed, expected_quotas = reference.take([
            (f"{policy.name}:{client}", policy.limit, policy.window_ms),
            (f"burst:{client}", burst.limit, burst.window_ms),
        ])
        named = tier if tier in ("general", "strict") else tiers[tier]
        answer = limiter.take_request_now(named, user_id, address, None)
        assert answer is not None
        ready = type(answer) is tuple  # a ReadyTake: allowed, worked out in one step
        decision = ready_decision(answer) if ready else answer
        assert (decision.allowed, tuple(decision.quotas)) == (expected_allowed, tuple(expected_quotas))
        assert all(type(quota) is Quota for quota in decision.quotas)
        assert [p.limit for p in decision.policies] == [policy.limit, burst.limit]
        if ready:  # the fields response_headers gives, as lines
            fields = dict(line.split(": ", 1) for line in answer[0].split("\r\n")[:-1])
            wanted = response_headers([decision], now=int(fields["X-Ratelimit-Reset"]) - decision.quotas[0].reset)
            assert fields == {name.title(): value for name, value in wanted.items()}
            outcomes["ready", "burst bucket was full" if answer[4] == burst.limit - 1 else "burst bucket in use"] += 1
        else:
            outcomes["take", "allowed" if decision.allowed else "refused"] += 1
    # every path was taken: worked out in one step (the burst bucket full before, or not), left
    # to take and allowed, refused
    assert set(outcomes) == {("ready", "burst bucket was full"), ("ready", "burst bucket in use"),
                             ("take", "allowed"), ("take", "refused")}
    assert list(limiter._memory.buckets) == list(reference.buckets)  # the same recency order, the same evictions


def test_a_clients_next_request_is_worked_out_in_one_step() -> None:
    # The first request of a client address makes its buckets (MemoryBuckets.take); the
    # limiter remembers them, so the next is worked out in one step, with its field lines (a
    # ReadyTake).
    from mangu.config import load_settings
    from mangu.metrics import Metrics
    from mangu.ratelimit.limiter import Decision, RateLimiter

    limiter = RateLimiter(load_settings({"JWT_SECRET": "x" * 32}), Metrics(version="test"))
    for address in ("10.0.0.1", "10.0.0.2"):
        first = limiter.take_request_now("general", None, address, None)
        second = limiter.take_request_now("general", None, address, None)
        assert type(first) is Decision and first.allowed
        assert type(second) is tuple and "X-Ratelimit-Remaining: 98\r\n" in second[0]  # a ReadyTake


def test_the_decimals_of_the_field_lines_are_remembered_within_a_bound() -> None:
    # take_request_now looks up the decimal text of the numbers it writes (remaining tokens,
    # seconds, reset times) instead of formatting each again; the table never outgrows its bound.
    from mangu.ratelimit import limiter as module
    from mangu.ratelimit.limiter import _DECIMALS_KEPT, _learn_decimal

    module._decimal.clear()
    for number in range(3 * _DECIMALS_KEPT):
        _learn_decimal(number)
        assert module._decimal[number] == str(number)
        assert len(module._decimal) <= _DECIMALS_KEPT
    _learn_decimal(1_764_800_000)
    assert module._decimal[1_764_800_000] == "1764800000"
    assert 7 not in module._decimal  # emptied when full; learnt again when next needed
    _learn_decimal(7)
    assert module._decimal[7] == "7"