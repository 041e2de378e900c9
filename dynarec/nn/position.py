"""Shallow position-bias tower (Zhao et al., "Recommending What Video to Watch Next", RecSys 2019; docs/models.md
"Shallow position-bias tower").

A small tower on position ids (optionally crossed with other context ids such as device) whose logit is
ADDED to the main model's task logits in training, so the position (selection) bias is explained by the
shallow tower and not learnt by the main tower. In training each row's position is replaced by the
missing id (0) with probability ``p`` (default 0.1); at inference the position is always missing, so the
tower contributes only its "position unknown" bias (a constant, or a per-device constant) and the
ranking comes from the main tower.

Plain tensors in, plain tensors out: ``forward(position Long[B], extra Long[B, k] | None) -> [B, T]``.
"""
from __future__ import annotations

import torch
from torch import nn

from dynarec.errors import ConfigError
from dynarec.nn.mlp import MLP
from dynarec.tables.collection import TableCollection, borrow, borrowed, table_for
from dynarec.tables.spec import TableSpec


def drop_positions(pos: torch.Tensor, p: float, training: bool, missing_id: int = 0,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Training: each id replaced by ``missing_id`` with probability ``p``. Eval: every id is missing."""
    if not training:
        return torch.full_like(pos, missing_id)
    if p <= 0:
        return pos
    u = torch.rand(pos.shape, generator=generator, device=pos.device)
    return torch.where(u < p, torch.full_like(pos, missing_id), pos)


class PositionBiasTower(nn.Module):
    """Shallow tower: ``bias = MLP(emb(position) ⊕ emb(position × extra_j) ...)`` -> ``num_outputs`` logits.

    num_positions: vocabulary of the position ids (id 0 = missing/unknown).
    extra_sizes: vocabularies of extra ids crossed with position (e.g. device); each cross gets its own
    table of ``num_positions · size`` rows, so a missing position still leaves a per-device bias.
    hidden: ``[]`` (default) is a linear shallow tower. ``dropout``: position dropout rate in training.
    tables: the model's table collection, which gets the tables ``<name>`` and ``<name>_x<j>`` (``None``: a
    private one). legacy: this layer's module path in checkpoints older than the collection."""

    def __init__(self, num_positions: int, num_outputs: int, extra_sizes: list[int] | None = None,
                 embed_dim: int = 4, hidden: list[int] | None = None, dropout: float = 0.1, missing_id: int = 0,
                 tables: TableCollection | None = None, name: str = "position", legacy: str | None = None):
        super().__init__()
        if num_positions < 2:
            raise ConfigError(f"position tower: position vocabulary must have >= 2 ids (0 = missing), got {num_positions}")
        if not 0 <= dropout < 1:
            raise ConfigError(f"position_dropout: expected 0 <= p < 1, got {dropout}")
        self.num_positions = num_positions
        self.extra_sizes = list(extra_sizes or [])
        self.p = dropout
        self.missing_id = missing_id
        # torch's default N(0, 1) init, dense gradients (trained by the dense optimizer)
        made = [table_for(tables, self, TableSpec(name, num_positions, embed_dim), legacy and legacy + ".pos_emb")]
        for j, s in enumerate(self.extra_sizes):
            made.append(table_for(tables, self, TableSpec(f"{name}_x{j}", num_positions * s, embed_dim),
                                  legacy and f"{legacy}.cross_emb.{j}"))
        borrow(self, tuple(made))
        self.mlp = MLP(embed_dim * (1 + len(self.extra_sizes)), list(hidden or []), num_outputs)

    @property
    def pos_emb(self) -> nn.Embedding:
        return borrowed(self)[0]

    @property
    def cross_emb(self) -> list[nn.Embedding]:
        return list(borrowed(self)[1:])

    def forward(self, position: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        pos = drop_positions(position.clamp(0, self.num_positions - 1), self.p, self.training, self.missing_id)
        parts = [self.pos_emb(pos)]
        for j, (emb, s) in enumerate(zip(self.cross_emb, self.extra_sizes)):
            e = extra[:, j].clamp(0, s - 1)
            parts.append(emb(pos * s + e))
        return self.mlp(torch.cat(parts, -1))
