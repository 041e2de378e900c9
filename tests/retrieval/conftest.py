"""A small retrieval data set with a known answer: 4 clusters of 20 items; each user (two domains by user
group) likes 14 items of its own cluster, at increasing timestamps, and dislikes 4 random other items. The
prepared folder is split leave-last-out (the latest like of each user is test, the one before valid)."""
import numpy as np
import pyarrow as pa
import pytest

from dynarec.data.prepare import prepare_table
from dynarec.data.schema import Feature, Schema, Task

N_USERS, N_ITEMS, CLUSTERS, LIKES, DISLIKES = 80, 80, 4, 14, 4


def retrieval_table(seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows = {"user": [], "item": [], "grp": [], "like": [], "ts": []}
    per = N_ITEMS // CLUSTERS
    for u in range(N_USERS):
        c = u % CLUSTERS
        own = rng.permutation(np.arange(c * per, (c + 1) * per))[:LIKES]
        other = rng.choice(np.setdiff1d(np.arange(N_ITEMS), np.arange(c * per, (c + 1) * per)), DISLIKES, replace=False)
        items = np.concatenate([own, other])
        labels = np.r_[np.ones(LIKES), np.zeros(DISLIKES)]
        ts = rng.permutation(len(items)) + 1000 * u
        for i, y, t in zip(items, labels, ts):
            rows["user"].append(f"u{u}")
            rows["item"].append(f"i{i}")
            rows["grp"].append("young" if u % 2 else "old")
            rows["like"].append(float(y))
            rows["ts"].append(int(t))
    return pa.table(rows)


def retrieval_schema() -> Schema:
    return Schema(features=[Feature("user", kind="sparse", group="user"), Feature("item", kind="sparse", group="item")],
                  tasks=[Task("like")], domain="grp", user="user", timestamp="ts")


@pytest.fixture(scope="session")
def raw_table():
    return retrieval_table()


@pytest.fixture(scope="session")
def llo_folder(tmp_path_factory, raw_table):
    out = tmp_path_factory.mktemp("retrieval") / "prepared"
    prepare_table(raw_table, retrieval_schema(), out, split="leave_last_out")
    return out
