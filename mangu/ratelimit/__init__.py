"""Rate limiting: token buckets in Redis (one Lua script) with an in-memory fallback.

``RateLimiter`` is what the server uses (``services.limiter``); ``Policy`` declares a
handler's own quota; ``TokenBucket`` is the single-key bucket for per-connection limits.
"""

from mangu.ratelimit.bucket import TokenBucket
from mangu.ratelimit.limiter import Decision, RateLimiter, RateLimitUnavailable
from mangu.ratelimit.policies import Policy

__all__ = ["Decision", "Policy", "RateLimitUnavailable", "RateLimiter", "TokenBucket"]
