"""ONE loader for everything ``dynarec predict / evaluate / serve`` can be pointed at: a checkpoint folder, a
bundle (``dynarec export``), an online run folder (the pass its ``current`` marker names) or one pass folder
(its ``serving.pt``): model, encoders and, for a pass, the dynamic ids' plug-in. :func:`load_predictor` gives
the predictor (``Predictor.load``); :func:`dynarec.serve.served.load_served` wraps the same for a server."""
from __future__ import annotations

import hashlib
from pathlib import Path

from dynarec.errors import DataError, DynarecError
from dynarec.serve.sources import describe, is_online, pass_folder, read_manifest, read_serving


def load_predictor(path: str | Path, cls):
    """A checkpoint folder (or its ``model.pt``), an online run folder or one of its pass folders -> a
    predictor of class ``cls`` (:class:`~dynarec.serve.predictor.Predictor`: ``Predictor.load(path)``)."""
    from dynarec.data.encode import Encoders
    from dynarec.serve.mapped_load import mapped_manifest
    from dynarec.train.checkpoint import load_checkpoint

    if is_online(path):
        return load_pass(path, cls)
    p = Path(path)
    if p.is_dir() and not (p / "model.pt").exists() and (p / "shards.json").exists():
        from dynarec.serve.mapped_load import load_sharded_mapped  # large tables mapped, never assembled

        model, blob = load_sharded_mapped(p)
    elif mapped_manifest(p) is not None:  # a bundle with mapped tables
        from dynarec.serve.mapped_load import load_mapped_model

        model, blob = load_mapped_model(p, read_manifest(p))
    else:
        model, blob = load_checkpoint(path)
    enc = Encoders.from_dict(model.schema, blob["encoders"]) if blob.get("encoders") is not None else None
    f = p / "model.pt" if p.is_dir() else p
    if not f.exists() and (p / "shards.json").exists():  # a sharded checkpoint: its manifest holds every digest
        f = p / "shards.json"
    return cls(model, enc, blob["model"], hashlib.sha256(f.read_bytes()).hexdigest()[:12], str(path))


def load_pass(path: str | Path, cls):
    """An online run folder (follows ``RUN/current``) or a pass folder -> the predictor of that pass's
    ``serving.pt``: its full model, the first pass's encoders for the static features, and the id -> slot
    lookups of the dynamic ones (the encoder's plug-in; unseen ids read the default row)."""
    from dynarec.data.schema import Schema
    from dynarec.models import build_model
    from dynarec.online.schema import encoders_for
    from dynarec.online.serving import SERVING
    from dynarec.serve.dynamic_ids import SlotLookup

    d = pass_folder(path)
    f = d / SERVING
    blob, digest = read_serving(f)
    try:
        schema = Schema.from_dict(blob["schema"], str(f))
        model = build_model(blob["model"], schema, blob["params"])
        model.prepare_for_load(blob["state_dict"])
        model.load_state_dict(blob["state_dict"])
        dyn = [e["feature"] for e in blob["dynamic"]]
        enc = encoders_for(schema, dyn, blob["encoders"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise DataError(f"{f}: does not match its model ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    model.eval()
    model.merge_for_inference()
    k = blob.get("pass")
    version = f"pass{k:04d}-{digest[:8]}" if isinstance(k, int) else digest[:12]
    return cls(model, enc, blob["model"], version, str(d), SlotLookup(blob["dynamic"]), describe(d, blob))


def read_bundle(path: str | Path):
    """-> (manifest, model in eval mode and merged, fitted Encoders) of a bundle folder."""
    from dynarec.data.encode import Encoders
    from dynarec.train.checkpoint import load_checkpoint

    m = read_manifest(path)
    if m.get("mapped"):  # large tables as mapped files (dynarec.serve.mapped): model.pt holds the rest
        from dynarec.serve.mapped_load import load_mapped_model

        model, blob = load_mapped_model(path, m)
    else:
        model, blob = load_checkpoint(Path(path) / "model.pt", merge=True)
    if not blob.get("encoders"):
        raise DynarecError(f"{path}: the checkpoint has no encoders; raw rows cannot be encoded")
    return m, model, Encoders.from_dict(model.schema, blob["encoders"])
