"""The resume point of a training run: ``last.pt`` in the run's work folder, rewritten atomically after every
epoch by :class:`LastState` (put it after every other callback). It holds :meth:`Loop.state_dict
<dynarec.train.loop.Loop.state_dict>` (weights, both optimizers and the task weighting, the batch-order and
global random generators, the epoch, early stopping's best score and state, the history and log rows) and the
row counts and content fingerprints of the data it was trained on. ``dynarec train --resume DIR`` continues after the last completed
epoch, or, with ``trainer.checkpoint_every_steps``, after the last saved step inside an epoch, and ends exactly
where the uninterrupted run would have."""
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
    """Writes the resume point ``path`` after every epoch and, with ``every_steps`` > 0, after every
    ``every_steps``-th step inside an epoch (``trainer.checkpoint_every_steps``): then it also holds the position
    in the epoch (the epoch's batch-order generator state at its start, the steps done, the epoch's loss sum
    and time so far), and a resumed run replays that epoch's batch order, skips the steps done and continues
    as the uninterrupted run would have (a streamed split re-reads the skipped row groups, nothing is trained
    on them)."""

    def __init__(self, path: str | Path, meta: dict, every_steps: int = 0):
        self.path, self.meta, self.every_steps = Path(path), meta, every_steps
        super().__init__(lambda loop: save_state(self.path, loop, self.meta), every=1)

    def on_batch_end(self, loop, rows: int, loss: float) -> None:
        if self.every_steps and loop.batch % self.every_steps == 0 and loop.in_epoch:
            self.save(loop)
