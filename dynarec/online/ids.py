"""Raw ids of the dynamic features as int64 tensors, and the hashing-trick index (a baseline).

Integer columns are used as they are; any other column is read as text (``as_text``: 3.0 and "3" are the
same id) and each distinct string is hashed to 63 bits with :func:`dynarec.tables.hashing.hash_string`
(BLAKE2b; n distinct strings collide with probability about n² / 2^64, 5e-6 for 10M strings). Missing values
and the empty string become -1, which the index reads as padding (slot 0). Sequences ('a|b|c' strings or
lists) become [N, max_len] tensors padded with -1."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from dynarec.data.encode import _seq_values, column
from dynarec.data.read import as_text
from dynarec.tables.hashing import hash_string

MASK63 = (1 << 63) - 1


def _ids(values: pa.Array) -> np.ndarray:
    """int64 ids (>= 0) of a flat column; -1 for missing values."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_integer(values.type):
        x = pc.fill_null(pc.cast(values, pa.int64()), -1).to_numpy(zero_copy_only=False).astype(np.int64)
        return np.where(x < 0, -1, x)
    text = as_text(values)
    uniq = pc.unique(pc.drop_null(text))
    codes = np.array([hash_string(s) & MASK63 if s else -1 for s in uniq.to_pylist()], dtype=np.int64)
    pos = pc.fill_null(pc.index_in(text, value_set=uniq), -1).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.where(pos < 0, -1, codes[np.maximum(pos, 0)] if len(codes) else -1)


def raw_ids(table: pa.Table, f) -> torch.Tensor:
    """The raw ids of feature ``f`` (a schema Feature): Long [N] (sparse) or [N, max_len] (sequence)."""
    if f.kind != "sequence":
        return torch.from_numpy(_ids(column(table, f)))
    flat, offs = _seq_values(table.column(f.name), f.separator)
    ids = _ids(flat)
    n = len(offs) - 1
    lens = np.minimum(np.diff(offs), f.max_len)
    out = np.full((n, f.max_len), -1, dtype=np.int64)
    rows = np.repeat(np.arange(n), lens)
    pos = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
    out[rows, pos] = ids[np.repeat(offs[:-1], lens) + pos]
    return torch.from_numpy(out)


_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)  # int64 views of the splitmix64 constants
_M1, _M2 = 0xBF58476D1CE4E5B9 - (1 << 64), 0x94D049BB133111EB - (1 << 64)


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finaliser on int64 tensors (multiplications wrap): neighbouring ids land far apart."""
    x = (x ^ _shr(x, 30)) * _M1
    x = (x ^ _shr(x, 27)) * _M2
    return x ^ _shr(x, 31)


@runtime_checkable
class SlotIndex(Protocol):
    """What ``dynarec online`` calls on an index of raw ids -> slots (``DynamicIndex`` and :class:`HashIndex`).

    ``lookup(ids, feature)`` / ``map(ids, feature, train)`` / ``observe(ids, feature)``: slots Long, same shape as
    ``ids`` (0 = default row); ``step()`` after each batch; ``end_pass()`` -> dict(admitted, evicted, expired);
    ``slots_in_use``; ``feature_counts()`` -> slots per feature ([] where slots are shared, as by hashing);
    ``changed_slots(clear)`` -> (slots Long [n] whose rows training may have changed since the last clear,
    (feature, id) Long pairs of ids freed since then); ``subscribe(on_admit, on_free)``."""

    def lookup(self, ids, feature=0): ...
    def map(self, ids, feature=0, train=True): ...
    def observe(self, ids, feature=0): ...
    def step(self): ...
    def end_pass(self): ...
    @property
    def slots_in_use(self): ...
    def feature_counts(self): ...
    def changed_slots(self, clear=True): ...
    def subscribe(self, on_admit=None, on_free=None): ...


class HashIndex:
    """The hashing trick at a fixed memory: id -> ``1 + h(feature, id) mod capacity`` (padding -1 -> 0). No
    admission, no eviction: colliding ids share a row. Same calls as the dynamic index, so the runner can swap
    them (``online.table: hash``)."""

    def __init__(self, capacity: int, features: int):
        self.capacity, self.features = capacity, features
        self.touched = torch.zeros(capacity + 1, dtype=torch.bool)
        self.changed = torch.zeros(capacity + 1, dtype=torch.bool)  # touched since the last changed_slots()

    def lookup(self, ids: torch.Tensor, feature: int = 0) -> torch.Tensor:
        return torch.where(ids >= 0, 1 + torch.remainder(mix64(ids + torch.full_like(ids, feature + 1) * _GOLDEN), self.capacity),
                           torch.zeros_like(ids))

    def map(self, ids: torch.Tensor, feature: int = 0, train: bool = True) -> torch.Tensor:
        s = self.lookup(ids, feature)
        if train:
            self._touch(s)
        return s

    def observe(self, ids: torch.Tensor, feature: int = 0) -> None:
        self._touch(self.lookup(ids, feature))

    def _touch(self, s: torch.Tensor) -> None:
        s = s.reshape(-1)
        self.touched[s] = True
        self.changed[s] = True

    def step(self) -> None: ...

    def end_pass(self) -> dict:
        return {"admitted": 0, "evicted": 0, "expired": 0}

    @property
    def slots_in_use(self) -> int:
        return int(self.touched[1:].sum())

    def feature_counts(self) -> list:
        return []  # buckets are shared by all features

    def changed_slots(self, clear: bool = True):
        """(buckets 1.. trained since the last clear, no freed ids: hashing never frees)."""
        s = torch.nonzero(self.changed[1:]).flatten() + 1
        if clear:
            self.changed.zero_()
        return s, (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))

    def subscribe(self, on_admit=None, on_free=None) -> None: ...

    def state_dict(self) -> dict:
        return {"touched": self.touched.clone(), "changed": self.changed.clone()}

    def load_state_dict(self, d: dict) -> None:
        self.touched = d["touched"].clone()
        self.changed = d["changed"].clone() if "changed" in d else torch.zeros_like(self.touched)
