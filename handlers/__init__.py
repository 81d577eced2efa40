"""Thin Tornado handlers: parse, call mangu/, write JSON. Each module ends with a
``default_handlers`` list; ``routes()`` collects them in order."""

from __future__ import annotations

from typing import Any


def routes(settings: Any) -> list[tuple[Any, ...]]:
    from handlers import admin, auth, books, health, openapi, rooms, socket, static

    modules = [health, auth, books, rooms, admin, openapi]
    if settings.enable_websocket:
        modules.append(socket)
    if settings.enable_demo_page:
        modules.append(static)
    collected: list[tuple[Any, ...]] = []
    for module in modules:
        collected.extend(module.default_handlers)
    # endpoints for the test suite (404 unless MANGU_ENV=test)
    from handlers import testing

    collected.extend(testing.default_handlers)
    return collected
