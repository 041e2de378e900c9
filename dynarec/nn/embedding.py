"""FeatureEmbedding: every embedded field of a batch looked up with ONE gather from a fused table.

Runs a :class:`~dynarec.tables.fused.FusedLayout`: tables laid end to end in one physical table owned by
the model's :class:`~dynarec.tables.TableCollection`; each field adds its table's offset to its ids, so
fields naming the same ``table`` share rows. Sequence fields are pooled (mean/sum, padding id 0 masked)
with ``embedding_bag`` on the same weight. Sparse gradients let the trainer put the table in its own
row-wise Adagrad group (Chang et al., PEPNet, KDD 2023, deployment)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dynarec.tables.collection import TableCollection, borrow, borrowed, table_for
from dynarec.tables.fused import FusedLayout


class FeatureEmbedding(nn.Module):
    """``forward(sparse Long [B, S], sequences {name: Long [B, L]}) -> [B, S + n_seq, dim]``.

    Args:
        layout: the fused layout (its ``spec`` is the physical table).
        tables: the model's collection the table is added to (``None``: a private one, for use alone).
        legacy: this layer's module path in checkpoints older than the collection (they still load).
    """

    def __init__(self, layout: FusedLayout, tables: TableCollection | None = None, legacy: str | None = None):
        super().__init__()
        self.layout = layout
        self.embed_dim = layout.spec.dim
        self.table_offsets = layout.table_offsets
        self.table_sizes = layout.table_sizes
        self.field_names = list(layout.field_names)
        self.seq_names = list(layout.seq_names)
        self.seq_pooling = list(layout.seq_pooling)
        self.register_buffer("sparse_offsets", torch.tensor(layout.sparse_offsets, dtype=torch.long), persistent=False)
        self.register_buffer("seq_offsets", torch.tensor(layout.seq_offsets, dtype=torch.long), persistent=False)
        borrow(self, table_for(tables, self, layout.spec, legacy and legacy + ".weight", deferrable=True))

    @property
    def weight(self) -> nn.Embedding:
        """The physical table (owned by the collection)."""
        return borrowed(self)

    @property
    def num_fields(self) -> int:
        return len(self.field_names)

    def forward(self, sparse: torch.Tensor, sequences: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        table = self.weight
        out = table(sparse + self.sparse_offsets)
        if not self.seq_names:
            return out
        pooled = []
        for name, off, pool in zip(self.seq_names, self.seq_offsets, self.seq_pooling):
            ids = sequences[name]
            mask = (ids > 0).to(table.weight.dtype)
            if pool == "mean":
                mask = mask / mask.sum(1, keepdim=True).clamp_min(1.0)
            if torch.compiler.is_exporting():  # embedding + masked sum: the form ONNX runs fast (no Sequence ops)
                pooled.append((F.embedding(ids + off, table.weight) * mask.unsqueeze(-1)).sum(1))
                continue
            pooled.append(F.embedding_bag((ids + off).reshape(-1), table.weight,
                                          torch.arange(0, ids.numel(), ids.shape[1], device=ids.device),
                                          mode="sum", sparse=table.sparse,
                                          per_sample_weights=mask.reshape(-1)))
        return torch.cat([out, torch.stack(pooled, 1)], 1)

    def tokens(self, j: int, ids: torch.Tensor) -> torch.Tensor:
        """The unpooled rows of sequence ``j``'s ids ``[B, L]`` -> ``[B, L, dim]`` (padding ids 0 read their
        table's row 0; callers mask them)."""
        return self.weight(ids + self.seq_offsets[j])

    def table_rows(self, name: str) -> slice:
        """Rows of the fused table that belong to table ``name`` (for tests and export)."""
        return self.layout.table_rows(name)
