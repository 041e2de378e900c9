"""Hot reload for ``dynarec serve``: a watched folder's newest bundle (:func:`watch_bundles`) or the pass an
online run's ``current`` marker names (:func:`follow_run`: by its deltas when it can,
:mod:`dynarec.serve.delta_apply`) is loaded beside the served one, in the engine's loader thread, then swapped in with one reference assignment between two batches (:func:`swap_in`), so no
request fails or mixes two models (each answer names the version that made it). A load that fails keeps the
old model (``dynarec_reloads{result="failed"}``); ``dynarec_reload_seconds`` times load + swap."""
from __future__ import annotations

import asyncio
import json
import logging
import time

from dynarec.serve.served import load_served
from dynarec.serve.sources import current_text, newest_bundle

_log = logging.getLogger("dynarec.serve.server")


async def swap_in(engine, load, *args) -> bool:
    """``load(*args)`` in the loader thread, then swapped in for the next batch; -> whether it was."""
    t0 = time.perf_counter()
    try:
        new = await asyncio.get_running_loop().run_in_executor(engine.loader, load, *args)
    except Exception:  # noqa: BLE001 - keep serving the old model
        engine.reloads.labels("failed").inc()
        return False
    engine.served = new  # atomic swap: the next batch uses it
    engine.reload_s.observe(time.perf_counter() - t0)
    engine.reloads.labels("ok").inc()
    freeze(unfreeze=True)  # the old model's cycles become collectable again
    return True


async def watch_bundles(engine) -> None:
    """Every ``watch_interval_s``: a bundle in ``engine.watch`` with another version is loaded and swapped in."""
    while True:
        await asyncio.sleep(engine.cfg.watch_interval_s)
        cand = newest_bundle(engine.watch)
        if cand is None or cand.resolve() == engine.served.path.resolve():
            continue
        try:
            ver = json.loads((cand / "manifest.json").read_text())["model_version"]
        except (OSError, ValueError, KeyError):
            continue  # half-written or not a bundle: look again next time
        if ver == engine.served.version:
            continue
        await swap_in(engine, load_served, cand, engine.served.backend_name)


async def follow_run(engine) -> None:
    """An online run: every ``watch_interval_s``, :func:`follow_once`."""
    while True:
        await asyncio.sleep(engine.cfg.watch_interval_s)
        await follow_once(engine)


async def follow_once(engine) -> str | None:
    """When ``RUN/current`` names another pass: apply the deltas up to it to the served model
    (:mod:`dynarec.serve.delta_apply`: prepared in the loader thread, written between two batches;
    ``dynarec_reloads{result="delta"}``), or, when a delta is missing, out of order, corrupted or carries no
    dense weights, log one line saying why and load the pass beside the served one and swap it in (a full
    reload). A pass that fails to load is skipped (the old one stays) until the marker moves again.
    -> ``"delta"``, ``"reload"``, ``"failed"`` or None (nothing to do)."""
    from dynarec.serve.delta_apply import apply, prepare

    run = engine.served.run
    text = current_text(run)
    if text is None or text == engine.served.marker or text == engine.failed_marker:
        return None
    t0 = time.perf_counter()
    try:
        prep = await asyncio.get_running_loop().run_in_executor(engine.loader, prepare, engine.served, run, text)
    except Exception as e:  # noqa: BLE001 - an unexpected delta problem: the full reload decides
        prep = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if not isinstance(prep, str) and engine.served.run == run:
        try:
            engine.served = apply(engine.served, prep)  # on the loop, where batches run: between two batches
        except Exception as e:  # noqa: BLE001 - never keep a half-applied model: the full reload replaces it
            prep = f"applying the delta failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        else:
            engine.reload_s.observe(time.perf_counter() - t0)
            engine.reloads.labels("delta").inc()
            return "delta"
    _log.warning("dynarec serve: %s: full reload of %s (%s)", run, text, prep)
    if not await swap_in(engine, load_served, run, "eager"):
        engine.failed_marker = text
        return "failed"
    return "reload"


def freeze(unfreeze: bool = False) -> None:
    """Move the loaded model's objects out of the cyclic GC's reach (``gc.freeze``): a full collection then
    walks only the objects of requests in flight, not the ~10^5 of torch / the model (tail latency)."""
    import gc

    if unfreeze:
        gc.unfreeze()
    gc.collect()
    gc.freeze()
