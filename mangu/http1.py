"""The HTTP/1.1 server: Tornado's, with a response-header writer that costs less per field.

Tornado's ``HTTP1Connection.write_headers`` formats, encodes and regex-checks each field line
on its own (the regex alone about 2,400 instructions per line under cachegrind), on every
response (a limited API response carries about twenty). ``Connection`` writes the same
bytes with one join, one encode and one count of CR and LF over the whole block; everything
else (keep-alive, chunking, the expected body length) is Tornado's logic, unchanged.

A handler may also give the connection field lines of its own, already formatted
(``Connection.extra_field_lines``): the rate-limit fields of an allowed request, five per
response, which the limiter builds from numbers and policy names only
(``RateLimiter.take_request_now``, a ``ReadyTake``). They go out after the others,
as they are; every other field goes through ``HTTPHeaders`` and the CR/LF check.

It relies on ``HTTP1Connection``'s private state (and ``APIHandler.prepare``, on requests of
this connection, on the lists ``HTTPHeaders`` keeps by field name, ``_as_list``):
``make_server`` uses it only on the Tornado versions in ``SUPPORTED_TORNADO`` (Tornado's own
server otherwise), and ``tests/test_http1.py`` compares the bytes on the wire with Tornado's
own server for the cases that differ in framing (HEAD, 204, 304, HTTP/1.0, chunked, several
values of one field), so an upgrade that changes them fails there first.
"""

from __future__ import annotations

import asyncio
from typing import Any

import tornado
from tornado import httputil, iostream
from tornado.concurrent import Future, future_add_done_callback
from tornado.escape import native_str, utf8
from tornado.http1connection import HTTP1Connection, HTTP1ServerConnection, _QuietException, parse_int
from tornado.httpserver import HTTPServer, _HTTPRequestContext
from tornado.log import gen_log

SUPPORTED_TORNADO = ((6, 5),)
SUPPORTED = tuple(tornado.version_info[:2]) in SUPPORTED_TORNADO


class Connection(HTTP1Connection):
    """One request/response exchange of a server connection."""

    # Field lines written after the fields of ``headers``, each ending in CRLF; set by the
    # handler answering this request (a connection object serves one request). Never from
    # input: they are not checked for CR or LF.
    extra_field_lines = ""

    def write_headers(self, start_line: Any, headers: httputil.HTTPHeaders,
                      chunk: bytes | None = None) -> Future[None]:
        if self.is_client:
            return super().write_headers(start_line, headers, chunk)
        # From here to the field lines: HTTP1Connection.write_headers (Tornado 6.5), server side.
        request_line = self._request_start_line
        assert isinstance(start_line, httputil.ResponseStartLine)
        assert request_line is not None and self._request_headers is not None
        self._response_start_line = start_line
        code = start_line.code
        http11 = request_line.version == "HTTP/1.1"
        self._chunking_output = (
            http11
            and request_line.method != "HEAD"
            and code not in (204, 304)
            and (code < 100 or code >= 200)
            and "Content-Length" not in headers
        )
        if http11 and self._disconnect_on_finish:
            headers["Connection"] = "close"
        if (request_line.version == "HTTP/1.0"
                and self._request_headers.get("Connection", "").lower() == "keep-alive"):
            headers["Connection"] = "Keep-Alive"
        if self._chunking_output:
            headers["Transfer-Encoding"] = "chunked"
        if request_line.method == "HEAD" or code == 304:
            self._expected_content_remaining = 0
        elif "Content-Length" in headers:
            self._expected_content_remaining = parse_int(headers["Content-Length"])
        else:
            self._expected_content_remaining = None
        status_line = "HTTP/1.1 %d %s" % (code, start_line.reason)
        if "\r" in status_line or "\n" in status_line:
            raise ValueError("Illegal characters (CR or LF) in header: %r" % utf8(status_line))
        data = utf8(status_line) + b"\r\n" + _field_block(headers, self.extra_field_lines)
        if self.stream.closed():
            future = self._write_future = Future()
            future.set_exception(iostream.StreamClosedError())
            future.exception()
            return future
        future = self._write_future = Future()
        if chunk:
            data += self._format_chunk(chunk)
        self._pending_write = self.stream.write(data)
        future_add_done_callback(self._pending_write, self._on_write_complete)
        return future


def _field_block(headers: httputil.HTTPHeaders, extra_lines: str = "") -> bytes:
    """The field lines and the blank line after them, as Tornado writes them, with
    ``extra_lines`` (already formatted and trusted) after those of ``headers``.

    Each line adds exactly one CR and one LF; any more means a name or value carries one,
    which would split the response, so it is refused as Tornado refuses it.
    """
    lines = [f"{name}: {value}\r\n" if type(value) is str else f"{native_str(name)}: {native_str(value)}\r\n"
             for name, value in headers.get_all()]
    block = "".join(lines)
    if block.count("\n") != len(lines) or block.count("\r") != len(lines):
        bad = next(line for line in lines if line.count("\n") + line.count("\r") != 2)
        raise ValueError("Illegal characters (CR or LF) in header: %r" % bad[:-2].encode("latin1", "replace"))
    return (block + extra_lines).encode("latin1") + b"\r\n"


class _ServerConnection(HTTP1ServerConnection):
    """Tornado's request loop (``HTTP1ServerConnection._server_request_loop``), with ``Connection``."""

    async def _server_request_loop(self, delegate: httputil.HTTPServerConnectionDelegate) -> None:
        try:
            while True:
                conn = Connection(self.stream, False, self.params, self.context)
                request_delegate = delegate.start_request(self, conn)
                try:
                    ret = await conn.read_response(request_delegate)
                except (iostream.StreamClosedError, iostream.UnsatisfiableReadError, asyncio.CancelledError):
                    return
                except _QuietException:
                    # This exception was already logged.
                    conn.close()
                    return
                except Exception:
                    gen_log.error("Uncaught exception", exc_info=True)
                    conn.close()
                    return
                if not ret:
                    return
                await asyncio.sleep(0)
        finally:
            delegate.on_close(self)


class Server(HTTPServer):
    """``HTTPServer`` whose connections write response fields with ``Connection``."""

    def handle_stream(self, stream: iostream.IOStream, address: tuple) -> None:
        context = _HTTPRequestContext(stream, address, self.protocol, self.trusted_downstream)
        conn = _ServerConnection(stream, self.conn_params, context)
        self._connections.add(conn)
        conn.start_serving(self)
