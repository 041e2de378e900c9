"""AliExpress (search logs of AliExpress, released with AITM, Xi et al. KDD 2021; used by PLE / MMoE
benchmarks), per-country layout: one folder per country, ``AliExpress_<CC>/train.csv`` and ``test.csv``
(``<CC>`` in NL, ES, FR, US, RU), each with header ``search_id, categorical_1..16, numerical_1..63, click,
conversion``. A folder without ``AliExpress_<CC>`` sub-folders is read as one country named after it (e.g.
the torch-rechub samples ``aliexpress_train_sample.csv``).

Domain: the country (default; the standard multi-scenario use of this dataset) or any column via
``domain=<column>``. Tasks: ``click`` and ``conversion``. Features: ``categorical_*`` (sparse) and
``numerical_*`` (dense). The dataset does not document which fields are user / item fields, so all of them
are in group ``context``; ``search_id`` (the query) is kept for gAUC as the ``user`` column. The file's
train / test membership is kept in ``raw_split``.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from dynarec.data.schema import Feature, Schema, Task
from dynarec.datasets._util import Option, raw_path, read_delimited, strings
from dynarec.errors import DataError

NAME = "aliexpress"
OPTIONS = {
    "domain": Option("country", "'country' (from the AliExpress_<CC> folder names) or a column name"),
    "countries": Option("", "comma-separated country codes to keep (empty = all)"),
    "numerical": Option(True, "include the numerical_* dense columns"),
}
_COUNTRY = re.compile(r"^AliExpress_([A-Za-z]{2})$", re.I)
_SPLIT = re.compile(r"(train|val|valid|test)", re.I)


def _country_files(raw: Path) -> list[tuple[str, str, Path]]:
    out = []
    if raw.is_file():
        return [(raw.parent.name, "all", raw)]
    for p in sorted(raw.rglob("*.csv")):
        dirs = [m.group(1).upper() for d in p.relative_to(raw.parent).parts[:-1] if (m := _COUNTRY.match(d))]
        country = dirs[-1] if dirs else raw.name
        s = _SPLIT.search(p.name)
        out.append((country, s.group(1).lower() if s else "all", p))
    return out


def load(raw_dir, domain="country", countries="", numerical=True):
    raw = raw_path(raw_dir, NAME)
    files = _country_files(raw)
    keep = {c.strip().upper() for c in countries.split(",") if c.strip()}
    if keep:
        files = [f for f in files if f[0] in keep]
    if not files:
        raise DataError(f"{NAME}: no AliExpress CSV files in '{raw}'"
                        + (f" for countries {sorted(keep)}" if keep else "") +
                        " (expected AliExpress_<CC>/train.csv, test.csv)")
    parts = []
    for country, split, p in files:
        t = read_delimited(p, ",", expected=["click", "conversion", "categorical_1"])
        n = t.num_rows
        t = t.append_column("country", strings(np.full(n, country, dtype=object)))
        parts.append(t.append_column("raw_split", strings(np.full(n, split, dtype=object))))
    t = pa.concat_tables(parts, promote_options="permissive")
    if domain != "country" and domain not in t.column_names:
        raise DataError(f"{NAME}: option 'domain' names no column: '{domain}' (use 'country' or a column name)")
    cols = {"domain": t.column(domain)}
    features = []
    for c in t.column_names:
        if c.startswith("categorical_") and c != domain:
            features.append(Feature(c, "sparse", "context"))
            cols[c] = t.column(c)
        elif c.startswith("numerical_") and numerical:
            features.append(Feature(c, "dense", "context"))
            cols[c] = t.column(c)
    cols["click"], cols["conversion"] = t.column("click").cast(pa.int8()), t.column("conversion").cast(pa.int8())
    user = None
    if "search_id" in t.column_names:
        cols["search_id"], user = t.column("search_id"), "search_id"
    cols["raw_split"] = t.column("raw_split")
    schema = Schema(features=features, tasks=[Task("click"), Task("conversion")], domain="domain", user=user)
    return pa.table(cols), schema
