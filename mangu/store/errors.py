"""The errors the stores raise; handlers/base.py maps them to 400, 409 and 404."""

from __future__ import annotations


class ValidationError(Exception):
    """Client values that cannot be used: ``fields`` maps each invalid field to the problem."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("; ".join(f"{name}: {problem}" for name, problem in fields.items()))
        self.fields = fields


class Conflict(Exception):
    """A unique value is already taken; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class NotFound(Exception):
    """No such record."""
