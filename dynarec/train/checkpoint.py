"""Checkpoints: one folder with ``model.pt`` (weights + model name + params + schema + encoders +
trainer config), written atomically (temp file + rename), so evaluation needs the checkpoint alone.

``model.pt`` (format ``dynarec-checkpoint-2``) is a ``torch.save`` of ``{"format", "sha256", "payload"}``:
``payload`` (a uint8 tensor, stored raw) holds the ``torch.save`` bytes of the checkpoint itself (``model``, ``params``, ``schema``,
``encoders``, ``state_dict``, ``extra``) and ``sha256`` their SHA-256, checked on every load, so a corrupted
file (flipped or lost bytes) is a one-line :class:`~dynarec.errors.DataError` naming it instead of a model
with wrong weights. The checksum travels with the file (a copied ``model.pt``, an export bundle). Older
``dynarec-checkpoint-1`` files (the checkpoint dict itself, no checksum) still load, unverified."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch

from dynarec.data.schema import Schema
from dynarec.errors import DataError
from dynarec.outdir import write_atomic  # noqa: F401  (re-exported: online/serving, delta)

FORMAT = "dynarec-checkpoint-2"
FORMAT_UNVERIFIED = "dynarec-checkpoint-1"




def _bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def sealed(fmt: str, payload: bytes) -> bytes:
    """The bytes of a checksummed file: ``torch.save`` of ``{"format", "sha256", "payload"}`` (checkpoints,
    online deltas)."""
    return _bytes({"format": fmt, "sha256": hashlib.sha256(payload).hexdigest(),
                   "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)})


def unsealed(blob: dict) -> tuple[bytes, str]:
    """(payload bytes, their sha256) of a loaded checksummed file; compare the digest with ``blob["sha256"]``."""
    payload = blob["payload"].numpy().tobytes()
    return payload, hashlib.sha256(payload).hexdigest()


def save_checkpoint(path: str | Path, model, params: dict, encoders: dict | None = None,
                    extra: dict | None = None) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    payload = _bytes({
        "format": FORMAT,
        "model": model.registry_name,
        "params": params,
        "schema": model.schema.to_dict(),
        "encoders": encoders,
        "state_dict": model.state_dict(),
        "extra": extra or {},
    })
    write_atomic(path / "model.pt", sealed(FORMAT, payload))
    return path / "model.pt"


def read_sealed(f: Path, fmt: str, what: str, corrupt: str, unverified: str | None = None) -> tuple[object, str | None]:
    """(the object sealed in file ``f`` by :func:`sealed` with format ``fmt``, its payload's sha256), the
    checksum verified; a one-line DataError naming ``f`` otherwise (``what``: the kind of file, for the
    messages; ``corrupt``: what the user can do about a checksum mismatch). A file whose format is
    ``unverified`` (an older, unsealed layout) is returned as it is, with digest ``None``."""
    try:
        blob = torch.load(f, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated / not such a file
        raise DataError(f"{f}: not a readable {what} ({type(e).__name__})") from None
    got_fmt = blob.get("format") if isinstance(blob, dict) else None
    if unverified is not None and got_fmt == unverified:
        return blob, None
    if got_fmt != fmt or not isinstance(blob.get("payload"), torch.Tensor):
        raise DataError(f"{f}: not a {what}")
    payload, got = unsealed(blob)
    if got != blob.get("sha256"):
        raise DataError(f"{f}: checksum mismatch (sha256 {got[:16]}…, recorded {str(blob.get('sha256'))[:16]}…): "
                        f"{corrupt}")
    try:
        inner = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
    except Exception as e:
        raise DataError(f"{f}: not a readable {what} ({type(e).__name__})") from None
    return inner, got


def read_checkpoint(f: Path) -> dict:
    """The checkpoint dict stored in file ``f``, its checksum verified (format 2), or a one-line DataError."""
    from dynarec.train.streamed_checkpoint import is_streamed, read_streamed

    if is_streamed(f):  # format 3: written from the tensors' storage (online pass checkpoints)
        return read_streamed(f)
    inner, _ = read_sealed(f, FORMAT, "dynarec checkpoint", "the file is corrupted; restore it or retrain",
                           unverified=FORMAT_UNVERIFIED)
    if not isinstance(inner, dict) or "state_dict" not in inner:
        raise DataError(f"{f}: not a dynarec checkpoint")
    return inner


def recorded_params(name: str, params: dict, f, note=None) -> dict:
    """``params`` of a saved ``name`` model without the keys that have no effect on it today (a key of other
    models only, or one its own rules switch off, e.g. ``tower_hidden`` of a dnn saved by an older version):
    the rule "a key must have an effect" is for what a user asks now, not for what an old run recorded.
    Dropped keys get one note line on stderr (``note``: another printer) naming the file and the keys.

    Example::

        recorded_params("dnn", {"hidden": [64], "tower_hidden": [8]}, "run/model.pt")  # -> {"hidden": [64]}
    """
    import dataclasses
    import sys

    from dynarec.models.keys import inactive_keys
    from dynarec.models.registry import REGISTRY, get_model_info

    if not isinstance(params, dict):
        return params
    info = get_model_info(name)  # imports the models (fills REGISTRY); an unknown name is build_model's error
    own = {fl.name for fl in dataclasses.fields(info.config_cls)}
    others = set().union(*({fl.name for fl in dataclasses.fields(m.config_cls)} for m in REGISTRY.values()))
    drop = [k for k in params if k not in own and k in others]
    kept = {k: v for k, v in params.items() if k not in drop}
    try:
        inactive = inactive_keys(info.cls, info.config_cls(**{k: v for k, v in kept.items() if k in own}))
    except Exception:  # a value today's config refuses: build_model names it
        inactive = {}
    drop += [k for k in kept if k in inactive]
    if not drop:
        return params
    (note or (lambda m: print(m, file=sys.stderr)))(
        f"note: {f}: dropped saved model key(s) {', '.join(drop)}: no effect on {name} today")
    return {k: v for k, v in params.items() if k not in drop}


def load_checkpoint(path: str | Path, merge: bool = True):
    """-> (model in eval mode, blob). Accepts the folder or the model.pt file. With ``merge`` the model is
    switched to its inference form (``merge_for_inference()``; a no-op for most models)."""
    from dynarec.models import build_model

    p = Path(path)
    f = p / "model.pt" if p.is_dir() else p
    if p.is_dir() and not f.exists() and (p / "shards.json").exists():  # trainer.checkpoint: sharded
        from dynarec.train.sharded_checkpoint import load_sharded

        return load_sharded(p, merge)
    if not f.exists():
        raise DataError(f"{p}: no checkpoint found (expected {f})")
    blob = read_checkpoint(f)
    schema = Schema.from_dict(blob["schema"], str(f))
    blob["params"] = recorded_params(blob["model"], blob["params"], f)
    model = build_model(blob["model"], schema, blob["params"])
    model.prepare_for_load(blob["state_dict"])  # e.g. table keys of checkpoints older than model.tables
    model.load_state_dict(blob["state_dict"])
    model.eval()
    if merge:
        model.merge_for_inference()  # e.g. APG v5 -> v4 form (Yan et al., NeurIPS 2022, merged form)
    return model, blob
