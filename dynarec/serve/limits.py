"""What the HTTP layer (:mod:`dynarec.serve.http`) lets one client do: sizes counted BEFORE anything is buffered,
times, connections and read-ahead. One frozen object shared by every connection of a server; each field is a
``dynarec serve`` flag (``max_head_bytes`` -> ``--max-head-bytes``).

Example::

    from dynarec.serve.limits import HttpLimits

    limits = HttpLimits(request_timeout_s=5, max_connections=200)
    assert limits.max_head_bytes == 64 * 1024
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from dynarec.errors import DynarecError

# field -> the help text of its `dynarec serve` flag (each is enforced by serve/http.py or serve/connections.py)
HELP = {
    "max_head_bytes": "bytes of a request line + headers (431 and close); the size lines, extensions and trailers "
                      "of a chunked body get the same allowance (400 and close)",
    "max_url_bytes": "bytes of a request target (414 and close)",
    "max_headers": "header fields of a request (431 and close)",
    "request_timeout_s": "seconds for a request to arrive whole once its first byte came (408 and close); also how "
                         "long a client may leave owed answers unread before its connection is dropped",
    "keepalive_timeout_s": "seconds an idle connection (no request in progress, no answer owed) stays open",
    "max_connections": "open connections; at the cap the longest-idle one is closed to make room, and when none "
                       "is idle one more is answered 503 and closed",
    "max_pipelined": "answers owed on one connection before it stops reading (pipelined requests wait unread)",
    "write_buffer_bytes": "unsent answer bytes on one connection before it stops reading",
}


@dataclass(frozen=True)
class HttpLimits:
    """Limits of the HTTP layer; every value must be > 0 (see ``HELP`` for what each does)."""

    max_head_bytes: int = 64 * 1024
    max_url_bytes: int = 8 * 1024
    max_headers: int = 100
    request_timeout_s: float = 30.0
    keepalive_timeout_s: float = 5.0
    max_connections: int = 1000
    max_pipelined: int = 16
    write_buffer_bytes: int = 256 * 1024

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
                raise DynarecError(f"--{flag(f.name)}: expected a number > 0, got {v!r}")

    @property
    def tick_s(self) -> float:
        """How often the timeouts are checked: a quarter of the shortest one (within [0.01, 1] s)."""
        return min(1.0, max(0.01, min(self.request_timeout_s, self.keepalive_timeout_s) / 4))

    @classmethod
    def from_args(cls, args) -> "HttpLimits":
        """The limits named by parsed ``dynarec serve`` flags (a flag left out keeps its default)."""
        given = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
        return cls(**given)


def flag(name: str) -> str:
    return name.replace("_", "-")


def add_flags(parser) -> None:
    """One ``--flag`` per field of :class:`HttpLimits` on an argparse parser (defaults shown in the help)."""
    for f in fields(HttpLimits):
        kind = float if f.type in ("float", float) else int
        parser.add_argument(f"--{flag(f.name)}", type=kind, default=None, metavar="N",
                            help=f"{HELP[f.name]} (default {f.default})")
