"""Options every Redis client of the server is built with."""

from __future__ import annotations

from typing import Any

from redis.maint_notifications import MaintNotificationsConfig

# No round trip when a connection opens (no CLIENT SETNAME / SETINFO, no maintenance-push
# negotiation): one round trip less per connection, and nothing to leak, since redis-py does
# not close a connection cancelled in the middle of that handshake (a call bounded by a
# timeout, against a Redis that accepts but does not answer).
HANDSHAKE_FREE: dict[str, Any] = {
    "driver_info": None,
    "maint_notifications_config": MaintNotificationsConfig(enabled=False),
}
