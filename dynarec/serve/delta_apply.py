"""``dynarec serve`` following an online run by APPLYING each pass's ``delta.pt`` (format ``dynarec-delta-1``,
:mod:`dynarec.online.delta`) to the served model in place, as PEPNet's deployment updates only the changed
embeddings, instead of loading the whole pass (1.1-1.2 s and twice the memory at 1M slots).

Two halves, so that no request sees a half-applied delta:

* :func:`prepare` (the engine's loader thread, off the request path): reads and checks every delta from the
  served pass to the pass ``RUN/current`` names, in order, and builds ASIDE everything that is not an
  in-place row write: the new id -> slot lookups (the dynamic index's changes: evicted ids removed,
  re-assigned slots added), the dense state of the last delta, the new predictor and its version. The
  served model and lookup are not touched.
* :func:`apply` (the event loop, where every micro-batch runs whole, so between two batches): writes the
  changed table rows (``index_copy_``) and the dense weights into the served model's tensors and returns the
  new :class:`~dynarec.serve.served.Served` for one reference assignment.

:func:`prepare` returns a reason (one line) instead when only a full reload gives the pass's own model: a
delta missing, out of order (its ``pass`` is not the next one, or the marker moved back), failing its
checksum, or, with ``online.dense_every`` > 1, a last delta that carries no dense weights (the pass's dense
part is then only in its ``serving.pt``). After :func:`apply` the served weights are bitwise the pass's
``serving.pt`` weights (the delta holds the changed rows' exact float32 values), so answers equal
``dynarec predict`` with that pass folder.

Example::

    prep = prepare(engine.served, Path("runs/online"), "passes/0007")   # in the loader thread
    if not isinstance(prep, str):                                        # else: the reason for a full reload
        engine.served = apply(engine.served, prep)                       # on the loop, between two batches
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from dynarec.errors import DataError

DELTA = "delta.pt"


@dataclass
class Prepared:
    """What :func:`apply` writes: per delta in order, its table rows; the last dense state; the new Served
    parts (built aside)."""

    marker: str
    rows: list  # [{table: (rows Long [n], values [n, dim])}], one dict per delta, in pass order
    dense: dict
    predictor: object
    manifest: dict
    folder: Path


def served_pass(served) -> int | None:
    """The pass index of the served marker (``passes/NNNN``), None when unknown."""
    try:
        return int(str(served.marker).rsplit("/", 1)[-1])
    except (TypeError, ValueError):
        return None


def _lookup_entries(entries: list[dict], delta: dict) -> list[dict]:
    """The per-feature lookups (``serving.pt``'s ``dynamic`` entries, in index order) after ``delta``'s
    evictions then assignments; new tensors, the given ones untouched."""
    if delta["assigned"] is None:
        return entries
    (ef, ei), (s, af, ai) = delta["evicted"], delta["assigned"]
    out = []
    for k, e in enumerate(entries):
        if e["kind"] != "map":
            out.append(e)
            continue
        keys, slots = e["keys"], e["slots"]
        gone = ei[ef == k]
        if gone.numel():
            keep = ~torch.isin(keys, gone)
            keys, slots = keys[keep], slots[keep]
        new = af == k
        if bool(new.any()):
            keys, order = torch.sort(torch.cat([keys, ai[new]]))
            slots = torch.cat([slots, s[new]])[order]
        out.append({**e, "keys": keys, "slots": slots})
    return out


def serving_digest(folder: Path) -> str:
    """The sha256 recorded in a pass's ``serving.pt`` (its version), read without reading the payload (the
    file is memory-mapped; the payload is checked when the pass is loaded, not here)."""
    from dynarec.online.serving import SERVING
    from dynarec.train.streamed_checkpoint import is_streamed, recorded_digest

    if is_streamed(folder / SERVING):  # the digest is the file's trailer
        return recorded_digest(folder / SERVING)
    blob = torch.load(folder / SERVING, map_location="cpu", weights_only=False, mmap=True)
    digest = blob.get("sha256") if isinstance(blob, dict) else None
    if not isinstance(digest, str):
        raise DataError(f"{folder / SERVING}: not a serving file")
    return digest


def prepare(served, run: Path, text: str):
    """-> :class:`Prepared` to move ``served`` (a pass of ``run``) to the pass ``text`` (``passes/NNNN``) by
    its deltas, or a one-line reason why only a full reload can."""
    from dynarec.online.delta import read_delta
    from dynarec.online.marker import pass_dir

    have = served_pass(served)
    try:
        want = int(text.rsplit("/", 1)[-1])
    except ValueError:
        return f"{run / 'current'}: names {text!r}, not passes/NNNN"
    if have is None or want <= have:
        return f"the marker moved from {served.marker} to {text} (not forward)"
    lookup = served.predictor.dynamic
    entries = [e for _, e in sorted(lookup.entries.values(), key=lambda x: x[0])] if lookup is not None else []
    rows, dense = [], None
    for j in range(have + 1, want + 1):
        f = run / pass_dir(j) / DELTA
        if not f.is_file():
            return f"{f}: missing"
        try:
            d = read_delta(f)
        except DataError as e:
            return str(e).splitlines()[0]
        if not isinstance(d, dict) or d.get("pass") != j:
            return f"{f}: holds pass {d.get('pass') if isinstance(d, dict) else '?'}, expected {j} (out of order)"
        bad = _rows_misfit(served.predictor.model, d["tables"])
        if bad:
            return f"{f}: {bad}"
        rows.append(d["tables"])
        entries = _lookup_entries(entries, d)
        dense = d["dense"]
    if dense is None:
        return (f"{run / pass_dir(want) / DELTA}: carries no dense weights (online.dense_every > 1); the pass's "
                "dense part is only in its serving.pt")
    bad = _dense_misfit(served.predictor.model, dense)
    if bad:
        return f"{run / pass_dir(want) / DELTA}: its dense weights do not fit the served model ({bad})"
    folder = run / pass_dir(want)
    try:
        digest = serving_digest(folder)
        meta = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError, RuntimeError, DataError) as e:
        return f"{folder}: cannot read its serving.pt / metrics.json ({type(e).__name__})"
    return _prepared(served, text, rows, dense, entries, folder, want, digest, meta.get("file"))


def _rows_misfit(model, tables: dict) -> str:
    """'' when every table of the delta is a table of ``model`` with rows in range and rows of its width."""
    for name, (rows, values) in tables.items():
        if name not in model.tables.specs:
            return f"table {name!r} is not in the served model"
        w = model.tables[name].weight
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= w.shape[0] or values.shape != (len(rows), w.shape[1])):
            return f"table {name!r}: rows or values do not fit its {tuple(w.shape)} weight"
    return ""


FACTORS = {"U_l": "U", "U_r": "U", "V_l": "V", "V_r": "V"}  # APG v5 factors, merged for inference (U = U_l U_r)


def _dense_misfit(model, dense: dict) -> str:
    """'' when ``dense`` loads into ``model``'s non-table tensors (every one, each shape equal; APG v5 factors
    stand for their merged product), else what does not fit: checked before any write, so that
    :func:`apply` never stops half-way."""
    tables = {f"tables.{n}.weight" for n in model.tables.specs}
    want = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in tables}
    covered = set()
    for k, v in dense.items():
        head, _, leaf = k.rpartition(".")
        if k in want:
            if tuple(v.shape) != want[k]:
                return f"{k}: shape {tuple(v.shape)}, served {want[k]}"
            covered.add(k)
        elif leaf in FACTORS and f"{head}.{FACTORS[leaf]}" in want:
            covered.add(f"{head}.{FACTORS[leaf]}")
        else:
            return f"{k}: not in the served model"
    missing = sorted(set(want) - covered)
    return f"{missing[0]}: missing" if missing else ""


def _prepared(served, text, rows, dense, entries, folder, k, digest, file) -> Prepared:
    from dynarec.serve.dynamic_ids import SlotLookup

    p = served.predictor
    version = f"pass{k:04d}-{digest[:8]}"  # the version load_pass gives the same pass
    online = {"pass": k, "file": file, "folder": str(folder),
              "dynamic": {e["feature"]: (int(e["keys"].numel()) if e["kind"] == "map" else e["kind"])
                          for e in entries}}
    pred = type(p)(p.model, p.encoders, p.name, version, str(folder), SlotLookup(entries),
                   online)
    manifest = {**served.manifest, "model_version": version, "online": online}
    return Prepared(text, rows, dense, pred, manifest, folder)


@torch.no_grad()
def apply(served, prep: Prepared):
    """Write ``prep``'s rows and dense weights into the served model (in place; call it between batches)
    -> the new Served (same model object)."""
    model = served.predictor.model
    for tables in prep.rows:  # in pass order: a row changed twice ends with the later value
        for name, (rows, values) in tables.items():
            if rows.numel():
                model.tables[name].weight.index_copy_(0, rows, values.to(model.tables[name].weight.dtype))
    model.load_state_dict(prep.dense, strict=False)  # fits: checked by prepare (the tables are the only keys left out)
    return dataclasses.replace(served, path=prep.folder, manifest=prep.manifest, predictor=prep.predictor,
                               marker=prep.marker)
