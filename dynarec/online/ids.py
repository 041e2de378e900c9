"""Raw ids of the dynamic features as int64 tensors, and the hashing-trick index (a baseline).

Integer columns are used as they are; any other column is read as text (``as_text``: 3.0 and "3" are the
same id) and each distinct string is hashed to 63 bits with :func:`dynarec.tables.hashing.hash_string`
(BLAKE2b; n distinct strings collide with probability about n² / 2^64, 5e-6 for 10M strings). Missing values
and the empty string become -1, which the index reads as padding (slot 0). Sequences ('a|b|c' strings or
lists) become [N, max_len] tensors padded with -1.

Id types are recorded on the first pass (:func:`id_kinds`: ``int`` for an integer column, ``text`` otherwise)
and every later pass is read by the recorded type, so a pass whose column arrives with another type (one bad
value turns a CSV integer column into text) never re-keys the feature's ids: under ``int``, a text value that
is an integer (``'123'``, or ``123.0`` from a float column) is that id, any other value is hashed as a text
id (the rule the serving lookup applies to a server's values, :mod:`dynarec.online.serving`) and counted in
the pass's notes; under ``text``, integers are hashed as their text, as a text pass would.

Example::

    >>> import pyarrow as pa
    >>> _ids(pa.array(["123", "abc", None]), "int")[[0, 2]].tolist()
    [123, -1]
"""
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


KINDS = ("int", "text")


def id_kinds(table: pa.Table, features) -> dict[str, str]:
    """The id type of each feature (schema Features) in ``table`` (the first pass): ``int`` for an integer
    column, ``text`` otherwise (a sequence's tokens always are text)."""
    return {f.name: "int" if f.kind != "sequence" and pa.types.is_integer(table.schema.field(f.name).type)
            else "text" for f in features}


def _int_or_hash(s: str) -> tuple[int, bool]:
    """(id of a text value under an ``int`` feature, whether it was hashed): the integer it spells, else its hash."""
    try:
        v = int(s)
        if v <= MASK63:
            return max(v, -1), False
    except ValueError:
        pass
    return hash_string(s) & MASK63, True


def _ids(values: pa.Array, kind: str | None = None, bad: list | None = None) -> np.ndarray:
    """int64 ids (>= 0) of a flat column, -1 for missing values. ``kind`` None: by the column's own type.
    ``bad`` receives the distinct values hashed although ``kind`` is ``int``."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_integer(values.type) and kind != "text":
        x = pc.fill_null(pc.cast(values, pa.int64()), -1).to_numpy(zero_copy_only=False).astype(np.int64)
        return np.where(x < 0, -1, x)
    text = as_text(values)
    uniq = pc.unique(pc.drop_null(text))
    bad, codes = bad if bad is not None else [], []
    for s in uniq.to_pylist():
        if not s:
            codes.append(-1)
        elif kind == "int":
            v, hashed = _int_or_hash(s)
            codes.append(v)
            if hashed:
                bad.append(s)
        else:
            codes.append(hash_string(s) & MASK63)
    codes = np.array(codes, dtype=np.int64)
    pos = pc.fill_null(pc.index_in(text, value_set=uniq), -1).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.where(pos < 0, -1, codes[np.maximum(pos, 0)] if len(codes) else -1)


def raw_ids(table: pa.Table, f, kind: str | None = None, notes: dict | None = None) -> torch.Tensor:
    """The raw ids of feature ``f`` (a schema Feature): Long [N] (sparse) or [N, max_len] (sequence), read as
    ``kind`` (``int`` | ``text``, the type recorded on the first pass; None: the column's own type). Values an
    ``int`` feature had to hash go to ``notes[f.name]`` (distinct values)."""
    if f.kind != "sequence":
        bad = []
        ids = _ids(column(table, f), kind, bad)
        if bad and notes is not None:
            notes[f.name] = bad
        return torch.from_numpy(ids)
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
