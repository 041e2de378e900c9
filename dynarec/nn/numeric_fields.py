"""Numeric-embedding fields of a schema: the dense features with ``embedding: ple | plr`` become extra
embedded fields [B, n, d] (Gorishniy, Rubachev, Babenko, "On Embeddings for Numerical Features in Tabular
Deep Learning", NeurIPS 2022: PLE-Q + Linear + ReLU, Sec. 3.2 eq. 1; PLR, Sec. 3.3 eq. 2). The values are
read from the ``dense`` input (so exported programs keep the same inputs); the parameters are dense
parameters (trained with the dense optimizer), not id tables."""
from __future__ import annotations

import torch
from torch import nn

from dynarec.data.schema import PLR_SIGMA, Schema
from dynarec.errors import ConfigError
from dynarec.nn.numeric import PeriodicEmbedding, PiecewiseLinearEmbedding


def dense_column_index(schema: Schema) -> dict[str, int]:
    """Column of each dense feature's value in ``batch.dense`` (missing indicators follow their value)."""
    out, j = {}, 0
    for f in schema.dense:
        out[f.name] = j
        j += 2 if f.missing_indicator else 1
    return out


class NumericFields(nn.Module):
    """The numeric-embedding fields of ``schema`` in schema order.

    Args:
        schema: a prepared schema (``ple`` features carry ``ple_edges`` fitted on train).
        d: embedding width (the models' ``embed_dim``).
    Shapes: ``forward(dense Float [B, D]) -> Float [B, n, d]``, n = ``len(schema.numeric_embedded)``.
    """

    def __init__(self, schema: Schema, d: int):
        super().__init__()
        feats = schema.numeric_embedded
        col = dense_column_index(schema)
        ple = [f for f in feats if f.numeric_embedding == "ple"]
        plr = [f for f in feats if f.numeric_embedding == "plr"]
        for f in ple:
            if f.ple_edges is None:
                raise ConfigError(f"feature '{f.name}': embedding: ple needs bin edges fitted on the train split "
                                  f"(ple_edges); prepare the data with this schema first (dynarec data prepare)")
        self.names = [f.name for f in ple + plr]
        self.register_buffer("ple_cols", torch.tensor([col[f.name] for f in ple], dtype=torch.long))
        self.register_buffer("plr_cols", torch.tensor([col[f.name] for f in plr], dtype=torch.long))
        order = {f.name: i for i, f in enumerate(feats)}
        self.register_buffer("order", torch.tensor([self.names.index(f.name) for f in feats], dtype=torch.long))
        self.ple = PiecewiseLinearEmbedding([torch.tensor(f.ple_edges) for f in ple], d, activation=True) \
            if ple else None
        self.plr = None
        if plr:
            self.plr = PeriodicEmbedding(len(plr), d, n_frequencies=16, sigma=1.0)
            with torch.no_grad():  # per-feature sigma: c_j ~ N(0, sigma_j^2)
                self.plr.frequencies.mul_(torch.tensor([f.sigma or PLR_SIGMA for f in plr]).unsqueeze(1))
        self.num_fields = len(order)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.ple is not None:
            parts.append(self.ple(dense[:, self.ple_cols]))
        if self.plr is not None:
            parts.append(self.plr(dense[:, self.plr_cols]))
        return torch.cat(parts, 1)[:, self.order]


def numeric_fields(schema: Schema, d: int) -> NumericFields | None:
    """:class:`NumericFields` of ``schema``, or None when it has no numeric-embedded feature."""
    return NumericFields(schema, d) if schema.numeric_embedded else None
