"""The epoch-end hook of models whose normalisation keeps running statistics (STAR's partitioned norm):
:class:`NormStatistics` calls ``model.refresh_statistics(batches)`` after every epoch, before validation,
so validation, early stopping's best state, checkpoints and the final model all carry statistics of the
model as it is at that epoch's end (not a moving average over earlier models; issue 29)."""
from __future__ import annotations

import torch

from dynarec.train.loop import Callback


class NormStatistics(Callback):
    """Args:
        model: the (unwrapped) model; it must define ``refresh_statistics(batches) -> int``.
        train: the (staged) training table; read in a fixed shuffled order seeded by the epoch number,
            in batches of ``batch_size``.

    Example::

        loop = Loop(model, step, [NormStatistics(model, train, 4096), Validation(valid, "auc", 65536)])
    """

    def __init__(self, model, train, batch_size: int):
        self.model, self.train, self.batch_size = model, train, batch_size

    def on_epoch_end(self, loop, row: dict) -> None:
        def batches():
            g = torch.Generator()
            g.manual_seed(int(loop.epoch))
            return self.train.batches(self.batch_size, shuffle=True, generator=g)

        self.model.refresh_statistics(batches)
