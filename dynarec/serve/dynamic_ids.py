"""The dynamic-id plug-in of the one row encoder (:mod:`dynarec.serve.encoder`): raw ids of an online pass's
dynamic features -> the slots its serving file records (``serving.pt``: per feature, the sorted raw ids that
own a slot and their slots, or the hashing trick's capacity). An id without a slot (never seen, not yet
admitted, expired or evicted) reads slot 0, the shared default row: the rule of ``DynamicIndex.lookup``.

Raw ids follow the id TYPE the pass recorded (``ints``: its training column held integers), whatever the
type of the column at hand: a server's ``"123"``, a CSV column that became text because of one bad value and
an integer column all give the id 123 when ``ints``; any other value is hashed as training hashes text
(:func:`dynarec.tables.hashing.hash_string` on the text form, 3.0 and "3" alike). Without ``ints`` every value
is hashed as text (an integer column too), as training did. So ``predict``, ``evaluate`` and the server
cannot key one id two ways."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from dynarec.data.encode import column
from dynarec.online.ids import _ids, raw_ids

def recorded_ids(values, ints: bool) -> np.ndarray:
    """int64 ids (>= 0) of a flat column, -1 for missing values (null, "", negative integers), read by the
    recorded type: the one rule of :func:`dynarec.online.ids.raw_ids`, which training applies to its passes."""
    return _ids(values, "int" if ints else "text")


class SlotLookup:
    """Raw ids -> slots for the dynamic features of one pass (what a serving file holds)."""

    def __init__(self, entries: list[dict]):
        self.entries = {e["feature"]: (k, e) for k, e in enumerate(entries)}

    @property
    def features(self) -> list[str]:
        return list(self.entries)

    def raw_ids(self, table: pa.Table, f) -> torch.Tensor:
        """The raw ids of feature ``f`` in ``table``: Long [N] or [N, max_len] (-1 = missing / padding);
        a sequence's tokens are always text."""
        _, e = self.entries[f.name]
        if f.kind != "sequence":
            return torch.from_numpy(recorded_ids(column(table, f), bool(e["ints"])))
        return raw_ids(table, f)  # a sequence's tokens: text, hashed as training hashed them

    def slots(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        """Slots Long (same shape as ``ids``; 0 = the default row for ids < 0 and ids without a slot)."""
        k, e = self.entries[name]
        if e["kind"] == "hash":
            from dynarec.online.ids import HashIndex

            return HashIndex.lookup(_HashView(e["capacity"]), ids, k)
        keys, slots = e["keys"], e["slots"]
        if keys.numel() == 0:
            return torch.zeros_like(ids)
        q = ids.reshape(-1)
        pos = torch.searchsorted(keys, q).clamp_(max=keys.numel() - 1)
        hit = (keys[pos] == q) & (q >= 0)
        return torch.where(hit, slots[pos], torch.zeros_like(q)).reshape(ids.shape)

    def encode(self, table: pa.Table, f) -> tuple[np.ndarray, np.ndarray]:
        """-> (slots int64 [N] or [N, max_len], unknown Bool of the same shape: an id without a slot)."""
        ids = self.raw_ids(table, f)
        slots = self.slots(f.name, ids)
        return slots.numpy(), ((ids >= 0) & (slots == 0)).numpy()


class _HashView:
    """The one attribute ``HashIndex.lookup`` reads (its capacity), without the training-side arrays."""

    def __init__(self, capacity: int):
        self.capacity = capacity
