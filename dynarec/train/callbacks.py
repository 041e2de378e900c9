"""The loop's callbacks (:class:`dynarec.train.loop.Callback`): validation, early stopping with best-state
reload, a rich progress bar, the per-epoch CSV log and a checkpoint hook."""
from __future__ import annotations

import copy
import csv
import math
import sys
import time
from pathlib import Path
from typing import Callable

from dynarec.errors import ConfigError
from dynarec.metrics import evaluate_model
from dynarec.train.loop import Callback


def monitor_value(metrics: dict, monitor: str, tasks: list[str]) -> tuple[float, bool]:
    """(value, higher_is_better) of ``monitor`` ("auc", "logloss", "gauc", "rmse", optionally ":task").

    Without a task the value is the MEAN over the ``tasks`` that have the metric (``auc`` / ``gauc`` /
    ``logloss``: the binary tasks, ``rmse``: the regression ones; ``auc`` with only regression tasks: their
    mean ``rmse``), so early stopping keeps the epoch best for all tasks, not for the first one. With
    ``:task``, that task's value (``auc`` on a regression task: its ``rmse``).

    Example::

        >>> m = {"auc": {"click": {"all": 0.70}, "buy": {"all": 0.80}}}
        >>> monitor_value(m, "auc", ["click", "buy"])
        (0.75, True)
        >>> monitor_value(m, "auc:buy", ["click", "buy"])
        (0.8, True)
    """
    name, _, task = monitor.partition(":")
    if name not in ("auc", "logloss", "gauc", "rmse"):
        raise ConfigError(f"trainer.monitor: expected auc | logloss | gauc | rmse[:task], got '{monitor}'")
    if task and task not in tasks:
        raise ConfigError(f"trainer.monitor: unknown task '{task}' (tasks: {', '.join(tasks)})")
    chosen = [task] if task else tasks
    vals = [metrics[name][t]["all"] for t in chosen if t in metrics.get(name, {})]
    if not vals and name == "auc":
        name = "rmse"
        vals = [metrics[name][t]["all"] for t in chosen if t in metrics.get(name, {})]
    vals = [float("nan") if v is None else float(v) for v in vals]
    higher = name in ("auc", "gauc")
    return (sum(vals) / len(vals) if vals else float("nan")), higher


def single_class_tasks(table, tasks: list[str], types: dict[str, str]) -> dict[str, float]:
    """{task: its one label value} for the binary tasks whose labels in ``table`` hold a single class."""
    out = {}
    for t in tasks:
        y = table.labels.get(t)
        if types.get(t, "binary") == "binary" and y is not None and len(y) and bool((y == y[0]).all()):
            out[t] = float(y[0])
    return out


class Validation(Callback):
    """After each epoch: metrics on ``valid`` (skipped when it is empty), the monitored value as
    ``valid_<monitor>`` (``valid_auc``: the mean over the tasks, see :func:`monitor_value`) and
    ``valid_<auc|logloss|rmse>_<task>`` in the epoch's row, ``loop.monitor`` set for early stopping and
    ``loop.history.monitor`` naming what is monitored.

    A binary task whose validation labels hold a single class has no AUC / GAUC: at the fit's start a warning
    naming the task goes to stderr; a mean monitor averages the other tasks, and when no task is left (or the
    monitor names that task) the fit monitors ``logloss`` of the same task(s) instead (``monitor`` becomes
    ``logloss:TASK`` or ``logloss``, and so does the log column)."""

    def __init__(self, valid, monitor: str = "auc", eval_batch_size: int = 65536, warn=None):
        self.valid, self.monitor, self.eval_batch_size = valid, monitor, eval_batch_size
        self.warn = warn or (lambda msg: print(msg, file=sys.stderr))
        self.tasks: list[str] | None = None  # the tasks a mean monitor averages (None: all of the model's)

    def on_fit_start(self, loop) -> None:
        loop.history.monitor = self.monitor
        if self.valid is None or not len(self.valid):
            return
        model = loop.model
        types = {t.name: t.type for t in model.schema.tasks}
        name, _, task = self.monitor.partition(":")
        single = single_class_tasks(self.valid, model.tasks, types)
        ranked = name in ("auc", "gauc")
        if not task and ranked:
            binary = [t for t in model.tasks if types.get(t, "binary") == "binary"]
            left = [t for t in binary if t not in single]
            self.tasks = [t for t in model.tasks if t not in single]
        for t, v in single.items():
            if task:
                fallback = t == task and ranked
                how = f"; early stopping monitors logloss:{t} instead of {self.monitor}" if fallback else ""
            else:
                fallback = ranked and not left
                how = ((f"; early stopping monitors logloss instead of {self.monitor}" if fallback else
                        f"; the mean {self.monitor} of early stopping leaves it out") if ranked else "")
            self.warn(f"warning: the validation labels of task '{t}' are all {v:g} (a single class): its AUC is "
                      "undefined" + how)
            if fallback:
                self.monitor, self.tasks = (f"logloss:{t}" if task else "logloss"), None
        loop.history.monitor = self.monitor

    def metrics(self, model) -> dict:
        """The validation metrics of ``model`` (gathered over ranks in the distributed subclass)."""
        return evaluate_model(model, self.valid, self.eval_batch_size)

    def agree(self, score: float) -> float:
        """The monitored value every process acts on (one process: its own)."""
        return score

    def on_epoch_end(self, loop, row: dict) -> None:
        if self.valid is None or not len(self.valid):
            return
        m = self.metrics(loop.model)
        score, higher = monitor_value(m, self.monitor, self.tasks or list(loop.model.tasks))
        score = self.agree(score)
        row["valid_" + self.monitor] = score
        for t in loop.model.tasks:
            for k in ("auc", "logloss", "rmse"):
                if t in m.get(k, {}):
                    row[f"valid_{k}_{t}"] = m[k][t]["all"]
        loop.monitor = (score, higher)
        loop.history.higher = higher


class EarlyStopping(Callback):
    """Keeps a copy of the model's state at the best ``loop.monitor`` (the first epoch always counts as
    the best so far; a NaN never improves), stops after ``patience`` epochs without improvement and reloads
    the best state at the end (``history.best_epoch`` / ``best_score``)."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best, self.bad, self.best_state = None, 0, None

    def state_dict(self) -> dict:
        return {"best": self.best, "bad": self.bad, "best_state": self.best_state}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad, self.best_state = state["best"], state["bad"], state["best_state"]

    def on_epoch_end(self, loop, row: dict) -> None:
        if loop.monitor is not None:
            score, higher = loop.monitor
            best = self.best
            if best is None or (not math.isnan(score) and (score > best if higher else score < best)):
                self.best, self.bad, loop.history.best_epoch = score, 0, loop.epoch
                self.best_state = copy.deepcopy(loop.model.state_dict())
            else:
                self.bad += 1
        if self.bad >= self.patience:
            loop.stop = True

    def on_fit_end(self, loop) -> None:
        if self.best_state is not None:
            loop.model.load_state_dict(self.best_state)
            loop.history.best_score = self.best


class ProgressBar(Callback):
    """One rich progress bar per epoch (on stderr unless ``console`` is given) with rows/s and the running
    loss, then the validation value (named ``monitor``) when there is one."""

    def __init__(self, console=None, monitor: str = "auc"):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("{task.fields[rate]}"),
                            console=console or Console(stderr=True), transient=False)
        self.monitor, self.started = monitor, False

    def on_fit_start(self, loop) -> None:
        self.bar.start()
        self.started = True

    def on_epoch_start(self, loop, epoch: int) -> None:
        self.task = self.bar.add_task(f"epoch {epoch}/{loop.epochs}", total=loop.rows, rate="")
        self.t0, self.loss_sum, self.steps = time.perf_counter(), 0.0, 0

    def on_batch_end(self, loop, rows: int, loss: float) -> None:
        self.loss_sum += loss
        self.steps += 1
        el = time.perf_counter() - self.t0
        self.bar.update(self.task, advance=rows, rate=f"{(self.steps * loop.batch_size) / max(el, 1e-9):,.0f} "
                        f"rows/s loss {self.loss_sum / self.steps:.4f}")

    def on_epoch_end(self, loop, row: dict) -> None:
        if loop.monitor is not None:
            self.bar.update(self.task, rate=f"{row['rows_per_s']:,.0f} rows/s  valid {self.monitor} "
                            f"{loop.monitor[0]:.4f}")

    def close(self, loop) -> None:
        if self.started:
            self.bar.stop()
            self.started = False


class CsvLog(Callback):
    """Appends each epoch's row to ``path`` (a CSV with a header, written when the file is new)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: list[dict] = []

    def on_epoch_end(self, loop, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        self.rows.append(dict(row))

    def state_dict(self) -> dict:
        return {"rows": list(self.rows)}

    def load_state_dict(self, state: dict) -> None:
        """Rewrite the file with the saved rows: a row of an epoch that did not complete is dropped."""
        self.path.unlink(missing_ok=True)
        for row in state["rows"]:
            self.on_epoch_end(None, row)
        self.rows = [dict(r) for r in state["rows"]]


class Checkpointing(Callback):
    """The checkpoint hook: ``save(loop)`` after every ``every``-th epoch and after the last one, once the
    other callbacks have seen the epoch (put it last). ``loop.step.state_dict()`` holds the optimizers'
    state, ``loop.model.state_dict()`` the weights."""

    def __init__(self, save: Callable, every: int = 1):
        if every < 1:
            raise ConfigError(f"checkpoint every: expected an integer >= 1, got {every}")
        self.save, self.every = save, every

    def on_epoch_end(self, loop, row: dict) -> None:
        if loop.epoch % self.every == 0 or loop.epoch == loop.epochs or loop.stop:
            self.save(loop)
