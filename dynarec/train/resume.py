"""The resume point of a training run: ``last.pt`` in the run's work folder, rewritten atomically after every
epoch by :class:`LastState` (put it after every other callback). It holds :meth:`Loop.state_dict
<dynarec.train.loop.Loop.state_dict>` (weights, both optimizers and the task weighting, the batch-order and
global random generators, the epoch, early stopping's best score and state, the history and log rows) and the
row counts and content fingerprints of the data it was trained on. ``dynarec train --resume DIR`` continues after the last completed
epoch and ends exactly where the uninterrupted run would have."""
from __future__ import annotations

import io
from pathlib import Path

import torch

from dynarec.errors import DataError
from dynarec.train.callbacks import Checkpointing
from dynarec.train.checkpoint import write_atomic

LAST = "last.pt"
FORMAT = "dynarec-last-1"


def save_state(path: Path, loop, meta: dict) -> None:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "meta": meta, "loop": loop.state_dict()}, buf)
    write_atomic(Path(path), buf.getvalue())


def load_state(path: Path, meta: dict) -> dict:
    """The loop state saved in ``path``; a DataError when it is unreadable or ``meta`` (the data's row
    counts and fingerprints) differs from the saved run's."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise DataError(f"{path}: not a readable resume point ({type(e).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise DataError(f"{path}: not a dynarec resume point")
    for k, v in meta.items():
        if k in ("train_data", "valid_data") and k not in blob["meta"]:
            continue  # resume points written before fingerprints
        if blob["meta"].get(k) != v:
            raise DataError(f"{path}: saved with {k} = {blob['meta'].get(k)}, this data has {v}: "
                            "the prepared data changed since the run started")
    return blob["loop"]


class LastState(Checkpointing):
    """Writes the resume point ``path`` after every epoch."""

    def __init__(self, path: str | Path, meta: dict):
        self.path, self.meta = Path(path), meta
        super().__init__(lambda loop: save_state(self.path, loop, self.meta), every=1)
