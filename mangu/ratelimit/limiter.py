"""The rate limiter the server uses: Redis when configured and answering, memory otherwise.

A Redis error or timeout answers that request from memory, opens a circuit (later requests
go straight to memory, paying no timeout) and starts a background probe that switches back
once Redis answers. Each switch is logged once and counted. Memory answers enforce each
limit divided by ``RATE_LIMIT_PROCESSES``, so a cluster in fallback keeps about its limit.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from mangu.clientip import client_ip
from mangu.config import Settings
from mangu.metrics import Metrics, Tally
from mangu.ratelimit.bucket import GONE, RECENCY_STEP, MemoryBuckets, Quota, refill_rate
from mangu.ratelimit.headers import field_line_parts
from mangu.ratelimit.keys import ip_key, user_key, username_key
from mangu.ratelimit.policies import Policy, Tiers
from mangu.ratelimit.redis import Overloaded, RedisBuckets, RedisUnavailable
from mangu.redis_options import HANDSHAKE_FREE

log = logging.getLogger("mangu.ratelimit")

REDIS, MEMORY = "redis", "memory"
_REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
_CLIENT_KEY_CACHE = 16_384  # client addresses whose bucket key is remembered
_RARE_LOG_INTERVAL = 60.0  # seconds between warnings about one lasting condition
_DECIMALS_KEPT = 16_384  # whole numbers whose decimal text the field lines remember (_decimal)
_ceil = math.ceil
_floor = math.floor  # int() of a token count (never negative), in a third of the instructions
_wall = time.time


# ``str(n)`` of the whole numbers in the field lines of allowed requests, remembered:
# remaining tokens, seconds to a full bucket and reset times recur from one request to the
# next, and a lookup costs about half of formatting one. A plain dict (a subclass with
# __missing__ costs more per lookup): a number it lacks raises KeyError, and _learn_decimal
# adds it. Bounded: emptied when full.
_decimal: dict[int, str] = {}


def _learn_decimal(number: int) -> None:
    if len(_decimal) >= _DECIMALS_KEPT:
        _decimal.clear()
    _decimal[number] = str(number)


class RateLimitUnavailable(Exception):
    """A fail-closed tier cannot be decided because Redis is down."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("rate limiting is unavailable")
        self.retry_after = retry_after


class Decision(NamedTuple):
    """The answer to one take: allowed or not, and each bucket's quota, in the order asked."""

    allowed: bool
    policies: Sequence[Policy]  # as enforced (divided while answering from memory)
    quotas: Sequence[Quota]
    backend: str

    @property
    def primary(self) -> tuple[Policy, Quota]:
        """The bucket this decision is about: the first that lacked tokens, else the first."""
        if not self.allowed:
            for policy, quota in zip(self.policies, self.quotas):
                if quota.retry_after > 0:
                    return policy, quota
        return self.policies[0], self.quotas[0]

    @property
    def refused_by(self) -> Policy | None:
        """The policy that refused (None when allowed)."""
        return None if self.allowed else self.primary[0]

    @property
    def retry_after(self) -> float:
        """Seconds until every refusing bucket has enough tokens (0.0 when allowed)."""
        if self.allowed:
            return 0.0
        return max(quota.retry_after for quota in self.quotas)


# What take_request_now answers for an allowed request it works out in one step (memory, two
# buckets that exist): (field_lines, policies, tokens1, reset1, tokens2, reset2). The field
# lines are the response's rate-limit fields, ready for the server's connection
# (mangu.http1); the rest is what ready_decision makes the Decision of, should one be needed
# (a later decision in the request, an error response), which most requests never ask for. A
# plain tuple costs a fraction of a Decision to make.
ReadyTake = tuple[str, tuple[Policy, Policy], float, float, float, float]


def ready_decision(ready: ReadyTake) -> Decision:
    """The Decision of a ReadyTake: allowed, with each bucket's quota."""
    _, policies, tokens1, reset1, tokens2, reset2 = ready
    return Decision(True, policies, (Quota(int(tokens1), reset1, 0.0), Quota(int(tokens2), reset2, 0.0)), MEMORY)


class _MemoryPlan(NamedTuple):
    """A tier's memory take, worked out once (``RateLimiter._memory_plan``); kept as a plain
    tuple, which take_request_now unpacks in one step (a NamedTuple takes an iterator)."""

    policies: tuple[Policy, Policy]  # the tier's and the burst policy, as enforced here
    allowed: Tally  # the count of the tier's allowed decisions
    # the buckets: key prefix, capacity, window in ms
    prefix: str
    capacity: float
    window_ms: int
    burst_prefix: str
    burst_capacity: float
    burst_window_ms: int
    # what the field lines of an allowed decision have the same every time (headers.field_line_parts)
    lines_head: str
    lines_between: str
    lines_limit: str
    lines_rested: str  # from lines_between to lines_limit's end, when the burst bucket was full
    # the burst bucket's tokens after a take from a full one, and its refill rate
    # (bucket.refill_rate): when lines_rested applies
    rested_tokens: float
    rested_rate: float
    # the clients seen lately, by address (peer, X-Forwarded-For): [the two bucket keys, as
    # request_key makes them, and the two buckets as last seen in the store] (_client)
    clients: dict[tuple[str, str | None], list]


class RateLimiter:
    """Takes from token buckets by policy and key, with failover between Redis and memory."""

    def __init__(self, settings: Settings, metrics: Metrics, clock: Callable[[], float] = time.monotonic) -> None:
        """``clock``: seconds on a monotonic clock, for the memory buckets."""
        self.enabled = settings.rate_limit_enabled
        self.tiers = Tiers(settings)
        self._settings = settings
        self._metrics = metrics
        self._processes = settings.rate_limit_processes
        self._auth_fail_closed = settings.rate_limit_auth_fail_closed
        self._timeout = settings.rate_limit_redis_timeout / 1000
        self._probe_interval = settings.rate_limit_probe_interval / 1000
        self._memory = MemoryBuckets(settings.rate_limit_memory_max_keys, on_evict=self._evicted, clock=clock)
        self._move_to_end = self._memory.buckets.move_to_end  # bound once, for the hot path (take_request_now)
        self._clock = clock
        self._redis: RedisBuckets | None = None
        self._on_redis = False
        self._closing = False
        self._probe_task: asyncio.Task[None] | None = None
        self._fallback_since = 0.0
        self._evictions_unlogged = 0
        self._logged_at: dict[str, float] = {}
        self._shares: dict[Policy, Policy] = {}
        self._trusted_proxies = settings.trusted_proxies
        self._client_keys: dict[tuple[str, str | None], str] = {}
        self._request_policies: dict[str | Policy, tuple[Policy, Policy]] = {}
        self._memory_plans: dict[str | Policy, tuple] = {}  # each a _MemoryPlan, as a plain tuple
        # memory answers while Redis is configured are fallback answers, counted as such
        self._fallback_answers = (
            metrics.ratelimit_memory_answers.labels(reason="redis_down") if self.redis_configured else None
        )
        metrics.ratelimit_memory_buckets.set_function(self._memory.__len__)
        self._show_backend()

    @property
    def backend(self) -> str:
        """``redis`` or ``memory``: where takes are decided now."""
        return REDIS if self._on_redis else MEMORY

    @property
    def redis_configured(self) -> bool:
        return self._settings.redis_url is not None

    async def start(self) -> None:
        """Connect to Redis when configured; a Redis that is down means starting in fallback."""
        if not self.redis_configured or not self.enabled:
            return
        client = Redis.from_url(
            self._settings.redis_url,
            # RedisBuckets bounds each call on the request path by RATE_LIMIT_REDIS_TIMEOUT; the
            # socket timeouts are the general Redis ones, for what happens off that path.
            socket_timeout=self._settings.redis_timeout / 1000,
            socket_connect_timeout=self._settings.redis_timeout / 1000,
            retry=Retry(NoBackoff(), 0),  # a retry would double the wait; memory answers instead
            max_connections=8,
            **HANDSHAKE_FREE,
        )
        self._redis = RedisBuckets(client, self._timeout, on_batch=self._metrics.ratelimit_redis_batch_size.observe)
        try:
            await self._reach_redis()
        except _REDIS_ERRORS as exc:
            self._fall_back(_reason(exc))
        else:
            self._on_redis = True
            self._show_backend()
            log.info("rate limiting on Redis", extra={"backend": REDIS})

    async def close(self) -> None:
        self._closing = True  # takes still in flight are answered from memory, with no probe
        if self._probe_task is not None:
            self._probe_task.cancel()
            await asyncio.gather(self._probe_task, return_exceptions=True)
            self._probe_task = None
        if self._redis is not None:
            await self._redis.close()
            self._redis = None
        self._on_redis = False

    def request_key(self, user_id: str | None, peer: str, forwarded_for: str | None) -> str:
        """Whose buckets a request draws on: the user's when it carries a valid token, else
        its client address's (X-Forwarded-For believed from TRUSTED_PROXIES only; IPv6 by /64)."""
        if user_id is not None:
            return user_key(user_id)
        cache_key = (peer, forwarded_for)
        key = self._client_keys.get(cache_key)
        if key is None:
            # Parsing addresses costs more than the whole bucket arithmetic: remember the
            # answer for the clients seen lately (a bounded cache, emptied when full).
            if len(self._client_keys) >= _CLIENT_KEY_CACHE:
                self._client_keys.clear()
            key = self._client_keys[cache_key] = ip_key(client_ip(peer, forwarded_for, self._trusted_proxies))
        return key

    async def take_request(self, tier: str | Policy, key: str) -> Decision:
        """One request against its tier and the burst policy, for ``key`` (``request_key``)."""
        return await self.take(self._policies_of(tier), (key, key))

    def take_request_now(self, tier: str | Policy, user_id: str | None, peer: str,
                         forwarded_for: str | None) -> Decision | ReadyTake | None:
        """``take_request`` without waiting, when memory decides (no Redis configured, or in
        fallback): the hot path of every limited request then costs no coroutine. None while
        Redis decides: await ``take_request`` then. The request's key is the one
        ``request_key`` gives for the same arguments.

        An allowed take of two buckets that exist is worked out here in one step, field
        lines included, and answered as a ``ReadyTake`` (``ready_decision`` gives its
        Decision); anything else (a new bucket, a changed capacity, a refusal) goes to
        ``MemoryBuckets.take``, and is answered with a Decision.
        """
        if self._on_redis:
            return None
        plan = self._memory_plans.get(tier)
        if plan is None:
            plan = self._memory_plan(tier)
        if self._fallback_answers is not None:
            self._fallback_answers.inc()
        (policies, allowed_count, prefix1, capacity1, window1, prefix2, capacity2, window2,
         head, between, limit, rested, rested_tokens, rested_rate, clients) = plan
        store = self._memory.buckets
        if user_id is None:
            # A client address's bucket keys and buckets, remembered: no key to make, no
            # lookup in the store. A bucket the store has dropped since has capacity 0.
            client = (peer, forwarded_for)
            entry = clients.get(client)
            if entry is None:
                entry = self._client(clients, prefix1, prefix2, client)
            key1, key2, first, second = entry
        else:
            entry = None
            key = user_key(user_id)
            key1 = prefix1 + key
            key2 = prefix2 + key
            first = store.get(key1, GONE)
            second = store.get(key2, GONE)
        if first.capacity == capacity1 and second.capacity == capacity2:
            # MemoryBuckets.take of these two, unrolled: the refill of each (TokenBucket.refill;
            # the clock is monotonic, so no time has passed at worst) ...
            now = self._clock()
            rate1 = first.rate
            rate2 = second.rate
            tokens1 = first.tokens + (now - first.stamp) * rate1
            if tokens1 > capacity1:
                tokens1 = capacity1
            tokens2 = second.tokens + (now - second.stamp) * rate2
            if tokens2 > capacity2:
                tokens2 = capacity2
            if tokens1 >= 1.0 and tokens2 >= 1.0 and first is not second:
                # ... and a take from both, when both have a token (else take decides); a
                # bucket moved to the recent end within RECENCY_STEP stays where it is.
                if now - first.moved >= RECENCY_STEP:
                    self._move_to_end(key1)
                    first.moved = now
                if now - second.moved >= RECENCY_STEP:
                    self._move_to_end(key2)
                    second.moved = now
                first.tokens = tokens1 = tokens1 - 1.0
                second.tokens = tokens2 = tokens2 - 1.0
                first.stamp = second.stamp = now
                allowed_count.value += 1
                reset1 = (capacity1 - tokens1) / rate1
                reset2 = (capacity2 - tokens2) / rate2
                # headers.response_headers of this decision, as field lines
                remaining1 = _floor(tokens1)
                seconds1 = _ceil(reset1)
                at = _ceil(_wall() + reset1)
                decimal = _decimal
                while True:
                    try:
                        text1 = decimal[remaining1]
                        if tokens2 == rested_tokens and rate2 == rested_rate:  # the burst bucket was full
                            lines = (f"{head}{text1};t={decimal[seconds1]}{rested}{text1}\r\n"
                                     f"X-Ratelimit-Reset: {decimal[at]}\r\n")
                        else:
                            lines = (
                                f"{head}{text1};t={decimal[seconds1]}{between}{decimal[_floor(tokens2)]};"
                                f"t={decimal[_ceil(reset2)]}\r\n{limit}{text1}\r\nX-Ratelimit-Reset: {decimal[at]}\r\n"
                            )
                        break
                    except KeyError as missing:
                        _learn_decimal(missing.args[0])
                return lines, policies, tokens1, reset1, tokens2, reset2
        allowed, quotas = self._memory.take(((key1, capacity1, window1), (key2, capacity2, window2)))
        if entry is not None:  # the buckets take made or found
            entry[2] = store.get(key1, GONE)
            entry[3] = store.get(key2, GONE)
        decision = Decision(allowed, policies, quotas, MEMORY)
        self._count(decision)
        return decision

    def _client(self, clients: dict[tuple[str, str | None], list], prefix1: str, prefix2: str,
                client: tuple[str, str | None]) -> list:
        """A new entry of a plan's ``clients``: its buckets not known yet (GONE), so the first
        request goes to take, after which take_request_now notes the buckets."""
        if len(clients) >= _CLIENT_KEY_CACHE:  # bounded as request_key's cache is
            clients.clear()
        key = self.request_key(None, *client)
        entry = clients[client] = [prefix1 + key, prefix2 + key, GONE, GONE]
        return entry

    def _policies_of(self, tier: str | Policy) -> tuple[Policy, Policy]:
        policies = self._request_policies.get(tier)
        if policies is None:
            policies = self._request_policies[tier] = (self.tiers.resolve(tier), self.tiers.burst)
        return policies

    def _memory_plan(self, tier: str | Policy) -> tuple:
        """What a memory take for ``tier`` needs, worked out once: the policies as enforced
        here (their share of the limit in a cluster), the counter of the tier's allowed
        decisions, each bucket's key prefix and size, the fixed parts of the field lines, and
        room for the bucket keys of the clients seen."""
        policy, burst = self._policies_of(tier)
        if self._processes > 1:
            policy, burst = self._share(policy), self._share(burst)
        if len(self._memory_plans) > 1024:  # custom policies are few; never let this grow
            self._memory_plans.clear()
        plan = self._memory_plans[tier] = tuple(_MemoryPlan(
            (policy, burst), self._decision_counter(policy.name, "allowed"),
            f"{policy.name}:", float(policy.limit), policy.window_ms,
            f"{burst.name}:", float(burst.limit), burst.window_ms,
            *field_line_parts(policy, burst),
            float(burst.limit) - 1.0, refill_rate(float(burst.limit), burst.window_ms),
            {},
        ))
        return plan

    async def take_auth_attempt(self, client_key: str, username: str) -> Decision:
        """One login attempt: against the auth tier per client (``request_key`` without a
        user) and per username.

        Raises RateLimitUnavailable instead of answering from memory when the auth tier is
        set to fail closed (RATE_LIMIT_AUTH_FAIL_CLOSED) and Redis is down.
        """
        return await self.take((self.tiers.auth, self.tiers.auth_user), (client_key, username_key(username)),
                               fail_closed=self._auth_fail_closed)

    async def take(self, policies: Sequence[Policy], keys: Sequence[str], cost: int = 1,
                   fail_closed: bool = False) -> Decision:
        """Take ``cost`` from the bucket of each policy for the key at the same place, all or
        nothing.

        With ``fail_closed``, raises RateLimitUnavailable rather than answer from memory
        while Redis is configured but not answering.
        """
        reason = "redis_down"
        if self._on_redis:
            assert self._redis is not None
            try:
                allowed, quotas = await self._redis.take(_specs(policies, keys), cost)
            except RedisUnavailable as exc:
                self._fall_back(str(exc))
            except Overloaded:
                reason = "overloaded"
                self._log_rarely("rate-limit Redis queue full: answering from memory", reason=reason)
            else:
                decision = Decision(allowed, policies, quotas, REDIS)
                self._count(decision)
                return decision
        return self._take_memory(policies, keys, cost, fail_closed, reason)

    def _take_memory(self, policies: Sequence[Policy], keys: Sequence[str], cost: int, fail_closed: bool,
                     reason: str) -> Decision:
        if self.redis_configured:
            if fail_closed:
                raise RateLimitUnavailable(self._probe_interval)
            self._metrics.ratelimit_memory_answers.labels(reason=reason).inc()
        if self._processes > 1:
            policies = [self._share(policy) for policy in policies]
        allowed, quotas = self._memory.take(_specs(policies, keys), cost)
        decision = Decision(allowed, policies, quotas, MEMORY)
        self._count(decision)
        return decision

    def _share(self, policy: Policy) -> Policy:
        share = self._shares.get(policy)
        if share is None:
            if len(self._shares) > 1024:  # custom policies are few; never let this grow
                self._shares.clear()
            share = self._shares[policy] = policy.divided(self._processes)
        return share

    def _count(self, decision: Decision) -> None:
        if decision.allowed:
            self._decision_counter(decision.policies[0].name, "allowed").value += 1
        else:
            self._decision_counter(decision.refused_by.name, "limited").value += 1  # type: ignore[union-attr]

    def _decision_counter(self, policy: str, outcome: str) -> Tally:
        return self._metrics.ratelimit_decisions.labels(policy, outcome)

    # -- failover

    async def _reach_redis(self) -> None:
        assert self._redis is not None
        # Off the request path (start, probes), Redis gets the general REDIS_TIMEOUT to answer.
        await self._redis.connect(self._settings.redis_timeout / 1000)

    def _fall_back(self, reason: str) -> None:
        if self._probe_task is not None or self._closing:  # already in fallback, or stopping
            self._on_redis = False
            return
        self._on_redis = False
        self._fallback_since = time.monotonic()
        self._show_backend()
        self._metrics.ratelimit_backend_transitions.labels(backend=MEMORY).inc()
        log.warning(
            "rate limiting falls back to memory: Redis unavailable (%s)", reason,
            extra={"backend": MEMORY, "reason": reason, "limit_divisor": self._processes,
                   "probe_interval_ms": self._settings.rate_limit_probe_interval},
        )
        self._probe_task = asyncio.get_running_loop().create_task(self._probe())

    async def _probe(self) -> None:
        while True:
            await asyncio.sleep(self._probe_interval)
            try:
                await self._reach_redis()
            except _REDIS_ERRORS:
                continue
            break
        self._probe_task = None
        self._on_redis = True
        self._show_backend()
        self._metrics.ratelimit_backend_transitions.labels(backend=REDIS).inc()
        seconds = round(time.monotonic() - self._fallback_since, 3)
        log.info("rate limiting back on Redis after %.1fs in memory", seconds,
                 extra={"backend": REDIS, "fallback_s": seconds})

    def _show_backend(self) -> None:
        for backend in (REDIS, MEMORY):
            self._metrics.ratelimit_backend.labels(backend=backend).set(1 if backend == self.backend else 0)

    # -- degraded modes of the memory store and the Redis queue

    def _evicted(self) -> None:
        self._metrics.ratelimit_memory_evictions.inc()
        self._evictions_unlogged += 1
        if self._log_rarely(
            "rate-limit memory store full: least recently used buckets dropped", reason="memory_full",
            max_keys=self._memory.max_keys, evicted=self._evictions_unlogged,
        ):
            self._evictions_unlogged = 0

    def _log_rarely(self, message: str, reason: str, **fields: object) -> bool:
        """Log a warning about a lasting condition at most once a minute per reason."""
        now = time.monotonic()
        if now - self._logged_at.get(reason, -math.inf) < _RARE_LOG_INTERVAL:
            return False
        self._logged_at[reason] = now
        log.warning(message, extra={"reason": reason, **fields})
        return True


def _specs(policies: Sequence[Policy], keys: Sequence[str]) -> list[tuple[str, int, int]]:
    """The backends' view of buckets: (``<policy>:<key>``, capacity, window in ms)."""
    return [(f"{policy.name}:{key}", policy.limit, policy.window_ms) for policy, key in zip(policies, keys)]


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
