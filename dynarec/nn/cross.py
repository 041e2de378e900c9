"""Latent Cross (Beutel et al., "Latent Cross: Making Use of Context in Recurrent Recommender Systems",
WSDM 2018; docs/models.md "Latent Cross — the `latent_cross` option of `dnn`"): ``h' = (1 + Σ_c w_c) ⊙ h`` with
``w_c = Emb_c(context_c)``.

Context embeddings are summed (the paper: adding trains more easily than multiplying) and initialised to
0 (dynarec choice), so the layer starts as the identity."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dynarec.tables.collection import TableCollection, borrow, borrowed, table_for
from dynarec.tables.spec import TableSpec

__all__ = ["LatentCross"]


class LatentCross(nn.Module):
    """``forward(h [B, dim], context Long [B, C]) -> (1 + Σ_c Emb_c(context[:, c])) ⊙ h``.

    ``cardinalities[c]`` is the vocabulary size of context field c; one fused table holds all fields.
    ``cross(h, w)`` applies an already summed context vector ``w`` ([B, dim]). ``tables``: the model's table
    collection, which gets the table ``name`` (``None``: a private one); ``legacy``: this layer's module path
    in checkpoints older than the collection; ``features``: the names of the context fields (one per
    cardinality), declared in the table's spec with their row offsets so table consumers (online training's
    fresh rows and resets of evicted ids) can map a field's ids to rows; () declares none."""

    def __init__(self, cardinalities: Sequence[int], dim: int, init_std: float = 0.0,
                 tables: TableCollection | None = None, name: str = "latent_cross", legacy: str | None = None,
                 features: Sequence[str] = ()):
        super().__init__()
        sizes = [max(int(n), 1) for n in cardinalities]
        offs = [0]
        for n in sizes[:-1]:
            offs.append(offs[-1] + n)
        self.register_buffer("offsets", torch.tensor(offs, dtype=torch.long), persistent=False)
        if features and len(features) != len(sizes):
            raise ValueError(f"LatentCross: {len(features)} feature names for {len(sizes)} context fields")
        spec = TableSpec(name, sum(sizes), dim, init_std if init_std > 0 else 0.0, "dense", tuple(features),
                         offsets=tuple(offs) if features else ())
        borrow(self, table_for(tables, self, spec, legacy and legacy + ".table"))

    @property
    def table(self) -> nn.Embedding:
        return borrowed(self)

    def context_vector(self, context: torch.Tensor) -> torch.Tensor:
        """Σ_c w_c: [B, dim]."""
        return self.table(context + self.offsets).sum(1)

    @staticmethod
    def cross(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return (1.0 + w) * h

    def forward(self, h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.cross(h, self.context_vector(context))
