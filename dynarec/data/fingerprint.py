"""A fingerprint of the training rows, kept with the encoders, so that ``evaluate`` on a raw file can say when
the file holds rows the model was trained on (its metrics then overstate the quality on new data).

Each row is hashed to 64 bits from the text of its raw columns (the columns the schema reads: ``3`` and
``3.0`` are one value, as the encoders see them); the fingerprint keeps the hashes ``h`` of the training
rows with ``h % modulus == 0``, ``modulus`` the smallest power of two that keeps at most :data:`MAX_KEPT`
— a hash sample whatever the size of the training split (``modulus`` = 1 keeps every row). The rule only
ever doubles the modulus, so a streamed fit (:class:`TrainRowsBuilder`, the out-of-core prepare) keeps
exactly the sample of a fit on the whole split. A row of another file is in the sample exactly when its
hash is, so the share of a file's sampled rows found in the fingerprint estimates the share of its rows that
are training rows without bias (rows are never missed; two different rows share a 64-bit hash with
probability about 2^-64 per pair).

Example::

    >>> import pyarrow as pa
    >>> train = pa.table({"user": [1, 2, 3, 4], "item": ["a", "b", "c", "d"]})
    >>> fp = TrainRows.fit(train, ["user", "item"])
    >>> fp.overlap(pa.table({"user": [1.0, 2, 9, 9], "item": ["a", "b", "x", "y"]}))
    (0.5, 4)
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dynarec.data.read import as_text

MAX_KEPT = 16384  # hashes kept at most (about 330 kB in encoders.json)
_P = np.uint64(0x100000001B3)  # FNV-1a 64-bit prime: combines the column hashes of a row
_NULL = np.uint64(0x9E3779B97F4A7C15)


def _column_hashes(col) -> np.ndarray:
    """uint64 per value: a BLAKE2b hash of its text (computed once per distinct value), a constant for null."""
    text = as_text(col)
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    enc = pc.dictionary_encode(text)
    uniq = np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")
                     for s in enc.dictionary.to_pylist()] + [int(_NULL)], dtype=np.uint64)
    idx = pc.fill_null(enc.indices, len(enc.dictionary)).to_numpy(zero_copy_only=False).astype(np.int64)
    return uniq[idx]


def row_hashes(table: pa.Table, columns: list[str]) -> np.ndarray:
    """uint64 [N]: one hash per row of ``table`` over ``columns`` (in that order), mixed so that its residues
    are uniform (splitmix64's finaliser)."""
    h = np.zeros(table.num_rows, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for c in columns:
            h = h * _P ^ _column_hashes(table.column(c))
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h


@dataclass
class TrainRows:
    """The hash sample of the training rows: ``columns`` hashed, ``modulus``, the kept ``hashes`` (sorted)."""

    columns: list[str]
    modulus: int
    hashes: np.ndarray = field(repr=False)

    @classmethod
    def fit(cls, train: pa.Table, columns: list[str]) -> TrainRows:
        b = TrainRowsBuilder(columns)
        b.add(train)
        return b.result()

    def overlap(self, table: pa.Table) -> tuple[float, int]:
        """(estimated share of ``table``'s rows that are training rows, rows of ``table`` in the sample);
        (0.0, 0) when ``table`` lacks a fingerprinted column or no row falls in the sample."""
        if any(c not in table.column_names for c in self.columns):
            return 0.0, 0
        h = row_hashes(table, self.columns)
        s = h[h % np.uint64(self.modulus) == 0]
        if len(s) == 0:
            return 0.0, 0
        return float(np.isin(s, self.hashes).mean()), len(s)

    def to_dict(self) -> dict:
        return {"columns": self.columns, "modulus": self.modulus, "hashes": [int(x) for x in self.hashes]}

    @classmethod
    def from_dict(cls, d: dict) -> TrainRows:
        return cls(list(d["columns"]), int(d["modulus"]), np.array(d["hashes"], dtype=np.uint64))


class TrainRowsBuilder:
    """:meth:`TrainRows.fit` over chunks of the training split: ``add`` each chunk, then ``result``."""

    def __init__(self, columns: list[str]):
        self.columns, self.modulus, self.kept = list(columns), 1, np.zeros(0, dtype=np.uint64)

    def add(self, chunk: pa.Table) -> None:
        cols = [c for c in self.columns if c in chunk.column_names]
        self.columns = cols
        h = row_hashes(chunk, cols)
        self.kept = np.unique(np.concatenate([self.kept, h[h % np.uint64(self.modulus) == 0]]))
        while len(self.kept) > MAX_KEPT:  # double the modulus: the rows kept at 2m are a subset of those at m
            self.modulus *= 2
            self.kept = self.kept[self.kept % np.uint64(self.modulus) == 0]

    def result(self) -> TrainRows:
        return TrainRows(self.columns, self.modulus, self.kept)
