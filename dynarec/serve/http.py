"""A minimal HTTP/1.1 server on asyncio (uvloop when installed) and the ``httptools`` parser, for the serving
hot path: a request is parsed and validated inside ``data_received`` and its answer is written with ONE
``transport.write`` (status line, headers and body together) by whoever completes it, so a micro-batch of
32 requests costs no task, future or ASGI message per request. Measured against FastAPI + uvicorn on the
same handler in ``docs/benchmarks.md``. :func:`dynarec.serve.connections.listen` opens a listening socket.

Fit to face untrusted clients, under :class:`~dynarec.serve.limits.HttpLimits`:

* sizes are counted before the parser buffers them: request line + headers (431), target (414), header count
  (431), the non-body bytes of a chunked body (chunk extensions, trailers: 400), the body (413 straight from
  ``Content-Length``, no ``100 Continue``, nothing read); a refusal is queued behind the answers already owed
  (pipelining keeps its order), carries ``connection: close``, and the connection half-closes and drains
  before closing, so the client reads it instead of a reset;
* time (enforced by :class:`~dynarec.serve.connections.ConnectionSet`): a request must arrive whole within
  ``request_timeout_s`` of its first byte (408), an idle connection closes after ``keepalive_timeout_s``;
* back-pressure (:mod:`dynarec.serve.flow_control`): reading stops while ``max_pipelined`` answers are owed or
  the write buffer is above ``write_buffer_bytes``;
* ``HEAD`` gets the headers of its answer without the body; absolute-form targets (``http://host/path``) are
  served by their path; ``Upgrade`` is ignored (the request, body included, is answered over HTTP/1.1);
  ``100 Continue`` goes to HTTP/1.1 clients only, after the answers owed before it; request smuggling
  (``Content-Length`` with ``Transfer-Encoding``, ...) is refused by the parser (400), as is an HTTP/1.1
  request without exactly one ``Host`` header (RFC 9112, 3.2).

A handler with a ``refused(status, path)`` method is told of each refusal of this layer (to count it).
Errors of a handler are logged with their traceback on the ``dynarec.serve.http`` logger and answered 500."""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Callable

import httptools

from dynarec.serve.flow_control import PIPELINE, REFUSED, WRITE, FlowControl
from dynarec.serve.http_message import JSON, Request, error, response, target_path

log = logging.getLogger("dynarec.serve.http")

LINGER_S = 2.0  # after a refusal: how long the half-closed connection keeps draining what the client still sends
SLICE = 4096  # bytes parsed at a time when a read holds more (pipelined requests stop within one slice)
CHUNK_OVERHEAD = 64  # non-body bytes allowed per chunk of a chunked body (size line + CRLFs), beyond max_head_bytes


class _Refuse(Exception):
    """Raised in a parser callback: stop parsing and answer ``status`` (then close)."""

    def __init__(self, status: int, msg: str):
        super().__init__(msg)
        self.status = status


class _Stop(Exception):
    """Raised in a parser callback: the connection closes after this request; parse nothing more."""


class Connection(asyncio.Protocol):
    """One client connection: parser callbacks build a :class:`Request`, ``handler(request)`` answers it
    now or later; answers are written in request order."""

    def __init__(self, handler: Callable[[Request], None], max_body: int, limits, conns):
        self.handler, self.max_body, self.limits, self.conns = handler, max_body, limits, conns
        self.max_url, self.max_headers = limits.max_url_bytes, limits.max_headers  # looked up per request
        self.on_refuse = getattr(handler, "refused", None)  # refused(status, path): counts the layer's refusals
        self.parser = httptools.HttpRequestParser(self)
        self.transport = self.flow = None
        self.pending: deque = deque()  # [request, bytes or None] in arrival order
        self.closing = False  # close once every owed answer is written
        self.dead = False  # refused / timed out: nothing more is parsed
        self.eof = False  # the client half-closed
        self.backlog, self.fed_soon = b"", False  # bytes read while paused, not parsed yet
        self.linger = None  # the timer closing a half-closed connection
        self.continue_due = False  # a 100 Continue waiting for the answers owed before it
        self.in_head, self.fed = True, 0  # reading a request line + headers; wire bytes of the current message
        self.t_start = None  # the (coarse) time the request in progress began, None between requests
        self.t_idle = self.t_write = 0.0
        self._reset()

    def _reset(self) -> None:
        self.url, self.chunks, self.size, self.expect = b"", [], 0, False
        self.url_len = self.nheaders = self.nchunks = self.nhost = 0
        self.clen, self.chunked, self.upgrade = None, False, False

    # ---- asyncio.Protocol ------------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.flow = FlowControl(transport)
        self.t_idle = self.conns.now
        if not self.conns.admit(self):
            self.dead = self.closing = True
            self.flow.pause(REFUSED)
            self.pending.append([None, error(503, "too many connections; try again later")])
            return self._flush()
        transport.set_write_buffer_limits(high=self.limits.write_buffer_bytes)

    def connection_lost(self, exc) -> None:
        self.conns.drop(self)
        self.transport = None
        self.pending.clear()
        if self.linger is not None:
            self.linger.cancel()

    def eof_received(self):
        """The client sent all it will (a half-close): answer what it asked, then close."""
        self.closing = self.eof = True
        if self.pending or self.backlog:
            return True
        if self.t_start is not None and not self.dead:
            self._refuse(400, "the connection ended in the middle of a request")
            return True
        return None  # nothing owed: the transport closes

    def pause_writing(self) -> None:
        self.t_write = self.conns.now
        self.flow.pause(WRITE)

    def resume_writing(self) -> None:
        self._unpause(WRITE)

    def data_received(self, data: bytes) -> None:
        if self.dead:
            return  # refused: what the client still sends is read and dropped
        if self.backlog:
            data, self.backlog = self.backlog + data, b""
        if self.in_head and not self.flow.reasons and len(data) <= SLICE and \
                self.fed + len(data) < self.limits.max_head_bytes:  # the common case: a small read, fed whole
            self.fed += len(data)
            try:
                return self.parser.feed_data(data)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:
                data = self._failed(e, data)
            if not data or self.dead:
                return
        self._parse(data)

    def _parse(self, data: bytes) -> None:
        """Feed ``data`` slice by slice, each within the budgets, stopping (the rest kept unparsed) on a pause."""
        limits, flow = self.limits, self.flow
        view, i, end = memoryview(data), 0, len(data)
        while i < end:
            if flow.reasons:  # answers owed / write buffer high: the rest waits unparsed (reading is paused)
                self.backlog = bytes(view[i:])
                return
            n = end - i  # a slice holds few requests: a pause takes effect within one slice
            if self.in_head:  # the head budget is spent before the parser sees (and copies) the bytes
                n = min(n, SLICE, limits.max_head_bytes - self.fed)
            elif self.clen and not self.chunked:  # the rest of a body holds no request: one slice beyond it
                n = min(n, self.clen - self.size + SLICE)
            else:
                n = min(n, SLICE)
            part = data if n == end else view[i:i + n]
            i += n
            self.fed += n
            rest = self._feed(part)
            if self.dead:
                return
            if rest:  # an ignored Upgrade: the rest of the slice goes first
                data = rest + bytes(view[i:])
                view, i, end = memoryview(data), 0, len(data)
                continue
            if self.in_head and self.fed >= limits.max_head_bytes:  # (blank lines before a request count too)
                return self._refuse(431, f"request line + headers over {limits.max_head_bytes} bytes")
            if self.chunked and self.fed - self.size > limits.max_head_bytes + CHUNK_OVERHEAD * self.nchunks:
                return self._refuse(400, f"chunk extensions / trailers over {limits.max_head_bytes} bytes")

    def _feed(self, part) -> bytes | None:
        """One ``feed_data``; a refusal / stop sets ``dead``. -> the bytes after an ignored ``Upgrade``, else None."""
        try:
            self.parser.feed_data(part)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:
            return self._failed(e, part)
        return None

    def _failed(self, e: Exception, part) -> bytes | None:
        """What ``feed_data(part)`` raising ``e`` means (see :meth:`_feed`)."""
        if isinstance(e, httptools.HttpParserUpgrade):  # no protocol switch: the request goes on over HTTP/1.1
            return self._no_upgrade() and bytes(part[e.args[0]:])
        if isinstance(e, httptools.HttpParserCallbackError):
            cause = e.__context__
            if isinstance(cause, _Refuse):
                return self._refuse(cause.status, str(cause))
            self.dead, self.backlog = True, b""
            if not isinstance(cause, _Stop):
                log.error("HTTP connection failed", exc_info=cause)
                self.transport.abort()
            return None
        msg = str(e).splitlines()[0] if str(e) else "malformed HTTP request"
        return self._refuse(400, f"malformed HTTP request: {msg}")

    def _unpause(self, reason: int) -> None:
        self.flow.resume(reason)
        if self.backlog and not self.flow.reasons and not self.fed_soon and self.transport is not None:
            self.fed_soon = True
            asyncio.get_running_loop().call_soon(self._feed_backlog)

    def _feed_backlog(self) -> None:
        self.fed_soon = False
        if self.transport is not None and self.backlog and not self.flow.reasons:
            self.data_received(b"")

    def _no_upgrade(self) -> bool:
        """The parser stopped at an ``Upgrade`` request's head: answer it as a plain request (a CONNECT is
        answered, then the connection closes): a fresh parser takes the same request line with the body framing
        it announced, then what follows the head. -> whether parsing goes on."""
        method, url, keep = self.upgrade
        self.parser = httptools.HttpRequestParser(self)
        if method == b"CONNECT":
            self._dispatch(method, url, b"", False)
            self.dead = True
            return False
        frame = b"transfer-encoding: chunked" if self.chunked else b"content-length: %d" % (self.clen or 0)
        try:
            self.parser.feed_data(b"%s %s HTTP/1.1\r\nhost: -\r\n%s\r\nconnection: %s\r\n\r\n" % (
                method, url, frame, b"keep-alive" if keep else b"close"))
        except httptools.HttpParserError as e:  # a bodiless request with connection: close (_Stop)
            self.dead, self.backlog = True, b""
            if not isinstance(e.__context__, _Stop):
                self._refuse(400, "malformed HTTP request after Upgrade")
            return False
        return True

    # ---- httptools callbacks ---------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset()
        self.in_head = True
        if self.t_start is None:
            self.t_start = self.conns.now

    def on_url(self, url: bytes) -> None:
        self.url_len += len(url)
        if self.url_len > self.max_url:
            raise _Refuse(414, f"request target over {self.max_url} bytes")
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.nheaders += 1
        if self.nheaders > self.max_headers:
            raise _Refuse(431, f"over {self.max_headers} header fields")
        if not self.in_head:
            return  # a trailer of a chunked body: counted, not used
        n = name.lower()
        if n == b"content-length" and value.strip().isdigit():
            self.clen = int(value)
        elif n == b"transfer-encoding" and b"chunked" in value.lower():
            self.chunked = True
        elif n == b"expect" and value.lower() == b"100-continue":
            self.expect = True
        elif n == b"host":
            self.nhost += 1

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.nhost != 1 and (self.nhost or self.parser.get_http_version() == "1.1"):  # RFC 9112, 3.2
            raise _Refuse(400, "an HTTP/1.1 request without a Host header" if not self.nhost
                          else f"{self.nhost} Host headers in one request")
        if self.clen is not None and self.clen > self.max_body:
            raise _Refuse(413, f"request body over {self.max_body} bytes (content-length {self.clen})")
        if self.parser.should_upgrade():
            self.upgrade = (self.parser.get_method(), self.url, self.parser.should_keep_alive())
        if self.expect and self.parser.get_http_version() == "1.1" and (self.clen or self.chunked):
            if self.pending:
                self.continue_due = True  # after the answers owed before this request
            else:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_chunk_header(self) -> None:
        self.nchunks += 1

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.max_body:
            raise _Refuse(413, f"request body over {self.max_body} bytes")
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.in_head, self.fed, self.continue_due = True, 0, False
        if self.upgrade:
            return  # answered once the parser reports the upgrade (see _no_upgrade)
        keep = self.parser.should_keep_alive()
        body, self.chunks = b"".join(self.chunks), []
        self._dispatch(self.parser.get_method(), self.url, body, keep)
        if not keep:
            raise _Stop()

    def _dispatch(self, method: bytes, url: bytes, body: bytes, keep: bool) -> None:
        req = Request(self, method.decode("latin-1"), target_path(url), body, not keep)
        slot = [req, None]
        req._slot = slot
        self.pending.append(slot)
        self.t_start = None
        if not keep:
            self.closing = True
        if len(self.pending) >= self.limits.max_pipelined:
            self.flow.pause(PIPELINE)
        try:
            self.handler(req)
        except Exception:  # noqa: BLE001 - a handler's bug fails its request, not the connection
            log.exception("handler failed on %s %s", req.method, req.path)
            self.answer(req, 500, b'{"error": "internal server error"}', JSON, ())

    # ---- answers ---------------------------------------------------------------------------------------
    def answer(self, req: Request, status: int, body: bytes, ctype: bytes, headers: tuple) -> None:
        if self.transport is None or req._slot is None or req._slot[1] is not None:
            return  # the client went away, or answered twice
        req._slot[1] = response(status, body, ctype, headers, req.close, req.method == "HEAD")
        if self.pending[0] is req._slot:
            self._flush()

    def _flush(self) -> None:
        out, t = [], self.transport
        while self.pending and self.pending[0][1] is not None:
            out.append(self.pending.popleft()[1])
        if t is None:
            return
        if out and not t.is_closing():
            t.write(b"".join(out) if len(out) > 1 else out[0])
        if self.flow.reasons & PIPELINE and len(self.pending) < self.limits.max_pipelined:
            self._unpause(PIPELINE)
        if self.pending:
            return
        if self.closing and not self.backlog:
            return self._finish()
        if self.continue_due:  # the client may send its body now: its deadline starts again
            self.continue_due, self.t_start = False, self.conns.now
            t.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self.t_start is None:
            self.t_idle = self.conns.now

    def _refuse(self, status: int, msg: str) -> None:
        """Answer ``status`` after the answers owed, then half-close: nothing more is parsed."""
        log.debug("refused %d: %s", status, msg)
        if self.on_refuse is not None:
            try:
                self.on_refuse(status, target_path(self.url) if self.url else "")
            except Exception:  # noqa: BLE001 - counting must not break the connection
                log.exception("the handler's refused() failed")
        self.dead = self.closing = True
        self.backlog = b""
        self.flow.pause(REFUSED)
        self.pending.append([None, error(status, msg)])
        self._flush()

    def _finish(self) -> None:
        """Close after the last answer: a refused client gets a half-close and LINGER_S to stop sending (a
        close with unread bytes would reset the connection and lose the answer)."""
        t = self.transport
        if t is None or t.is_closing():
            return
        if not self.dead or self.eof or not t.can_write_eof():
            return t.close()
        t.write_eof()
        self.flow.resume(REFUSED | PIPELINE)
        self.linger = asyncio.get_running_loop().call_later(LINGER_S, t.close)

    def check_time(self, now: float) -> None:
        """Called every tick: enforce the request deadline, the keep-alive timeout and the unread-answers one."""
        t, limits = self.transport, self.limits
        if t is None or self.linger is not None:
            return
        if self.flow.writing_paused:
            if now - self.t_write > limits.request_timeout_s:
                log.debug("dropping a client that leaves its answers unread")
                t.abort()
        elif self.pending:
            return
        elif self.t_start is not None:
            if now - self.t_start > limits.request_timeout_s and not self.dead:
                self._refuse(408, f"the request did not arrive whole within {limits.request_timeout_s:g} s")
        elif now - self.t_idle > limits.keepalive_timeout_s:
            t.close()

    @property
    def idle(self) -> bool:
        """No request in progress, no answer owed: closing it loses nothing."""
        return self.transport is not None and not self.pending and self.t_start is None and not self.dead

    def shutdown(self) -> None:
        if self.transport is not None:
            self.transport.close()


def new_loop() -> asyncio.AbstractEventLoop:
    """A uvloop event loop when uvloop is installed, else asyncio's."""
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - the serve extra installs uvloop where it exists
        return asyncio.new_event_loop()
