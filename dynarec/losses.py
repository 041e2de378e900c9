"""Task losses and multi-task weighting.

``task_losses`` gives one loss per task (BCE-with-logits for binary tasks, MSE for regression).
``build_weighting`` returns an ``nn.Module`` combining them into one scalar; its parameters (if any,
e.g. learned log-variances) are trained with the dense optimizer."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def task_losses(outputs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor],
                types: dict[str, str]) -> dict[str, torch.Tensor]:
    out = {}
    for t, logit in outputs.items():
        if types.get(t, "binary") == "binary":
            out[t] = F.binary_cross_entropy_with_logits(logit, labels[t])
        else:
            out[t] = F.mse_loss(logit, labels[t])
    return out


class FixedWeighting(nn.Module):
    """Σ_t w_t L_t with fixed weights (default 1: equal weighting)."""

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None):
        super().__init__()
        self.weights = {t: float((weights or {}).get(t, 1.0)) for t in tasks}

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weights[t] * l for t, l in losses.items())


WEIGHTINGS = {"equal": lambda tasks, types, w: FixedWeighting(tasks),
              "fixed": lambda tasks, types, w: FixedWeighting(tasks, w)}


def build_weighting(name: str, tasks: list[str], types: dict[str, str], weights: dict[str, float] | None = None) -> nn.Module:
    from dynarec.errors import ConfigError

    if name not in WEIGHTINGS:
        raise ConfigError(f"trainer.task_weighting: unknown '{name}' (valid: {', '.join(WEIGHTINGS)})")
    return WEIGHTINGS[name](tasks, types, weights)
