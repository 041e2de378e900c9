"""Amazon product reviews (McAuley et al.), 5-core files, one domain per product category.

Raw layouts, any number of categories in one folder (the category is taken from the file name):

* 2014 5-core JSON lines ``reviews_<Category>_5.json[.gz]`` and 2018 ``<Category>_5.json[.gz]``: one
  review per line with ``reviewerID``, ``asin``, ``overall`` (1-5), ``unixReviewTime``.
* ratings-only CSV (no header): 2014 ``ratings_<Category>.csv`` = user,item,rating,timestamp; 2018
  ``<Category>.csv`` = item,user,rating,timestamp.

Task: ``like`` = overall > ``min_rating_exclusive`` (3). Features: user_id (user), item_id (item); the
review time is kept as ``timestamp`` for temporal splits. ``min_core`` > 0 re-applies the k-core filter
per category (users and items with fewer ratings are removed, one pass).
"""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from dynarec.data.schema import Feature, Schema, Task
from dynarec.datasets._util import Option, as_label, raw_path, read_bytes, read_delimited, strings, to_numpy
from dynarec.errors import DataError

NAME = "amazon"
OPTIONS = {
    "categories": Option("", "comma-separated categories to keep, as in the file names (empty = all)"),
    "min_rating_exclusive": Option(3, "like = rating > this"),
    "min_core": Option(0, "re-apply a k-core filter (0 = keep the files as they are)"),
}
_JSON = re.compile(r"^(?:reviews_)?(.+?)_5\.json(?:\.gz)?$")
_CSV14 = re.compile(r"^ratings_(.+?)\.csv(?:\.gz)?$")
_CSV18 = re.compile(r"^(.+?)\.csv(?:\.gz)?$")
_JSON_SCHEMA = pa.schema([("reviewerID", pa.string()), ("asin", pa.string()), ("overall", pa.float64()),
                          ("unixReviewTime", pa.int64())])


def _read_json(p: Path) -> pa.Table:
    try:
        t = pajson.read_json(io.BytesIO(read_bytes(p)), parse_options=pajson.ParseOptions(
            explicit_schema=_JSON_SCHEMA, unexpected_field_behavior="ignore"))
    except pa.ArrowInvalid as e:
        raise DataError(f"{p}: not a JSON-lines review file ({str(e).splitlines()[0]})") from None
    for c in ("reviewerID", "asin", "overall"):
        if t.column(c).null_count == t.num_rows:
            raise DataError(f"{p}: reviews have no '{c}' field")
    return pa.table({"user_id": t.column("reviewerID"), "item_id": t.column("asin"),
                     "rating": t.column("overall"), "timestamp": t.column("unixReviewTime")})


def _read_csv(p: Path, layout: str) -> pa.Table:
    names = ["user_id", "item_id", "rating", "timestamp"] if layout == "2014" else \
        ["item_id", "user_id", "rating", "timestamp"]
    t = read_delimited(p, ",", names, column_types={"user_id": pa.string(), "item_id": pa.string()})
    return t.select(["user_id", "item_id", "rating", "timestamp"])


def _core(t: pa.Table, k: int) -> pa.Table:
    for col in ("user_id", "item_id"):
        vc = pc.value_counts(t.column(col))
        ok = vc.field("values").filter(pc.greater_equal(vc.field("counts"), k))
        t = t.filter(pc.is_in(t.column(col), ok))
    return t


def load(raw_dir, categories="", min_rating_exclusive=3, min_core=0):
    raw = raw_path(raw_dir, NAME)
    keep = {c.strip() for c in categories.split(",") if c.strip()}
    paths = [raw] if raw.is_file() else sorted(p for p in raw.iterdir() if p.is_file())
    parts = []
    for p in paths:
        if (m := _JSON.match(p.name)):
            cat, reader = m.group(1), _read_json
        elif (m := _CSV14.match(p.name)):
            cat, reader = m.group(1), lambda q: _read_csv(q, "2014")
        elif (m := _CSV18.match(p.name)):
            cat, reader = m.group(1), lambda q: _read_csv(q, "2018")
        else:
            continue
        if keep and cat not in keep:
            continue
        t = reader(p)
        if min_core > 0:
            t = _core(t, min_core)
        parts.append(t.append_column("domain", strings(np.full(t.num_rows, cat, dtype=object))))
    if not parts:
        raise DataError(f"{NAME}: no Amazon review files in '{raw}'" + (f" for categories {sorted(keep)}" if keep
                        else "") + " (expected reviews_<Category>_5.json[.gz], <Category>_5.json[.gz], "
                        "ratings_<Category>.csv or <Category>.csv)")
    t = pa.concat_tables(parts)
    rating = to_numpy(pc.cast(t.column("rating"), pa.float64()))
    out = pa.table({"domain": t.column("domain"), "user_id": t.column("user_id"), "item_id": t.column("item_id"),
                    "like": as_label(rating > min_rating_exclusive), "timestamp": t.column("timestamp")})
    schema = Schema(features=[Feature("user_id", "sparse", "user"), Feature("item_id", "sparse", "item")],
                    tasks=[Task("like")], domain="domain", user="user_id", timestamp="timestamp")
    return out, schema
