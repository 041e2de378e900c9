"""Towers of a two-tower retrieval model on plain tensors: embedded features [B, in_dim] -> vectors [B, dim].

* :class:`Tower` — an :class:`dynarec.nn.mlp.MLP` whose last layer is linear (the embedding).
* :class:`GatedTower` — the same stack as a :class:`dynarec.nn.gates.GatedMLP` whose layer inputs are
  rescaled by Gate NUs conditioned on a domain vector (PEPNet's PPNet-style gates, Chang et al., KDD 2023),
  for multi-domain retrieval; every gate starts at exactly 1, so it starts as a :class:`Tower`.
* :class:`TwoTower` — a query tower and an item tower; the score is left to
  :func:`dynarec.retrieval.score.prepare` (dot or cosine with a temperature).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dynarec.nn.gates import GatedMLP, LayerGates
from dynarec.nn.mlp import MLP

__all__ = ["Tower", "GatedTower", "TwoTower"]


class Tower(nn.Module):
    """``MLP(in_dim, hidden) -> Linear(dim)``.

    Args:
        in_dim: width of the embedded features. hidden: hidden widths. dim: output vector width k.
        act, dropout, batch_norm: as :class:`MLP`."""

    def __init__(self, in_dim: int, hidden: Sequence[int], dim: int, act: str = "relu", dropout: float = 0.0,
                 batch_norm: bool = False):
        super().__init__()
        self.mlp = MLP(in_dim, list(hidden), out_dim=dim, act=act, dropout=dropout, batch_norm=batch_norm)
        self.dim = dim

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, in_dim] -> [B, dim] (``condition`` is ignored: same call as :class:`GatedTower`)."""
        return self.mlp(x)


class GatedTower(nn.Module):
    """Tower whose every layer input (the output layer's included) is multiplied by a Gate NU of the
    condition: ``H_{l+1} = f((δ_l(c) ⊙ H_l) W_l + b_l)`` (PEPNet, KDD 2023, PPNet gates).

    Args:
        in_dim, hidden, dim, act, dropout, batch_norm: as :class:`Tower`. condition_dim: width of the
        condition vector c (e.g. a domain embedding). gamma: gate range (0, γ). gate_hidden: Gate NU width."""

    def __init__(self, in_dim: int, hidden: Sequence[int], dim: int, condition_dim: int, act: str = "relu",
                 dropout: float = 0.0, batch_norm: bool = False, gamma: float = 2.0, gate_hidden: int | None = None):
        super().__init__()
        self.mlp = GatedMLP(in_dim, list(hidden), out_dim=dim, act=act, dropout=dropout, batch_norm=batch_norm,
                            position="input")
        self.gates = LayerGates(condition_dim, self.mlp.gate_dims, hidden_dim=gate_hidden, gamma=gamma)
        self.dim = dim

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, in_dim], condition: [B, condition_dim] -> [B, dim]."""
        if condition is None:
            raise ValueError("GatedTower needs a condition tensor [B, condition_dim]")
        return self.mlp(x, self.gates(condition))


class TwoTower(nn.Module):
    """A query tower and an item tower with the same output width.

    ``forward(query_x, item_x, condition=None) -> (u [B, dim], v [M, dim])``; :meth:`query` and :meth:`item`
    run one side (item vectors of the whole corpus for evaluation and the index)."""

    def __init__(self, query_tower: nn.Module, item_tower: nn.Module):
        super().__init__()
        if query_tower.dim != item_tower.dim:
            raise ValueError(f"tower widths differ: query {query_tower.dim}, item {item_tower.dim}")
        self.query_tower, self.item_tower = query_tower, item_tower

    def query(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        return self.query_tower(x, condition)

    def item(self, x: torch.Tensor) -> torch.Tensor:
        return self.item_tower(x)

    def forward(self, query_x: torch.Tensor, item_x: torch.Tensor, condition: torch.Tensor | None = None):
        return self.query(query_x, condition), self.item(item_x)
