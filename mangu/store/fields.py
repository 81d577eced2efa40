"""Type and shape checks for client values, collected so one ``ValidationError`` names every
invalid field. Every value that reaches a query passes through here first: a string field
given ``{"$gt": ""}`` is "expected a string", never an operator."""

from __future__ import annotations

import re
from typing import Any

from mangu.store.errors import ValidationError


class Fields:
    """Checks values one field at a time; ``check()`` raises for all the problems found."""

    def __init__(self) -> None:
        self.problems: dict[str, str] = {}

    def add(self, name: str, problem: str) -> None:
        self.problems.setdefault(name, problem)

    def check(self) -> None:
        if self.problems:
            raise ValidationError(dict(self.problems))

    def text(
        self,
        name: str,
        value: Any,
        *,
        max_length: int,
        min_length: int = 1,
        pattern: re.Pattern[str] | None = None,
        expected: str = "",
        required: bool = True,
        strip: bool = True,
    ) -> str | None:
        """A string of ``min_length``..``max_length`` characters (after stripping), matching
        ``pattern`` when given (``expected`` says what it accepts)."""
        if value is None:
            if required:
                self.add(name, "required")
            return None
        if not isinstance(value, str):
            self.add(name, "expected a string")
            return None
        if strip:
            value = value.strip()
        if len(value) < min_length:
            self.add(name, "must not be empty" if min_length == 1 else f"expected at least {min_length} characters")
            return None
        if len(value) > max_length:
            self.add(name, f"expected at most {max_length} characters")
            return None
        if pattern is not None and not pattern.fullmatch(value):
            self.add(name, expected or "malformed")
            return None
        return value

    def integer(self, name: str, value: Any, *, lo: int, hi: int, required: bool = False) -> int | None:
        """A whole number from ``lo`` to ``hi`` (a boolean is not a number here)."""
        if value is None:
            if required:
                self.add(name, "required")
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(name, "expected an integer")
            return None
        if not lo <= value <= hi:
            self.add(name, f"expected an integer from {lo} to {hi}")
            return None
        return value

    def text_list(
        self, name: str, value: Any, *, max_items: int, max_length: int, choices: tuple[str, ...] | None = None,
        lower: bool = False,
    ) -> list[str] | None:
        """A list of distinct non-empty strings (order kept, duplicates dropped)."""
        if value is None:
            return None
        if not isinstance(value, list):
            self.add(name, "expected a list of strings")
            return None
        if len(value) > max_items:
            self.add(name, f"expected at most {max_items} items")
            return None
        items: list[str] = []
        for item in value:
            if not isinstance(item, str) or not item.strip():
                self.add(name, "expected a list of non-empty strings")
                return None
            item = item.strip().lower() if lower else item.strip()
            if len(item) > max_length:
                self.add(name, f"expected items of at most {max_length} characters")
                return None
            if choices is not None and item not in choices:
                self.add(name, f"unknown value {item[:40]!r}; expected any of {', '.join(choices)}")
                return None
            if item not in items:
                items.append(item)
        return items

    def only(self, data: Any, allowed: tuple[str, ...], name: str = "body") -> dict[str, Any]:
        """``data`` as a dict with no keys outside ``allowed``; an unknown key is a problem of its own."""
        if not isinstance(data, dict):
            self.add(name, "expected an object")
            return {}
        for key in data:
            if key not in allowed:
                self.add(str(key)[:64], "unknown field")
        return data
