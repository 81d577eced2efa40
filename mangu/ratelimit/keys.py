"""Whose bucket a request draws on: a user, a client address (IPv6 by its /64), a username."""

from __future__ import annotations

import hashlib
import ipaddress

_MAX_NAME = 64


def user_key(user_id: str) -> str:
    return f"user:{user_id}"


def ip_key(address: str) -> str:
    """``ip:<address>``; an IPv6 client is keyed by its /64, since one subscriber usually
    holds a whole /64 and could otherwise rotate addresses past any limit."""
    if ":" not in address:
        return f"ip:{address}"
    try:
        ip = ipaddress.IPv6Address(address.split("%", 1)[0])
    except ValueError:
        return f"ip:{address[:64]}"
    if ip.ipv4_mapped is not None:
        return f"ip:{ip.ipv4_mapped}"
    prefix = int(ip) >> 64 << 64
    return f"ip:{ipaddress.IPv6Address(prefix).compressed}/64"


def username_key(username: str) -> str:
    """``name:<username>``, case-folded; long names are hashed so keys stay small."""
    name = username.strip().casefold()
    if len(name) > _MAX_NAME:
        name = "sha256-" + hashlib.sha256(name.encode()).hexdigest()
    return f"name:{name}"
