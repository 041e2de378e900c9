"""The open connections of one listening socket: the cap on how many (at the cap the longest-idle keep-alive
connection is closed to make room; when none is idle, one more is answered 503 and closed), a
coarse clock and one sweeper task that enforces the timeouts of :class:`~dynarec.serve.limits.HttpLimits` every
``tick_s`` (no timer per request: the hot path reads ``ConnectionSet.now``, an attribute).

Example::

    from dynarec.serve.connections import listen
    from dynarec.serve.limits import HttpLimits

    def handler(req):
        req.reply(200, b'{"ok": true}')

    listener = await listen(handler, "127.0.0.1", 8000, HttpLimits(), max_body=1 << 20)
    ...
    await listener.close()
"""
from __future__ import annotations

import asyncio
import logging

from dynarec.serve.http import Connection
from dynarec.serve.limits import HttpLimits

log = logging.getLogger("dynarec.serve.connections")


class ConnectionSet:
    """The connections one server holds open, the coarse clock and the timeout sweep."""

    def __init__(self, limits: HttpLimits, loop: asyncio.AbstractEventLoop):
        self.limits, self.loop = limits, loop
        self.open: set = set()
        self.now = loop.time()
        self.cap = _fd_room(limits.max_connections)
        self._warned = -1e9

    def admit(self, conn) -> bool:
        """Take ``conn`` in; at the cap the longest-idle connection (no request in progress, no answer owed) is
        closed to make room, and when none is idle ``conn`` is refused (-> False)."""
        if len(self.open) >= self.cap:
            victim = min((c for c in self.open if c.idle), key=lambda c: c.t_idle, default=None)
            if victim is None:
                if self.now - self._warned > 10:  # at most one line per 10 s under a flood
                    self._warned = self.now
                    log.warning("max_connections (%d) reached, none idle: refusing new connections with 503",
                                self.cap)
                return False
            self.open.discard(victim)
            victim.shutdown()
        self.open.add(conn)
        return True

    def drop(self, conn) -> None:
        self.open.discard(conn)

    async def sweep(self) -> None:
        while True:
            await asyncio.sleep(self.limits.tick_s)
            self.now = now = self.loop.time()
            for conn in list(self.open):
                conn.check_time(now)


def _fd_room(want: int) -> int:
    """``want`` connections, or fewer where the process's file-descriptor limit cannot hold them (the soft limit
    is raised toward the hard one first): accepting must never fail for lack of a descriptor."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return want
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = want + 256  # the process's own files (libraries, the model, the loop) and refused sockets in flight
    if soft != resource.RLIM_INFINITY and soft < need:
        try:
            soft = need if hard == resource.RLIM_INFINITY else min(need, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        except (ValueError, OSError):
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft - 256 < want:
        room = max(1, soft - 256)
        log.warning("max_connections %d lowered to %d: the open-file limit is %d", want, room, soft)
        return room
    return want


class Listener:
    """A listening socket, its connections and their sweeper; ``close()`` stops all three."""

    def __init__(self, server, conns: ConnectionSet, sweeper: asyncio.Task):
        self.server, self.conns, self.sweeper = server, conns, sweeper

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.server.close()
        self.sweeper.cancel()
        for conn in list(self.conns.open):
            conn.shutdown()
        try:
            await self.sweeper
        except asyncio.CancelledError:
            pass


async def listen(handler, host: str, port: int, limits: HttpLimits | None = None, max_body: int = 8 << 20,
                 reuse_port: bool = False, backlog: int = 1024) -> Listener:
    """Serve ``handler(request)`` (see :class:`dynarec.serve.http.Request`) on ``host:port`` under ``limits``."""
    loop = asyncio.get_running_loop()
    limits = limits or HttpLimits()
    conns = ConnectionSet(limits, loop)
    server = await loop.create_server(lambda: Connection(handler, max_body, limits, conns), host, port,
                                      backlog=backlog, reuse_port=reuse_port or None)
    return Listener(server, conns, loop.create_task(conns.sweep()))
