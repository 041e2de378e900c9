"""The routes of ``dynarec serve`` over an :class:`~dynarec.serve.engine.Engine`:

* ``POST /predict`` ``{"rows": [{feature: raw value, ...}, ...]}`` -> ``{"predictions": {task: [p, ...]},
  "unknown": {feature: count}, "model_version": "..."}`` (queued for the next micro-batch);
* ``POST /retrieve`` (with ``--retriever``); ``GET /healthz``, ``GET /metadata`` (tasks, features, inputs,
  version, backend), ``GET /metrics`` (Prometheus text: requests by status, errors, latency histogram,
  batch-size histogram, reloads)."""
from __future__ import annotations

import logging
import time

from dynarec.serve.engine import ClientError, Engine, _dumps, _loads, error_body

_log = logging.getLogger("dynarec.serve.server")


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
        eng = self.engine
        if req.method != "POST":
            return eng.answer_error(lambda s, b: req.reply(s, b, headers=((b"allow", b"POST"),)), 405,
                                    "POST /predict with JSON {\"rows\": [...]}")
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
