"""Rate-limit policies: a named quota of requests per window, and the configured tiers.

A handler names its tier in its ``rate_limit`` class attribute: ``"general"`` (the
default), ``"strict"``, a ``Policy`` of its own (``rate_limit = Policy("export", 10, 60_000)``),
or ``None`` to be exempt. The burst policy applies on top of whichever window tier it names.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from mangu.config import Settings

_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")


@dataclass(frozen=True, slots=True)
class Policy:
    """``limit`` requests per ``window_ms`` milliseconds, refilled continuously, under ``name``.

    The name shows in response headers, error bodies and metric labels, so it must be a
    short lowercase word (letters, digits, ``_``, ``-``).
    """

    name: str
    limit: int
    window_ms: int
    # this policy's item in the RateLimit-Policy field, e.g. '"general";q=100;w=900'
    header_item: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"policy name {self.name!r}: expected a lowercase word of up to 32 characters")
        if self.limit < 1 or self.window_ms < 1:
            raise ValueError(f"policy {self.name!r}: limit and window_ms must be positive")
        window_s = max(1, math.ceil(self.window_ms / 1000))  # w is whole seconds
        object.__setattr__(self, "header_item", f'"{self.name}";q={self.limit};w={window_s}')

    def divided(self, processes: int) -> Policy:
        """This policy's share in one of ``processes`` processes (at least 1 request)."""
        if processes <= 1:
            return self
        return Policy(self.name, max(1, self.limit // processes), self.window_ms)


class Tiers:
    """The configured policies. ``resolve`` turns a handler's ``rate_limit`` into a Policy."""

    def __init__(self, settings: Settings) -> None:
        window = settings.rate_limit_window
        self.general = Policy("general", settings.rate_limit_max, window)
        self.strict = Policy("strict", settings.rate_limit_strict_max, window)
        self.auth = Policy("auth", settings.rate_limit_auth_max, window)
        self.auth_user = Policy("auth_user", settings.rate_limit_auth_user_max, window)
        self.burst = Policy("burst", settings.rate_limit_burst, 1000)
        self._by_name = {p.name: p for p in (self.general, self.strict)}

    def resolve(self, tier: str | Policy) -> Policy:
        if isinstance(tier, Policy):
            return tier
        try:
            return self._by_name[tier]
        except KeyError:
            raise ValueError(f"unknown rate-limit tier {tier!r}; expected one of {sorted(self._by_name)}"
                             " or a Policy") from None
