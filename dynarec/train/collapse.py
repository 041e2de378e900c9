"""Collapse detection: a run whose loss stays finite but whose model learned nothing (a learning rate far too
high saturates every output: ``--set trainer.lr=1e6`` gives AUC 0.5 on every task) stops with one line naming
the cause and the learning rates (:class:`CollapsedError`, exit code 2 on the command line), so it never
reaches ``model.pt``.

Two signs, checked by :class:`CollapseGuard` (a :class:`~dynarec.train.loop.Callback` put after validation
and early stopping):

* **the training loss far above its start**: an epoch's mean training loss above ``FAR`` (10) times the loss of
  the fit's first step. A healthy fit's epoch mean stays below its starting loss; a fit 10x above it has left
  every region a gradient step could bring back (checked after every epoch, so the run stops at once);
* **the kept model no better than a constant and worse than a coin**: at the kept (best) epoch, every binary
  task of the validation split has an AUC within ``Z`` = 3 standard errors of 0.5 (the Mann-Whitney null:
  ``sqrt((n+ + n- + 1) / (12 n+ n-))``, Hanley & McNeil 1982) AND a logloss above ``2 ln 2`` — twice the
  logloss of predicting 0.5 for every row, above the base-rate logloss ``H(p) <= ln 2`` of any constant: a
  model that ranks no better than chance and puts on average (geometric mean) less than 1/4 of probability on
  the true class has saturated outputs. A model that merely learned little (one short epoch, a handful of
  steps) stays near its initial ``~ln 2`` and is not called collapsed.

Tasks whose validation labels hold one class carry no evidence and are left out; regression tasks are left out
of the second sign (an untrained model's RMSE depends on the labels' mean, so no bound separates "not learned
yet" from "collapsed"); the first sign covers them.

Example::

    >>> from dynarec.train.collapse import auc_noise
    >>> round(auc_noise(100, 300), 4)   # one standard error of a random scorer's AUC
    0.0334
"""
from __future__ import annotations

import math

from dynarec.errors import DynarecError
from dynarec.train.callbacks import single_class_tasks
from dynarec.train.loop import Callback

FAR = 10.0  # an epoch's mean training loss above FAR x the first step's: collapsed
Z = 3.0  # standard errors of the null AUC within which a task is "no better than constant"
SATURATED = 2 * math.log(2)  # a logloss above twice a coin's: under 1/4 of probability on the true class


class CollapsedError(DynarecError):
    """The training collapsed with a finite loss: one line naming the sign and the likely cause (the lr)."""


def auc_noise(n_pos: int, n_neg: int) -> float:
    """The standard error of the AUC of a scorer independent of the labels (the Mann-Whitney U null)."""
    return math.sqrt((n_pos + n_neg + 1) / (12.0 * n_pos * n_neg))


def constant_baselines(valid, tasks: list[str], types: dict[str, str]) -> dict[str, dict]:
    """{binary task: ``{"auc_bound", "logloss"}``}: 0.5 + Z standard errors of a random scorer's AUC on
    ``valid``, and the base-rate logloss of its labels (what the best constant scores; reported in the
    message). Single-class and regression tasks are left out."""
    single = single_class_tasks(valid, tasks, types)
    out = {}
    for t in tasks:
        y = valid.labels.get(t)
        if y is None or not len(y) or t in single or types.get(t, "binary") != "binary":
            continue
        n_pos = int((y.double() > 0.5).sum())
        p = n_pos / len(y)
        out[t] = {"auc_bound": 0.5 + Z * auc_noise(n_pos, len(y) - n_pos),
                  "logloss": -(p * math.log(p) + (1 - p) * math.log(1 - p))}
    return out


def no_better_than_constant(row: dict, base: dict[str, dict]) -> str | None:
    """A short reason when every task of ``base`` in the epoch ``row`` (``valid_auc_<task>``,
    ``valid_logloss_<task>``) ranks within noise of chance with a logloss above ``SATURATED``, else ``None``."""
    if not base:
        return None
    parts = []
    for t, b in base.items():
        auc, ll = row.get(f"valid_auc_{t}"), row.get(f"valid_logloss_{t}")
        ranks = auc is None or not auc == auc or auc <= b["auc_bound"]
        saturated = ll is None or not ll == ll or ll > SATURATED
        if not (ranks and saturated):
            return None
        parts.append(f"{t}: AUC {_f(auc)} <= {b['auc_bound']:.3f}, logloss {_f(ll)} against the base rate's "
                     f"{b['logloss']:.3f}")
    return "; ".join(parts[:2]) + (f" (and {len(parts) - 2} more task(s))" if len(parts) > 2 else "")


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.4g}"


class CollapseGuard(Callback):
    """Raises :class:`CollapsedError` when the fit collapsed (see the module's docstring). ``valid``: the
    validation table (``None``: only the training-loss sign is checked). The message ends with the loop's
    hint (``trainer.lr`` / ``trainer.embedding_lr`` too high). Put it after the validation and early
    stopping callbacks and before any checkpoint writer."""

    def __init__(self, valid=None):
        self.valid, self.start, self.base = valid, None, {}

    def state_dict(self) -> dict:
        return {"start": self.start}

    def load_state_dict(self, state: dict) -> None:
        self.start = state["start"]

    def on_fit_start(self, loop) -> None:
        if self.valid is not None and len(self.valid):
            self.base = constant_baselines(self.valid, list(loop.model.tasks),
                                           {t.name: t.type for t in loop.model.schema.tasks})

    def on_batch_end(self, loop, rows: int, loss: float) -> None:
        if self.start is None:
            self.start = loss

    def on_epoch_end(self, loop, row: dict) -> None:
        loss = row.get("train_loss")
        if self.start is not None and self.start > 0 and loss is not None and loss > FAR * self.start:
            raise CollapsedError(f"training collapsed at epoch {loop.epoch}: the mean training loss {loss:.4g} is "
                                 f"{loss / self.start:.3g}x the first step's {self.start:.4g}; likely cause: "
                                 f"{loop.hint}")

    def on_fit_end(self, loop) -> None:
        hist = loop.history
        if not hist.epochs or not self.base:
            return
        best = hist.epochs[hist.best_epoch - 1] if 1 <= hist.best_epoch <= len(hist.epochs) else hist.epochs[-1]
        why = no_better_than_constant(best, self.base)
        if why is not None:
            raise CollapsedError(f"training collapsed: at the kept epoch {best['epoch']} the model ranks no better "
                                 f"than chance and its outputs are saturated on the validation split ({why}); "
                                 f"likely cause: {loop.hint}")
