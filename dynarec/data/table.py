"""TensorTable: encoded columns held as whole tensors; batches are index slices (no per-row Python)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterator

import torch

from dynarec.data.schema import Schema


@dataclass
class Batch:
    """One mini-batch. Column order of ``sparse`` follows ``schema.sparse``; ``sequences`` is keyed by
    feature name ([B, L] ids, 0 = padding); ``domain`` holds domain ids (0 = unknown, 1..D-1)."""

    sparse: torch.Tensor  # Long [B, S]
    dense: torch.Tensor  # Float [B, D]
    domain: torch.Tensor  # Long [B]
    labels: dict[str, torch.Tensor] = field(default_factory=dict)  # task -> Float [B]
    sequences: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> Long [B, L]
    user: torch.Tensor | None = None  # Long [B], for gAUC

    def __len__(self) -> int:
        return self.domain.shape[0]

    def to(self, device) -> Batch:
        return Batch(
            self.sparse.to(device), self.dense.to(device), self.domain.to(device),
            {k: v.to(device) for k, v in self.labels.items()},
            {k: v.to(device) for k, v in self.sequences.items()},
            None if self.user is None else self.user.to(device),
        )


class TensorTable:
    """Encoded data of one split as whole tensors, batched by index slicing."""

    def __init__(self, schema: Schema, sparse: torch.Tensor, dense: torch.Tensor,
                 labels: dict[str, torch.Tensor], sequences: dict[str, torch.Tensor] | None = None,
                 user: torch.Tensor | None = None, row: torch.Tensor | None = None):
        self.schema = schema
        self.row = row  # Long [N]: raw row index of each row (prepared folders); never part of a Batch
        self.sparse = sparse.long()
        self.dense = dense.float()
        self.labels = {k: v.float() for k, v in labels.items()}
        self.sequences = {k: v.long() for k, v in (sequences or {}).items()}
        self.user = user
        self.domain_col = [f.name for f in schema.sparse].index(schema.domain)

    def __len__(self) -> int:
        return self.sparse.shape[0]

    @property
    def domain(self) -> torch.Tensor:
        return self.sparse[:, self.domain_col]

    def take(self, idx: torch.Tensor) -> Batch:
        sp = self.sparse[idx]
        return Batch(
            sp, self.dense[idx], sp[:, self.domain_col],
            {k: v[idx] for k, v in self.labels.items()},
            {k: v[idx] for k, v in self.sequences.items()},
            None if self.user is None else self.user[idx],
        )

    def subset(self, idx: torch.Tensor) -> TensorTable:
        b = self.take(idx)
        return TensorTable(self.schema, b.sparse, b.dense, b.labels, b.sequences, b.user,
                           None if self.row is None else self.row[idx])

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        n = len(self)
        if shuffle:
            order = torch.randperm(n, generator=generator)
            for s in range(0, n, batch_size):
                yield self.take(order[s:s + batch_size])
        else:
            for s in range(0, n, batch_size):
                sl = slice(s, s + batch_size)
                sp = self.sparse[sl]
                yield Batch(sp, self.dense[sl], sp[:, self.domain_col],
                            {k: v[sl] for k, v in self.labels.items()},
                            {k: v[sl] for k, v in self.sequences.items()},
                            None if self.user is None else self.user[sl])

    def full(self) -> Batch:
        return self.take(torch.arange(len(self)))

    def fingerprint(self, max_rows: int = 65_536) -> str:
        """A short hex digest of the table's content (every column; an evenly strided sample of at most
        ``max_rows`` rows, so it stays cheap on big tables): two tables with the same row count but other
        values (another split seed, re-encoded data) get different digests."""
        n = len(self)
        idx = torch.arange(0, n, max(1, n // max_rows)) if n else torch.zeros(0, dtype=torch.long)
        h = hashlib.sha256(str(n).encode())
        cols = [self.sparse, self.dense] + [self.labels[k] for k in sorted(self.labels)] \
            + [self.sequences[k] for k in sorted(self.sequences)]
        for c in cols:
            h.update(c[idx].contiguous().numpy().tobytes())
        return h.hexdigest()[:16]
