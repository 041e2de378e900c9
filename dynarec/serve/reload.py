"""Hot reload for ``dynarec serve``: a watched folder's newest bundle (:func:`watch_bundles`) or the pass an
online run's ``current`` marker names (:func:`follow_run`) is loaded beside the served one, in the engine's
loader thread, then swapped in with one reference assignment between two batches (:func:`swap_in`), so no
request fails or mixes two models (each answer names the version that made it). A load that fails keeps the
old model (``dynarec_reloads{result="failed"}``); ``dynarec_reload_seconds`` times load + swap."""
from __future__ import annotations

import asyncio
import json
import time

from dynarec.serve.served import load_served
from dynarec.serve.sources import current_text, newest_bundle


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
    """An online run: when ``RUN/current`` names another pass, load it beside the served one and swap it in;
    in-flight batches keep the model they started with. A pass that fails to load is skipped (the old one
    stays) until the marker moves again."""
    while True:
        await asyncio.sleep(engine.cfg.watch_interval_s)
        run = engine.served.run
        text = current_text(run)
        if text is None or text == engine.served.marker or text == engine.failed_marker:
            continue
        if not await swap_in(engine, load_served, run, "eager"):
            engine.failed_marker = text


def freeze(unfreeze: bool = False) -> None:
    """Move the loaded model's objects out of the cyclic GC's reach (``gc.freeze``): a full collection then
    walks only the objects of requests in flight, not the ~10^5 of torch / the model (tail latency)."""
    import gc

    if unfreeze:
        gc.unfreeze()
    gc.collect()
    gc.freeze()
