"""Never replace a better checkpoint: a run into ``--out`` that already holds a finished run whose validation
score is better (same monitored metric, same validation data) is refused with one line, unless ``overwrite``.

Every checkpoint (``model.pt``, or a sharded checkpoint's ``meta.pt``) records its validation score in ``extra["valid"]`` (:func:`valid_record`: the monitored
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


def recorded_extra(out: Path) -> dict:
    """``extra`` of the finished run in ``out``: from ``model.pt``, or from a sharded checkpoint's
    ``meta.pt`` (its digest checked against ``shards.json``; the shards themselves are not read); ``{}``
    when ``out`` holds neither."""
    from dynarec.train.checkpoint import read_checkpoint
    from dynarec.train.sharded_checkpoint import MANIFEST, read_meta

    if (out / "model.pt").exists():
        return read_checkpoint(out / "model.pt").get("extra") or {}
    if (out / MANIFEST).exists():
        return read_meta(out, check_all=False).get("extra") or {}
    return {}


def refuse_worse(out: Path, new: dict, overwrite: bool = False) -> None:
    """A :class:`WorseRunError` when the run in ``out`` (its ``model.pt``, or the ``meta.pt`` of a sharded
    checkpoint) records a validation score better than ``new`` (a :func:`valid_record`) on the same metric
    and data, and ``overwrite`` is false."""
    if overwrite or not new:
        return
    try:
        old = (recorded_extra(Path(out)).get("valid")) or {}
    except DynarecError:
        return  # an unreadable checkpoint holds no score to keep
    if old.get("monitor") != new["monitor"] or old.get("data") != new["data"] or not better(old, new):
        return
    raise WorseRunError(f"{out}: holds a run with a better validation {new['monitor']} ({old['score']:.4f} against "
                        f"this run's {new['score']:.4f}); it is kept and this run is not written: add --overwrite "
                        "to replace it, or choose another --out")
