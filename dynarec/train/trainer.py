"""The one trainer: epochs over index-sliced batches, two optimizer groups, gradient clipping, early
stopping on a validation metric, best-state reload, per-epoch CSV log, progress bar with samples/s."""
from __future__ import annotations

import copy
import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dynarec.config import TrainerConfig
from dynarec.errors import ConfigError
from dynarec.losses import build_weighting, model_task_losses
from dynarec.metrics import evaluate_model
from dynarec.train.optim import build_optimizers


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("nan")
    train_rows_per_s: float = 0.0
    train_seconds: float = 0.0


def monitor_value(metrics: dict, monitor: str, tasks: list[str]) -> tuple[float, bool]:
    """(value, higher_is_better) of ``monitor`` ("auc", "logloss", "gauc", optionally ":task")."""
    name, _, task = monitor.partition(":")
    task = task or tasks[0]
    if name not in ("auc", "logloss", "gauc", "rmse"):
        raise ConfigError(f"trainer.monitor: expected auc | logloss | gauc | rmse[:task], got '{monitor}'")
    if task not in tasks:
        raise ConfigError(f"trainer.monitor: unknown task '{task}' (tasks: {', '.join(tasks)})")
    v = metrics.get(name, {}).get(task, {}).get("all")
    if v is None and name == "auc" and "rmse" in metrics and task in metrics["rmse"]:
        name, v = "rmse", metrics["rmse"][task]["all"]
    higher = name in ("auc", "gauc")
    return (float("nan") if v is None else float(v)), higher


def set_seed(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


class Trainer:
    def __init__(self, model, cfg: TrainerConfig | None = None, seed: int = 0, log_path: str | Path | None = None,
                 task_weighting: str | None = None, console=None):
        self.model = model
        self.cfg = cfg or TrainerConfig()
        self.seed = seed
        self.log_path = Path(log_path) if log_path else None
        types = {t.name: t.type for t in model.schema.tasks}
        self.task_types = types
        self.weighting = build_weighting(task_weighting or self.cfg.task_weighting, model.tasks, types,
                                         self.cfg.loss_weights)
        self.optimizers, self.dense_params = build_optimizers(model, self.cfg, list(self.weighting.parameters()))
        self.console = console

    def _step(self, batch) -> float:
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)
        out = self.model(batch)
        losses = model_task_losses(self.model, out, batch.labels, self.task_types)
        loss = self.weighting(losses)
        extra = self.model.extra_loss()
        if extra is not None:
            loss = loss + extra
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} (lower trainer.lr or check the data)")
        loss.backward()
        if self.cfg.grad_clip and self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.dense_params, self.cfg.grad_clip)
        for o in self.optimizers:
            o.step()
        return loss.item()

    def fit(self, train, valid=None) -> History:
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        gen = set_seed(self.seed)
        hist = History()
        best_state, best, higher, bad = None, None, True, 0
        n = len(train)
        total_rows, total_time = 0, 0.0
        progress = _progress(cfg.progress, self.console)
        with progress:
            for epoch in range(1, cfg.epochs + 1):
                self.model.train()
                task = progress.add_task(f"epoch {epoch}/{cfg.epochs}", total=n, rate="")
                t0 = time.perf_counter()
                loss_sum, steps = 0.0, 0
                for b in train.batches(cfg.batch_size, shuffle=True, generator=gen):
                    loss_sum += self._step(b)
                    steps += 1
                    el = time.perf_counter() - t0
                    progress.update(task, advance=len(b), rate=f"{(steps * cfg.batch_size) / max(el, 1e-9):,.0f} rows/s "
                                    f"loss {loss_sum / steps:.4f}")
                dt = time.perf_counter() - t0
                total_rows += n
                total_time += dt
                row = {"epoch": epoch, "train_loss": loss_sum / max(steps, 1), "rows_per_s": n / dt, "seconds": dt}
                if valid is not None and len(valid):
                    m = evaluate_model(self.model, valid, cfg.eval_batch_size)
                    score, higher = monitor_value(m, cfg.monitor, self.model.tasks)
                    row["valid_" + cfg.monitor] = score
                    for t in self.model.tasks:
                        for k in ("auc", "logloss", "rmse"):
                            if t in m.get(k, {}):
                                row[f"valid_{k}_{t}"] = m[k][t]["all"]
                    improved = best is None or (not math.isnan(score) and (score > best if higher else score < best))
                    if improved:
                        best, bad, hist.best_epoch = score, 0, epoch
                        best_state = copy.deepcopy(self.model.state_dict())
                    else:
                        bad += 1
                    progress.update(task, rate=f"{n / dt:,.0f} rows/s  valid {cfg.monitor} {score:.4f}")
                hist.epochs.append(row)
                self._log(row)
                if valid is not None and bad >= cfg.patience:
                    break
        if best_state is not None:
            self.model.load_state_dict(best_state)  # reload the best epoch
            hist.best_score = best
        hist.train_rows_per_s = total_rows / max(total_time, 1e-9)
        hist.train_seconds = total_time
        self.model.eval()
        return hist

    def _log(self, row: dict) -> None:
        if not self.log_path:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.log_path.exists()
        with open(self.log_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)


class _NullProgress:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def add_task(self, *a, **k):
        return 0

    def update(self, *a, **k):
        pass


def _progress(enabled: bool, console=None):
    if not enabled:
        return _NullProgress()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[rate]}"), console=console or Console(stderr=True), transient=False)
