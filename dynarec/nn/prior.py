"""PriorEmbedding: gate-only embedding tables for prior id features (PPNet's uid / pid / aid tables,
as described in Chang et al., PEPNet, KDD 2023: the gate input ``E_g(priors)``)."""
from __future__ import annotations

import torch
from torch import nn

from dynarec.tables.collection import TableCollection, borrow, borrowed, table_for
from dynarec.tables.spec import TableSpec


class PriorEmbedding(nn.Module):
    """``forward(sparse Long [B, S]) -> [B, len(cols)·dim]``: the ids of sparse columns ``cols`` embedded in
    one table of their own. Columns naming the same logical table share rows. Dense gradients (the table
    is small, gate_emb_dim wide), so any optimizer can train it.

    Args:
        cols: positions of the prior features in the sparse id matrix.
        tables: ``(logical table, vocabulary size)`` per column (the first size of a shared table is used).
        dim: row width. init_std: N(0, init_std²) initialisation.
        collection: the model's table collection (``None``: a private one). name: the table's name there.
        legacy: this layer's module path in checkpoints older than the collection.
    """

    def __init__(self, cols: list[int], tables: list[tuple[str, int]], dim: int, init_std: float = 1e-2,
                 collection: TableCollection | None = None, name: str = "prior", features: tuple[str, ...] = (),
                 legacy: str | None = None):
        super().__init__()
        offsets, total = {}, 0
        for t, n in tables:
            if t not in offsets:
                offsets[t] = total
                total += max(n, 1)
        self.register_buffer("cols", torch.tensor(cols, dtype=torch.long), persistent=False)
        self.register_buffer("offsets", torch.tensor([offsets[t] for t, _ in tables], dtype=torch.long),
                             persistent=False)
        spec = TableSpec(name, total, dim, init_std, "dense", tuple(features),
                         offsets=tuple(offsets[t] for t, _ in tables) if features else ())
        borrow(self, table_for(collection, self, spec, legacy and legacy + ".table"))
        self.out_dim = len(cols) * dim

    @property
    def table(self) -> nn.Embedding:
        return borrowed(self)

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        return self.table(sparse[:, self.cols] + self.offsets).flatten(1)
