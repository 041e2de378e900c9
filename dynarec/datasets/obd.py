"""Open Bandit Dataset (ZOZOTOWN fashion e-commerce, Saito et al., NeurIPS 2021 datasets track).

Raw layout (as shipped in the ``obp`` package and the full release): ``<policy>/<campaign>/<campaign>.csv``
(policy random / bts, campaign all / men / women) with columns ``(index), timestamp, item_id, position,
click, propensity_score, user_feature_0..3, user-item_affinity_0..K-1``, plus ``item_context.csv`` in the
same folder (``item_id, item_feature_0`` (numeric), ``item_feature_1..3`` (hashed categories)).

Domain: the campaign (default; the full release has men / women / all), or the behaviour ``policy``.
Task: ``click``. Features: user_feature_0..3 (user), item_id, item_feature_1..3 (item),
item_feature_0 (dense, item), ``position`` (slot 1-3, group ``position``), ``affinity`` = the
user-item affinity of the shown item (dense, context). ``propensity_score`` is kept (not a feature) for
off-policy estimators; ``timestamp`` (microseconds) for temporal splits.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dynarec.data.schema import Feature, Schema, Task
from dynarec.datasets._util import Option, join_left, raw_path, read_delimited, strings, to_numpy
from dynarec.errors import DataError

NAME = "obd"
OPTIONS = {
    "domain": Option("campaign", "what defines the domains", ("campaign", "policy")),
    "policies": Option("random,bts", "comma-separated behaviour policies to read"),
    "campaigns": Option("all,men,women", "comma-separated campaigns to read"),
}


def _files(raw: Path, policies: set[str], campaigns: set[str]) -> list[tuple[str, str, Path]]:
    out = []
    for p in sorted(raw.rglob("*.csv")):
        if p.name == "item_context.csv" or p.stem != p.parent.name:
            continue
        campaign, policy = p.parent.name, p.parent.parent.name
        if campaign in campaigns and policy in policies:
            out.append((policy, campaign, p))
    return out


def _read_one(policy: str, campaign: str, p: Path) -> pa.Table:
    t = read_delimited(p, ",", expected=["timestamp", "item_id", "position", "click", "propensity_score",
                                         "user_feature_0"], column_types={"timestamp": pa.string()})
    ic_path = p.parent / "item_context.csv"
    if not ic_path.exists():
        raise DataError(f"{NAME}: '{ic_path}' not found (each campaign folder holds its item_context.csv)")
    ic = read_delimited(ic_path, ",", expected=["item_id", "item_feature_0"])
    ic = ic.select([c for c in ic.column_names if c.startswith("item")])
    t = join_left(t, ic, "item_id", f"{NAME} {ic_path}")
    aff_cols = sorted((c for c in t.column_names if c.startswith("user-item_affinity_")),
                      key=lambda c: int(c.rsplit("_", 1)[1]))
    item = to_numpy(t.column("item_id")).astype(np.int64)
    if aff_cols:
        if item.max() >= len(aff_cols):
            raise DataError(f"{p}: item_id {item.max()} has no user-item_affinity column")
        aff = np.stack([to_numpy(t.column(c)).astype(np.float32) for c in aff_cols], 1)
        affinity = aff[np.arange(len(item)), item]
    else:
        affinity = np.zeros(len(item), np.float32)
    ts = pc.strptime(pc.utf8_slice_codeunits(t.column("timestamp"), 0, 19), format="%Y-%m-%d %H:%M:%S", unit="s")
    n = t.num_rows
    cols = {
        "policy": strings(np.full(n, policy, dtype=object)), "campaign": strings(np.full(n, campaign, dtype=object)),
        **{f"user_feature_{i}": t.column(f"user_feature_{i}") for i in range(4) if f"user_feature_{i}" in t.column_names},
        "item_id": t.column("item_id"),
        **{c: t.column(c) for c in ("item_feature_0", "item_feature_1", "item_feature_2", "item_feature_3")
           if c in t.column_names},
        "position": t.column("position"), "affinity": pa.array(affinity),
        "click": t.column("click").cast(pa.int8()), "propensity_score": t.column("propensity_score"),
        "timestamp": pc.cast(ts, pa.int64()),
    }
    return pa.table(cols)


def load(raw_dir, domain="campaign", policies="random,bts", campaigns="all,men,women"):
    raw = raw_path(raw_dir, NAME)
    pol = {s.strip() for s in policies.split(",") if s.strip()}
    cam = {s.strip() for s in campaigns.split(",") if s.strip()}
    files = [raw.parent.parent.name, raw.parent.name, raw] if raw.is_file() else None
    files = [tuple(files)] if files else _files(raw, pol, cam)
    if not files:
        raise DataError(f"{NAME}: no Open Bandit files <policy>/<campaign>/<campaign>.csv for policies "
                        f"{sorted(pol)} and campaigns {sorted(cam)} in '{raw}'")
    t = pa.concat_tables([_read_one(*f) for f in files], promote_options="permissive")
    t = t.append_column("domain", t.column(domain))
    features = [Feature(f"user_feature_{i}", "sparse", "user") for i in range(4) if f"user_feature_{i}" in t.column_names]
    features += [Feature("item_id", "sparse", "item")]
    features += [Feature(c, "sparse", "item") for c in ("item_feature_1", "item_feature_2", "item_feature_3")
                 if c in t.column_names]
    if "item_feature_0" in t.column_names:
        features.append(Feature("item_feature_0", "dense", "item"))
    features += [Feature("position", "sparse", "position"), Feature("affinity", "dense", "context")]
    schema = Schema(features=features, tasks=[Task("click")], domain="domain", timestamp="timestamp")
    return t, schema
