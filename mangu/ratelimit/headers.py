"""The rate-limit response fields: IETF ``RateLimit-Policy`` / ``RateLimit`` (structured
fields, one item per bucket consulted) and the widely used ``X-RateLimit-*`` trio.

    RateLimit-Policy: "general";q=100;w=900, "burst";q=10;w=1
    RateLimit: "general";r=57;t=412, "burst";r=9;t=1
    X-RateLimit-Limit: 100   X-RateLimit-Remaining: 57   X-RateLimit-Reset: <epoch seconds>

The ``X-RateLimit-*`` fields describe one bucket: the one that refused, else the first of
the last decision (the endpoint's tier, or the auth tier after a login attempt).

``response_headers`` gives the fields as a dict for ``HTTPHeaders``. In the common case (one
allowed request decision, answered from memory) the limiter gives them as ready field lines
(a ``ReadyTake``, from ``field_line_parts``), which the server's connection
(``mangu.http1``) writes after the others: the same lines, for less work.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mangu.ratelimit.bucket import refill_rate
from mangu.ratelimit.policies import Policy

if TYPE_CHECKING:  # the limiter builds field lines with field_line_parts
    from mangu.ratelimit.limiter import Decision


def retry_after_seconds(decision: Decision) -> int:
    """``Retry-After`` for a refused decision: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(decision.retry_after))


def response_headers(decisions: Sequence[Decision], now: float | None = None) -> dict[str, str]:
    """The fields for a response after ``decisions`` (in the order they were taken)."""
    policies = []
    quotas = []
    for decision in decisions:
        for policy, quota in zip(decision.policies, decision.quotas):
            policies.append(policy.header_item)
            quotas.append(f'"{policy.name}";r={quota.remaining};t={math.ceil(quota.reset)}')
    policy, quota = decisions[-1].primary
    now = time.time() if now is None else now
    return {
        "RateLimit-Policy": ", ".join(policies),
        "RateLimit": ", ".join(quotas),
        "X-RateLimit-Limit": str(policy.limit),
        "X-RateLimit-Remaining": str(quota.remaining),
        "X-RateLimit-Reset": str(math.ceil(now + quota.reset)),
    }


def field_line_parts(policy: Policy, burst: Policy) -> tuple[str, str, str, str]:
    """What the field lines of an allowed request decision (``policy`` then ``burst``) have
    the same every time, for ``RateLimiter.take_request_now`` to fill in: the text before the
    first bucket's remaining tokens, between the two buckets' items, before
    ``X-RateLimit-Remaining``'s value, and, when the burst bucket was full before the take
    (its usual state), all of the text from between the items to that value. The lines are
    ``response_headers``, CRLF after each, names as Tornado writes them (Http-Header-Case),
    in the order of ``response_headers``.

    The values are numbers and policy names (lowercase words, see ``Policy``), so no line
    can carry a CR or LF of its own.
    """
    between = f', "{burst.name}";r='
    limit = f"X-Ratelimit-Limit: {policy.limit}\r\nX-Ratelimit-Remaining: "
    # a full burst bucket less one token: seconds to full, at the rate of its memory bucket
    seconds = math.ceil(1.0 / refill_rate(float(burst.limit), burst.window_ms))
    rested = f"{between}{burst.limit - 1};t={seconds}\r\n{limit}"
    return (
        f"Ratelimit-Policy: {policy.header_item}, {burst.header_item}\r\nRatelimit: \"{policy.name}\";r=",
        between, limit, rested,
    )
