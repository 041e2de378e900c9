"""Scores of a two-tower model: ``h = ⟨u', v'⟩`` with ``u' = n(u)/τ``, ``v' = n(v)``.

``metric="dot"`` leaves the vectors as they are (n = identity); ``"cosine"`` L2-normalises both (n(x) = x/‖x‖).
The temperature τ divides the query side only, so every loss, the Gramians and the index see one plain
inner product (Yi et al., RecSys 2019, normalise the embeddings and divide by a temperature).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dynarec.errors import ConfigError

METRICS = ("dot", "cosine")

__all__ = ["METRICS", "check_metric", "prepare", "score_matrix"]


def check_metric(metric: str, temperature: float = 1.0) -> None:
    if metric not in METRICS:
        raise ConfigError(f"model.score: expected one of {', '.join(METRICS)}, got '{metric}'")
    if not temperature > 0:
        raise ConfigError(f"model.temperature: expected a number > 0, got {temperature}")


def prepare(u: torch.Tensor, v: torch.Tensor, metric: str = "dot", temperature: float = 1.0):
    """Transform query vectors ``u`` [B, k] and item vectors ``v`` [M, k] so that ``u' @ v'.T`` is the score."""
    check_metric(metric, temperature)
    if metric == "cosine":
        u, v = F.normalize(u, dim=-1), F.normalize(v, dim=-1)
    return u / temperature, v


def score_matrix(u: torch.Tensor, v: torch.Tensor, metric: str = "dot", temperature: float = 1.0) -> torch.Tensor:
    """All scores [B, M] between queries ``u`` [B, k] and items ``v`` [M, k]."""
    u, v = prepare(u, v, metric, temperature)
    return u @ v.T
