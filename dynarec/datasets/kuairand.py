"""KuaiRand (Kuaishou short-video feed logs, Gao et al., CIKM 2022), domains = the app ``tab``.

Raw layouts (detected):

* ``raw``: KuaiRand-1K / KuaiRand-Pure folders: ``log_*.csv`` interaction logs (user_id, video_id, date,
  hourmin, time_ms, is_click, ..., long_view, play_time_ms, duration_ms, ..., tab), joined with
  ``user_features*.csv`` on user_id and ``video_features_basic*.csv`` on video_id.
* ``merged``: the Scenario-Wise-Rec processed CSV (logs already joined with user and video features; columns
  user_id, video_id, is_click, play_time_ms, duration_ms, ..., tab, user features, video_type, ...).

Domains: the ``top_tabs`` most frequent tabs (Scenario-Wise-Rec uses the top 5); rows of other tabs are
dropped (``other_tabs=keep`` folds them into one ``tab_other`` domain).
Tasks: ``is_click`` and ``long_view`` (the log's flag, or when absent derived with KuaiRand's definition
play_time_ms >= min(duration_ms, 18 s)).
Features: user id + the categorical user profile columns (user); video_id, author_id, video_type,
upload_type, music_type, visible_status (item, where present); hour (context, from hourmin);
log1p(duration_ms) (dense, item). ``time_ms`` (or date) is kept as ``timestamp`` for temporal splits.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dynarec.data.schema import Feature, Schema, Task
from dynarec.datasets._util import Option, as_label, as_string, join_left, raw_path, read_delimited, strings, to_numpy
from dynarec.errors import DataError

NAME = "kuairand"
OPTIONS = {
    "top_tabs": Option(5, "number of most frequent tabs kept as domains"),
    "other_tabs": Option("drop", "rows of the remaining tabs", ("drop", "keep")),
    "tasks": Option("is_click,long_view", "comma-separated tasks from is_click, long_view, is_like, is_follow"),
    "logs": Option("log_*.csv", "glob of the log files (raw layout)"),
}
USER_CAT = ["user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author",
            "follow_user_num_range", "fans_user_num_range", "friend_user_num_range", "register_days_range"] + \
           [f"onehot_feat{i}" for i in range(18)]
ITEM_CAT = ["author_id", "video_type", "upload_type", "music_type", "visible_status"]
TASKS = ("is_click", "long_view", "is_like", "is_follow")


def _first(raw: Path, pattern: str) -> Path | None:
    hits = sorted(raw.glob(pattern)) or sorted(raw.glob(f"**/{pattern}"))
    return hits[0] if hits else None


def _read(raw: Path, logs: str) -> pa.Table:
    if raw.is_file():
        return read_delimited(raw, ",", expected=["user_id", "video_id", "is_click", "tab"])
    log_files = sorted(raw.glob(logs)) or sorted(raw.glob(f"**/{logs}"))
    if log_files:
        t = pa.concat_tables([read_delimited(p, ",", expected=["user_id", "video_id", "is_click", "tab"])
                              for p in log_files], promote_options="default")
        uf = _first(raw, "user_features*.csv")
        if uf is not None:
            t = join_left(t, read_delimited(uf, ",", expected=["user_id"]), "user_id", f"{NAME} {uf.name}")
        vf = _first(raw, "video_features_basic*.csv")
        if vf is not None:
            v = read_delimited(vf, ",", expected=["video_id"], column_types={"tag": pa.string()})
            t = join_left(t, v, "video_id", f"{NAME} {vf.name}")
        return t
    for p in sorted(raw.glob("*.csv")):  # a merged (Scenario-Wise-Rec) file
        with open(p, "rb") as fh:
            head = set(fh.readline().decode("utf-8", "replace").strip().split(","))
        if {"user_id", "video_id", "is_click", "tab"} <= head:
            return read_delimited(p, ",")
    raise DataError(f"{NAME}: no KuaiRand files in '{raw}' (expected log_*.csv with user_features*.csv and "
                    f"video_features_basic*.csv, or a merged CSV with user_id,video_id,is_click,tab)")


def load(raw_dir, top_tabs=5, other_tabs="drop", tasks="is_click,long_view", logs="log_*.csv"):
    raw = raw_path(raw_dir, NAME)
    task_list = [s.strip() for s in tasks.split(",") if s.strip()]
    if not task_list or set(task_list) - set(TASKS):
        raise DataError(f"{NAME}: option 'tasks' must list tasks from {', '.join(TASKS)}; got {tasks!r}")
    if top_tabs < 1:
        raise DataError(f"{NAME}: option 'top_tabs' must be >= 1, got {top_tabs}")
    t = _read(raw, logs)
    tab = as_string(t.column("tab"))
    vc = pc.value_counts(tab)
    vals = to_numpy(vc.field("values")).astype(str)
    cnt = to_numpy(vc.field("counts"))
    top = vals[np.lexsort((vals, -cnt))][:top_tabs]
    in_top = to_numpy(pc.is_in(tab, pa.array(top.tolist())))
    if other_tabs == "drop":
        t, tab, in_top = t.filter(pa.array(in_top)), tab.filter(pa.array(in_top)), in_top[in_top]
    dom = np.where(in_top, np.char.add("tab", to_numpy(tab).astype(str)), "tab_other")
    cols: dict[str, pa.Array] = {"domain": strings(dom)}
    features = [Feature("user_id", "sparse", "user"), Feature("video_id", "sparse", "item")]
    cols["user_id"], cols["video_id"] = t.column("user_id"), t.column("video_id")
    for c in USER_CAT:
        if c in t.column_names:
            cols[c] = t.column(c)
            features.append(Feature(c, "sparse", "user"))
    for c in ITEM_CAT:
        if c in t.column_names:
            cols[c] = t.column(c)
            features.append(Feature(c, "sparse", "item"))
    if "hourmin" in t.column_names:
        cols["hour"] = pa.array(to_numpy(t.column("hourmin")).astype(np.int64) // 100)
        features.append(Feature("hour", "sparse", "context"))
    dur_col = "duration_ms" if "duration_ms" in t.column_names else ("video_duration" if "video_duration" in
                                                                     t.column_names else None)
    if dur_col:
        dur = to_numpy(pc.cast(t.column(dur_col), pa.float64())).astype(np.float64)
        cols["log_duration"] = pa.array(np.log1p(np.clip(dur, 0, None)))
        features.append(Feature("log_duration", "dense", "item"))
    for task in task_list:
        if task in t.column_names:
            cols[task] = t.column(task).cast(pa.int8())
        elif task == "long_view" and {"play_time_ms", "duration_ms"} <= set(t.column_names):
            play = to_numpy(pc.cast(t.column("play_time_ms"), pa.float64()))
            d = to_numpy(pc.cast(t.column("duration_ms"), pa.float64()))
            cols["long_view"] = as_label(play >= np.minimum(d, 18_000.0))
        else:
            raise DataError(f"{NAME}: task '{task}' needs a column '{task}'"
                            + (" or play_time_ms + duration_ms" if task == "long_view" else "") + " in the raw data")
    ts = None
    if "time_ms" in t.column_names:
        cols["timestamp"], ts = t.column("time_ms"), "timestamp"
    elif "date" in t.column_names:
        cols["timestamp"], ts = t.column("date"), "timestamp"
    schema = Schema(features=features, tasks=[Task(k) for k in task_list], domain="domain", user="user_id",
                    timestamp=ts)
    return pa.table(cols), schema
