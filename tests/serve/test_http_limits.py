"""The HTTP layer's limits against hostile clients, over RAW loopback sockets against a real server on
127.0.0.1 (limits configured small, see ``rawhttp.SMALL``): sizes refused before buffering (431 / 414 / 413 /
chunk extensions), the request deadline (slowloris), the keep-alive timeout, the connection cap, and
back-pressure (pipelined answers never read, a client that never reads). Each fails on the layer before them."""
from __future__ import annotations

import socket
import threading
import time

import pytest

pytest.importorskip("httptools", reason="the HTTP layer needs the serve extra: pip install 'dynarec[serve]'")

from tests.serve.rawhttp import GET, SMALL, Server, read_all, read_one, responses, srv  # noqa: E402,F401 (srv: fixture)


# ---- sizes, counted before buffering ----------------------------------------------------------------------
@pytest.mark.parametrize("req, status", [
    (b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 6000, 431),  # header bytes, the head never completes
    (b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(30)) + b"\r\n", 431),
    (b"GET /" + b"u" * 2000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
    (b"\r\n" * 3000, 431),  # blank lines before a request count too
])
def test_oversized_heads_are_refused_and_closed(srv, req, status):
    s = srv.connect()
    s.sendall(req)
    (got, hdrs, body), = responses(read_all(s))
    assert got == status and hdrs[b"connection"] == b"close" and b"error" in body


def test_a_giant_header_reaches_the_parser_only_up_to_the_limit(srv, monkeypatch):
    import httptools

    fed, real = [], httptools.HttpRequestParser

    class Counting:  # the parser, counting what it is given (it copies a header on every read it spans)
        def __init__(self, proto):
            self.parser = real(proto)

        def feed_data(self, data):
            fed.append(len(data))
            return self.parser.feed_data(data)

        def __getattr__(self, name):
            return getattr(self.parser, name)

    monkeypatch.setattr(httptools, "HttpRequestParser", Counting)
    s = srv.connect()
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ")
    try:
        for _ in range(128):  # 8 MiB of one header value, 64 KiB a write
            s.sendall(b"a" * 65536)
    except (BrokenPipeError, ConnectionResetError):
        pass
    (got, _, _), = responses(read_all(s))
    assert got == 431 and sum(fed) <= SMALL["max_head_bytes"]


def test_body_over_the_limit_gets_413_from_content_length_alone(srv):
    for expect in (b"", b"Expect: 100-continue\r\n"):
        s = srv.connect()
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n" + expect + b"\r\n")
        raw = read_all(s)  # no body sent: the answer must not wait for it
        assert b"100 Continue" not in raw
        (got, hdrs, _), = responses(raw)
        assert got == 413 and hdrs[b"connection"] == b"close"
    s = srv.connect()  # chunked: refused as soon as the chunks pass the limit
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + b"200\r\n" + b"x" * 512 + b"\r\n" * 1
              + b"200\r\n" + b"x" * 512 + b"\r\n")
    (got, _, _), = responses(read_all(s))
    assert got == 413


def test_chunk_extensions_are_bounded(srv):
    s = srv.connect()
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=" + b"e" * 20000)
    (got, _, body), = responses(read_all(s))
    assert got == 400 and b"chunk extension" in body
    s = srv.connect()  # a small extension is fine
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\n\r\n")
    assert read_one(s)[:3:2] == (200, b"hello")


def test_request_smuggling_still_refused(srv):
    s = srv.connect()
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"0\r\n\r\nGET /x HTTP/1.1\r\nHost: t\r\n\r\n")
    (got, _, _), = responses(read_all(s))
    assert got == 400


# ---- time and connections ---------------------------------------------------------------------------------
def test_slowloris_gets_408_at_the_request_deadline(srv):
    s = srv.connect()
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
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


def _closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    finally:
        sock.setblocking(True)


def test_connection_cap_makes_room_from_idle_sockets_and_refuses_cleanly_when_none_is(srv):
    cap = SMALL["max_connections"]
    idle = [srv.connect() for _ in range(cap)]  # open, never a byte: idle
    srv.wait(lambda: srv.open(idle=True) == cap)
    s = srv.connect()
    s.sendall(GET)
    assert read_one(s)[0] == 200  # idle sockets do not lock a normal client out...
    time.sleep(0.1)
    assert sum(map(_closed, idle)) == 1  # ...one idle connection made room, at once
    busy = [srv.connect() for _ in range(cap)]
    for c in busy:  # a request in progress on every connection: none can be closed
        c.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
    srv.wait(lambda: srv.open() == cap and srv.open(idle=True) == 0)
    s = srv.connect()
    s.sendall(GET)
    (got, hdrs, _), = responses(read_all(s))
    assert got == 503 and hdrs[b"connection"] == b"close"


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
    req = b"GET /big HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"p" * 1000 + b"\r\n\r\n"  # ~1 KiB in, 4 KiB out
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
    s.sendall((req[rem:] if rem else b"") + b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    reader.join(70)
    got = responses(raw[0])
    n = sent // len(req) + bool(rem)
    assert [g[0] for g in got] == [200] * (n + 1), [g for g in got if g[0] != 200][:1]
    assert all(len(g[2]) == 4096 for g in got[:n])


def test_a_client_that_never_reads_its_answers_is_dropped(srv):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    s.connect(("127.0.0.1", srv.port))
    s.setblocking(False)
    burst, t0 = b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n" * 2000, time.monotonic()
    while time.monotonic() - t0 < 3:  # until the server stops reading
        try:
            s.send(burst)
        except BlockingIOError:
            break
    seen = False  # the server may accept it only now
    while time.monotonic() - t0 < 5:
        n = srv.open()
        seen |= n > 0
        if seen and n == 0:
            break
        time.sleep(0.05)
    assert seen and srv.open() == 0  # dropped request_timeout_s (0.5 s) after its writes stalled
