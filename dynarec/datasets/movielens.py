"""MovieLens 100K / 1M (GroupLens), as a multi-domain, multi-task CTR dataset.

Raw layouts (detected from the files present, or forced with ``version``):

* ``100k``: ``u.data`` (user \\t item \\t rating \\t timestamp), ``u.user`` (user|age|gender|occupation|zip),
  ``u.item`` (latin-1, ``|``-separated, 19 genre flags at the end).
* ``1m``: ``ratings.dat`` (UserID::MovieID::Rating::Timestamp), ``users.dat``
  (UserID::Gender::Age::Occupation::Zip, age coded 1/18/25/35/45/50/56), ``movies.dat``
  (MovieID::Title::Genres, latin-1, genres ``|``-separated).
* ``merged``: one CSV with header ``user_id,movie_id,rating,timestamp,title,genres,gender,age,occupation,zip``
  (the merged 1M file used by Scenario-Wise-Rec / DeepCTR / HAMUR).

Domains (``domain``): ``age`` as in the Scenario-Wise-Rec benchmark (age < 25 / 25-34 / 35+; on 1M's codes
{1, 18} / {25} / {35, 45, 50, 56}), ``gender``, ``occupation`` or ``none``.
Tasks: ``like`` = rating >= ``like_min`` (default 4, i.e. Scenario-Wise-Rec's ``rating > 3``),
``love`` = rating == 5, optionally ``rating`` (regression).
Features: user_id, gender, age, occupation, zip prefix (user); item_id, genres (item; a sequence
feature); the raw ``timestamp`` is kept for ``split=temporal``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dynarec.data.schema import Feature, Schema, Task
from dynarec.datasets._util import (Option, as_label, as_string, find_file, join_left, raw_path, read_delimited,
                                    strings, to_numpy)
from dynarec.errors import DataError

NAME = "movielens"
OPTIONS = {
    "version": Option("auto", "raw layout", ("auto", "100k", "1m", "merged")),
    "domain": Option("age", "what defines the domains", ("age", "gender", "occupation", "none")),
    "like_min": Option(4, "like = rating >= like_min (4 == Scenario-Wise-Rec's rating > 3)"),
    "tasks": Option("like,love", "comma-separated tasks from like, love, rating (regression)"),
    "zip_prefix": Option(3, "leading zip-code characters kept as a feature (0 drops the feature)"),
    "max_genres": Option(6, "max length of the genres sequence feature"),
    "file": Option(None, "the merged CSV file name (version=merged); default: the first *.csv / *.txt with a movie_id column"),
}

GENRES_100K = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
               "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
               "War", "Western"]
AGE_DOMAINS = ("age<25", "age25-34", "age35+")
TASKS = ("like", "love", "rating")


def _detect(raw: Path) -> str:
    if find_file(raw, ["u.data"], NAME, required=False):
        return "100k"
    if find_file(raw, ["ratings.dat"], NAME, required=False):
        return "1m"
    if _merged_file(raw, None, required=False):
        return "merged"
    raise DataError(f"{NAME}: no MovieLens raw files in '{raw}' (expected u.data/u.user/u.item for 100K, "
                    f"ratings.dat/users.dat/movies.dat for 1M, or a merged CSV with a movie_id column)")


def _merged_file(raw: Path, name: str | None, required: bool = True) -> Path | None:
    if name:
        return find_file(raw, [name], NAME)
    if raw.is_file():
        return raw
    for p in sorted(list(raw.glob("*.csv")) + list(raw.glob("*.txt"))):
        with open(p, "rb") as fh:
            head = fh.readline().decode("utf-8", "replace")
        if "movie_id" in head.split(","):
            return p
    if required:
        raise DataError(f"{NAME}: no merged CSV (header with movie_id) in '{raw}'")
    return None


def _read_100k(raw: Path) -> pa.Table:
    r = read_delimited(find_file(raw, ["u.data"], NAME, "MovieLens 100K ratings"), "\t",
                       ["user_id", "item_id", "rating", "timestamp"])
    u = read_delimited(find_file(raw, ["u.user"], NAME, "MovieLens 100K users"), "|",
                       ["user_id", "age", "gender", "occupation", "zip"],
                       column_types={"zip": pa.string(), "occupation": pa.string()}, quoting=False)
    item_path = find_file(raw, ["u.item"], NAME, "MovieLens 100K movies")
    names = ["item_id", "title", "release", "video_release", "url"] + [f"g{i}" for i in range(len(GENRES_100K))]
    it = read_delimited(item_path, "|", names, encoding="latin-1", quoting=False,
                        column_types={"title": pa.string(), "release": pa.string(), "video_release": pa.string(),
                                      "url": pa.string()})
    flags = np.stack([to_numpy(it.column(f"g{i}")).astype(bool) for i in range(len(GENRES_100K))], 1)
    genres = ["|".join(GENRES_100K[j] for j in np.flatnonzero(row)) for row in flags]  # 1,682 items: cheap
    it = pa.table({"item_id": it.column("item_id"), "genres": strings(genres)})
    t = join_left(r, u, "user_id", f"{NAME} u.user")
    return join_left(t, it, "item_id", f"{NAME} u.item")


def _read_1m(raw: Path) -> pa.Table:
    r = read_delimited(find_file(raw, ["ratings.dat"], NAME, "MovieLens 1M ratings"), "::",
                       ["user_id", "item_id", "rating", "timestamp"], quoting=False)
    u = read_delimited(find_file(raw, ["users.dat"], NAME, "MovieLens 1M users"), "::",
                       ["user_id", "gender", "age", "occupation", "zip"], quoting=False,
                       column_types={"zip": pa.string(), "occupation": pa.string()})
    m = read_delimited(find_file(raw, ["movies.dat"], NAME, "MovieLens 1M movies"), "::",
                       ["item_id", "title", "genres"], encoding="latin-1", quoting=False,
                       column_types={"title": pa.string(), "genres": pa.string()})
    t = join_left(r, u, "user_id", f"{NAME} users.dat")
    return join_left(t, m.select(["item_id", "genres"]), "item_id", f"{NAME} movies.dat")


def _read_merged(raw: Path, name: str | None) -> pa.Table:
    t = read_delimited(_merged_file(raw, name), ",", column_types={"zip": pa.string(), "occupation": pa.string(),
                                                                   "genres": pa.string()},
                       expected=["user_id", "movie_id", "rating", "timestamp", "genres", "gender", "age",
                                 "occupation", "zip"])
    return t.rename_columns(["item_id" if c == "movie_id" else c for c in t.column_names])


def age_domain(age: np.ndarray) -> np.ndarray:
    """Scenario-Wise-Rec's three age groups: < 25, 25-34, 35+ (works on raw ages and on 1M's codes)."""
    age = np.asarray(age)
    return np.array(AGE_DOMAINS, dtype=object)[np.digitize(age, [25, 35])]


def load(raw_dir, version="auto", domain="age", like_min=4, tasks="like,love", zip_prefix=3, max_genres=6,
         file=None) -> tuple[pa.Table, Schema]:
    raw = raw_path(raw_dir, NAME)
    task_list = [s.strip() for s in tasks.split(",") if s.strip()]
    bad = [s for s in task_list if s not in TASKS]
    if bad or not task_list:
        raise DataError(f"{NAME}: option 'tasks' must list tasks from {', '.join(TASKS)}; got {tasks!r}")
    version = _detect(raw) if version == "auto" else version
    t = {"100k": lambda: _read_100k(raw), "1m": lambda: _read_1m(raw),
         "merged": lambda: _read_merged(raw, file)}[version]()
    n_missing = t.column("gender").null_count + t.column("genres").null_count
    if n_missing:
        raise DataError(f"{NAME}: {n_missing} rating row(s) reference a user or movie missing from the user / "
                        f"movie file")
    rating = to_numpy(t.column("rating")).astype(np.float64)
    age = to_numpy(t.column("age")).astype(np.int64)
    cols: dict[str, pa.Array] = {
        "user_id": t.column("user_id"), "item_id": t.column("item_id"),
        "gender": t.column("gender"), "age": t.column("age"), "occupation": as_string(t.column("occupation")),
    }
    features = [Feature("user_id", "sparse", "user"), Feature("gender", "sparse", "user"),
                Feature("age", "sparse", "user"), Feature("occupation", "sparse", "user")]
    if zip_prefix > 0:
        cols["zip"] = pc.utf8_slice_codeunits(as_string(t.column("zip")), 0, zip_prefix)
        features.append(Feature("zip", "sparse", "user"))
    features += [Feature("item_id", "sparse", "item"),
                 Feature("genres", "sequence", "item", max_len=max_genres, separator="|")]
    cols["genres"] = t.column("genres")
    if domain == "age":
        dom = strings(age_domain(age))
    elif domain == "none":
        dom = strings(np.full(t.num_rows, "all", dtype=object))
    else:
        dom = as_string(t.column(domain))
    cols["domain"] = dom
    for task in task_list:
        if task == "like":
            cols["like"] = as_label(rating >= like_min)
        elif task == "love":
            cols["love"] = as_label(rating == 5)
        else:
            cols["rating"] = pa.array(rating.astype(np.float32))
    cols["timestamp"] = t.column("timestamp")
    schema = Schema(features=features,
                    tasks=[Task(k, "regression" if k == "rating" else "binary") for k in task_list],
                    domain="domain", user="user_id", timestamp="timestamp")
    return pa.table(cols), schema
