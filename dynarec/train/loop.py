"""Epochs over a :class:`~dynarec.data.table.TensorTable`: shuffled batches (one seeded generator for the
whole fit), one :class:`~dynarec.train.step.TrainStep` call per batch, and callbacks for everything else
(validation, early stopping, progress, CSV log, checkpoints: :mod:`dynarec.train.callbacks`)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)  # one row per epoch (what log.csv holds)
    best_epoch: int = 0
    best_score: float = float("nan")
    train_rows_per_s: float = 0.0
    train_seconds: float = 0.0


def set_seed(seed: int) -> torch.Generator:
    """Seed torch's global generator (init, dropout) and return a fresh one for the batch order."""
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


class Callback:
    """Hooks of :class:`Loop`, called in list order; each gets the loop (``loop.model``, ``loop.step``,
    ``loop.history``, ``loop.epoch``, ``loop.epochs``, ``loop.rows`` = rows per epoch, ``loop.batch_size``).

    * ``on_epoch_end(loop, row)`` may add keys to ``row`` (the epoch's log row: epoch, train_loss, rows_per_s,
      seconds); a callback that measures the monitored value sets ``loop.monitor = (value, higher_is_better)``
      for the ones after it; setting ``loop.stop = True`` ends the fit after this epoch.
    * ``on_fit_end`` runs after the last epoch (not after an error); ``close`` always runs, last."""

    def on_fit_start(self, loop: Loop) -> None: ...
    def on_epoch_start(self, loop: Loop, epoch: int) -> None: ...
    def on_batch_end(self, loop: Loop, rows: int, loss: float) -> None: ...
    def on_epoch_end(self, loop: Loop, row: dict) -> None: ...
    def on_fit_end(self, loop: Loop) -> None: ...
    def close(self, loop: Loop) -> None: ...


class Loop:
    """Args:
        model: the model the step trains (set to train mode each epoch, eval mode at the end).
        step: a callable ``batch -> float loss`` (a :class:`~dynarec.train.step.TrainStep`).
        callbacks: :class:`Callback` objects (any object with some of its methods)."""

    def __init__(self, model, step, callbacks=()):
        self.model, self.step = model, step
        self.callbacks = list(callbacks)
        self.history = History()
        self.epoch, self.epochs, self.rows, self.batch_size = 0, 0, 0, 0
        self.monitor: tuple[float, bool] | None = None
        self.stop = False

    def _call(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(self, *args)

    def fit(self, train, epochs: int, batch_size: int, seed: int = 0, threads: int = 0) -> History:
        """Up to ``epochs`` passes over ``train`` in batches of ``batch_size``, shuffled by a generator seeded
        with ``seed`` (torch's global generator is seeded too) -> the :class:`History`."""
        if threads:
            torch.set_num_threads(threads)
        gen = set_seed(seed)
        hist = self.history
        self.epochs, self.rows, self.batch_size, self.stop = epochs, len(train), batch_size, False
        total_time = 0.0
        try:
            self._call("on_fit_start")
            for epoch in range(1, epochs + 1):
                self.epoch, self.monitor = epoch, None
                self.model.train()
                self._call("on_epoch_start", epoch)
                t0 = time.perf_counter()
                loss_sum, steps = 0.0, 0
                for b in train.batches(batch_size, shuffle=True, generator=gen):
                    loss = self.step(b)
                    loss_sum += loss
                    steps += 1
                    self._call("on_batch_end", len(b), loss)
                dt = time.perf_counter() - t0
                total_time += dt
                row = {"epoch": epoch, "train_loss": loss_sum / max(steps, 1), "rows_per_s": self.rows / dt,
                       "seconds": dt}
                hist.epochs.append(row)
                self._call("on_epoch_end", row)
                if self.stop:
                    break
            self._call("on_fit_end")
        finally:
            self._call("close")
        hist.train_rows_per_s = self.rows * len(hist.epochs) / max(total_time, 1e-9)
        hist.train_seconds = total_time
        self.model.eval()
        return hist
