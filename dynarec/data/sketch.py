"""Mergeable statistics of the out-of-core fit pass (``outofcore.py``): each is updated chunk by chunk and
two of them merge, so the fit of a file of any size needs memory bounded by its distinct values, not rows.

* :class:`ValueCounts`: exact value -> count of a categorical table (vocabulary + ``min_count``).
* :class:`Moments`: count, mean, M2 (Chan et al.'s pairwise update), min, max of a numeric column.
* :class:`QuantileSketch`: exact distinct value -> count while at most ``cap`` distinct values were seen
  (quantiles then equal ``np.quantile``'s ``linear`` method bit for bit); beyond, it compacts to ``cap // 2``
  equal-weight points and tracks a guaranteed bound ``rank_error`` on the rank error of every quantile
  (each compaction of total weight W to m points moves any rank by at most W / m; the bounds add up).

Example::

    s = QuantileSketch(cap=1 << 16)
    for chunk in chunks:
        s.add(chunk)
    s.quantile([0.25, 0.5, 0.75])
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class ValueCounts:
    """Exact counts of the non-null values of a string column, merged chunk by chunk (pyarrow group-by)."""

    def __init__(self):
        self.parts: list[pa.Table] = []
        self.pending = 0

    def add(self, values: pa.Array) -> None:
        vc = pc.value_counts(pc.drop_null(values))
        if len(vc):
            self.parts.append(pa.table({"v": vc.field("values").cast(pa.string()), "c": vc.field("counts")}))
            self.pending += len(vc)
        if len(self.parts) > 16:
            self._merge()

    def merge(self, other: "ValueCounts") -> None:
        """Add ``other``'s counts (exact: the counts of both scans together)."""
        self.parts += other.parts
        self.pending += other.pending
        if len(self.parts) > 16:
            self._merge()

    def _merge(self) -> None:
        if len(self.parts) > 1:
            t = pa.concat_tables(self.parts).group_by("v").aggregate([("c", "sum")])
            self.parts = [t.rename_columns(["v", "c"])]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(values as an object array of str, int64 counts)."""
        self._merge()
        if not self.parts:
            return np.zeros(0, object), np.zeros(0, np.int64)
        t = self.parts[0]
        return t.column("v").to_numpy(zero_copy_only=False), t.column("c").to_numpy().astype(np.int64)


class Moments:
    """Count, mean, sum of squared deviations (M2), min and max of the non-NaN values seen."""

    def __init__(self, log: bool = False):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.min, self.max = np.inf, -np.inf
        self.log: list[tuple] | None = [] if log else None  # each chunk's statistics (for :meth:`replay`)

    def add(self, x: np.ndarray) -> None:
        x = x[~np.isnan(x)]
        if not x.size:
            return
        mb = float(x.mean())
        stats = (x.size, mb, float(((x - mb) ** 2).sum()), float(x.min()), float(x.max()))
        self.fold(*stats)
        if self.log is not None:
            self.log.append(stats)

    def fold(self, nb: int, mb: float, m2b: float, lo: float, hi: float) -> None:
        """Chan's update with one chunk's count, mean, M2, min and max."""
        n = self.n + nb
        d = mb - self.mean
        self.mean += d * nb / n
        self.m2 += m2b + d * d * self.n * nb / n
        self.n = n
        self.min, self.max = min(self.min, lo), max(self.max, hi)

    def replay(self, other: "Moments") -> None:
        """Fold ``other``'s logged chunks in order: the result is bit for bit that of adding its chunks here."""
        for stats in other.log or []:
            self.fold(*stats)

    @property
    def std(self) -> float:
        """Population standard deviation (``np.std``'s default, as the in-memory fit)."""
        return float(np.sqrt(self.m2 / self.n)) if self.n else 0.0


def _lerp(a, b, t):
    """numpy's linear interpolation (``numpy.lib._function_base_impl._lerp``), for bit-equal quantiles."""
    diff = b - a
    out = np.asarray(a + diff * t)
    np.subtract(b, diff * (1 - t), out=out, where=t >= 0.5)
    return out


class QuantileSketch:
    """Distinct values with their weights (see the module docstring)."""

    def __init__(self, cap: int = 1 << 20):
        self.cap = max(int(cap), 16)
        self.values = np.zeros(0, np.float64)
        self.weights = np.zeros(0, np.float64)
        self.rank_error = 0.0  # bound on |rank(x) here - rank(x) in the data|, in rows
        self.exact = True
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []  # chunks not merged yet (amortised merging)
        self.pending_n = 0

    @property
    def total(self) -> float:
        self.settle()
        return float(self.weights.sum())

    def settle(self) -> None:
        """Merge the pending chunks (``values`` / ``weights`` / ``exact`` are current after it)."""
        if self.pending:
            v = np.concatenate([p[0] for p in self.pending])
            w = np.concatenate([p[1] for p in self.pending])
            self.pending, self.pending_n = [], 0
            self._absorb(v, w)

    def add(self, x: np.ndarray, w: np.ndarray | None = None) -> None:
        x = np.asarray(x, np.float64)
        keep = ~np.isnan(x)
        x = x[keep]
        if not x.size:
            return
        if w is None:
            v, c = np.unique(x, return_counts=True)
            w = c.astype(np.float64)
        else:
            v, w = x, np.asarray(w, np.float64)[keep]
        self.pending.append((v, w))
        self.pending_n += len(v)
        if self.pending_n >= self.cap // 8:  # merged at a fixed size: a merge holds ~cap * 1.125 pairs, not 2 * cap
            self.settle()

    def merge(self, other: QuantileSketch) -> None:
        other.settle()
        self.rank_error += other.rank_error
        self.exact &= other.exact
        self.pending.append((other.values, other.weights))
        self.settle()

    def _absorb(self, v: np.ndarray, w: np.ndarray) -> None:
        allv = np.concatenate([self.values, v])
        allw = np.concatenate([self.weights, w])
        u, inv = np.unique(allv, return_inverse=True)
        self.values, self.weights = u, np.bincount(inv, weights=allw, minlength=len(u))
        if len(self.values) > self.cap:
            self._compact(self.cap // 2)

    def _compact(self, m: int) -> None:
        W = self.total
        cum = np.cumsum(self.weights)
        targets = (np.arange(m) + 0.5) * (W / m)
        pos = np.minimum(np.searchsorted(cum, targets, side="left"), len(cum) - 1)
        u, inv = np.unique(self.values[pos], return_inverse=True)
        self.values, self.weights = u, np.bincount(inv, minlength=len(u)) * (W / m)
        self.rank_error += W / m
        self.exact = False

    def quantile(self, qs) -> np.ndarray:
        """Quantiles ``qs`` (in [0, 1]) with ``np.quantile``'s default (linear) method over the values seen
        (exactly its result while :attr:`exact`)."""
        self.settle()
        qs = np.asarray(qs, np.float64)
        if not len(self.values):
            return np.zeros(0)
        n = self.total
        cum = np.cumsum(self.weights)  # sorted values; value k covers 0-based positions [cum[k-1], cum[k])
        virtual = qs * (n - 1)
        lo = np.floor(virtual)
        frac = virtual - lo
        ilo = np.minimum(np.searchsorted(cum, lo, side="right"), len(cum) - 1)
        ihi = np.minimum(np.searchsorted(cum, np.minimum(lo + 1, n - 1), side="right"), len(cum) - 1)
        return _lerp(self.values[ilo], self.values[ihi], frac)

    def summary(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted distinct values, their weights)."""
        self.settle()
        return self.values, self.weights

    def rank(self, x: float) -> float:
        """Number of values < ``x`` (within ``rank_error``)."""
        self.settle()
        return float(self.weights[self.values < x].sum())
