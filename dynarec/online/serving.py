"""What serving one pass of an online run needs: ``RUN/passes/NNNN/serving.pt`` (format ``dynarec-serving-1``,
written from the tensors' storage with a SHA-256 trailer, atomically, like a pass's ``model.pt``:
:mod:`dynarec.train.streamed_checkpoint`; older runs' sealed files still load): the writer half. The reader half is in ``dynarec/serve``
(``sources.py`` reads and locates the file, ``loader.py`` loads it, ``dynamic_ids.py`` turns raw ids into its
slots) for ``dynarec predict / evaluate / serve`` on a RUN folder or one pass folder.

It holds the pass's full model (name, params, the model's schema, ``state_dict``: the pass checkpoint's weights,
the same model that scores the next pass in progressive validation), the encoders of the non-dynamic features
(fitted on the first pass) and, per dynamic feature, its id -> slot lookup as two arrays: the sorted raw ids
that own a slot and their slots (no counters, no optimizer state: a serving file is smaller than
``model.pt``). An id not in the lookup (never seen, not yet admitted, expired or evicted) reads slot 0, the
shared default row: the rule of :meth:`DynamicIndex.lookup` in training. With ``online.table: hash`` the lookup
is the hashing trick itself (:class:`dynarec.online.ids.HashIndex`, no arrays).

The file records per dynamic feature whether its training column held integers (``ints``): every reader then
keys ids by that recorded type, whatever the type of the column it reads (``serve/dynamic_ids.py``)."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import torch

from dynarec.train.streamed_checkpoint import save_streamed

FORMAT = "dynarec-serving-1"
SERVING = "serving.pt"
RUN_FILE = "online.json"  # dynarec.online.runner.RUN_FILE: what marks an online run folder


# ---- writing (the runner, at the end of every pass) ----------------------------------------------------
def lookups(index, n_features: int) -> list[dict]:
    """Per dynamic feature (index order), its lookup: ``{"kind": "map", "keys": Long [n] sorted, "slots":
    Long [n]}`` for a :class:`DynamicIndex`, ``{"kind": "hash", "capacity": C}`` for a ``HashIndex``."""
    if not hasattr(index, "ids_of"):  # the hashing trick: the function is the lookup
        return [{"kind": "hash", "capacity": int(index.capacity)} for _ in range(n_features)]
    feat, ids = index.ids_of(torch.arange(1, index.capacity + 1))  # owner of every slot, -1 where free
    out = []
    for k in range(n_features):
        s = torch.nonzero(feat == k).flatten()
        keys, order = torch.sort(ids[s].long())
        s = s + 1
        out.append({"kind": "map", "keys": keys.clone(), "slots": s[order].clone()})
    return out


def int_columns(raw: pa.Table, dynamic: list[str]) -> dict[str, bool]:
    """Whether each dynamic feature's raw column holds integers (ids used as they are) or not (hashed as text;
    a sequence's tokens always are)."""
    return {n: bool(pa.types.is_integer(raw.schema.field(n).type)) for n in dynamic}


def serving_blob(st, raw: pa.Table) -> dict:
    """The serving file's content for the state ``st`` (:class:`dynarec.online.state.OnlineState`) after its
    pass; ``raw`` is that pass's raw table (the id column types)."""
    ints = {n: k == "int" for n, k in st.kinds.items()} if st.kinds else int_columns(raw, st.dynamic)
    lk = lookups(st.index, len(st.dynamic)) if st.index is not None else []
    return {"format": FORMAT, "pass": st.next_pass - 1, "file": st.files[-1] if st.files else None,
            "model": st.model.registry_name, "params": dict(st.cfg.params), "schema": st.model.schema.to_dict(),
            "encoders": st.encoders.to_dict(), "state_dict": st.model.state_dict(),
            "dynamic": [dict(feature=n, ints=ints[n], **lk[k]) for k, n in enumerate(st.dynamic)]}


def write_serving(folder: Path, st, raw: pa.Table) -> Path:
    """``folder/serving.pt``, written from the tensors' storage (the streamed layout of
    :mod:`dynarec.train.streamed_checkpoint`: no in-memory copy of the tables; sha256 trailer; atomic)."""
    return save_streamed(Path(folder) / SERVING, serving_blob(st, raw))
