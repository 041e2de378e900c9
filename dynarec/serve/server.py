"""``dynarec serve``: an HTTP predictor on RAW feature values over an exported bundle (a lean asyncio + httptools
server, :mod:`dynarec.serve.http`: half the CPU per request of FastAPI + uvicorn on the same handler).

* ``POST /predict`` ``{"rows": [{feature: raw value, ...}, ...]}`` -> ``{"predictions": {task: [p, ...]},
  "unknown": {feature: count}, "model_version": "..."}``. Requests are validated one by one (a client's mistake
  is a 4xx with a one-line JSON ``{"error": ...}``; the server stays up) and then **micro-batched**: a bounded
  queue feeds one inference worker that takes every request queued while the previous batch ran (up to
  ``max_batch`` rows; optionally waiting ``max_wait_ms`` for more, 0 by default, so a lone request never
  waits), encodes them with :meth:`Predictor.encode` in one go, runs the backend once and splits the answer.
  A full queue answers 503 (back-pressure) instead of growing without bound.
* ``GET /healthz``, ``GET /metadata`` (tasks, features, inputs, version, backend), ``GET /metrics`` (Prometheus
  text: requests by status, errors, latency histogram, batch-size histogram, reloads).
* Hot reload: with ``watch``, a new bundle appearing there (the folder named by ``watch/current``, else the
  newest sub-folder with a manifest) is loaded beside the old one and swapped in with one reference assignment
  between two batches, so no request fails or mixes two models (each answer names the version that made it).
* An online run (``dynarec online --out RUN``) is served from the pass its ``RUN/current`` marker names (the
  pass's ``serving.pt``: full model, encoders, id -> slot lookups; eager backend); the marker is read every
  ``watch_interval_s`` (one small file read) and a newer pass is loaded the same way, in a thread, then
  swapped in between two batches (``dynarec_reload_seconds`` in /metrics: load + swap time). One pass folder
  is served as it is, unwatched.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dynarec.errors import DynarecError
from dynarec.serve.limits import HttpLimits
from dynarec.serve.rows import RowError, rows_to_columns

try:  # orjson (the serve extra): ~5x faster JSON both ways; the standard library otherwise
    from orjson import dumps as _dumps
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - exercised where orjson is not installed
    _loads = json.loads

    def _dumps(obj) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


_log = logging.getLogger("dynarec.serve.server")


@dataclass
class ServerConfig:
    max_batch: int = 256  # rows per inference call
    max_wait_ms: float = 0.0  # extra wait for more requests once the queue is drained (0: run at once)
    queue_size: int = 1024  # pending requests before 503
    max_rows: int = 4096  # rows per request
    max_body_bytes: int = 8 << 20
    watch_interval_s: float = 0.5
    http: HttpLimits = field(default_factory=HttpLimits)  # sizes, timeouts, connections (serve/limits.py)


@dataclass
class Served:
    """One loaded bundle: its manifest, predictor (model + encoders) and backend."""

    path: Path
    manifest: dict
    backend_name: str
    predictor: object = None
    backend: object = None
    tasks: list = field(default_factory=list)
    run: Path | None = None  # an online run folder whose `current` marker is followed, or None
    marker: str | None = None  # the marker text naming the served pass (online runs)

    @property
    def version(self) -> str:
        return self.manifest["model_version"]

    @property
    def schema(self):
        return self.predictor.schema

    @classmethod
    def load(cls, path: str | Path, backend: str) -> "Served":
        from dynarec.serve.backends import load_backend
        from dynarec.online.serving import is_online
        from dynarec.serve.bundle import read_bundle
        from dynarec.serve.predictor import Predictor

        path = Path(path)
        if is_online(path):
            return cls.load_online(path, backend)
        manifest, model, encoders = read_bundle(path)
        run = load_backend(path, backend, model=model if backend == "eager" else None)
        pred = Predictor(model, encoders, manifest["model"], manifest["model_version"], str(path))
        return cls(path, manifest, backend, pred, run, [t["name"] for t in manifest["tasks"]])

    @classmethod
    def load_online(cls, path: str | Path, backend: str = "eager") -> "Served":
        """An online run folder (the pass ``RUN/current`` names; followed by the watcher) or one pass folder."""
        from dynarec.online.serving import RUN_FILE, pass_folder
        from dynarec.serve.export import TensorEntry, input_spec
        from dynarec.serve.predictor import Predictor

        path = Path(path)
        if backend != "eager":
            raise DynarecError(f"--backend {backend}: an online pass is served by the eager backend (passes are not "
                               "exported); drop --backend or pass --backend eager")
        run = path if (path / RUN_FILE).is_file() else None
        folder = pass_folder(path)  # for a run: the pass its `current` names now
        marker = folder.relative_to(run).as_posix() if run is not None else None
        pred = Predictor.load_pass(folder)
        schema = pred.schema
        entry = TensorEntry(pred.model).eval()

        def call(inputs):
            with torch.no_grad():
                return entry(*inputs)

        manifest = {"model": pred.name, "model_version": pred.version, "inputs": input_spec(schema),
                    "tasks": [{"name": t.name, "type": t.type} for t in schema.tasks], "online": pred.online}
        return cls(Path(pred.checkpoint), manifest, "eager", pred, call, pred.tasks, run, marker)

    def predict_columns(self, cols: dict) -> tuple[list[np.ndarray], np.ndarray]:
        """Validated raw columns -> (one array per task, unknown values per row and embedded field [N, F])."""
        enc = self.predictor.encode_columns(cols, "request")
        out = self.backend(self.predictor.inputs(enc))
        return [o.float().numpy() if isinstance(o, torch.Tensor) else np.asarray(o) for o in out], enc.unknown_rows


class ClientError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class _Pending:
    cols: dict  # validated raw columns (rows_to_columns)
    n: int
    reply: object  # reply(status, body)
    t0: float  # when the request was complete


def error_body(msg: str) -> bytes:
    """The one-line JSON error of a 4xx / 5xx answer."""
    return _dumps({"error": msg.splitlines()[0] if msg else "error"})


class Engine:
    """The queue, the batching worker and the current bundle (swapped on reload)."""

    def __init__(self, served: Served, cfg: ServerConfig, watch: Path | None = None):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.served = served
        self.cfg = cfg
        self.watch = watch
        self.queue: asyncio.Queue | None = None
        self.loader = ThreadPoolExecutor(1, thread_name_prefix="dynarec-reload")
        self.tasks: list[asyncio.Task] = []
        self.reg = CollectorRegistry()
        self.requests = Counter("dynarec_requests", "HTTP requests", ["endpoint", "status"], registry=self.reg)
        self.errors = Counter("dynarec_errors", "requests answered with an error", ["kind"], registry=self.reg)
        self.latency = Histogram("dynarec_request_latency_seconds", "POST /predict latency", registry=self.reg,
                                 buckets=(.001, .002, .005, .01, .015, .025, .05, .1, .25, .5, 1, 2.5, 5))
        self.batch_rows = Histogram("dynarec_batch_rows", "rows per inference call", registry=self.reg,
                                    buckets=tuple(2 ** i for i in range(13)))
        self.reloads = Counter("dynarec_reloads", "bundles swapped in", ["result"], registry=self.reg)
        self.reload_s = Histogram("dynarec_reload_seconds", "load + swap time of a new bundle / online pass",
                                  registry=self.reg, buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.failed_marker: str | None = None  # an online pass that failed to load (retried when the marker moves)
        self.ok = self.requests.labels("/predict", "200")  # the hot path's counter, looked up once

    # ---- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        self.queue = asyncio.Queue(self.cfg.queue_size)
        self.tasks.append(asyncio.create_task(self._worker()))
        if self.served.run is not None:
            self.tasks.append(asyncio.create_task(self._follow_run()))
        elif self.watch is not None:
            self.tasks.append(asyncio.create_task(self._watcher()))

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        self.loader.shutdown(wait=False, cancel_futures=True)

    # ---- requests -----------------------------------------------------------------------------------
    def submit(self, payload, reply, t0: float) -> None:
        """Validate one request's payload and queue it; ``reply(status, body)`` answers it once its batch
        ran. Raises :class:`ClientError` for a client's mistake (or a full queue)."""
        if type(payload) is not dict or "rows" not in payload:
            raise ClientError(422, "expected a JSON object with a 'rows' list")
        try:
            cols = rows_to_columns(payload["rows"], self.served.schema, self.cfg.max_rows)
        except RowError as e:
            raise ClientError(413 if "at most" in str(e) else 422, str(e)) from None
        try:
            self.queue.put_nowait(_Pending(cols, len(payload["rows"]), reply, t0))
        except asyncio.QueueFull:
            raise ClientError(503, f"server busy: {self.cfg.queue_size} requests queued; retry later") from None

    def answer_error(self, reply, status: int, msg: str, endpoint: str = "/predict") -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.errors.labels("client" if status < 500 else "server").inc()
        reply(status, error_body(msg))

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        q, cfg = self.queue, self.cfg
        while True:
            first = await q.get()
            batch, rows = [first], first.n
            while rows < cfg.max_batch and not q.empty():  # everything that queued up meanwhile
                item = q.get_nowait()
                batch.append(item)
                rows += item.n
            deadline = loop.time() + cfg.max_wait_ms / 1000
            while rows < cfg.max_batch and cfg.max_wait_ms > 0:  # optionally wait a little for more
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(q.get(), left)
                except asyncio.TimeoutError:
                    break
                batch.append(item)
                rows += item.n
            served = self.served  # one model for the whole batch, even if a reload lands meanwhile
            try:  # on the loop itself: a thread hand-off costs GIL ping-pong and buys nothing on few cores
                results = _run_batch(served, batch)
            except DynarecError as e:  # e.g. a value the encoders refuse: a client's mistake
                for p in batch:
                    self.answer_error(p.reply, 422, str(e))
                continue
            except Exception as e:  # noqa: BLE001 - a failed batch fails its requests, not the server
                _log.exception("inference failed on a batch of %d rows", rows)
                for p in batch:
                    self.answer_error(p.reply, 500, f"{type(e).__name__}: {e}")
                continue
            self.batch_rows.observe(rows)
            now = time.perf_counter()
            for p, r in zip(batch, results):
                p.reply(200, r)
                self.ok.inc()
                self.latency.observe(now - p.t0)
            await asyncio.sleep(0)  # let the loop read the requests that arrived during the batch

    # ---- hot reload ---------------------------------------------------------------------------------
    async def _swap_in(self, load, *args) -> bool:
        """``load(*args)`` in the loader thread, then swapped in for the next batch (one reference
        assignment); on failure the served model stays. -> whether it was swapped in."""
        t0 = time.perf_counter()
        try:
            new = await asyncio.get_running_loop().run_in_executor(self.loader, load, *args)
        except Exception:  # noqa: BLE001 - keep serving the old model
            self.reloads.labels("failed").inc()
            return False
        self.served = new  # atomic swap: the next batch uses it
        self.reload_s.observe(time.perf_counter() - t0)
        self.reloads.labels("ok").inc()
        _freeze(unfreeze=True)  # the old model's cycles become collectable again
        return True

    async def _watcher(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.watch_interval_s)
            cand = newest_bundle(self.watch)
            if cand is None or cand.resolve() == self.served.path.resolve():
                continue
            try:
                ver = json.loads((cand / "manifest.json").read_text())["model_version"]
            except (OSError, ValueError, KeyError):
                continue  # half-written or not a bundle: look again next time
            if ver == self.served.version:
                continue
            await self._swap_in(Served.load, cand, self.served.backend_name)

    async def _follow_run(self) -> None:
        """An online run: when ``RUN/current`` names another pass, load it beside the served one (a thread) and
        swap it in; in-flight batches keep the model they started with. A pass that fails to load is skipped
        (the old one stays) until the marker moves again."""
        from dynarec.online.serving import current_text

        while True:
            await asyncio.sleep(self.cfg.watch_interval_s)
            run = self.served.run
            text = current_text(run)
            if text is None or text == self.served.marker or text == self.failed_marker:
                continue
            if not await self._swap_in(Served.load_online, run, "eager"):
                self.failed_marker = text


def _freeze(unfreeze: bool = False) -> None:
    """Move the loaded model's objects out of the cyclic GC's reach (``gc.freeze``): a full collection then
    walks only the objects of requests in flight, not the ~10^5 of torch / the model (tail latency)."""
    import gc

    if unfreeze:
        gc.unfreeze()
    gc.collect()
    gc.freeze()


def _run_batch(served: Served, batch: list[_Pending]) -> list[bytes]:
    """Encode + run the rows of every request in ``batch`` at once -> each request's JSON answer."""
    names = [f.name for f in served.schema.features]
    if len(batch) == 1:
        cols = batch[0].cols
    else:
        cols = {n: [v for p in batch for v in p.cols[n]] for n in names}
    outs, unknown = served.predict_columns(cols)
    outs = [o.tolist() for o in outs]
    fields = [f.name for f in served.schema.fields]
    any_unknown = bool(unknown.any())
    res, s = [], 0
    for p in batch:
        e = s + p.n
        unk = {}
        if any_unknown:
            unk = {n: int(c) for n, c in zip(fields, unknown[s:e].sum(0)) if c}
        res.append(_dumps({"predictions": {t: o[s:e] for t, o in zip(served.tasks, outs)},
                           "unknown": unk, "model_version": served.version}))
        s = e
    return res


def newest_bundle(watch: Path) -> Path | None:
    """``watch/current`` (a file naming a sub-folder, or a link), else the newest sub-folder with a manifest."""
    cur = watch / "current"
    if cur.is_symlink() or cur.is_dir():
        return cur.resolve() if (cur / "manifest.json").exists() else None
    if cur.is_file():
        p = watch / cur.read_text().strip()
        return p if (p / "manifest.json").exists() else None
    subs = [p for p in watch.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "manifest.json").exists()]
    return max(subs, key=lambda p: (p / "manifest.json").stat().st_mtime) if subs else None


class App:
    """The routes over an :class:`Engine`: ``POST /predict`` (queued for the next micro-batch), ``GET /healthz``,
    ``GET /metadata``, ``GET /metrics``; ``app(request)`` is the handler of :mod:`dynarec.serve.http`."""

    def __init__(self, engine: Engine, retriever=None):
        self.engine = engine
        self.cfg = engine.cfg
        self.retriever = retriever  # a dynarec.retrieval.lookup.Retriever for POST /retrieve, or None

    def __call__(self, req) -> None:
        try:
            if req.path == "/predict":
                return self.predict(req)
            if req.path == "/retrieve":
                return self.retrieve(req)
            route = {"/healthz": self.healthz, "/metadata": self.metadata, "/metrics": self.metrics}.get(req.path)
            if route is None:
                return req.reply(404, error_body(f"no route {req.path}; try POST /predict, POST /retrieve, GET /healthz, "
                                                 "/metadata or /metrics"))
            if req.method not in ("GET", "HEAD"):
                return req.reply(405, error_body(f"{req.path} takes GET"), headers=((b"allow", b"GET"),))
            self.engine.requests.labels(req.path, "200").inc()
            route(req)
        except Exception as e:  # noqa: BLE001 - never let a handler bug take the connection down
            _log.exception("%s %s failed", req.method, req.path)
            req.reply(500, error_body(f"{type(e).__name__}: {e}"))

    def refused(self, status: int, path: str) -> None:
        """A request the HTTP layer refused (413, 431, 408, ...): counted under its route, or ``http``."""
        self.engine.requests.labels(path if path in ("/predict", "/retrieve") else "http", str(status)).inc()
        self.engine.errors.labels("client" if status < 500 else "server").inc()

    def predict(self, req) -> None:
        t0 = time.perf_counter()
        eng, limit = self.engine, self.cfg.max_body_bytes
        if req.method != "POST":
            return eng.answer_error(lambda s, b: req.reply(s, b, headers=((b"allow", b"POST"),)), 405,
                                    "POST /predict with JSON {\"rows\": [...]}")
        if req.too_large:
            return eng.answer_error(req.reply, 413, f"request body over {limit} bytes")
        if not req.body:
            return eng.answer_error(req.reply, 400, "empty request body; expected JSON {\"rows\": [...]}")
        try:
            payload = _loads(req.body)
        except (ValueError, UnicodeDecodeError) as e:
            return eng.answer_error(req.reply, 400, f"malformed JSON: {e}")
        try:
            eng.submit(payload, req.reply, t0)
        except ClientError as e:
            eng.answer_error(req.reply, e.status, str(e))

    def retrieve(self, req) -> None:
        from dynarec.serve.retrieve_route import RetrieveError, answer

        eng, ep = self.engine, "/retrieve"
        if self.retriever is None:
            return eng.answer_error(req.reply, 404, "no retriever loaded: start the server with "
                                                    "--retriever CHECKPOINT (a two_tower checkpoint)", ep)
        if req.method != "POST":
            return eng.answer_error(lambda s, b: req.reply(s, b, headers=((b"allow", b"POST"),)), 405,
                                    "POST /retrieve with JSON {\"users\": [...], \"k\": 20}", ep)
        if req.too_large:
            return eng.answer_error(req.reply, 413, f"request body over {self.cfg.max_body_bytes} bytes", ep)
        try:
            out = answer(self.retriever, _loads(req.body or b"null"), self.cfg.max_rows)
        except (ValueError, UnicodeDecodeError) as e:
            return eng.answer_error(req.reply, 400, f"malformed JSON: {e}", ep)
        except RetrieveError as e:
            return eng.answer_error(req.reply, e.status, str(e), ep)
        eng.requests.labels(req.path, "200").inc()
        req.reply(200, _dumps(out))

    def healthz(self, req) -> None:
        req.reply(200, _dumps({"status": "ok", "model_version": self.engine.served.version}))

    def metadata(self, req) -> None:
        s, cfg = self.engine.served, self.cfg
        req.reply(200, _dumps({
            "model": s.manifest["model"], "model_version": s.version, "backend": s.backend_name,
            "tasks": s.manifest["tasks"], "inputs": s.manifest["inputs"],
            "features": [{"name": f.name, "kind": f.kind, "group": f.group} for f in s.schema.features],
            "max_rows": cfg.max_rows, "max_batch": cfg.max_batch, "max_wait_ms": cfg.max_wait_ms,
            **({"online": s.manifest["online"]} if s.manifest.get("online") else {})}))

    def metrics(self, req) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        req.reply(200, generate_latest(self.engine.reg), CONTENT_TYPE_LATEST.encode())


def create_app(bundle: str | Path, backend: str | None = "onnx", watch: str | Path | None = None,
               cfg: ServerConfig | None = None, retriever: str | Path | None = None) -> App:
    """The routes serving ``bundle`` (loaded now: errors surface before the port opens), plus ``POST /retrieve``
    over the two-tower checkpoint ``retriever`` when given."""
    from dynarec.online.serving import is_online

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
    return App(Engine(Served.load(bundle, backend), cfg, Path(watch) if watch else None), r)


async def run_app(app: App, host: str, port: int, stop: asyncio.Event | None = None,
                  reuse_port: bool = False, ready=None) -> None:
    """Serve ``app`` on ``host:port`` until ``stop`` is set (SIGINT / SIGTERM set it in :func:`serve`)."""
    from dynarec.serve.connections import listen

    stop = stop or asyncio.Event()
    await app.engine.start()
    _freeze()
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
    counts its /metrics on its own."""
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
