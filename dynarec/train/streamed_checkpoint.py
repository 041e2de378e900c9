"""Checkpoint files written straight from the tensors' storage (format ``dynarec-checkpoint-3``), for state too
large to copy in memory: an online pass's ``model.pt`` (the tables, the optimizer's row state and the dynamic
index's slot arrays).

``dynarec-checkpoint-2`` (:mod:`dynarec.train.checkpoint`) pickles the checkpoint into a ``BytesIO``, copies
those bytes into a tensor and saves that again: about 3x the state's bytes in memory while saving. Here the
checkpoint dict (the same keys: ``format``, ``model``, ``params``, ``schema``, ``encoders``, ``state_dict``,
``extra``) is ``torch.save``'d directly to a temp file (torch's zip writer writes each tensor's storage from
its own memory), the file's SHA-256 is computed by reading it back in 1 MiB blocks, and a 72-byte trailer
(``MAGIC`` + the hex digest) is appended; the file is fsynced and renamed into place (atomic). Reading
checks the digest the same way (bounded memory), then loads the file (``torch.load`` reads each tensor
into its own memory, no copy of the whole file; the zip's end record is found before the trailer). A flipped or lost byte is a one-line
:class:`~dynarec.errors.DataError` naming the file. :func:`dynarec.train.checkpoint.read_checkpoint` reads
these files too, so every reader of ``model.pt`` does.

Example::

    save_streamed(Path("run/passes/0003/model.pt"), {"format": FORMAT, "state_dict": model.state_dict(), ...})
    blob = read_streamed(Path("run/passes/0003/model.pt"))   # checksum checked
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from dynarec.errors import DataError

FORMAT = "dynarec-checkpoint-3"
MAGIC = b"DYNRCK3\n"
TRAILER = len(MAGIC) + 64


def _digest(f: Path, size: int) -> str:
    """SHA-256 of the first ``size`` bytes of ``f``, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        left = size
        while left > 0:
            block = fh.read(min(1 << 20, left))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def checkpoint_dict(model, params: dict, encoders: dict | None = None, extra: dict | None = None) -> dict:
    """What a checkpoint file holds (the keys of ``dynarec-checkpoint-2``'s payload), tensors not copied."""
    return {"format": FORMAT, "model": model.registry_name, "params": params, "schema": model.schema.to_dict(),
            "encoders": encoders, "state_dict": model.state_dict(), "extra": extra or {}}


def save_streamed(path: Path, obj: dict) -> Path:
    """Write ``obj`` to ``path`` as a ``dynarec-checkpoint-3`` file: temp file, trailer, fsync, rename."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp"
    torch.save(obj, tmp)
    size = tmp.stat().st_size
    with open(tmp, "ab") as fh:
        fh.write(MAGIC + _digest(tmp, size).encode())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def is_streamed(f: Path) -> bool:
    """Whether ``f`` ends with the trailer of a ``dynarec-checkpoint-3`` file (reads its last 72 bytes)."""
    try:
        with open(f, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() < TRAILER:
                return False
            fh.seek(-TRAILER, os.SEEK_END)
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def recorded_digest(f: Path) -> str:
    """The sha256 hex digest a streamed file's trailer records (not checked)."""
    with open(f, "rb") as fh:
        fh.seek(-64, os.SEEK_END)
        return fh.read(64).decode("ascii", "replace")


def read_streamed(f: Path, what: str = "dynarec checkpoint", fmt: str = FORMAT,
                  corrupt: str = "the file is corrupted; restore it or retrain") -> dict:
    """The dict in ``f`` (a streamed file whose dict has format ``fmt``: ``dynarec-checkpoint-3``, or an online
    pass's ``dynarec-serving-1``), its checksum verified."""
    f = Path(f)
    size = f.stat().st_size - TRAILER
    recorded = recorded_digest(f)
    got = _digest(f, size)
    if got != recorded:
        raise DataError(f"{f}: checksum mismatch (sha256 {got[:16]}…, recorded {recorded[:16]}…): {corrupt}")
    try:
        blob = torch.load(f, map_location="cpu", weights_only=False)  # each tensor read into its own memory
    except Exception as e:  # noqa: BLE001 - a checked file torch cannot read: name it
        raise DataError(f"{f}: not a readable {what} ({type(e).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != fmt or "state_dict" not in blob:
        raise DataError(f"{f}: not a {what}")
    return blob
