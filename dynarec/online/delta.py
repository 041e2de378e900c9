"""Deltas: what a serving copy needs to move from one pass to the next.

A delta (``passes/NNNN/delta.pt``, format ``dynarec-delta-1``, SHA-256 checked like a checkpoint) holds

* ``tables``: ``{table: (rows Long [n], values [n, dim])}``, the rows that differ from the serving copy
  (found by comparing, so it is exactly the changed rows: trained, admitted, re-initialised or zeroed);
* ``assigned``: ``(slot, feature, id)`` Long [m] each, slots whose owner changed to a new id;
  ``evicted``: ``(feature, id)`` of the ids that lost their slot (evicted or expired); ``freed``: Long [k],
  the slots left without an owner;
* ``dense``: the state of everything outside the tables (dense weights and buffers) when due
  (every ``online.dense_every`` passes), else ``None``.

``apply_delta(serving, delta)`` moves a serving copy (:func:`snapshot`) forward; applied in order to the first
pass's copy they reproduce every later pass's weights exactly (where the dense part was due). ``dynarec serve``
applies them to its served model in place (:mod:`dynarec.serve.delta_apply`)."""
from __future__ import annotations

import io
from pathlib import Path

import torch

from dynarec.train.checkpoint import read_sealed, sealed, write_atomic

FORMAT = "dynarec-delta-1"


def owners(index) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(feature, id) Long [capacity + 1] of every slot (-1 where free), or None for an index without owners."""
    if not hasattr(index, "ids_of"):
        return None
    slots = torch.arange(index.capacity + 1)
    f, i = index.ids_of(slots)
    f, i = f.clone().long(), i.clone().long()
    f[0], i[0] = -1, -1
    return f, i


def table_keys(model) -> set[str]:
    return {f"tables.{n}.weight" for n in model.tables.specs}


def snapshot(model, index) -> dict:
    """A serving copy: ``{"tables": {name: rows}, "dense": {key: tensor}, "owners": (feature, id) | None}``."""
    keys = table_keys(model)
    sd = model.state_dict()
    return {"tables": {n: model.tables[n].weight.detach().clone() for n in model.tables.specs},
            "dense": {k: v.detach().clone() for k, v in sd.items() if k not in keys},
            "owners": owners(index)}


def make_delta(serving: dict, current: dict, pass_no: int, dense_due: bool) -> dict:
    """The delta from ``serving`` to ``current`` (two snapshots); ``serving`` is moved forward in place."""
    tables = {}
    for n, cur in current["tables"].items():
        prev = serving["tables"][n]
        rows = torch.nonzero((cur != prev).reshape(len(cur), -1).any(1)).flatten()
        tables[n] = (rows, cur[rows].clone())
        prev[rows] = cur[rows]
    assigned = evicted = freed = None
    if current["owners"] is not None:
        (pf, pi), (cf, ci) = serving["owners"], current["owners"]
        changed = (pf != cf) | (pi != ci)
        a = torch.nonzero(changed & (cf >= 0)).flatten()
        e = torch.nonzero(changed & (pf >= 0)).flatten()
        assigned, evicted = (a, cf[a].clone(), ci[a].clone()), (pf[e].clone(), pi[e].clone())
        freed = torch.nonzero(changed & (cf < 0)).flatten()
        serving["owners"] = (cf.clone(), ci.clone())
    dense = None
    if dense_due:
        dense = {k: v.clone() for k, v in current["dense"].items()}
        serving["dense"] = {k: v.clone() for k, v in current["dense"].items()}
    return {"format": FORMAT, "pass": pass_no, "tables": tables, "assigned": assigned, "evicted": evicted,
            "freed": freed, "dense": dense}


def delta_rows(delta: dict) -> int:
    return sum(int(r.numel()) for r, _ in delta["tables"].values())


def apply_delta(serving: dict, delta: dict) -> dict:
    """``serving`` (a snapshot) with ``delta`` applied, in place; returns it."""
    for n, (rows, values) in delta["tables"].items():
        serving["tables"][n][rows] = values
    if delta["assigned"] is not None and serving.get("owners") is not None:
        f, i = serving["owners"]
        f[delta["freed"]], i[delta["freed"]] = -1, -1
        s, af, ai = delta["assigned"]
        f[s], i[s] = af, ai
    if delta["dense"] is not None:
        serving["dense"] = {k: v.clone() for k, v in delta["dense"].items()}
    return serving


def state_dict_of(serving: dict) -> dict:
    """A serving copy as a model ``state_dict`` (load it into a model built from the pass's checkpoint)."""
    return {**serving["dense"], **{f"tables.{n}.weight": w for n, w in serving["tables"].items()}}


def from_state_dict(model, state: dict, owners_=None) -> dict:
    """A serving copy from a full ``state_dict`` (e.g. the first pass's checkpoint)."""
    keys = table_keys(model)
    return {"tables": {k[len("tables."):-len(".weight")]: v.clone() for k, v in state.items() if k in keys},
            "dense": {k: v.clone() for k, v in state.items() if k not in keys}, "owners": owners_}


def write_delta(path: Path, delta: dict) -> None:
    buf = io.BytesIO()
    torch.save(delta, buf)
    write_atomic(Path(path), sealed(FORMAT, buf.getvalue()))


def read_delta(path: str | Path) -> dict:
    """The delta in ``path``, its checksum verified; a one-line DataError for a broken file."""
    return read_sealed(Path(path), FORMAT, f"{FORMAT} file", "the delta is corrupted")[0]
