"""The rate-limit response fields: IETF ``RateLimit-Policy`` / ``RateLimit`` (structured
fields, one item per bucket consulted) and the widely used ``X-RateLimit-*`` trio.

    RateLimit-Policy: "general";q=100;w=900, "burst";q=10;w=1
    RateLimit: "general";r=57;t=412, "burst";r=9;t=1
    X-RateLimit-Limit: 100   X-RateLimit-Remaining: 57   X-RateLimit-Reset: <epoch seconds>

The ``X-RateLimit-*`` fields describe one bucket: the one that refused, else the first of
the last decision (the endpoint's tier, or the auth tier after a login attempt).

``response_headers`` gives the fields as a dict for ``HTTPHeaders``; ``field_lines`` gives
those of the common case (one allowed request decision) as ready field lines, which the
server's connection (``mangu.http1``) writes after the others: the same lines, for less work.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from mangu.ratelimit.limiter import Decision

_ceil = math.ceil
_wall = time.time


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


def field_lines(decision: Decision, now: float | None = None) -> str:
    """``response_headers`` of one allowed request decision (its tier and burst, RateLimit-Policy
    ready), as field lines: CRLF after each, names as Tornado writes them (Http-Header-Case).

    The values are numbers and policy names (lowercase words, see ``Policy``), so no line
    can carry a CR or LF of its own.
    """
    parts = _line_parts.get(decision.policy_field)
    if parts is None:
        parts = _fixed_parts(decision)
    head, between, limit = parts
    q1, q2 = decision.quotas
    remaining = str(q1.remaining)
    reset = q1.reset
    return (
        f"{head}{remaining};t={_ceil(reset)}{between}{q2.remaining};t={_ceil(q2.reset)}\r\n"
        f"{limit}{remaining}\r\nX-Ratelimit-Reset: {_ceil((_wall() if now is None else now) + reset)}\r\n"
    )


# What field_lines writes the same for every decision of a tier, by its RateLimit-Policy value
_line_parts: dict[str, tuple[str, str, str]] = {}


def _fixed_parts(decision: Decision) -> tuple[str, str, str]:
    if len(_line_parts) > 1024:  # tiers are few; never let this grow
        _line_parts.clear()
    first, second = decision.policies
    parts = _line_parts[decision.policy_field] = (
        f'Ratelimit-Policy: {decision.policy_field}\r\nRatelimit: "{first.name}";r=',
        f', "{second.name}";r=',
        f"X-Ratelimit-Limit: {first.limit}\r\nX-Ratelimit-Remaining: ",
    )
    return parts
