"""``dynarec serve``: an HTTP predictor on RAW feature values over an exported bundle (a lean asyncio + httptools
server, :mod:`dynarec.serve.http`: half the CPU per request of FastAPI + uvicorn on the same handler).

The rooms: :mod:`~dynarec.serve.loader` (a bundle or an online pass -> ``Served``), :mod:`~dynarec.serve.engine`
(validation, the bounded queue, micro-batching through the one row encoder, metrics),
:mod:`~dynarec.serve.reload` (the bundle watcher and the online-run follower), :mod:`~dynarec.serve.app` (the
routes); this module wires them (:func:`create_app`) and runs the processes (:func:`serve`).

* An online run (``dynarec online --out RUN``) is served from the pass its ``RUN/current`` marker names (the
  pass's ``serving.pt``: full model, encoders, id -> slot lookups; eager backend) and followed; one pass
  folder is served as it is, unwatched.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dynarec.errors import DynarecError
from dynarec.serve.app import App
from dynarec.serve.engine import Engine
from dynarec.serve.limits import HttpLimits
from dynarec.serve.reload import freeze
from dynarec.serve.served import Served, load_served  # noqa: F401  (the served model, re-exported)


@dataclass
class ServerConfig:
    max_batch: int = 256  # rows per inference call
    max_wait_ms: float = 0.0  # extra wait for more requests once the queue is drained (0: run at once)
    queue_size: int = 1024  # pending requests before 503
    max_rows: int = 4096  # rows per request
    max_body_bytes: int = 8 << 20
    watch_interval_s: float = 0.5
    http: HttpLimits = field(default_factory=HttpLimits)  # sizes, timeouts, connections (serve/limits.py)


def create_app(bundle: str | Path, backend: str | None = "onnx", watch: str | Path | None = None,
               cfg: ServerConfig | None = None, retriever: str | Path | None = None) -> App:
    """The routes serving ``bundle`` (loaded now: errors surface before the port opens), plus ``POST /retrieve``
    over the two-tower checkpoint ``retriever`` when given."""
    from dynarec.serve.sources import is_online

    cfg = cfg or ServerConfig()
    online = is_online(bundle)
    backend = backend or ("eager" if online else "onnx")
    if online and watch:
        raise DynarecError(f"--watch: {bundle} is an online run or pass; a run is followed through its own "
                           "current marker (drop --watch)")
    r = None
    if retriever is not None:
        from dynarec.retrieval.lookup import Retriever

        r = Retriever(retriever)
    return App(Engine(load_served(bundle, backend), cfg, Path(watch) if watch else None), r)


async def run_app(app: App, host: str, port: int, stop: asyncio.Event | None = None,
                  reuse_port: bool = False, ready=None) -> None:
    """Serve ``app`` on ``host:port`` until ``stop`` is set (SIGINT / SIGTERM set it in :func:`serve`)."""
    from dynarec.serve.connections import listen

    stop = stop or asyncio.Event()
    await app.engine.start()
    freeze()
    server = await listen(app, host, port, app.cfg.http, app.cfg.max_body_bytes, reuse_port=reuse_port)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await server.close()
        await app.engine.stop()


def serve(bundle: str | Path, host: str = "127.0.0.1", port: int = 8000, backend: str | None = "onnx",
          watch: str | Path | None = None, cfg: ServerConfig | None = None, threads: int = 0,
          workers: int = 1, _parent: int = 0, _ready=None, retriever: str | Path | None = None) -> None:
    """Run the server until interrupted (``dynarec serve``). ``workers`` > 1: that many processes share the
    port (``SO_REUSEPORT``: the kernel spreads connections); each loads the bundle, batches, reloads and
    counts its /metrics on its own.

    Example::

        serve("bundles/pepnet", port=8000, backend="onnx", watch="bundles", workers=2)
        # POST http://127.0.0.1:8000/predict {"rows": [{"user_id": "u1", ...}]}
    """
    import multiprocessing as mp
    import os
    import signal
    import sys

    from dynarec.serve.http import new_loop

    if threads:
        torch.set_num_threads(threads)
    app = create_app(bundle, backend, watch, cfg, retriever)
    s = app.engine.served
    backend = s.backend_name
    loop = new_loop()
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - e.g. Windows
            pass
    children, ready = [], []
    if workers > 1:  # the workers listen before this process does: its first answer means all are up
        ctx = mp.get_context("spawn")
        ready = [ctx.Event() for _ in range(workers - 1)]
        children = [ctx.Process(target=serve, args=(bundle, host, port, backend, watch, cfg, threads, 1, os.getpid(),
                                                    ev, retriever), daemon=True) for ev in ready]
    if _parent:  # a worker ends with the process that started it
        async def orphaned():
            while os.getppid() == _parent:
                await asyncio.sleep(1)
            stop.set()

        loop.create_task(orphaned())
    else:
        print(f"dynarec serve: {s.manifest['model']} {s.version} ({backend}) on http://{host}:{port}"
              + (f", {workers} worker processes" if workers > 1 else "")
              + (f", watching {watch}" if watch else "")
              + (f", following {s.run / 'current'} ({s.marker})" if s.run is not None else ""), file=sys.stderr, flush=True)
    try:
        for c in children:
            c.start()
        for c, ev in zip(children, ready):
            while not ev.wait(0.5):
                if not c.is_alive():
                    raise DynarecError(f"dynarec serve: a worker process failed to start (exit code {c.exitcode})")
        loop.run_until_complete(run_app(app, host, port, stop, reuse_port=workers > 1 or bool(_parent), ready=_ready))
    finally:
        for c in children:
            c.terminate()
        for c in children:
            c.join(10)
        loop.close()
