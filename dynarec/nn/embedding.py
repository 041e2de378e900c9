"""FeatureEmbedding: every sparse field of a batch embedded with ONE gather from a fused table.

Tables are laid end to end in one ``nn.Embedding(sparse=True)``; each field adds its table's offset
to its ids, so fields naming the same ``table`` share rows. Sequence fields are pooled (mean/sum,
padding id 0 masked) with ``embedding_bag`` on the same fused weight. Sparse gradients let the
trainer put embeddings in their own Adagrad group (SPEC §2.18, DESIGN "Performance principles").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dynarec.data.schema import Schema


class FeatureEmbedding(nn.Module):
    def __init__(self, schema: Schema, embed_dim: int, sparse_grad: bool = True, init_std: float = 1e-2):
        super().__init__()
        self.embed_dim = embed_dim
        sizes: dict[str, int] = {}
        for f in schema.fields:
            sizes[f.table] = max(sizes.get(f.table, 0), max(f.vocab_size, 1))
        offsets, total = {}, 0
        for t, n in sizes.items():
            offsets[t] = total
            total += n
        self.table_offsets = offsets
        self.table_sizes = sizes
        self.field_names = [f.name for f in schema.fields]
        self.seq_names = [f.name for f in schema.sequences]
        self.seq_pooling = [f.pooling for f in schema.sequences]
        self.register_buffer("sparse_offsets", torch.tensor([offsets[f.table] for f in schema.sparse], dtype=torch.long),
                             persistent=False)
        self.register_buffer("seq_offsets", torch.tensor([offsets[f.table] for f in schema.sequences], dtype=torch.long),
                             persistent=False)
        self.weight = nn.Embedding(total, embed_dim, sparse=sparse_grad)
        nn.init.normal_(self.weight.weight, std=init_std)

    @property
    def num_fields(self) -> int:
        return len(self.field_names)

    def forward(self, sparse: torch.Tensor, sequences: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """sparse: Long [B, S] -> embeddings [B, S + n_seq, d] (sparse fields, then pooled sequences)."""
        out = self.weight(sparse + self.sparse_offsets)
        if not self.seq_names:
            return out
        pooled = []
        for name, off, pool in zip(self.seq_names, self.seq_offsets, self.seq_pooling):
            ids = sequences[name]
            mask = (ids > 0).float()
            if pool == "mean":
                mask = mask / mask.sum(1, keepdim=True).clamp_min(1.0)
            pooled.append(F.embedding_bag((ids + off).reshape(-1), self.weight.weight,
                                          torch.arange(0, ids.numel(), ids.shape[1], device=ids.device),
                                          mode="sum", sparse=self.weight.sparse,
                                          per_sample_weights=mask.reshape(-1)))
        return torch.cat([out, torch.stack(pooled, 1)], 1)

    def table_rows(self, name: str) -> slice:
        """Rows of the fused table that belong to table ``name`` (for tests and export)."""
        o = self.table_offsets[name]
        return slice(o, o + self.table_sizes[name])
