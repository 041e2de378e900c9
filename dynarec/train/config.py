"""The trainer's settings (the ``trainer:`` section of an experiment YAML), read by the step
(:mod:`dynarec.train.step`: optimizers, clipping, task weighting) and the loop (:mod:`dynarec.train.loop`:
epochs, batch size, early stopping, progress).

Every value is checked where it is declared (:func:`dynarec.checks.rule`); :func:`check_trainer` adds the
checks that need the model's tasks (``monitor``'s task, ``loss_weights``' tasks) and runs before any
training. ``grad_clip: 0`` (or ``null``) turns clipping off."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from dynarec.checks import rule, validate
from dynarec.errors import ConfigError

EMBEDDING_OPTIMIZERS = ("adagrad", "sgd", "sparse_adam", "adam")
EMBEDDING_GRADS = ("auto", "sparse", "dense")
DENSE_OPTIMIZERS = ("adam", "adamw", "sgd")
TASK_WEIGHTINGS = ("equal", "fixed", "uncertainty")
MONITORS = ("auc", "logloss", "gauc", "rmse")
DISTRIBUTED = ("ddp", "torchrec")
SHARDINGS = ("auto", "table_wise", "column_wise", "data_parallel", "row_wise")  # TorchRec's sharding types
CHECKPOINTS = ("auto", "file", "sharded")
_POS = rule(min=0, min_open=True)


@dataclass
class TrainerConfig:
    # a cap: training stops earlier when the validation monitor has not improved for ``patience`` epochs
    # (30 / 3: the measured recipe, docs/benchmarks.md "Defaults are the measured recipe"; was 5 / 2)
    epochs: int = field(default=30, metadata=rule(min=1))
    batch_size: int = field(default=4096, metadata=rule(min=1))
    eval_batch_size: int = field(default=65536, metadata=rule(min=1))
    lr: float = field(default=1e-3, metadata=_POS)  # dense parameters (Adam)
    embedding_lr: float = field(default=0.2, metadata=_POS)  # embedding tables (sparse Adagrad)
    weight_decay: float = field(default=0.0, metadata=rule(min=0))
    # adagrad | sgd | sparse_adam | adam (dense, as FuxiCTR)
    embedding_optimizer: str = field(default="adagrad", metadata=rule(choices=EMBEDDING_OPTIMIZERS))
    # auto | sparse | dense: how the tables' gradient is formed (same update)
    embedding_grad: str = field(default="auto", metadata=rule(choices=EMBEDDING_GRADS))
    dense_optimizer: str = field(default="adam", metadata=rule(choices=DENSE_OPTIMIZERS))
    grad_clip: float | None = field(default=10.0, metadata=rule(min=0))  # 0 or null: no clipping
    # auc | logloss | gauc | rmse: the MEAN over the tasks that have it (early stopping keeps the epoch best for
    # all tasks; valid_<monitor> in log.csv); "auc:TASK" watches one task
    monitor: str = "auc"
    patience: int = field(default=3, metadata=rule(min=0))
    loss_weights: dict[str, float] = field(default_factory=dict)  # only with task_weighting: fixed
    # equal | fixed | uncertainty (Kendall et al., learned log-variances)
    task_weighting: str = field(default="equal", metadata=rule(choices=TASK_WEIGHTINGS))
    threads: int = field(default=0, metadata=rule(min=0))  # 0 = torch default
    progress: bool = True
    # where and how (dynarec.train.device / dynarec.train.distributed)
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 (autocast: CUDA, or a CPU with AMX-BF16 / AVX512-BF16; else fp32 + a note)
    compile: bool = False  # torch.compile (inductor) the model for training and evaluation (train/precision.py)
    # ddp (under torchrun) | torchrec (feature tables sharded by TorchRec, the rest under DDP)
    distributed: str = field(default="ddp", metadata=rule(choices=DISTRIBUTED))
    # with torchrec: table_wise | column_wise | data_parallel | row_wise (CUDA) | auto (TorchRec's planner)
    sharding: str = field(default="auto", metadata=rule(choices=SHARDINGS))
    # auto | file (model.pt) | sharded (torchrec: each rank writes its shards; dynarec.train.sharded_checkpoint)
    checkpoint: str = field(default="auto", metadata=rule(choices=CHECKPOINTS))
    # the resume point (last.pt) also every N steps inside an epoch (0: at epoch ends only); a run with an out
    # folder only (dynarec.train.resume)
    checkpoint_every_steps: int = field(default=0, metadata=rule(min=0))

    def __post_init__(self):
        name = str(self.monitor).partition(":")[0]
        if not isinstance(self.monitor, str) or name not in MONITORS:
            raise ConfigError(f"trainer.monitor: expected {' | '.join(MONITORS)} (optionally ':TASK'), "
                              f"got {self.monitor!r}")
        if not isinstance(self.loss_weights, dict):
            raise ConfigError(f"trainer.loss_weights: expected a mapping task -> weight, got {self.loss_weights!r}")
        for t, w in self.loss_weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise ConfigError(f"trainer.loss_weights.{t}: expected a finite number >= 0, got {w!r}")


def check_trainer(cfg: TrainerConfig, tasks: list[str], task_weighting: str | None = None,
                  types: dict[str, str] | None = None, has_user: bool = True) -> None:
    """All of ``cfg``'s value rules plus the ones that need the model's ``tasks``: the monitored task exists
    and has the monitored metric (``rmse`` for regression tasks, ``logloss`` / ``gauc`` for binary ones,
    ``gauc`` only with a user column; ``auc`` on a regression task monitors its ``rmse``), ``loss_weights``
    names existing tasks and is only given with ``task_weighting: fixed`` (where it has an effect).
    ``task_weighting`` is the effective weighting when it overrides ``cfg.task_weighting``; ``types``:
    task -> binary | regression."""
    validate(cfg, "trainer")
    cfg.__post_init__()
    name, _, task = cfg.monitor.partition(":")
    if task and task not in tasks:
        raise ConfigError(f"trainer.monitor: unknown task '{task}' in '{cfg.monitor}' (tasks: {', '.join(tasks)})")
    kinds = {(types or {}).get(t, "binary") for t in ([task] if task else tasks)}
    need = "regression" if name == "rmse" else "binary"
    if name != "auc" and need not in kinds:
        kind = kinds.pop()
        where = f"task '{task}'" if task else f"tasks ({', '.join(tasks)}, all {kind})"
        raise ConfigError(f"trainer.monitor: '{cfg.monitor}' does not exist for the {kind} {where} "
                          f"(use {'rmse' if kind == 'regression' else 'auc | logloss | gauc'})")
    if name == "gauc" and not has_user:
        raise ConfigError(f"trainer.monitor: '{cfg.monitor}' needs a user column (schema 'user'), and the schema "
                          "has none")
    weighting = task_weighting or cfg.task_weighting
    if weighting not in TASK_WEIGHTINGS:
        raise ConfigError(f"trainer.task_weighting: expected one of {' | '.join(TASK_WEIGHTINGS)}, got {weighting!r}")
    for t in cfg.loss_weights:
        if t not in tasks:
            raise ConfigError(f"trainer.loss_weights: unknown task '{t}' (tasks: {', '.join(tasks)})")
    if cfg.loss_weights and weighting != "fixed":
        raise ConfigError(f"trainer.loss_weights: only used with trainer.task_weighting: fixed, and the task "
                          f"weighting is '{weighting}'; set task_weighting: fixed or remove loss_weights")
