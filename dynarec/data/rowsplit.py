"""Splits decided row by row, without holding the table (the out-of-core prepare, ``outofcore.py``).

* ``random`` / ``stratified``: a uniform number from a hash of (raw row index, seed) cut by the fractions
  (the label plays no part, so every class is split by the fractions in expectation; the in-memory
  ``random`` split draws a permutation instead, which needs the row count and a permutation of it);
* ``group``: the same from a hash of (the key's text, seed), so no key is in two splits;
* ``temporal``: a cut at the fit pass's timestamp quantiles; rows at a cut value go to the earlier split
  in raw row order until its quota is full (the in-memory stable sort), so with exact quantiles the rows
  of each split equal the in-memory split's;
* ``column``: the split column's value.

Example::

    code = random_split(np.arange(100), (0.8, 0.1, 0.1), seed=0)   # 0 train, 1 valid, 2 test
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dynarec.data.read import as_text, values_seen
from dynarec.data.split import COLUMN_VALUES, SPLITS
from dynarec.errors import DataError

_M1, _M2, _GOLD = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 with good avalanche."""
    with np.errstate(over="ignore"):
        x = np.asarray(x, np.uint64).copy()
        x ^= x >> np.uint64(30)
        x *= _M1
        x ^= x >> np.uint64(27)
        x *= _M2
        x ^= x >> np.uint64(31)
    return x


def _unit(h: np.ndarray) -> np.ndarray:
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _cut(u: np.ndarray, fractions) -> np.ndarray:
    a = fractions[0]
    return np.searchsorted(np.array([a, a + fractions[1]]), u, side="right").astype(np.int8)


def random_split(rows: np.ndarray, fractions, seed: int) -> np.ndarray:
    """Split code (0 train, 1 valid, 2 test) of each raw row index."""
    with np.errstate(over="ignore"):
        h = mix64(np.asarray(rows, np.uint64) * _GOLD + mix64(np.array([seed], np.uint64))[0])
    return _cut(_unit(h), fractions)


def text_hash(col: pa.Array) -> np.ndarray:
    """A 64-bit hash of each value's text (``as_text``; null hashes as its own value), vectorised over the
    Arrow string buffers: sum of (byte + 1) times a per-position odd multiplier, then mixed."""
    s = pc.fill_null(as_text(col), "\x00null").cast(pa.large_string())
    if isinstance(s, pa.ChunkedArray):
        s = s.combine_chunks()
    offs = np.frombuffer(s.buffers()[1], np.int64, len(s) + 1, s.offset * 8)
    data = np.frombuffer(s.buffers()[2], np.uint8) if s.buffers()[2] is not None else np.zeros(0, np.uint8)
    data = data[offs[0]:offs[-1]].astype(np.uint64)
    offs = offs - offs[0]
    lens = np.diff(offs)
    pos = np.arange(len(data), dtype=np.int64) - np.repeat(offs[:-1], lens)
    mult = mix64(np.arange(1, 257, dtype=np.uint64)) | np.uint64(1)
    with np.errstate(over="ignore"):
        terms = (data + np.uint64(1)) * mult[pos % 256] + np.uint64(pos // 256)
        h = np.zeros(len(s), np.uint64)
        nz = lens > 0
        if nz.any():
            h[nz] = np.add.reduceat(terms, offs[:-1][nz])
        return mix64(h + lens.astype(np.uint64) * _GOLD)


def group_split(col: pa.Array, fractions, seed: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = mix64(text_hash(col) ^ mix64(np.array([seed + 1], np.uint64))[0])
    return _cut(_unit(h), fractions)


def column_split(col: pa.Array, name: str, where: str) -> np.ndarray:
    v = as_text(col)
    keys = list(COLUMN_VALUES)
    known = pc.fill_null(pc.is_in(v, value_set=pa.array(keys)), False)
    if not pc.all(known).as_py():
        bad = pc.filter(v, pc.invert(known))
        raise DataError(f"{where}: split column '{name}' must hold train / valid / test; values seen: "
                        f"{values_seen(bad) if len(bad) - bad.null_count else 'null'}")
    idx = pc.index_in(v, value_set=pa.array(keys)).to_numpy(zero_copy_only=False)
    canon = np.array([SPLITS.index(COLUMN_VALUES[k]) for k in keys], np.int8)
    return canon[np.asarray(idx, np.int64)]


class TemporalCut:
    """Rows with a time below ``t_a`` are train, from ``t_a`` to below ``t_b`` valid, the rest test; of the
    rows at exactly ``t_a`` (``t_b``) the first ``k_a`` (``k_b``) in raw order go to the earlier split.

    Built from the fit pass's exact timestamp counts: ``a`` = the train row count, ``b`` = train + valid."""

    def __init__(self, values: np.ndarray, counts: np.ndarray, a: int, b: int):
        cum = np.cumsum(counts)
        self.cuts = []
        for k in (a, b):  # the value at 0-based sorted position k, and how many rows of it come before k
            i = int(np.searchsorted(cum, k, side="right"))
            if i >= len(values):
                self.cuts.append([np.inf, 0])
            else:
                below = int(cum[i - 1]) if i else 0
                self.cuts.append([float(values[i]), k - below])

    def __call__(self, ts: np.ndarray) -> np.ndarray:
        code = np.zeros(len(ts), np.int8)
        for t, k in self.cuts:  # in order: each cut moves later rows one split on
            at = np.flatnonzero(ts == t)
            take = at[:k]
            later = ts > t
            later[at[len(take):]] = True
            code += later.astype(np.int8)
        # the tie quotas are consumed chunk by chunk in raw row order
        for c in self.cuts:
            c[1] -= min(c[1], int((ts == c[0]).sum()))
        return code
