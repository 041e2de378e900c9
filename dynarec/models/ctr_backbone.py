"""Shared skeleton of the APG paper's base CTR models (wdl, deepfm, dcn, dcnv2, pnn, fibinet, autoint).

``forward``: embeddings -> the model's interaction part(s) and its deep MLP -> one linear logit per task
(+ a per-task first-order "wide" logit where the model has one, + shared terms such as FM's). The deep MLP
is built by :meth:`CTRBackbone.build_deep` and run by :meth:`CTRBackbone.deep`, the two hooks the ``apg_*``
wrappers (dynarec/models/apg.py) override to turn the MLP into APG layers. Multi-task: the single-task
papers' logit becomes one head per task on the same representation (dynarec choice)."""
from __future__ import annotations

import torch
from torch import nn

from dynarec.models.base import BaseModel
from dynarec.models.heads import task_heads
from dynarec.nn.embedding import FeatureEmbedding
from dynarec.nn.mlp import MLP
from dynarec.tables.fused import fused_layout, schema_fields


class FirstOrder(nn.Module):
    """First-order (wide / linear) term per task: ``Σ_fields w_{t, id} + dense · w_t``, from a fused
    embedding table of width T (one weight per id and task) and a linear map of the dense features.

    Args:
        fields: the embedded fields (:func:`dynarec.tables.fused.schema_fields`). dense_dim: width of the
        dense features. num_tasks: T. tables: the model's collection (gets the table ``first_order``, in the
        ``embedding`` optimizer group). legacy: this layer's module path in older checkpoints.
    ``forward(batch) -> [B, T]``."""

    def __init__(self, fields, dense_dim: int, num_tasks: int, tables=None, legacy: str | None = None):
        super().__init__()
        self.table = FeatureEmbedding(fused_layout("first_order", fields, num_tasks, 1e-4, "embedding"), tables,
                                      legacy and legacy + ".table")
        self.dense = nn.Linear(dense_dim, num_tasks) if dense_dim else None
        if self.dense is None:
            self.bias = nn.Parameter(torch.zeros(num_tasks))

    def forward(self, batch) -> torch.Tensor:
        out = self.table(batch.sparse, batch.sequences).sum(1)
        return out + (self.dense(batch.dense) if self.dense is not None else self.bias)


class CTRBackbone(BaseModel):
    """Base of the CTR backbones; subclasses build their parts and implement :meth:`represent`."""

    def build_first_order(self, attr: str) -> FirstOrder:
        """The per-task first-order term, set as ``self.<attr>`` (its table in ``self.tables``)."""
        layer = FirstOrder(schema_fields(self.schema), self.schema.dense_dim, len(self.tasks), self.tables, attr)
        setattr(self, attr, layer)
        return layer

    def build_deep(self, in_dim: int, hidden) -> nn.Module:
        c = self.config
        return MLP(in_dim, list(hidden), None, c.activation, c.dropout, c.batch_norm)

    def deep(self, x: torch.Tensor, batch, emb: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)

    def build_heads(self, in_dim: int) -> None:
        self.heads = task_heads(in_dim, self.tasks)

    def represent(self, batch, emb) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(representation fed to the task heads [B, h], extra logits [B, T] or [B, 1] or None)."""
        raise NotImplementedError

    def compute(self, batch):
        emb = self.embed(batch)
        h, extra = self.represent(batch, emb)
        out = {}
        for i, (t, head) in enumerate(self.heads.items()):
            y = head(h).squeeze(-1)
            if extra is not None:
                y = y + extra[:, i if extra.shape[1] > 1 else 0]
            out[t] = y
        return out
