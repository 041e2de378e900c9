"""Reading a serving bundle (written by :func:`dynarec.serve.export.export_bundle`): manifest + checksums
verified, the checkpoint's model (merged for inference) and encoders. Raw rows become the bundle's inputs
through :meth:`dynarec.serve.predictor.Predictor.encode` (the one encoder of ``predict`` and the server)."""
from __future__ import annotations

import json
from pathlib import Path

from dynarec.errors import DynarecError


def read_manifest(path: str | Path) -> dict:
    """The manifest of bundle folder ``path``; every listed file's sha256 checked."""
    from dynarec.serve.export import BUNDLE_FORMAT, _sha256

    p = Path(path)
    f = p / "manifest.json"
    if not f.exists():
        raise DynarecError(f"{p}: not a dynarec bundle (no manifest.json; write one with `dynarec export`)")
    try:
        m = json.loads(f.read_text())
    except ValueError:
        raise DynarecError(f"{f}: not valid JSON (a truncated bundle?)") from None
    if not isinstance(m, dict) or m.get("format") != BUNDLE_FORMAT:
        raise DynarecError(f"{f}: not a {BUNDLE_FORMAT} manifest")
    for name, digest in m.get("files", {}).items():
        q = p / name
        if not q.exists():
            raise DynarecError(f"{q}: listed in the manifest but missing")
        if _sha256(q) != digest:
            raise DynarecError(f"{q}: checksum mismatch (the file changed after export)")
    return m


def read_bundle(path: str | Path):
    """-> (manifest, model in eval mode and merged, fitted Encoders)."""
    from dynarec.data.encode import Encoders
    from dynarec.train.checkpoint import load_checkpoint

    m = read_manifest(path)
    model, blob = load_checkpoint(Path(path) / "model.pt", merge=True)
    if not blob.get("encoders"):
        raise DynarecError(f"{path}: the checkpoint has no encoders; raw rows cannot be encoded")
    return m, model, Encoders.from_dict(model.schema, blob["encoders"])
