"""Per-task heads: the one helper every model uses to build one head (or tower) per task."""
from __future__ import annotations

from torch import nn

from dynarec.nn.mlp import MLP


def task_heads(in_dim: int | dict[str, int], tasks: list[str], hidden: list[int] | None = None, act: str = "relu",
               dropout: float = 0.0, out: int = 1) -> nn.ModuleDict:
    """One head per task (in task order): ``nn.Linear(in_dim, out)`` with ``hidden=None``, else an MLP tower
    ``in_dim -> hidden -> out`` (``out=2``: mean and log-variance of the aleatoric heads).

    Args:
        in_dim: input width, or a width per task. tasks: task names. hidden: tower widths (``None``: linear).
    """
    dims = in_dim if isinstance(in_dim, dict) else {t: in_dim for t in tasks}
    if hidden is None:
        return nn.ModuleDict({t: nn.Linear(dims[t], out) for t in tasks})
    return nn.ModuleDict({t: MLP(dims[t], list(hidden), out, act, dropout) for t in tasks})
