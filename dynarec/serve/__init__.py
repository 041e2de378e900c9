"""Serving a trained checkpoint: :class:`~dynarec.serve.predictor.Predictor` (raw rows -> predictions).

Rooms: ``encoder`` (the one raw-row encoder), ``dynamic_ids`` (its plug-in for an online pass's ids),
``sources`` (what a path holds: a bundle, an online run or pass), ``loader`` (ONE loader for all of them),
``predictor`` / ``predict_file`` (scoring, ``dynarec predict``), ``entry`` / ``backends`` / ``export``
(plain-tensor entry, backend registry, bundles), ``rows`` (JSON rows), ``engine`` (micro-batching),
``reload`` (watcher, online-run follower), ``app`` (routes), ``server`` (``serve()``: the processes),
``http`` (the HTTP layer)."""

__all__ = ["Encoded", "Predictor"]


def __getattr__(name: str):  # lazy: importing a light room (backends, rows) does not load torch / pyarrow
    if name in __all__:
        from dynarec.serve import predictor

        return getattr(predictor, name)
    raise AttributeError(name)
