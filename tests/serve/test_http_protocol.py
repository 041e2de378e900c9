"""HTTP details of the serving layer over RAW loopback sockets (HEAD without a body, earlier pipelined answers
before a 400, ``Upgrade: h2c`` ignored with the body kept, absolute-form targets, ``connection: close``,
``100 Continue`` only to HTTP/1.1 and in order, exactly one Host header in HTTP/1.1), a handler's crash logged with its traceback, and the
``dynarec serve`` wiring (every limit a flag; ``run_app`` serves under ``ServerConfig.http``)."""
from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import pytest

pytest.importorskip("httptools", reason="the HTTP layer needs the serve extra: pip install 'dynarec[serve]'")

from dynarec.serve.http import new_loop  # noqa: E402
from dynarec.serve.limits import HttpLimits  # noqa: E402
from tests.serve.rawhttp import _LEFT, GET, read_all, read_one, responses, srv  # noqa: E402,F401 (srv: fixture)


# ---- HTTP details -----------------------------------------------------------------------------------------
def test_head_is_answered_without_a_body(srv):
    s = srv.connect()
    s.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    raw = read_all(s)
    head, rest = raw.split(b"\r\n\r\n", 1)
    assert b"content-length: 16" in head  # the length the GET would get...
    assert rest.startswith(b"HTTP/1.1 200 ") and rest.endswith(b'{"status": "ok"}')  # ...and no body


def test_earlier_pipelined_answers_are_sent_before_a_400(srv):
    s = srv.connect()
    s.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\nNOT HTTP AT ALL\r\n\r\n")
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


@pytest.mark.parametrize("req, why", [
    (b"GET /healthz HTTP/1.1\r\n\r\n", b"without a Host header"),  # RFC 9112 3.2: 1.1 needs exactly one
    (b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", b"2 Host headers"),
    (b"GET /healthz HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n", b"2 Host headers"),
])
def test_host_header_is_required_once(srv, req, why):
    s = srv.connect()
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" + req + GET)
    got = responses(read_all(s))
    assert [g[0] for g in got] == [200, 400] and why in got[1][2]  # the refused request ends the connection
    s = srv.connect()
    s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")  # HTTP/1.0 may leave Host out
    assert responses(read_all(s))[0][::2] == (200, b'{"status": "ok"}')


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
    s.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\nPOST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
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
        s.sendall(b"GET /boom HTTP/1.1\r\nHost: t\r\n\r\n" + GET)
        assert read_one(s)[0] == 500
        assert read_one(s)[0] == 200  # the connection survives
    rec = [r for r in caplog.records if r.name == "dynarec.serve.http"]
    assert rec and rec[0].exc_info and "handler bug" in str(rec[0].exc_info[1])


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
        counted: list = []

        def __call__(self, req):
            req.reply(200, b"{}")

        def refused(self, status, path):
            self.counted.append((status, path))

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
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\n")
        assert responses(read_all(s))[0][0] == 413  # max_body_bytes
        assert App.counted == [(413, "/predict")]  # told to the app (its /metrics count it)
        s = socket.create_connection(("127.0.0.1", port), timeout=3)
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX: " + b"x" * 3000 + b"\r\n\r\n")
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
        method, path, body = "GET", "/healthz", b""

        def reply(self, status, body, *a, **k):
            self.status = status

    req = Req()
    with caplog.at_level(logging.ERROR, logger="dynarec.serve.server"):
        App(Engine())(req)
    assert req.status == 500
    rec = [r for r in caplog.records if r.name == "dynarec.serve.server"]
    assert rec and rec[0].exc_info and "bundle vanished" in str(rec[0].exc_info[1])


def test_bodiless_upgrade_and_connect_are_answered_then_closed(srv):
    s = srv.connect()
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\r\n")
    (got, hdrs, body), = responses(read_all(s))
    assert (got, body, hdrs[b"connection"]) == (200, b'{"status": "ok"}', b"close")
    s = srv.connect()
    s.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01")  # then TLS bytes
    (got, hdrs, _), = responses(read_all(s))
    assert got == 404 and hdrs[b"connection"] == b"close"  # no tunnel: answered by the handler, then closed


def test_a_half_closed_client_still_gets_its_answers(srv):
    s = srv.connect()
    s.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n" + GET)
    s.shutdown(socket.SHUT_WR)  # `printf ... | nc -N`: all the client will send
    got = responses(read_all(s))
    assert [g[0] for g in got] == [200, 200] and got[0][2] == b'{"slow": true}'
