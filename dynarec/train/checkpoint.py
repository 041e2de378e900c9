"""Checkpoints: one folder with ``model.pt`` (weights + model name + params + schema + encoders +
trainer config), written atomically (temp file + rename), so evaluation needs the checkpoint alone."""
from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from dynarec.data.schema import Schema
from dynarec.errors import DataError


def save_checkpoint(path: str | Path, model, params: dict, encoders: dict | None = None,
                    extra: dict | None = None) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    blob = {
        "format": "dynarec-checkpoint-1",
        "model": model.registry_name,
        "params": params,
        "schema": model.schema.to_dict(),
        "encoders": encoders,
        "state_dict": model.state_dict(),
        "extra": extra or {},
    }
    buf = io.BytesIO()
    torch.save(blob, buf)
    tmp = path / ".model.pt.tmp"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path / "model.pt")
    return path / "model.pt"


def load_checkpoint(path: str | Path, merge: bool = True):
    """-> (model in eval mode, blob). Accepts the folder or the model.pt file. With ``merge`` the model is
    switched to its inference form (``merge_for_inference()``; a no-op for most models)."""
    from dynarec.models import build_model

    p = Path(path)
    f = p / "model.pt" if p.is_dir() else p
    if not f.exists():
        raise DataError(f"{p}: no checkpoint found (expected {f})")
    try:
        blob = torch.load(f, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated / not a checkpoint
        raise DataError(f"{f}: not a readable dynarec checkpoint ({type(e).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != "dynarec-checkpoint-1":
        raise DataError(f"{f}: not a dynarec checkpoint")
    schema = Schema.from_dict(blob["schema"], str(f))
    model = build_model(blob["model"], schema, blob["params"])
    model.prepare_for_load(blob["state_dict"])  # e.g. table keys of checkpoints older than model.tables
    model.load_state_dict(blob["state_dict"])
    model.eval()
    if merge:
        model.merge_for_inference()  # e.g. APG v5 -> v4 form (Yan et al., NeurIPS 2022, merged form)
    return model, blob
