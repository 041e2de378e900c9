"""Douban book / movie / music: three domains sharing users (music is the small, cold domain).

Raw layouts (detected from the files present, or forced with ``layout``):

* ``diffmsr`` (Diff-MSR ``dataset/Douban/``): ``douban_{music,book,movie}_{train,val,test}.csv`` with header
  ``0,1,2,3`` = (domain id: 0 music, 1 book, 2 movie; user; item; label = rating > 3); items are globally
  offset, so ids do not collide across domains. ``douban_<domain>_sparse.csv`` (the union of that domain's
  split files) is read only for a domain without split files. The raw file split is kept in ``raw_split``.
* ``gadtcdr`` (GA-DTCDR ``Data/``): ``douban_{book,music,movie}_ratings.dat``, ``user \\t item \\t rating``
  (1-5), no header; label = rating > ``min_rating_exclusive`` (3); item ids are prefixed with the domain.
* ``scwr`` (Scenario-Wise-Rec processed CSV): ``user_id,item_id,rating,domain,living_place,join_time,time_bin``
  with a binary ``rating``; adds living_place (user) and time_bin (context) features.

Task: ``like``. Features: user_id (user), item_id (item), domain (+ scwr's extras).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dynarec.data.schema import Feature, Schema, Task
from dynarec.datasets._util import Option, as_label, as_string, raw_path, read_delimited, strings, to_numpy
from dynarec.errors import DataError

NAME = "douban"
OPTIONS = {
    "layout": Option("auto", "raw layout", ("auto", "diffmsr", "gadtcdr", "scwr")),
    "domains": Option("book,movie,music", "comma-separated domains to keep"),
    "min_rating_exclusive": Option(3, "gadtcdr layout: like = rating > this"),
}
DIFFMSR_DOMAINS = {0: "music", 1: "book", 2: "movie"}
DOMAINS = ("book", "movie", "music")
_DIFFMSR = re.compile(r"douban_(music|book|movie)_(train|val|test|sparse)\.csv(\.gz)?$")
_GADTCDR = re.compile(r"douban_(music|book|movie)_ratings\.dat(\.gz)?$")


def _files(raw: Path, pattern: re.Pattern) -> list[tuple[Path, re.Match]]:
    paths = [raw] if raw.is_file() else sorted(raw.rglob("*"))
    return [(p, m) for p in paths if (m := pattern.search(p.name))]


def _scwr_file(raw: Path) -> Path | None:
    paths = [raw] if raw.is_file() else sorted(raw.glob("*.csv"))
    for p in paths:
        with open(p, "rb") as fh:
            head = fh.readline().decode("utf-8", "replace").strip().split(",")
        if {"user_id", "item_id", "rating", "domain"} <= set(head):
            return p
    return None


def _read_diffmsr(raw: Path, keep: set[str]) -> pa.Table:
    found = _files(raw, _DIFFMSR)
    parts = []
    for dom in DOMAINS:
        if dom not in keep:
            continue
        mine = [(p, m.group(2)) for p, m in found if m.group(1) == dom]
        splits = [(p, s) for p, s in mine if s != "sparse"] or mine  # the sparse file = union of the splits
        for p, s in splits:
            t = read_delimited(p, ",", expected=["0", "1", "2", "3"])
            d = to_numpy(t.column("0"))
            bad = ~np.isin(d, list(DIFFMSR_DOMAINS))
            if bad.any():
                raise DataError(f"{p}: domain id {d[bad][0]} (column 0) is not one of 0 music, 1 book, 2 movie")
            parts.append(pa.table({
                "domain": strings(np.array([DIFFMSR_DOMAINS[i] for i in range(3)], dtype=object)[d]),
                "user_id": t.column("1").cast(pa.int64()), "item_id": t.column("2").cast(pa.int64()),
                "like": t.column("3").cast(pa.int8()),
                "raw_split": strings(np.full(t.num_rows, s, dtype=object)),
            }))
    if not parts:
        raise DataError(f"{NAME}: no Diff-MSR files douban_<book|movie|music>_<train|val|test>.csv for domains "
                        f"{sorted(keep)} in '{raw}'")
    return pa.concat_tables(parts)


def _read_gadtcdr(raw: Path, keep: set[str], min_rating_exclusive: int) -> pa.Table:
    parts = []
    for p, m in _files(raw, _GADTCDR):
        dom = m.group(1)
        if dom not in keep:
            continue
        t = read_delimited(p, "\t", ["user", "item", "rating"], quoting=False)
        rating = to_numpy(t.column("rating")).astype(np.float64)
        parts.append(pa.table({
            "domain": strings(np.full(t.num_rows, dom, dtype=object)),
            "user_id": t.column("user").cast(pa.int64()),
            "item_id": pc.binary_join_element_wise(pa.scalar(dom), as_string(t.column("item")), ":"),
            "like": as_label(rating > min_rating_exclusive),
        }))
    if not parts:
        raise DataError(f"{NAME}: no GA-DTCDR files douban_<book|music|movie>_ratings.dat for domains "
                        f"{sorted(keep)} in '{raw}'")
    return pa.concat_tables(parts)


def _read_scwr(raw: Path, keep: set[str]) -> pa.Table:
    p = _scwr_file(raw)
    t = read_delimited(p, ",", column_types={"living_place": pa.string(), "join_time": pa.string(),
                                             "domain": pa.string()},
                       expected=["user_id", "item_id", "rating", "domain", "living_place", "time_bin"])
    t = t.filter(pc.is_in(t.column("domain"), pa.array(sorted(keep))))
    r = to_numpy(t.column("rating"))
    if not np.isin(r, (0, 1)).all():
        raise DataError(f"{p}: column 'rating' must be binary 0/1 in the Scenario-Wise-Rec layout")
    return pa.table({"domain": t.column("domain"), "user_id": t.column("user_id"), "item_id": t.column("item_id"),
                     "living_place": t.column("living_place"), "time_bin": t.column("time_bin"),
                     "like": t.column("rating").cast(pa.int8())})


def load(raw_dir, layout="auto", domains="book,movie,music", min_rating_exclusive=3) -> tuple[pa.Table, Schema]:
    raw = raw_path(raw_dir, NAME)
    keep = {d.strip() for d in domains.split(",") if d.strip()}
    if not keep or keep - set(DOMAINS):
        raise DataError(f"{NAME}: option 'domains' must list domains from {', '.join(DOMAINS)}; got {domains!r}")
    if layout == "auto":
        layout = ("diffmsr" if _files(raw, _DIFFMSR) else "gadtcdr" if _files(raw, _GADTCDR)
                  else "scwr" if _scwr_file(raw) else "")
        if not layout:
            raise DataError(f"{NAME}: no Douban raw files in '{raw}' (expected Diff-MSR "
                            f"douban_<domain>_<split>.csv, GA-DTCDR douban_<domain>_ratings.dat, or a "
                            f"Scenario-Wise-Rec CSV with user_id,item_id,rating,domain)")
    features = [Feature("user_id", "sparse", "user"), Feature("item_id", "sparse", "item")]
    if layout == "diffmsr":
        t = _read_diffmsr(raw, keep)
    elif layout == "gadtcdr":
        t = _read_gadtcdr(raw, keep, min_rating_exclusive)
    else:
        if _scwr_file(raw) is None:
            raise DataError(f"{NAME}: no Scenario-Wise-Rec CSV (user_id,item_id,rating,domain) in '{raw}'")
        t = _read_scwr(raw, keep)
        features += [Feature("living_place", "sparse", "user"), Feature("time_bin", "sparse", "context")]
    schema = Schema(features=features, tasks=[Task("like")], domain="domain", user="user_id")
    return t, schema
