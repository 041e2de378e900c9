"""Raw-socket helpers for the HTTP layer's tests: a real server on 127.0.0.1
(:func:`dynarec.serve.connections.listen` on its own event loop in a thread, a small handler, limits configured
small so each case ends in about a second) and strict readers of what comes back."""
from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from dynarec.serve.http import new_loop
from dynarec.serve.limits import HttpLimits

MAX_BODY = 1000
SMALL = dict(max_head_bytes=4096, max_url_bytes=1024, max_headers=20, request_timeout_s=0.5,
             keepalive_timeout_s=0.4, max_connections=8, max_pipelined=4, write_buffer_bytes=16 * 1024)


def handler(req):
    if req.path == "/echo":
        return req.reply(200, req.body)
    if req.path == "/slow":  # answered later, from the loop (a batch in flight)
        return asyncio.get_running_loop().call_later(0.3, req.reply, 200, b'{"slow": true}')
    if req.path == "/boom":
        raise RuntimeError("handler bug")
    if req.path == "/big":
        return req.reply(200, b"b" * 4096)
    if req.path == "/healthz":
        return req.reply(200, b'{"status": "ok"}')
    req.reply(404, b'{"error": "no route"}')


class Server:
    """``listen(handler)`` on a loop in a thread; ``connect()`` opens a raw socket to it."""

    def __init__(self, **limits):
        self.loop = new_loop()
        started = threading.Event()

        from dynarec.serve.connections import listen

        async def main():
            self.listener = await listen(handler, "127.0.0.1", 0, HttpLimits(**limits), MAX_BODY)
            started.set()

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(main(), self.loop).result(10)
        assert started.is_set()
        self.port = self.listener.port

    def connect(self, timeout: float = 3.0) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def buffered(self) -> int:
        """Bytes of answers the server holds in memory, unsent (its transports' write buffers)."""
        async def size():
            return sum(c.transport.get_write_buffer_size() for c in self.listener.conns.open if c.transport)

        return asyncio.run_coroutine_threadsafe(size(), self.loop).result(10)

    def open(self, idle: bool = False) -> int:
        """Connections the server holds open (``idle``: only those with no request in progress, no answer owed)."""
        async def count():
            return sum(1 for c in self.listener.conns.open if c.idle or not idle)

        return asyncio.run_coroutine_threadsafe(count(), self.loop).result(10)

    def wait(self, cond, limit_s: float = 5.0) -> None:
        """Until ``cond()`` holds (the server thread may lag the client on a loaded machine)."""
        end = time.monotonic() + limit_s
        while not cond():
            assert time.monotonic() < end, "the server never reached the expected state"
            time.sleep(0.02)

    def close(self):
        asyncio.run_coroutine_threadsafe(self.listener.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def srv():
    s = Server(**SMALL)
    yield s
    s.close()


def read_all(sock: socket.socket, limit_s: float = 3.0) -> bytes:
    """Everything until the server closes (fails the test when it does not close within ``limit_s``)."""
    out, end = [], time.monotonic() + limit_s
    while True:
        sock.settimeout(max(0.01, end - time.monotonic()))
        try:
            b = sock.recv(65536)
        except socket.timeout:
            raise AssertionError(f"the server did not close within {limit_s} s; got {b''.join(out)[:300]!r}")
        except ConnectionResetError:
            raise AssertionError(f"reset instead of an answer; got {b''.join(out)[:300]!r}")
        if not b:
            return b"".join(out)
        out.append(b)


def responses(raw: bytes) -> list[tuple[int, dict, bytes]]:
    """Split a byte stream into (status, headers, body) by content-length, strictly (a stray byte fails)."""
    out, i = [], 0
    while i < len(raw):
        j = raw.find(b"\r\n\r\n", i)
        assert j >= 0, f"truncated response: {raw[i:i + 200]!r}"
        lines = raw[i:j].split(b"\r\n")
        assert lines[0].startswith(b"HTTP/1.1 "), f"not a status line: {lines[0][:100]!r}"
        hdrs = dict(line.lower().split(b": ", 1) for line in lines[1:])
        n = int(hdrs.get(b"content-length", b"0"))
        out.append((int(lines[0].split()[1]), hdrs, raw[j + 4:j + 4 + n]))
        i = j + 4 + n
    return out


_LEFT: dict = {}  # socket -> bytes read past the answer read_one returned


def read_one(sock: socket.socket, limit_s: float = 3.0) -> tuple[int, dict, bytes]:
    """The next whole answer on ``sock`` (what follows it is kept for the next call)."""
    buf, end = _LEFT.pop(sock, b""), time.monotonic() + limit_s
    while True:
        if b"\r\n\r\n" in buf:
            head = buf.split(b"\r\n\r\n", 1)[0]
            n = int(dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:]).get(
                b"content-length", b"0"))
            if len(buf) >= len(head) + 4 + n:
                _LEFT[sock] = buf[len(head) + 4 + n:]
                return responses(buf[:len(head) + 4 + n])[0]
        sock.settimeout(max(0.01, end - time.monotonic()))
        b = sock.recv(65536)
        assert b, f"closed before a whole answer: {buf[:200]!r}"
        buf += b


GET = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
