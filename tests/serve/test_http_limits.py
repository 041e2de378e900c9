"""The HTTP layer facing untrusted clients, over RAW loopback sockets against a real server on 127.0.0.1
(:func:`dynarec.serve.connections.listen` on its own event loop in a thread, with a small handler and limits
configured small so each case ends in about a second): sizes refused before buffering, timeouts, the connection
cap, back-pressure, and HTTP details (HEAD, pipelined order before a 400, h2c ignored, absolute-form targets,
``connection: close``, ``100 Continue`` only to HTTP/1.1 and in order), and logging of a handler's crash."""
from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import pytest

pytest.importorskip("httptools", reason="the HTTP layer needs the serve extra: pip install 'dynarec[serve]'")

from dynarec.serve.connections import listen  # noqa: E402
from dynarec.serve.http import new_loop  # noqa: E402
from dynarec.serve.limits import HttpLimits  # noqa: E402

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

    def open(self) -> int:
        """Connections the server holds open."""
        async def count():
            return len(self.listener.conns.open)

        return asyncio.run_coroutine_threadsafe(count(), self.loop).result(10)

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


# ---- sizes, counted before buffering ----------------------------------------------------------------------
@pytest.mark.parametrize("req, status", [
    (b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 6000, 431),  # header bytes, the head never completes
    (b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(30)) + b"\r\n", 431),
    (b"GET /" + b"u" * 2000 + b" HTTP/1.1\r\n\r\n", 414),
])
def test_oversized_heads_are_refused_and_closed(srv, req, status):
    s = srv.connect()
    s.sendall(req)
    (got, hdrs, body), = responses(read_all(s))
    assert got == status and hdrs[b"connection"] == b"close" and b"error" in body


def test_body_over_the_limit_gets_413_from_content_length_alone(srv):
    for expect in (b"", b"Expect: 100-continue\r\n"):
        s = srv.connect()
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n" + expect + b"\r\n")
        raw = read_all(s)  # no body sent: the answer must not wait for it
        assert b"100 Continue" not in raw
        (got, hdrs, _), = responses(raw)
        assert got == 413 and hdrs[b"connection"] == b"close"
    s = srv.connect()  # chunked: refused as soon as the chunks pass the limit
    s.sendall(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"200\r\n" + b"x" * 512 + b"\r\n" * 1
              + b"200\r\n" + b"x" * 512 + b"\r\n")
    (got, _, _), = responses(read_all(s))
    assert got == 413


def test_chunk_extensions_are_bounded(srv):
    s = srv.connect()
    s.sendall(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=" + b"e" * 20000)
    (got, _, body), = responses(read_all(s))
    assert got == 400 and b"chunk extension" in body
    s = srv.connect()  # a small extension is fine
    s.sendall(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\n\r\n")
    assert read_one(s)[:3:2] == (200, b"hello")


def test_request_smuggling_still_refused(srv):
    s = srv.connect()
    s.sendall(b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /x HTTP/1.1\r\n\r\n")
    (got, _, _), = responses(read_all(s))
    assert got == 400


# ---- time and connections ---------------------------------------------------------------------------------
def test_slowloris_gets_408_at_the_request_deadline(srv):
    s = srv.connect()
    s.sendall(b"GET /healthz HTTP/1.1\r\n")
    t0, raw = time.monotonic(), b""
    while time.monotonic() - t0 < 4:  # one header line every 0.1 s: the head never ends
        try:
            s.sendall(b"X-a: b\r\n")
        except (BrokenPipeError, ConnectionResetError):
            break
        s.settimeout(0.1)
        try:
            raw += s.recv(65536)
        except socket.timeout:
            continue
        if b"\r\n\r\n" in raw:
            break
    assert raw.startswith(b"HTTP/1.1 408 "), raw[:100]
    assert time.monotonic() - t0 < 0.5 + 1.5  # the deadline plus a few sweep ticks, not the client's patience


def test_idle_keepalive_connection_is_closed(srv):
    s = srv.connect()
    s.sendall(GET)
    assert read_one(s)[0] == 200
    t0 = time.monotonic()
    assert read_all(s) == b""  # the server closes it: no answer owed, nothing in progress
    assert time.monotonic() - t0 < 0.4 + 1.5


def test_connection_cap_refuses_cleanly_and_idle_sockets_do_not_lock_clients_out(srv):
    idle = [srv.connect() for _ in range(SMALL["max_connections"])]
    time.sleep(0.05)
    s = srv.connect()
    s.sendall(GET)
    (got, hdrs, _), = responses(read_all(s))
    assert got == 503 and hdrs[b"connection"] == b"close"
    for c in idle:  # the idle ones are closed by the keep-alive timeout...
        assert read_all(c) == b""
    s = srv.connect()  # ...so a normal client gets in
    s.sendall(GET)
    assert read_one(s)[0] == 200


# ---- back-pressure ----------------------------------------------------------------------------------------
@pytest.fixture
def patient():
    """A server that gives an unread answer 30 s (the other limits small)."""
    s = Server(**dict(SMALL, request_timeout_s=30.0))
    yield s
    s.close()


def test_pipelining_without_reading_is_bounded_and_loses_nothing(patient):
    srv = patient
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # the kernel holds few answers on our side
    s.connect(("127.0.0.1", srv.port))
    req = b"GET /big HTTP/1.1\r\nX-Pad: " + b"p" * 1000 + b"\r\n\r\n"  # ~1 KiB in, 4 KiB out
    s.setblocking(False)
    sent, most, t0, burst = 0, 0, time.monotonic(), req * 16
    while sent < (4 << 20) and time.monotonic() - t0 < 5:  # 4 MiB of requests whose answers are left unread
        try:
            sent += s.send(burst[sent % len(burst):])  # the stream goes on where the last send stopped
        except BlockingIOError:
            most = max(most, srv.buffered())
            time.sleep(0.02)
    time.sleep(0.3)
    most = max(most, srv.buffered())
    # bound: the write buffer's high-water mark plus the answers of the requests of one parsed slice (4096 bytes)
    assert most <= SMALL["write_buffer_bytes"] + (4096 // len(req) + 2) * 4200, f"{most / 2**20:.1f} MiB buffered"
    rem = sent % len(req)  # a request cut in the middle: finish it, reading the answers meanwhile
    s.setblocking(True)
    raw = []
    reader = threading.Thread(target=lambda: raw.append(read_all(s, limit_s=60)))
    reader.start()
    s.sendall((req[rem:] if rem else b"") + b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
    reader.join(70)
    got = responses(raw[0])
    n = sent // len(req) + bool(rem)
    assert [g[0] for g in got] == [200] * (n + 1), [g for g in got if g[0] != 200][:1]
    assert all(len(g[2]) == 4096 for g in got[:n])


# ---- HTTP details -----------------------------------------------------------------------------------------
def test_head_is_answered_without_a_body(srv):
    s = srv.connect()
    s.sendall(b"HEAD /healthz HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
    raw = read_all(s)
    head, rest = raw.split(b"\r\n\r\n", 1)
    assert b"content-length: 16" in head  # the length the GET would get...
    assert rest.startswith(b"HTTP/1.1 200 ") and rest.endswith(b'{"status": "ok"}')  # ...and no body


def test_earlier_pipelined_answers_are_sent_before_a_400(srv):
    s = srv.connect()
    s.sendall(b"GET /slow HTTP/1.1\r\n\r\nNOT HTTP AT ALL\r\n\r\n")
    got = responses(read_all(s))
    assert [g[0] for g in got] == [200, 400] and got[0][2] == b'{"slow": true}'
    assert got[1][1][b"connection"] == b"close"


def test_upgrade_h2c_is_ignored_and_the_body_kept(srv):
    s = srv.connect()
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
              b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Length: 5\r\n\r\nhello" + GET)
    assert read_one(s)[::2] == (200, b"hello")
    assert read_one(s)[0] == 200  # and the connection goes on over HTTP/1.1


def test_absolute_form_target_and_connection_close(srv):
    s = srv.connect()
    s.sendall(b"GET http://127.0.0.1/healthz?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    (got, hdrs, body), = responses(read_all(s))
    assert got == 200 and body == b'{"status": "ok"}' and hdrs[b"connection"] == b"close"


def test_100_continue_only_to_http11_and_after_earlier_answers(srv):
    s = srv.connect()
    s.sendall(b"POST /echo HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    s.settimeout(0.3)
    with pytest.raises(socket.timeout):  # HTTP/1.0 knows no 100 Continue: nothing comes before the body
        s.recv(100)
    s.sendall(b"ok")
    (got, _, body), = responses(read_all(s))
    assert (got, body) == (200, b"ok")
    s = srv.connect()
    s.sendall(b"GET /slow HTTP/1.1\r\n\r\nPOST /echo HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    assert read_one(s)[::2] == (200, b'{"slow": true}')  # the answer owed first...
    s.settimeout(3)
    interim = _LEFT.pop(s, b"")
    interim += s.recv(100) if len(interim) < 25 else b""
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"  # ...then the interim answer of the next request
    s.sendall(b"hi")
    assert read_one(s)[::2] == (200, b"hi")


def test_a_handler_crash_is_a_logged_500(srv, caplog):
    s = srv.connect()
    with caplog.at_level(logging.ERROR, logger="dynarec.serve.http"):
        s.sendall(b"GET /boom HTTP/1.1\r\n\r\n" + GET)
        assert read_one(s)[0] == 500
        assert read_one(s)[0] == 200  # the connection survives
    rec = [r for r in caplog.records if r.name == "dynarec.serve.http"]
    assert rec and rec[0].exc_info and "handler bug" in str(rec[0].exc_info[1])


def test_a_client_that_never_reads_its_answers_is_dropped(srv):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    s.connect(("127.0.0.1", srv.port))
    s.setblocking(False)
    burst, t0 = b"GET /big HTTP/1.1\r\n\r\n" * 2000, time.monotonic()
    while time.monotonic() - t0 < 3:  # until the server stops reading
        try:
            s.send(burst)
        except BlockingIOError:
            break
    while srv.open() and time.monotonic() - t0 < 5:
        time.sleep(0.05)
    assert srv.open() == 0  # dropped request_timeout_s (0.5 s) after its writes stalled


# ---- the `dynarec serve` wiring ---------------------------------------------------------------------------
def test_serve_flags_set_every_limit_and_bad_values_are_one_line(capsys):
    from dataclasses import fields

    from dynarec.cli import build_parser, main

    given = {f.name: (f.default * 3 if f.type in ("float", float) else f.default + 7) for f in fields(HttpLimits)}
    argv = ["serve", "--model", "b"] + [x for k, v in given.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    assert HttpLimits.from_args(build_parser().parse_args(argv)) == HttpLimits(**given)
    assert main(["serve", "--model", "nowhere", "--max-headers", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max-headers" in err[0] and "0" in err[0]


def test_run_app_serves_under_the_configured_limits():
    import gc

    from dynarec.serve.server import ServerConfig, run_app

    class Engine:
        async def start(self):
            pass

        async def stop(self):
            pass

    class App:
        engine = Engine()
        cfg = ServerConfig(max_body_bytes=10, http=HttpLimits(keepalive_timeout_s=0.3, max_head_bytes=2048))

        def __call__(self, req):
            req.reply(200, b"{}")

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    loop, ready = new_loop(), threading.Event()
    stop = asyncio.Event()
    th = threading.Thread(target=loop.run_until_complete, args=(run_app(App(), "127.0.0.1", port, stop, ready=ready),))
    th.start()
    try:
        assert ready.wait(10)
        s = socket.create_connection(("127.0.0.1", port), timeout=3)
        s.sendall(b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n")
        assert responses(read_all(s))[0][0] == 413  # max_body_bytes
        s = socket.create_connection(("127.0.0.1", port), timeout=3)
        s.sendall(b"GET / HTTP/1.1\r\nX: " + b"x" * 3000 + b"\r\n\r\n")
        assert responses(read_all(s))[0][0] == 431  # http.max_head_bytes
        s = socket.create_connection(("127.0.0.1", port), timeout=3)
        t0 = time.monotonic()
        assert read_all(s) == b"" and time.monotonic() - t0 < 0.3 + 1.5  # http.keepalive_timeout_s
    finally:
        loop.call_soon_threadsafe(stop.set)
        th.join(10)
        loop.close()
        gc.unfreeze()


def test_a_route_crash_is_logged_with_its_traceback(caplog):
    from dynarec.serve.server import App, ServerConfig

    class Engine:
        cfg = ServerConfig()

        class requests:
            @staticmethod
            def labels(*a):
                return type("C", (), {"inc": lambda self: None})()

        @property
        def served(self):
            raise RuntimeError("bundle vanished")

    class Req:
        method, path, body, too_large = "GET", "/healthz", b"", False

        def reply(self, status, body, *a, **k):
            self.status = status

    req = Req()
    with caplog.at_level(logging.ERROR, logger="dynarec.serve.server"):
        App(Engine())(req)
    assert req.status == 500
    rec = [r for r in caplog.records if r.name == "dynarec.serve.server"]
    assert rec and rec[0].exc_info and "bundle vanished" in str(rec[0].exc_info[1])
