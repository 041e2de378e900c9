"""Ali-CCP (Alibaba click and conversion prediction, Ma et al. ESMM, SIGIR 2018), in the processed layout
used by Scenario-Wise-Rec and torch-rechub: one CSV per split (``ali_ccp_train*.csv``, ``ali_ccp_val*.csv``,
``ali_ccp_test*.csv``; any CSV with ``click,purchase,301`` columns is accepted) with the labels ``click`` and
``purchase``, categorical field columns named by their Ali-CCP field id (``101``, ``121`` ... ``853``,
``109_14`` ...) and dense columns prefixed ``D`` (``D109_14`` ...).

Domain: field ``301`` (the scenario, values 1 / 2 / 3), as in Scenario-Wise-Rec.
Groups follow the Ali-CCP field table: ids 1xx (user profile and behaviour: 101 user id, 109_14, 110_14,
121-129, 127_14, 150_14) -> user; 2xx (205 item, 206 category, 207 shop, 210 intention node, 216 brand) ->
item; other fields (508, 509, 702, 853: user x item combinations) -> context. Dense ``D<f>`` columns get
the group of field ``<f>``. The original split is kept in ``raw_split``.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from dynarec.data.schema import Feature, Schema, Task
from dynarec.datasets._util import Option, raw_path, read_delimited, strings
from dynarec.errors import DataError

NAME = "aliccp"
OPTIONS = {
    "domain_column": Option("301", "the field whose values are the domains"),
    "tasks": Option("click,purchase", "comma-separated label columns"),
    "dense": Option(True, "include the dense D* columns"),
}
_SPLIT = re.compile(r"(train|val|valid|test)", re.I)


def _group(field: str) -> str:
    f = field.lstrip("D")
    return "user" if f.startswith("1") else "item" if f.startswith("2") else "context"


def _files(raw: Path) -> list[Path]:
    if raw.is_file():
        return [raw]
    files = []
    for p in sorted(raw.glob("*.csv")) + sorted(raw.glob("*.csv.gz")):
        with open(p, "rb") as fh:
            head = fh.readline()
        if p.suffix == ".gz" or {b"click", b"purchase", b"301"} <= set(head.strip().split(b",")):
            files.append(p)
    return files


def load(raw_dir, domain_column="301", tasks="click,purchase", dense=True):
    raw = raw_path(raw_dir, NAME)
    files = _files(raw)
    if not files:
        raise DataError(f"{NAME}: no Ali-CCP CSV (header with click,purchase,301) in '{raw}'")
    task_list = [s.strip() for s in tasks.split(",") if s.strip()]
    parts = []
    for p in files:
        t = read_delimited(p, ",", expected=task_list + [domain_column])
        m = _SPLIT.search(p.name)
        split = m.group(1).lower().replace("valid", "val") if m else "all"
        parts.append(t.append_column("raw_split", strings(np.full(t.num_rows, split, dtype=object))))
    t = pa.concat_tables(parts, promote_options="permissive")
    features, cols = [], {}
    for c in t.column_names:
        if c in task_list or c == "raw_split":
            continue
        if c == domain_column:
            cols["domain"] = t.column(c)
        elif c.startswith("D"):
            if dense:
                features.append(Feature(c, "dense", _group(c)))
                cols[c] = t.column(c)
        else:
            features.append(Feature(c, "sparse", _group(c)))
            cols[c] = t.column(c)
    for k in task_list:
        cols[k] = t.column(k).cast(pa.int8())
    cols["raw_split"] = t.column("raw_split")
    user = "101" if "101" in cols else None
    schema = Schema(features=features, tasks=[Task(k) for k in task_list], domain="domain", user=user)
    return pa.table(cols), schema
