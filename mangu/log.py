"""Logging: JSON lines (python-json-logger) or a readable development format, a request
context carried by contextvars (correlation id on every line), and redaction of secrets.

Nothing here runs at import time; ``configure_logging`` installs the handlers.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
import traceback
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

import orjson
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter, orjson_default

REDACTED = "[REDACTED]"

_SECRET_PARTS = ("password", "passwd", "secret", "token", "authorization", "cookie", "api_key", "apikey")
# In text a key may be spelled with "-" where is_secret_key sees "_" (X-Api-Key, api-key).
_SECRET_NAME = "|".join(part.replace("_", "[-_]?") for part in _SECRET_PARTS)
# A key named like a secret, then "=" or ":", then its value, in any of the ways text carries
# pairs: query strings and forms (token=x), free text (password: x), JSON ("token": "x"),
# Python reprs ('api_key': 'x'), escaped JSON inside JSON (\"token\": \"x\"). A quoted value
# is blanked up to its closing quote, a {...} or [...] value whole.
_SECRET_PAIR = re.compile(
    rf"""(?ix)
    (?<![\w.\-\[\]])                                # the start of a key, not the middle of a word
    (\\?["']?[\w.\-\[\]]*(?:{_SECRET_NAME})[\w.\-\[\]]*\\?["']?[ \t]*[:=][ \t]*)
    (\\"(?:[^"\\]|\\\\\\\\|\\\\\\"|\\[^"])*\\"     # \"escaped JSON string\"
     |"(?:[^"\\]|\\.)*"                             # "JSON string"
     |b?'(?:[^'\\]|\\.)*'                           # 'Python string' or b'bytes'
     |\{{[^{{}}]*\}}|\[[^\[\]]*\]                        # a flat object or list
     |[^&;\s#,"'}}\]]*)                               # anything else, up to a separator
    """
)
# Header lines whose whole value is a credential, whatever its inner keys are called
# (Cookie: sid=x; Authorization: Digest ...): blanked to the end of the line.
_SECRET_HEADER = re.compile(r"(?im)(\b(?:set-cookie|cookie|(?:proxy-)?authorization)[ \t]*:[ \t]*)[^\r\n]+")
_URL_PASSWORD = re.compile(r"(?i)(\b[a-z][a-z0-9+.\-]*://[^:/@\s]*:)([^@\s/]+)(@)")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{8,}")

_key_cache: dict[Any, bool] = {}
_KEY_CACHE_MAX = 4096

_context: ContextVar[Mapping[str, Any]] = ContextVar("mangu_log_context", default={})

# LogRecord attributes that are not "extra" fields, plus our own private markers
_RESERVED = frozenset(RESERVED_ATTRS) | {"message", "asctime", "taskName"}


# -- redaction


def is_secret_key(key: Any) -> bool:
    """True for keys named like a secret (password, token, cookie, ...), any case."""
    cached = _key_cache.get(key)
    if cached is None:
        name = str(key).lower().replace("-", "_")
        cached = any(part in name for part in _SECRET_PARTS)
        if len(_key_cache) < _KEY_CACHE_MAX:
            _key_cache[key] = cached
    return cached


_NAME_HINT = re.compile(rf"(?i){_SECRET_NAME}")
_text_cache: dict[str, str] = {}
_TEXT_CACHE_MAX = 2048
_SCALARS = frozenset({int, float, bool, type(None)})


def _blank_value(match: re.Match[str]) -> str:
    """The pair with its value blanked, keeping the value's quotes so JSON stays JSON."""
    value = match.group(2)
    if value[:2] == '\\"':
        quote = '\\"'
    elif value[:1] in ("'", '"') or value[:2] == "b'":
        quote = value[-1]
    else:
        quote = ""
    return f"{match.group(1)}{quote}{REDACTED}{quote}"


def _redact_text_uncached(text: str) -> str:
    if _NAME_HINT.search(text):
        if ":" in text or "=" in text:
            text = _SECRET_PAIR.sub(_blank_value, text)
        if ":" in text:
            text = _SECRET_HEADER.sub(lambda m: m.group(1) + REDACTED, text)
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + m.group(3), text)
    if "eyJ" in text:
        text = _JWT.sub(REDACTED, text)
    if "earer " in text or "asic " in text or "EARER " in text or "ASIC " in text:
        text = _BEARER.sub(lambda m: m.group(1) + " " + REDACTED, text)
    return text


def redact_text(text: str) -> str:
    """Blank secrets in a string: values of secret-named keys (``k=v``, ``k: v``, JSON and
    repr pairs), credential header lines, URL passwords, bearer credentials and JWTs."""
    cached = _text_cache.get(text)
    if cached is not None:
        return cached
    result = _redact_text_uncached(text)
    if len(text) <= 256:
        if len(_text_cache) >= _TEXT_CACHE_MAX:
            _text_cache.clear()
        _text_cache[text] = result
    return result


def redact(value: Any) -> Any:
    """A redacted copy of value: secret keys at any depth, secrets inside strings.

    Containers are copied only when something inside them changes.
    """
    cls = value.__class__
    if cls is str:
        return redact_text(value)
    if cls in _SCALARS:
        return value
    if cls is dict or isinstance(value, Mapping):
        out = None
        for key, item in value.items():
            new = REDACTED if is_secret_key(key) else redact(item)
            if new is not item:
                if out is None:
                    out = dict(value)
                out[key] = new
        return value if out is None else out
    if cls is list or cls is tuple or isinstance(value, (list, tuple)):
        if len(value) == 2 and value[0].__class__ is str and is_secret_key(value[0]):
            # a (name, value) pair, as header lists and form items come
            return (value[0], REDACTED) if isinstance(value, tuple) else [value[0], REDACTED]
        items = [redact(item) for item in value]
        if all(new is old for new, old in zip(items, value)):
            return value
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, str):
        return redact_text(value)
    return value


def _redact_args(args: Any) -> Any:
    """Redact the containers among a record's arguments. Plain strings are left alone: they
    end up in the message, which is redacted as a whole."""
    if args.__class__ is tuple:
        if not any(a.__class__ not in _SCALARS and a.__class__ is not str for a in args):
            return args
        return tuple(a if a.__class__ is str else redact(a) for a in args)
    return redact(args)


def _redact_fields(data: dict[str, Any]) -> None:
    """Redact a top-level log dict in place (the hot path: avoid copying it)."""
    for key, item in data.items():
        if item is None:
            continue
        secret = _key_cache.get(key)
        if secret is None:
            secret = is_secret_key(key)
        if secret:
            data[key] = REDACTED  # numbers too: a PIN or a numeric token is still a secret
        elif item.__class__ not in _SCALARS:
            new = redact(item)
            if new is not item:
                data[key] = new


# -- request context


def bind_context(**fields: Any) -> contextvars.Token:
    """Add fields to every log line written from this context (and tasks spawned from it)."""
    return _context.set({**_context.get(), **fields})


def reset_context(token: contextvars.Token) -> None:
    _context.reset(token)


def get_context() -> Mapping[str, Any]:
    return _context.get()


def clear_context() -> None:
    _context.set({})


def current_correlation_id() -> str | None:
    return _context.get().get("correlation_id")


class ContextLogger(logging.LoggerAdapter):
    """A logger that adds bound fields to every line; ``bind`` returns a new one with more."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = kwargs.get("extra")
        kwargs["extra"] = {**self.extra, **extra} if extra else self.extra
        return msg, kwargs

    def bind(self, **fields: Any) -> ContextLogger:
        return ContextLogger(self.logger, {**self.extra, **fields})


def get_logger(name: str, **fields: Any) -> ContextLogger:
    """A logger named ``name`` that writes ``fields`` on every line."""
    return ContextLogger(logging.getLogger(name), fields)


# -- formatting

_ts_cache: list[Any] = [-1, ""]


def _timestamp(created: float) -> str:
    """ISO 8601, UTC, milliseconds: 2026-11-29T15:48:00.046Z (the second part cached)."""
    second = int(created)
    if second != _ts_cache[0]:
        _ts_cache[0] = second
        _ts_cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_ts_cache[1]}.{int((created - second) * 1000):03d}Z"


def _exception_fields(exc_info: Any) -> dict[str, Any]:
    exc_type, exc, tb = exc_info
    return {
        "type": getattr(exc_type, "__name__", str(exc_type)),
        "message": str(exc),
        "stack": "".join(traceback.format_exception(exc_type, exc, tb)),
    }


def _record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured content of a record: context, extras, exception. Redaction is done after."""
    if record.msg.__class__ is not str:
        # log.info({"password": ...}): blank by key before str() flattens it into text
        record.msg = redact(record.msg)
    if record.args:
        record.args = _redact_args(record.args)
    message = record.getMessage()
    data: dict[str, Any] = {
        "timestamp": _timestamp(record.created),
        "level": record.levelname,
        "logger": record.name,
        "message": message,
    }
    context = _context.get()
    data["correlation_id"] = context.get("correlation_id")
    if context:
        data.update(context)
    for key, value in record.__dict__.items():
        if key not in _RESERVED and key[:1] != "_":
            data[key] = value
    if record.exc_info and record.exc_info[0] is not None:
        data["exception"] = _exception_fields(record.exc_info)
    elif record.exc_text:
        data["exception"] = {"stack": record.exc_text}
    if record.stack_info:
        data["stack_info"] = record.stack_info
    _redact_fields(data)
    return data


class JsonFormatter(OrjsonFormatter):
    """python-json-logger's orjson formatter with our field layout and redaction.

    Fields: timestamp, level, logger, message, correlation_id, the bound context, extras,
    and ``exception`` {type, message, stack}.
    """

    def __init__(self) -> None:
        super().__init__(reserved_attrs=sorted(_RESERVED))

    def format(self, record: logging.LogRecord) -> str:
        return orjson.dumps(
            _record_fields(record), default=orjson_default, option=orjson.OPT_NON_STR_KEYS
        ).decode()


_LEVEL_COLOURS = {
    "DEBUG": "\x1b[2m", "INFO": "\x1b[32m", "WARNING": "\x1b[33m", "ERROR": "\x1b[31m", "CRITICAL": "\x1b[1;31m",
}
_PRETTY_SKIP = {"timestamp", "level", "logger", "message", "exception", "stack_info"}


class PrettyFormatter(logging.Formatter):
    """One readable line per event for development: time, level, logger, message, key=value."""

    def __init__(self, colour: bool = False) -> None:
        super().__init__()
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        data = _record_fields(record)
        level = data["level"]
        if self.colour:
            level = f"{_LEVEL_COLOURS.get(level, '')}{level:<7}\x1b[0m"
        else:
            level = f"{level:<7}"
        extras = " ".join(
            f"{k}={_pretty_value(v)}" for k, v in data.items() if k not in _PRETTY_SKIP and v is not None
        )
        line = f"{data['timestamp'][11:23]} {level} {data['logger']}: {data['message']}"
        if extras:
            line += "  " + extras
        if "exception" in data:
            line += "\n" + data["exception"].get("stack", "").rstrip()
        return line


def _pretty_value(value: Any) -> str:
    if isinstance(value, str):
        return value if value and " " not in value else orjson.dumps(value).decode()
    if isinstance(value, float):
        return f"{value:.2f}"
    try:
        return orjson.dumps(value, default=str).decode()
    except TypeError:
        return repr(value)


# -- handlers


class ReopenableFileHandler(logging.FileHandler):
    """A file handler that logrotate can work with: ``reopen()`` on SIGHUP starts a new file."""

    def reopen(self) -> None:
        """Switch to a new file at the same path; if it cannot be opened (OSError), the
        current file stays in use."""
        stream = self._open()
        self.acquire()
        try:
            old, self.stream = self.stream, stream
        finally:
            self.release()
        if old:
            old.close()


_installed: list[logging.Handler] = []


def configure_logging(level: str, fmt: str, log_file: str | None = None, stream: Any = None) -> None:
    """Install the root handlers: stdout (JSON or pretty) and, optionally, a file (always JSON)."""
    root = logging.getLogger()
    for handler in _installed:
        root.removeHandler(handler)
        handler.close()
    _installed.clear()
    stream = stream or sys.stdout
    console = logging.StreamHandler(stream)
    console.setFormatter(
        JsonFormatter() if fmt == "json" else PrettyFormatter(colour=getattr(stream, "isatty", lambda: False)())
    )
    _installed.append(console)
    if log_file:
        file_handler = ReopenableFileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(JsonFormatter())
        _installed.append(file_handler)
    for handler in _installed:
        root.addHandler(handler)
    set_level(level)
    # Libraries that are chatty at INFO/DEBUG stay at WARNING unless asked otherwise.
    for name in ("pymongo", "asyncio", "tornado.access"):
        logging.getLogger(name).setLevel(logging.WARNING)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level)


def reopen_log_files() -> None:
    """Reopen file handlers (after logrotate renamed the file)."""
    for handler in _installed:
        if isinstance(handler, ReopenableFileHandler):
            handler.reopen()


def flush_logs() -> None:
    for handler in _installed:
        handler.flush()
