"""The stores: one module per MongoDB collection (messages, users, books), each validating
what a client sent before any query and creating its indexes at start-up.

Errors every store raises: ``ValidationError`` (every invalid field at once), ``Conflict``
(a unique value taken), ``NotFound``; and ``mangu.db.DatabaseUnavailable`` when MongoDB is down.
"""

from mangu.store.errors import Conflict, NotFound, ValidationError

__all__ = ["Conflict", "NotFound", "ValidationError"]
