"""Numeric (dense) features: missing values filled in raw units, then ``clip``, ``log1p`` and scaling
(standard / min-max), or bucketisation into ids of an embedded field (train quantiles or given
boundaries) -- the usual CTR treatment of numeric columns. Every statistic is fitted on the train split."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dynarec.data.schema import PLE_BINS
from dynarec.errors import DataError


def quantile_edges(x: np.ndarray, bins: int) -> list[float]:
    """PLE edges b_0 < ... < b_T: the distinct ``bins + 1`` quantiles (0..1) of ``x`` (non-missing values);
    a constant or empty column gets the one bin [c - 1, c + 1]."""
    e = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1))) if x.size else np.zeros(0)
    if e.size < 2:
        c = float(e[0]) if e.size else 0.0
        e = np.array([c - 1.0, c + 1.0])
    return [float(b) for b in e]


FLOAT32_MAX = float(np.finfo(np.float32).max)  # the model's numbers: a larger value overflows to inf


def raw_steps(x: np.ndarray, f, where: str) -> np.ndarray:
    """Fill (raw units), clip, log1p of raw values ``x`` (float64 [N], NaN = missing): the steps before any
    fitted statistic. A value the model's float32 cannot hold after them (beyond +-3.4e38, e.g. 1e308) is a
    DataError naming the column, the raw value and its row: refused, not clipped, since any cap would be a
    guess (``clip: [low, high]`` in raw units or ``transform: log1p`` say what the user means)."""
    raw = x
    x = x.copy()
    if f.fill_value is not None:
        x[np.isnan(x)] = f.fill_value
    if f.clip is not None:
        lo, hi = f.clip
        x = np.clip(x, -np.inf if lo is None else lo, np.inf if hi is None else hi)
    if f.transform == "log1p" and not f.bucketised:
        bad = x <= -1
        if bad.any():
            raise DataError(f"{where}: dense column '{f.name}': transform log1p needs values > -1, got "
                            f"{x[bad].min():g} (clip: [0, null] or a fill_value >= 0 may be what you want)")
        x = np.log1p(x)
    if not f.bucketised:
        big = np.flatnonzero(np.abs(x) > FLOAT32_MAX)
        if len(big):
            raise DataError(f"{where}: dense column '{f.name}' has {len(big)} value(s) beyond the float32 range of the "
                            f"model (+-3.4e38), the first {raw[big[0]]:g} at row {big[0]}; clip it in raw units "
                            f"(clip: [low, high]), use transform: log1p, or add the token to null_values")
    return x


@dataclass
class NumericEncoder:
    """Fitted state of one dense feature.

    ``edges``: bucket boundaries (value ``x`` gets id ``1 + #{edges <= x}``; 0 = missing).
    ``ple_edges``: PLE bin edges of an ``embedding: ple`` feature, train quantiles of the values the model
    receives (after fill, clip, log1p and scaling).
    ``legacy``: encoders.json written before fills were in raw units: the fill is applied after scaling
    (as it was then), so old checkpoints encode raw files exactly as before."""

    mean: float = 0.0
    std: float = 1.0
    min: float = 0.0
    max: float = 1.0
    edges: list[float] | None = None
    ple_edges: list[float] | None = None
    legacy: bool = False

    @property
    def num_buckets(self) -> int:
        return len(self.edges) + 1

    def _pre(self, x: np.ndarray, f, where: str) -> np.ndarray:
        """Fill (raw units), clip, log1p: the steps before any fitted statistic."""
        return raw_steps(x, f, where)

    def fit(self, x: np.ndarray, f, where: str = "train") -> NumericEncoder:
        """``x``: float64 [N] raw train values, NaN = missing."""
        if self.legacy:
            raise ValueError("legacy encoders are only loaded, never fitted")
        x = self._pre(x, f, where)
        ok = x[~np.isnan(x)]
        if f.bucketised:
            if f.boundaries is not None:
                self.edges = [float(b) for b in f.boundaries]
            else:
                qs = np.quantile(ok, np.linspace(0, 1, f.buckets + 1)[1:-1]) if ok.size else np.zeros(0)
                self.edges = [float(b) for b in np.unique(qs)]
        elif f.scaling == "standard" and ok.size:
            self.mean, self.std = float(ok.mean()), float(ok.std() or 1.0)
        elif f.scaling == "minmax" and ok.size:
            self.min, self.max = float(ok.min()), float(ok.max())
        if f.numeric_embedding == "ple":
            self.ple_edges = quantile_edges(self._scale(ok, f), f.bins or PLE_BINS)
        return self

    def _scale(self, x: np.ndarray, f) -> np.ndarray:
        if f.scaling == "standard":
            return (x - self.mean) / self.std
        if f.scaling == "minmax":
            return (x - self.min) / ((self.max - self.min) or 1.0)
        return x

    def transform(self, x: np.ndarray, f, where: str) -> np.ndarray:
        """Raw float64 [N] -> float32 [N] (scaled values) or int32 [N] (bucket ids, bucketised features)."""
        nan = np.isnan(x)
        if self.legacy:
            if f.scaling == "standard":
                x = (x - self.mean) / self.std
            x[nan] = 0.0 if f.fill_value is None else f.fill_value
            return x.astype(np.float32)
        x = self._pre(x, f, where)
        if self.edges is not None:
            ids = np.searchsorted(np.asarray(self.edges), x, side="right") + 1
            ids[np.isnan(x)] = 0
            return ids.astype(np.int32)
        x = self._scale(x, f)
        x[np.isnan(x)] = 0.0  # no fill_value: 0 after scaling (the train mean when standardised)
        return x.astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mean": self.mean, "std": self.std}
        if not self.legacy:
            d.update(min=self.min, max=self.max, edges=self.edges, raw_fill=True)
            if self.ple_edges is not None:
                d["ple_edges"] = self.ple_edges
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NumericEncoder:
        d = dict(d)
        legacy = not d.pop("raw_fill", False)
        return cls(**d, legacy=legacy)

