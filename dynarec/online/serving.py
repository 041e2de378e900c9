"""What serving one pass of an online run needs: ``RUN/passes/NNNN/serving.pt`` (format ``dynarec-serving-1``,
SHA-256 sealed and written atomically like a checkpoint), read by :class:`dynarec.serve.predictor.Predictor`
(``dynarec predict / evaluate / serve`` on a RUN folder or one pass folder).

It holds the pass's full model (name, params, the model's schema, ``state_dict``: the pass checkpoint's weights,
the same model that scores the next pass in progressive validation), the encoders of the non-dynamic features
(fitted on the first pass) and, per dynamic feature, its id -> slot lookup as two arrays: the sorted raw ids
that own a slot and their slots (no counters, no optimizer state: a serving file is smaller than
``model.pt``). An id not in the lookup (never seen, not yet admitted, expired or evicted) reads slot 0, the
shared default row: the rule of :meth:`DynamicIndex.lookup` in training. With ``online.table: hash`` the lookup
is the hashing trick itself (:class:`dynarec.online.ids.HashIndex`, no arrays).

Raw ids are turned into int64 the way training did (:func:`dynarec.online.ids.raw_ids`): the file records per
dynamic feature whether its training column held integers (``ints``); a server's value ``123`` / ``"123"``
is then the id 123, any other value (or any value of a text column) is hashed as in training."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from dynarec.errors import DataError
from dynarec.train.checkpoint import read_sealed, sealed, write_atomic

FORMAT = "dynarec-serving-1"
SERVING = "serving.pt"
RUN_FILE = "online.json"  # dynarec.online.runner.RUN_FILE: what marks an online run folder
MASK63 = (1 << 63) - 1


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
    buf = io.BytesIO()
    torch.save(serving_blob(st, raw), buf)
    f = Path(folder) / SERVING
    write_atomic(f, sealed(FORMAT, buf.getvalue()))
    return f


# ---- reading --------------------------------------------------------------------------------------------
def read_serving(f: Path) -> tuple[dict, str]:
    """(the serving file ``f``, its payload's sha256), the checksum verified; a one-line DataError naming the
    file otherwise."""
    inner, digest = read_sealed(f, FORMAT, f"{FORMAT} file", "the serving file is corrupted (the run's model.pt "
                                "of the same pass holds the same weights)")
    if not isinstance(inner, dict) or inner.get("format") != FORMAT or "state_dict" not in inner:
        raise DataError(f"{f}: not a {FORMAT} file")
    return inner, digest


def is_online(path: str | Path) -> bool:
    """Whether ``path`` is an online run folder or one of its pass folders (or a pass's serving file)."""
    p = Path(path)
    return (p / RUN_FILE).is_file() or (p / SERVING).is_file() or (p.name == SERVING and p.is_file())


def pass_folder(path: str | Path) -> Path:
    """The pass folder to serve: the one ``RUN/current`` names for a run folder, else ``path`` itself (a pass
    folder, or its ``serving.pt``). One-line DataErrors name what is missing."""
    p = Path(path)
    if p.name == SERVING and p.is_file():
        return p.parent
    if (p / RUN_FILE).is_file():
        cur = p / "current"
        if not cur.is_file():
            raise DataError(f"{cur}: missing: the online run has no completed pass yet")
        text = cur.read_text().strip()
        if not text.startswith("passes/") or "/.." in text:
            raise DataError(f"{cur}: expected 'passes/NNNN', got {text[:40]!r}")
        d = p / text
        if not (d / SERVING).is_file():
            raise DataError(f"{d / SERVING}: missing (the pass named by {cur} has no serving file)")
        return d
    if not (p / SERVING).is_file():
        raise DataError(f"{p / SERVING}: missing: {p} is neither an online run folder nor one of its pass folders")
    return p


def current_text(run: Path) -> str | None:
    """``RUN/current``'s text (a cheap read), None when absent or unreadable."""
    try:
        return (Path(run) / "current").read_text().strip() or None
    except OSError:
        return None


class SlotLookup:
    """Raw ids -> slots for the dynamic features of one pass (what a serving file holds)."""

    def __init__(self, entries: list[dict]):
        self.entries = {e["feature"]: (k, e) for k, e in enumerate(entries)}

    @property
    def features(self) -> list[str]:
        return list(self.entries)

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

    def ids_of_values(self, name: str, values: list, f) -> torch.Tensor:
        """A server's raw values of feature ``f`` (sparse: ``str`` or None per row; sequence: one
        ``separator``-joined ``str`` per row, as :func:`dynarec.serve.rows.rows_to_columns` gives them) ->
        raw ids Long [N] or [N, max_len] (-1 = missing / padding), the ids :func:`raw_ids` gives on a table."""
        from dynarec.tables.hashing import hash_string

        _, e = self.entries[name]
        ints = bool(e["ints"]) and f.kind != "sequence"  # sequence tokens are always read as text
        nulls = frozenset(f.null_values or ()) if f.kind != "sequence" else frozenset()
        cache: dict = {}

        def one(v):
            if v is None or v == "" or v in nulls:
                return -1
            r = cache.get(v)
            if r is None:
                r = None
                if ints:
                    try:
                        r = max(int(v), -1)
                    except ValueError:
                        pass
                if r is None:
                    r = hash_string(v) & MASK63
                cache[v] = r
            return r

        if f.kind != "sequence":
            return torch.tensor([one(v) for v in values], dtype=torch.long)
        out = np.full((len(values), f.max_len), -1, dtype=np.int64)
        for i, v in enumerate(values):
            toks = v.split(f.separator)[:f.max_len] if v else []
            out[i, :len(toks)] = [one(t) for t in toks]
        return torch.from_numpy(out)


class _HashView:
    """The one attribute ``HashIndex.lookup`` reads (its capacity), without the training-side arrays."""

    def __init__(self, capacity: int):
        self.capacity = capacity


def describe(folder: Path, blob: dict) -> dict:
    """A short JSON-able description of a served pass (what /metadata adds)."""
    return {"pass": blob.get("pass"), "file": blob.get("file"), "folder": str(folder),
            "dynamic": {e["feature"]: (int(e["keys"].numel()) if e["kind"] == "map" else e["kind"])
                        for e in blob["dynamic"]}}

