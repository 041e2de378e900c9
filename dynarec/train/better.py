"""Never replace a better checkpoint: a run into ``--out`` that already holds a finished run whose validation
score is better (same monitored metric, same validation data) is refused with one line, unless ``overwrite``.

Every checkpoint records its validation score in ``extra["valid"]`` (:func:`valid_record`: the monitored
metric, its best value, whether higher is better and the validation split's content fingerprint). Before a
finished run replaces ``out`` (:func:`refuse_worse`), the recorded score of the run there is compared with
the new one; scores on other validation data, of another metric, or of a checkpoint that recorded none
(written before this rule) are not comparable and do not block the replacement.

The refused run is not written (its work folder is removed): the folder keeps the better run intact, byte
for byte. ``--overwrite`` (``train_model(overwrite=True)``) replaces it anyway.

Example::

    >>> from dynarec.train.better import better
    >>> better({"monitor": "auc", "score": 0.90, "higher": True}, {"monitor": "auc", "score": 0.50, "higher": True})
    True
"""
from __future__ import annotations

import math
from pathlib import Path

from dynarec.errors import DynarecError


class WorseRunError(DynarecError):
    """The new run scores worse than the checkpoint it would replace (one line; exit code 2)."""


def valid_record(history, valid) -> dict:
    """What ``extra["valid"]`` of a checkpoint holds: ``{"monitor", "score", "higher", "data"}`` (empty
    without a validation split or a monitored value)."""
    if valid is None or not len(valid) or not getattr(history, "monitor", "") or history.best_epoch < 1:
        return {}
    return {"monitor": history.monitor, "score": float(history.best_score), "higher": bool(history.higher),
            "data": valid.fingerprint()}


def better(old: dict, new: dict) -> bool:
    """Whether the recorded score ``old`` is strictly better than ``new`` (same metric; a NaN is never
    better, and anything beats a NaN)."""
    a, b = old.get("score", math.nan), new.get("score", math.nan)
    if a != a:
        return False
    if b != b:
        return True
    return a > b if old.get("higher", True) else a < b


def refuse_worse(out: Path, new: dict, overwrite: bool = False) -> None:
    """A :class:`WorseRunError` when ``out/model.pt`` records a validation score better than ``new`` (a
    :func:`valid_record`) on the same metric and data, and ``overwrite`` is false."""
    f = Path(out) / "model.pt"
    if overwrite or not new or not f.exists():
        return
    from dynarec.train.checkpoint import read_checkpoint

    try:
        old = (read_checkpoint(f).get("extra") or {}).get("valid") or {}
    except DynarecError:
        return  # an unreadable checkpoint holds no score to keep
    if old.get("monitor") != new["monitor"] or old.get("data") != new["data"] or not better(old, new):
        return
    raise WorseRunError(f"{out}: holds a run with a better validation {new['monitor']} ({old['score']:.4f} against "
                        f"this run's {new['score']:.4f}); it is kept and this run is not written: add --overwrite "
                        "to replace it, or choose another --out")
