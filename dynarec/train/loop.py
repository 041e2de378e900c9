"""Epochs over a :class:`~dynarec.data.table.TensorTable`: shuffled batches (one seeded generator for the
whole fit), one :class:`~dynarec.train.step.TrainStep` call per batch, and callbacks for everything else
(validation, early stopping, progress, CSV log, checkpoints: :mod:`dynarec.train.callbacks`)."""
from __future__ import annotations

import inspect
import itertools
import math
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from dynarec.errors import DynarecError


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)  # one row per epoch (what log.csv holds)
    best_epoch: int = 0
    best_score: float = float("nan")
    train_rows_per_s: float = 0.0
    train_seconds: float = 0.0
    monitor: str = ""  # what early stopping watched (trainer.monitor after the single-class fallback)
    higher: bool = True  # whether a higher monitored value is better


def set_seed(seed: int) -> torch.Generator:
    """Seed torch's global generator (init, dropout) and return a fresh one for the batch order."""
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


class DivergedError(DynarecError, FloatingPointError):
    """The training loss became NaN / inf: the run stops (one line naming the epoch, the step and the likely
    cause). A :class:`FloatingPointError` too, for callers that caught the step's error."""


class Callback:
    """Hooks of :class:`Loop`, called in list order; each gets the loop (``loop.model``, ``loop.step``,
    ``loop.history``, ``loop.epoch``, ``loop.epochs``, ``loop.rows`` = rows per epoch, ``loop.batch_size``).

    * ``on_epoch_end(loop, row)`` may add keys to ``row`` (the epoch's log row: epoch, train_loss, rows_per_s,
      seconds); a callback that measures the monitored value sets ``loop.monitor = (value, higher_is_better)``
      for the ones after it; setting ``loop.stop = True`` ends the fit after this epoch.
    * ``on_fit_end`` runs after the last epoch (not after an error); ``close`` always runs, last.
    * a callback with state that a resumed run needs (e.g. early stopping's best score and state) defines
      ``state_dict()`` / ``load_state_dict(state)``; :meth:`Loop.state_dict` collects them."""

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
        self.batch = 0  # the step within the epoch (1-based) being run
        self.steps_per_epoch = 0
        self.position: dict | None = None  # inside an epoch: where it stands (saved by a mid-epoch state_dict)
        self.generator: torch.Generator | None = None  # the batch order's generator (set by fit)
        self.hint = "a learning rate too high, or NaN / inf values in the data"  # why a loss diverges

    def state_dict(self) -> dict:
        """Everything a resumed fit needs after the epoch just completed: the model's weights, the step's
        state (optimizers, task weighting), the batch-order generator, torch's / numpy's / Python's global
        random states, the history and every callback's ``state_dict()``. Holds references to live tensors:
        ``torch.save`` it to keep a snapshot.

        Called inside an epoch (from ``on_batch_end``), ``epoch`` is the last COMPLETED one and ``position``
        says where the running one stands: its number, the steps done, the batch-order generator's state at
        its start (the reader replays the epoch's order from it: :func:`epoch_batches`), the loss sum and the
        seconds so far, and the global step."""
        step_state = getattr(self.step, "state_dict", None)
        mid = self.position is not None
        return {"epoch": self.epoch - 1 if mid else self.epoch, "stop": self.stop, "model": self.model.state_dict(),
                "position": dict(self.position) if mid else None,
                "step": step_state() if step_state else None,
                "rng": {"batches": self.generator.get_state() if self.generator is not None else None,
                        "torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                        "python": random.getstate()},
                "history": {"epochs": list(self.history.epochs), "best_epoch": self.history.best_epoch,
                            "best_score": self.history.best_score, "train_seconds": self.history.train_seconds},
                "callbacks": {f"{i}:{type(cb).__name__}": cb.state_dict() for i, cb in enumerate(self.callbacks)
                              if hasattr(cb, "state_dict")}}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (called by :meth:`fit` with ``resume=``, after ``on_fit_start``)."""
        if state.get("model") is not None:  # None: loaded in place already (a sharded resume point)
            self.model.load_state_dict(state["model"])
        if state.get("step") is not None:
            self.step.load_state_dict(state["step"])
        rng = state["rng"]
        if rng.get("batches") is not None and self.generator is not None:
            self.generator.set_state(rng["batches"])
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        h = state["history"]
        self.history.epochs = list(h["epochs"])
        self.history.best_epoch, self.history.best_score = h["best_epoch"], h["best_score"]
        self.history.train_seconds = h["train_seconds"]
        saved = state.get("callbacks", {})
        by_type = {k.split(":", 1)[1]: v for k, v in saved.items()}  # a run placed otherwise (2 -> 1 processes)
        for i, cb in enumerate(self.callbacks):
            key = f"{i}:{type(cb).__name__}"
            if hasattr(cb, "load_state_dict") and (key in saved or type(cb).__name__ in by_type):
                cb.load_state_dict(saved[key] if key in saved else by_type[type(cb).__name__])
        self.epoch, self.stop = state["epoch"], state["stop"]
        self.position = state.get("position")

    def _call(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(self, *args)

    def fit(self, train, epochs: int, batch_size: int, seed: int = 0, threads: int = 0,
            resume: dict | None = None) -> History:
        """Up to ``epochs`` passes over ``train`` in batches of ``batch_size``, shuffled by a generator seeded
        with ``seed`` (torch's global generator is seeded too) -> the :class:`History`. With ``resume`` (a
        :meth:`state_dict` saved after epoch k) the fit continues at epoch k + 1 exactly as if it had never
        stopped. A NaN / inf loss raises :class:`DivergedError` naming the epoch and the step."""
        if threads:
            torch.set_num_threads(threads)
        gen = self.generator = set_seed(seed)
        hist = self.history
        self.epochs, self.rows, self.batch_size, self.stop = epochs, len(train), batch_size, False
        total_time, first, at = 0.0, 1, None
        n_steps = self.steps_per_epoch = -(-len(train) // batch_size)
        try:
            self._call("on_fit_start")
            if resume is not None:
                self.load_state_dict(resume)
                total_time, first = hist.train_seconds, (epochs + 1 if self.stop else self.epoch + 1)
                at, self.position = self.position, None
            for epoch in range(first, epochs + 1):
                self.epoch, self.monitor = epoch, None
                self.model.train()
                self._call("on_epoch_start", epoch)
                t0 = time.perf_counter()
                loss_sum, steps, start, before = 0.0, 0, 0, 0.0
                if at is not None:  # resumed inside this epoch: its batch order replayed, its first steps skipped
                    if (at["epoch"], at.get("batch_size", batch_size)) != (epoch, batch_size):
                        raise DynarecError(f"resume: the saved position (epoch {at['epoch']}, batch size "
                                           f"{at.get('batch_size')}) does not fit this run (epoch {epoch}, batch "
                                           f"size {batch_size}); resume with the interrupted run's settings")
                    gen.set_state(at["batches_rng"])
                    loss_sum, steps, start, before = at["loss_sum"], at["steps"], at["step"], at["seconds"]
                    at = None
                begin = gen.get_state()
                for self.batch, b in enumerate(epoch_batches(train, batch_size, gen, start), start + 1):
                    try:
                        loss = self.step(b)
                    except FloatingPointError as e:
                        raise DivergedError(f"training diverged at epoch {epoch}, step {self.batch} of {n_steps}: "
                                            f"{str(e).split(' (')[0]}; likely cause: {self.hint}") from None
                    if not math.isfinite(loss):
                        raise DivergedError(f"training diverged at epoch {epoch}, step {self.batch} of "
                                            f"{n_steps}: the training loss became {loss}; likely cause: {self.hint}")
                    loss_sum += loss
                    steps += 1
                    self.position = {"epoch": epoch, "step": self.batch, "batches_rng": begin, "loss_sum": loss_sum,
                                     "steps": steps, "seconds": before + time.perf_counter() - t0,
                                     "global_step": (epoch - 1) * n_steps + self.batch, "batch_size": batch_size}
                    self._call("on_batch_end", len(b), loss)
                self.position = None
                dt = before + time.perf_counter() - t0
                total_time += dt
                hist.train_seconds = total_time
                row = {"epoch": epoch, "train_loss": loss_sum / max(steps, 1), "rows_per_s": self.rows / dt,
                       "seconds": dt}
                hist.epochs.append(row)
                self._call("on_epoch_end", row)
                if self.stop:
                    break
            self._call("on_fit_end")
        finally:
            self._call("close")
        hist.train_seconds = total_time
        hist.train_rows_per_s = self.rows * len(hist.epochs) / max(total_time, 1e-9)
        self.model.eval()
        return hist


def epoch_batches(train, batch_size: int, generator: torch.Generator, start: int = 0):
    """The shuffled batches of one epoch of ``train`` from its ``start``-th (0-based), ``generator`` in its
    state at the epoch's start: a table whose ``batches`` takes ``start`` (the streamed reader) replays the
    order without reading the skipped rows; any other one draws the same order and drops the first batches."""
    if not start:
        return train.batches(batch_size, shuffle=True, generator=generator)
    if "start" in inspect.signature(train.batches).parameters:
        return train.batches(batch_size, shuffle=True, generator=generator, start=start)
    return itertools.islice(train.batches(batch_size, shuffle=True, generator=generator), start, None)
