"""The messages of :mod:`dynarec.serve.http`: a parsed :class:`Request` (answered with ``reply``), the bytes of
one response, and the path of a request target.

Example::

    from dynarec.serve.http_message import response, target_path

    assert target_path(b"http://host:8000/predict?x=1") == "/predict"
    assert response(200, b"{}", head=True).endswith(b"content-length: 2\r\n\r\n")
"""
from __future__ import annotations

_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed", 408: b"Request Timeout",
            413: b"Payload Too Large", 414: b"URI Too Long", 422: b"Unprocessable Entity",
            431: b"Request Header Fields Too Large", 500: b"Internal Server Error", 503: b"Service Unavailable"}
JSON = b"application/json"


def response(status: int, body: bytes, ctype: bytes = JSON, headers: tuple = (), close: bool = False,
             head: bool = False) -> bytes:
    """The bytes of one HTTP/1.1 response (``head``: without the body, for a HEAD request)."""
    extra = b"".join(k + b": " + v + b"\r\n" for k, v in headers)
    return b"".join((b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n" % (
        status, _REASONS.get(status, b"Unknown"), ctype, len(body)), extra,
        b"connection: close\r\n" if close else b"", b"\r\n", b"" if head else body))


def error(status: int, msg: str) -> bytes:
    """A refusal of the HTTP layer: one-line JSON error, ``connection: close``."""
    return response(status, b'{"error": "%s"}' % msg.encode()[:300].replace(b'"', b"'").replace(b"\\", b"/"),
                    close=True)


class Request:
    """One parsed request; ``reply`` answers it (once), from any code running on the event loop."""

    __slots__ = ("method", "path", "body", "close", "_conn", "_slot")

    def __init__(self, conn, method: str, path: str, body: bytes, close: bool):
        self.method, self.path, self.body, self.close = method, path, body, close
        self._conn = conn
        self._slot = None

    def reply(self, status: int, body: bytes, ctype: bytes = JSON, headers: tuple = ()) -> None:
        self._conn.answer(self, status, body, ctype, headers)


def target_path(url: bytes) -> str:
    """The path of a request target: origin-form ``/p?q``, or absolute-form ``http://host/p?q``."""
    if url[:1] != b"/" and b"://" in url[:16]:
        rest = url.split(b"://", 1)[1]
        i = rest.find(b"/")
        url = rest[i:] if i >= 0 else b"/"
    return url.split(b"?", 1)[0].split(b"#", 1)[0].decode("latin-1")
