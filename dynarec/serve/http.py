"""A minimal HTTP/1.1 server on asyncio (uvloop when installed) and the ``httptools`` parser, for the serving
hot path: a request is parsed and validated inside ``data_received`` and its answer is written with ONE
``transport.write`` (status line, headers and body together) by whoever completes it, so a micro-batch of
32 requests costs no task, future or ASGI message per request. Measured against FastAPI + uvicorn on the
same handler in ``docs/benchmarks.md``.

Keep-alive, pipelining (answers leave in request order), chunked request bodies, ``Expect: 100-continue``
and a body-size limit (the body is read and dropped, then 413) are handled; an ``Upgrade`` request is
answered without switching and its connection closed; anything the parser rejects gets a 400 and the
connection is closed."""
from __future__ import annotations

import asyncio
from collections import deque
from typing import Callable

_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
            413: b"Payload Too Large", 422: b"Unprocessable Entity", 500: b"Internal Server Error",
            503: b"Service Unavailable"}
JSON = b"application/json"


def response(status: int, body: bytes, ctype: bytes = JSON, headers: tuple = (), close: bool = False) -> bytes:
    """The bytes of one HTTP/1.1 response."""
    extra = b"".join(k + b": " + v + b"\r\n" for k, v in headers)
    return b"".join((b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n" % (
        status, _REASONS.get(status, b"Unknown"), ctype, len(body)), extra,
        b"connection: close\r\n" if close else b"", b"\r\n", body))


class Request:
    """One parsed request; ``reply`` answers it (once), from any code running on the event loop."""

    __slots__ = ("method", "path", "body", "too_large", "_conn", "_slot")

    def __init__(self, conn: "Connection", method: str, path: str, body: bytes, too_large: bool):
        self.method, self.path, self.body, self.too_large = method, path, body, too_large
        self._conn = conn
        self._slot = None

    def reply(self, status: int, body: bytes, ctype: bytes = JSON, headers: tuple = ()) -> None:
        self._conn.answer(self, status, body, ctype, headers)


class Connection(asyncio.Protocol):
    """One client connection: parser callbacks build a :class:`Request`, ``handler(request)`` answers it
    now or later; answers are written in request order."""

    def __init__(self, handler: Callable[[Request], None], max_body: int):
        import httptools

        self.handler, self.max_body = handler, max_body
        self.parser = httptools.HttpRequestParser(self)
        self.transport = None
        self.pending: deque = deque()  # [request, bytes or None] in arrival order
        self.closing = False
        self._reset()

    def _reset(self) -> None:
        self.url, self.chunks, self.size, self.too_large, self.expect = b"", [], 0, False, False

    # ---- asyncio.Protocol ------------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.transport = None
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        import httptools

        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # no protocol switch: answer the request, then close
            self.closing = True
            if not self.pending and self.transport is not None:
                self.transport.close()
        except httptools.HttpParserError as e:
            self.pending.clear()
            msg = str(e).splitlines()[0] if str(e) else "malformed HTTP request"
            self._write(response(400, b'{"error": "malformed HTTP request: %s"}' % msg.encode()[:200].replace(
                b'"', b"'"), close=True))
            self.transport.close()

    # ---- httptools callbacks ---------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        n = name.lower()
        if n == b"content-length" and value.isdigit() and int(value) > self.max_body:
            self.too_large = True
        elif n == b"expect" and value.lower() == b"100-continue":
            self.expect = True

    def on_headers_complete(self) -> None:
        if self.expect and not self.too_large:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self.too_large:
            return  # read and dropped
        self.size += len(body)
        if self.size > self.max_body:
            self.too_large, self.chunks = True, []
        else:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        path = self.url.split(b"?", 1)[0].decode("latin-1")
        req = Request(self, self.parser.get_method().decode("latin-1"), path, b"".join(self.chunks), self.too_large)
        slot = [req, None]
        req._slot = slot
        self.pending.append(slot)
        if not self.parser.should_keep_alive():
            self.closing = True
        self._reset()
        self.handler(req)

    # ---- answers ---------------------------------------------------------------------------------------
    def answer(self, req: Request, status: int, body: bytes, ctype: bytes, headers: tuple) -> None:
        if self.transport is None or req._slot is None or req._slot[1] is not None:
            return  # the client went away, or answered twice
        req._slot[1] = response(status, body, ctype, headers)
        out = []
        while self.pending and self.pending[0][1] is not None:
            out.append(self.pending.popleft()[1])
        if out:
            self._write(b"".join(out))
            if self.closing and not self.pending:
                self.transport.close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


def new_loop() -> asyncio.AbstractEventLoop:
    """A uvloop event loop when uvloop is installed, else asyncio's."""
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - the serve extra installs uvloop where it exists
        return asyncio.new_event_loop()
