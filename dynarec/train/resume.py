"""The resume point of a training run: ``last.pt`` in the run's work folder, rewritten atomically after every
epoch, and every ``trainer.checkpoint_every_steps`` steps inside an epoch, by :class:`LastState` (put it
after every other callback). It holds :meth:`Loop.state_dict
<dynarec.train.loop.Loop.state_dict>` (weights, both optimizers and the task weighting, the batch-order and
global random generators, the epoch, early stopping's best score and state, the history and log rows) and the
row counts and content fingerprints of the data it was trained on; one written inside an epoch also holds
where that epoch stands (``position``: its number, steps done, the batch order's generator at its start, the
global step). ``dynarec train --resume DIR`` continues after the last completed epoch, or at the saved step
of the interrupted one (the reader replays that epoch's order and skips what was trained), and ends exactly
where the uninterrupted run would have.

Like ``model.pt``, the file is sealed (:func:`dynarec.train.checkpoint.sealed`: the payload's SHA-256 checked
on load, a corrupted file is one line) and written atomically (temp file + rename), so a ``kill -9`` at any
moment leaves the previous resume point or the new one, whole. Unsealed ``dynarec-last-1`` files still load."""
from __future__ import annotations

import io
from pathlib import Path

import torch

from dynarec.errors import ConfigError, DataError
from dynarec.train.callbacks import Checkpointing
from dynarec.train.checkpoint import read_sealed, sealed, write_atomic

LAST = "last.pt"
FORMAT = "dynarec-last-2"
FORMAT_UNVERIFIED = "dynarec-last-1"


def save_state(path: Path, loop, meta: dict) -> None:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "meta": meta, "loop": loop.state_dict()}, buf)
    write_atomic(Path(path), sealed(FORMAT, buf.getvalue()))


def load_state(path: Path, meta: dict) -> dict:
    """The loop state saved in ``path``; a DataError when it is unreadable or ``meta`` (the data's row
    counts and fingerprints) differs from the saved run's."""
    blob, _ = read_sealed(Path(path), FORMAT, "dynarec resume point", "the file is corrupted; delete it and train "
                          "again", unverified=FORMAT_UNVERIFIED)
    if not isinstance(blob, dict) or blob.get("format") not in (FORMAT, FORMAT_UNVERIFIED) or "loop" not in blob:
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
    ``every_steps``-th step inside an epoch (not after its last step: the epoch's end writes it then).

    Example::

        Trainer(model, cfg).fit(train, valid, [LastState("work/last.pt", {"model": "dnn"}, every_steps=100)])
    """

    def __init__(self, path: str | Path, meta: dict, every_steps: int = 0):
        if isinstance(every_steps, bool) or not isinstance(every_steps, int) or every_steps < 0:
            raise ConfigError(f"trainer.checkpoint_every_steps: expected an integer >= 0, got {every_steps!r}")
        self.path, self.meta, self.every_steps = Path(path), meta, every_steps
        super().__init__(lambda loop: save_state(self.path, loop, self.meta), every=1)

    def on_batch_end(self, loop, rows: int, loss: float) -> None:
        if self.every_steps and loop.batch % self.every_steps == 0 and loop.batch < loop.steps_per_epoch:
            self.save(loop)
