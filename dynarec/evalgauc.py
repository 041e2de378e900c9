"""Exact gAUC over a stream that does not fit: the rows' (user, domain, labels, scores) spilled to ``k`` Parquet
files by a hash of the user, so each file holds every row of its users; each file is then read alone and its
:func:`dynarec.metrics.gauc_parts` sums (Σ n_u AUC_u, Σ n_u) added up per task x domain. gAUC is a weighted
mean over users, so these sums give the in-memory :func:`dynarec.metrics.gauc` up to the order of the
float64 additions (relative error below ``users · 2^-52``). Memory: one partition at a time (``k`` is chosen
from the row count so that a partition's rows fit the budget) plus the write buffers (about half the budget
over all partitions; each flush is its own small file, so no writer per partition is held open).

Example::

    sp = GaucSpill(rows=10**9, tasks=["click"], budget_bytes=2 << 30)
    for user, dom, labels, probs in batches:
        sp.add(user, dom, labels, probs)
    sp.gauc(name)  # {"click": {"all": 0.71, "domain=a": 0.70, ...}}
"""
from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dynarec.metrics import gauc_parts

GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads consecutive user ids over the partitions


def spill_row_bytes(n_tasks: int) -> int:
    """Bytes of one spilled row read back (user, domain: int64; per task a float32 label and a float32 score),
    times 8 for what ``gauc_parts`` allocates while it sorts one partition (lexsort order, ranks, masks)."""
    return 8 * (16 + 8 * n_tasks)


class GaucSpill:
    """Rows spilled by user hash into ``k`` files of a temporary folder; :meth:`gauc` reads them back."""

    def __init__(self, rows: int, tasks: list[str], budget_bytes: float, folder: str | Path | None = None):
        self.tasks = tasks
        self.k = max(1, math.ceil(rows * spill_row_bytes(len(tasks)) / max(budget_bytes, 1)))
        self.dir = Path(tempfile.mkdtemp(prefix=".dynarec-gauc-", dir=folder))
        self.flush_rows = max(4096, int(budget_bytes // (4 * self.k * 16 + 1)))
        self.buf: list[list[dict]] = [[] for _ in range(self.k)]
        self.held = [0] * self.k
        self.files = [0] * self.k  # files written per partition (closed at once: no writer held open per partition)

    def add(self, user: np.ndarray, domain: np.ndarray, labels: dict[str, np.ndarray],
            probs: dict[str, np.ndarray]) -> None:
        part = ((np.asarray(user).astype(np.uint64) * GOLDEN) % np.uint64(self.k)).astype(np.int64)
        cols = {"u": np.asarray(user, np.int64), "d": np.asarray(domain, np.int64),
                **{f"y{i}": np.asarray(labels[t], np.float32) for i, t in enumerate(self.tasks)},
                **{f"p{i}": np.asarray(probs[t], np.float32) for i, t in enumerate(self.tasks)}}
        for j in np.unique(part).tolist() if self.k > 1 else [0]:
            m = part == j
            self.buf[j].append({c: v[m] for c, v in cols.items()})
            self.held[j] += int(m.sum())
            if self.held[j] >= self.flush_rows:
                self._flush(j)

    def _flush(self, j: int) -> None:
        if not self.buf[j]:
            return
        t = pa.table({c: np.concatenate([b[c] for b in self.buf[j]]) for c in self.buf[j][0]})
        pq.write_table(t, self.dir / f"{j:05d}-{self.files[j]:05d}.parquet")
        self.files[j] += 1
        self.buf[j], self.held[j] = [], 0

    def gauc(self, name) -> dict[str, dict[str, float | None]]:
        """task -> {slice: gAUC} (``name(domain id)`` names a domain slice; "all" is every row); the spill
        folder is removed."""
        try:
            for j in range(self.k):
                self._flush(j)
            sums: dict[str, dict[str, list[float]]] = {t: {} for t in self.tasks}
            for j in range(self.k):
                if not self.files[j]:
                    continue
                tab = pa.concat_tables([pq.read_table(self.dir / f"{j:05d}-{i:05d}.parquet")
                                        for i in range(self.files[j])])
                c = {n: tab.column(n).to_numpy() for n in tab.column_names}
                masks = {"all": slice(None), **{name(d): c["d"] == d for d in np.unique(c["d"]).tolist()}}
                for i, t in enumerate(self.tasks):
                    for key, m in masks.items():
                        num, den = gauc_parts(c[f"y{i}"][m], c[f"p{i}"][m].astype(np.float64), c["u"][m])
                        s = sums[t].setdefault(key, [0.0, 0.0])
                        s[0] += num
                        s[1] += den
            return {t: {k: (v[0] / v[1] if v[1] else None) for k, v in s.items()} for t, s in sums.items()}
        finally:
            self.close()

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
