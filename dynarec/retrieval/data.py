"""Interaction sets for retrieval on plain tensors: a CSR of items per row (seen items, test positives) and
the two retrieval splits (leave-last-out per user by timestamp, random)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dynarec.data.split import leave_last_out  # the split lives with the others (data/split.py)
from dynarec.errors import DataError

__all__ = ["CSR", "leave_last_out", "random_split"]


@dataclass
class CSR:
    """Item sets per row: row r holds ``indices[indptr[r]:indptr[r + 1]]`` (sorted, no repeats).

    Args:
        indptr: Long [R + 1]. indices: Long [nnz]."""

    indptr: torch.Tensor
    indices: torch.Tensor

    @classmethod
    def from_pairs(cls, rows: torch.Tensor, cols: torch.Tensor, num_rows: int) -> "CSR":
        """CSR of the (row, col) pairs (Long [N] each); repeated pairs are kept once."""
        rows, cols = rows.long().view(-1), cols.long().view(-1)
        if len(rows) != len(cols):
            raise DataError(f"CSR: rows and cols differ in length ({len(rows)} vs {len(cols)})")
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= num_rows):
            raise DataError(f"CSR: row ids must lie in [0, {num_rows})")
        if len(cols):
            m = int(cols.max()) + 1
            key = torch.unique(rows * m + cols)  # sorted by (row, col), repeats dropped
            rows, cols = key // m, key % m
        counts = torch.bincount(rows, minlength=num_rows)
        indptr = torch.zeros(num_rows + 1, dtype=torch.long)
        indptr[1:] = torch.cumsum(counts, 0)
        return cls(indptr, cols)

    @property
    def num_rows(self) -> int:
        return len(self.indptr) - 1

    def row(self, r: int) -> torch.Tensor:
        return self.indices[self.indptr[r]:self.indptr[r + 1]]

    def lengths(self) -> torch.Tensor:
        return self.indptr[1:] - self.indptr[:-1]

    def pairs(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (position in ``rows``, item) pairs of the selected rows (Long [P] each), vectorised."""
        rows = rows.long().cpu()
        start, n = self.indptr[rows], self.lengths()[rows]
        pos = torch.repeat_interleave(torch.arange(len(rows)), n)
        offset = torch.arange(int(n.sum())) - torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
        return pos, self.indices[start[pos] + offset]


def random_split(n: int, test_fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random split of n interactions. Returns (train_mask, test_mask), Bool [n] each."""
    if not 0 < test_fraction < 1:
        raise DataError(f"random split: test fraction must be in (0, 1), got {test_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    test = torch.zeros(n, dtype=torch.bool)
    test[perm[: int(round(n * test_fraction))]] = True
    return ~test, test
