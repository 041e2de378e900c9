"""The micro-batching engine of ``dynarec serve``: requests are validated one by one (a client's mistake is a
4xx with a one-line JSON ``{"error": ...}``), then queued; one inference worker takes every request queued
while the previous batch ran (up to ``max_batch`` rows; optionally waiting ``max_wait_ms`` for more, 0 by
default, so a lone request never waits), encodes them with the one row encoder in one go, runs the backend
once and splits the answer. A full queue answers 503 (back-pressure). A batch the encoder refuses (e.g. a
dense value beyond float32) is re-run request by request, so only the request at fault gets the 422.
The served model (:class:`dynarec.serve.loader.Served`) is swapped by :mod:`dynarec.serve.reload`."""
from __future__ import annotations

import logging

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dynarec.errors import DynarecError
from dynarec.serve.rows import RowError, rows_to_columns

try:  # orjson (the serve extra): ~5x faster JSON both ways; the standard library otherwise
    from orjson import dumps as _dumps
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - exercised where orjson is not installed
    _loads = json.loads

    def _dumps(obj) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


_log = logging.getLogger("dynarec.serve.server")

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
    """The queue, the batching worker, the metrics and the current model (``served``, swapped on reload).

    Example::

        eng = Engine(load_served("bundle"), ServerConfig())
        await eng.start()
        eng.submit({"rows": [...]}, reply, time.perf_counter())  # reply(200, b'{"predictions": ...}') later
    """

    def __init__(self, served, cfg, watch: Path | None = None):
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
        from dynarec.serve.reload import follow_run, watch_bundles

        self.queue = asyncio.Queue(self.cfg.queue_size)
        self.tasks.append(asyncio.create_task(self._worker()))
        if self.served.run is not None:
            self.tasks.append(asyncio.create_task(follow_run(self)))
        elif self.watch is not None:
            self.tasks.append(asyncio.create_task(watch_bundles(self)))

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

    async def _take(self, q: asyncio.Queue) -> tuple[list[_Pending], int]:
        """The next batch: every request queued now, then (``max_wait_ms``) those arriving shortly."""
        loop, cfg = asyncio.get_running_loop(), self.cfg
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
        return batch, rows

    async def _worker(self) -> None:
        q = self.queue
        while True:
            batch, _ = await self._take(q)
            served = self.served  # one model for the whole batch, even if a reload lands meanwhile
            # on the loop itself: a thread hand-off costs GIL ping-pong and buys nothing on few cores
            self._run(served, batch)
            await asyncio.sleep(0)  # let the loop read the requests that arrived during the batch

    def _run(self, served, batch: list[_Pending]) -> None:
        """Run and answer ``batch``. A batch the encoder refuses is re-run request by request, so each request
        gets its own answer."""
        try:
            results = _run_batch(served, batch)
        except DynarecError as e:  # e.g. a value the encoders refuse: a client's mistake
            if len(batch) > 1:
                for p in batch:
                    self._run(served, [p])
                return
            self.answer_error(batch[0].reply, 422, str(e))
            return
        except Exception as e:  # noqa: BLE001 - a failed batch fails its requests, not the server
            _log.exception("inference failed on a batch of %d rows", sum(p.n for p in batch))
            for p in batch:
                self.answer_error(p.reply, 500, f"{type(e).__name__}: {e}")
            return
        self.batch_rows.observe(sum(p.n for p in batch))
        now = time.perf_counter()
        for p, r in zip(batch, results):
            p.reply(200, r)
            self.ok.inc()
            self.latency.observe(now - p.t0)


def _run_batch(served, batch: list[_Pending]) -> list[bytes]:
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
