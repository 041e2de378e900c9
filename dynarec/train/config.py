"""The trainer's settings (the ``trainer:`` section of an experiment YAML), read by the step
(:mod:`dynarec.train.step`: optimizers, clipping, task weighting) and the loop (:mod:`dynarec.train.loop`:
epochs, batch size, early stopping, progress)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainerConfig:
    epochs: int = 5
    batch_size: int = 4096
    eval_batch_size: int = 65536
    lr: float = 1e-3  # dense parameters (Adam)
    embedding_lr: float = 0.2  # embedding tables (sparse Adagrad)
    weight_decay: float = 0.0
    embedding_optimizer: str = "adagrad"  # adagrad | sgd | sparse_adam | adam (dense, as FuxiCTR)
    embedding_grad: str = "auto"  # auto | sparse | dense: how the tables' gradient is formed (same update)
    dense_optimizer: str = "adam"  # adam | adamw | sgd
    grad_clip: float = 10.0
    monitor: str = "auc"  # auc | logloss | gauc, on the first task (or "auc:TASK")
    patience: int = 2
    loss_weights: dict[str, float] = field(default_factory=dict)  # for task_weighting: fixed
    task_weighting: str = "equal"  # equal | fixed | uncertainty (Kendall et al., learned log-variances)
    threads: int = 0  # 0 = torch default
    progress: bool = True
    # where and how (dynarec.train.device / dynarec.train.distributed)
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 (autocast, CUDA only)
    distributed: str = "ddp"  # ddp (under torchrun) | torchrec (not built yet)
