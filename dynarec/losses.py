"""Task losses and multi-task weighting.

``task_losses`` gives one loss per task (BCE-with-logits for binary tasks, MSE for regression).
``build_weighting`` returns an ``nn.Module`` combining them into one scalar; its parameters (if any,
e.g. learned log-variances) are trained with the dense optimizer."""
from __future__ import annotations

import math

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


# ------------------------------------------------------------------------------------------------
# Kendall uncertainty weighting (SPEC §2.15) and aleatoric losses (SPEC §2.16)
# ------------------------------------------------------------------------------------------------
class UncertaintyWeighting(nn.Module):
    """Kendall, Gal & Cipolla (CVPR 2018): ``L = Σ_t [c_t e^{−s_t} L_t + ½ s_t]`` with learned
    ``s_t = log σ_t²`` (init 0), ``c_t = ½`` for regression (MSE) and 1 for BCE (SPEC §2.15, keeping the
    ½ factors that some ports drop). ``s_t`` is unconstrained, so σ moves both ways (no clamp: SPEC §4).
    Put its parameters in the dense optimizer WITHOUT weight decay."""

    def __init__(self, tasks: list[str], types: dict[str, str] | None = None):
        super().__init__()
        types = types or {}
        self.tasks = list(tasks)
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)))
        self.register_buffer("coef", torch.tensor([0.5 if types.get(t, "binary") == "regression" else 1.0
                                                   for t in self.tasks]), persistent=False)

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        total = 0.0
        for i, t in enumerate(self.tasks):
            if t in losses:
                s = self.log_vars[i]
                total = total + self.coef[i] * torch.exp(-s) * losses[t] + 0.5 * s
        return total

    def sigma(self) -> dict[str, float]:
        """Current σ_t = exp(s_t / 2) per task."""
        return {t: float(torch.exp(0.5 * s)) for t, s in zip(self.tasks, self.log_vars.detach())}


WEIGHTINGS["uncertainty"] = lambda tasks, types, w: UncertaintyWeighting(tasks, types)


def heteroscedastic_loss(mean: torch.Tensor, log_var: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Kendall & Gal (2017) regression: ``mean(½ e^{−s} (y − ŷ)² + ½ s)``, s = log σ̂² per row. At s = 0 it
    is ½·MSE."""
    return (0.5 * torch.exp(-log_var) * (target - mean) ** 2 + 0.5 * log_var).mean()


def sampled_logit_bce(logit: torch.Tensor, log_var: torch.Tensor, target: torch.Tensor, samples: int = 10,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Logit sampling for a binary task (Kendall & Gal 2017): ``x̂_τ = f + σ ε_τ`` (σ = e^{s/2}),
    ``L = −mean_i [logsumexp_τ(−BCE(x̂_τ, y_i)) − log T]``. As σ → 0 it equals BCE."""
    eps = torch.randn((samples,) + tuple(logit.shape), generator=generator, device=logit.device, dtype=logit.dtype)
    x = logit.unsqueeze(0) + torch.exp(0.5 * log_var).unsqueeze(0) * eps
    bce = F.binary_cross_entropy_with_logits(x, target.unsqueeze(0).expand_as(x), reduction="none")
    return -(torch.logsumexp(-bce, 0) - math.log(samples)).mean()


def model_task_losses(model: nn.Module, outputs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor],
                      types: dict[str, str]) -> dict[str, torch.Tensor]:
    """Per-task losses for ``model``'s last forward: the model's ``task_loss`` hook (declared on BaseModel:
    :func:`task_losses` by default; e.g. aleatoric heads override it with heteroscedastic / logit-sampling
    losses). A module without the hook (not a dynarec model) gets :func:`task_losses`."""
    hook = getattr(model, "task_loss", None)
    if callable(hook):
        return hook(outputs, labels, types)
    return task_losses(outputs, labels, types)
