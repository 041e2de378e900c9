import numpy as np
import pyarrow as pa
import pytest

from dynarec.data.prepare import prepare_table
from dynarec.data.schema import Feature, Schema, Task
from dynarec.data.split import SPLITS, parse_split, split_indices
from dynarec.errors import ConfigError, DataError


def _raw(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    users = rng.zipf(1.6, n) % 400  # uneven group sizes
    return pa.table({"dom": rng.choice(["a", "b", "c"], n), "uid": users.astype(np.int64),
                     "click": (rng.random(n) < 0.07).astype(np.int8), "ts": rng.permutation(n),
                     "fold": rng.choice(["train", "valid", "test"], n, p=[0.6, 0.2, 0.2]),
                     "r": rng.normal(size=n), "shop": rng.integers(0, 60, n)})


def _schema():
    return Schema(features=[Feature("dom", "sparse", "domain"), Feature("uid", "sparse", "user")],
                  tasks=[Task("click"), Task("r", type="regression")], domain="dom", user="uid", timestamp="ts")


METHODS = ["random", "temporal", "stratified", "stratified:click", "group", "group:shop", "column:fold"]


@pytest.mark.parametrize("how", METHODS)
def test_every_method_is_disjoint_covering_and_reproducible(how):
    t, s = _raw(), _schema()
    fr = (0.8, 0.1, 0.1) if how.startswith("column") else (0.7, 0.15, 0.15)
    idx = split_indices(t, s, how, fr, seed=4)
    allidx = np.concatenate([idx[k] for k in SPLITS])
    assert len(np.unique(allidx)) == len(allidx) == t.num_rows
    again = split_indices(t, s, how, fr, seed=4)
    assert all(np.array_equal(idx[k], again[k]) for k in SPLITS)
    if how.split(":")[0] in ("random", "stratified", "group"):
        other = split_indices(t, s, how, fr, seed=5)
        assert not np.array_equal(idx["test"], other["test"])


def test_fractions_are_respected():
    t, s = _raw(), _schema()
    for how in ("random", "temporal", "stratified"):
        idx = split_indices(t, s, how, (0.6, 0.3, 0.1), seed=0)
        assert [len(idx[k]) for k in SPLITS] == pytest.approx([1800, 900, 300], abs=2)


def test_stratified_keeps_the_positive_rate_in_every_split():
    t, s = _raw(), _schema()
    y = t.column("click").to_numpy()
    idx = split_indices(t, s, "stratified:click", (0.8, 0.1, 0.1), seed=1)
    pos = y.sum()
    for k, f in zip(SPLITS, (0.8, 0.1, 0.1)):
        assert abs(y[idx[k]].sum() - f * pos) <= 1  # each split gets its fraction of the positives, to a row
    rnd = split_indices(t, s, "random", (0.8, 0.1, 0.1), seed=1)
    assert max(abs(y[rnd[k]].sum() - f * pos) for k, f in zip(SPLITS, (0.8, 0.1, 0.1))) > 1  # random does not


def test_group_split_puts_no_user_in_two_splits():
    t, s = _raw(), _schema()
    uid = t.column("uid").to_numpy()
    idx = split_indices(t, s, "group", (0.8, 0.1, 0.1), seed=2)
    users = [set(uid[idx[k]].tolist()) for k in SPLITS]
    assert not (users[0] & users[1]) and not (users[0] & users[2]) and not (users[1] & users[2])
    assert len(idx["train"]) / t.num_rows == pytest.approx(0.8, abs=0.1)


def test_column_split_follows_the_column_and_temporal_the_clock():
    t, s = _raw(), _schema()
    fold = np.array(t.column("fold").to_pylist())
    idx = split_indices(t, s, "column:fold")
    for k in SPLITS:
        assert (fold[idx[k]] == k).all() and len(idx[k]) == (fold == k).sum()
    ts = t.column("ts").to_numpy()
    idx = split_indices(t, s, "temporal")
    assert ts[idx["train"]].max() < ts[idx["valid"]].min() and ts[idx["valid"]].max() < ts[idx["test"]].min()


@pytest.mark.parametrize("rows,counts", [(1, "train 1, valid 0, test 0"), (5, "train 4, valid 0, test 1")])
def test_data_too_small_names_the_empty_split_and_the_row_counts(rows, counts):
    t, s = _raw(rows), _schema()
    with pytest.raises(DataError, match=f"tiny.csv: split 'valid' would be empty: {rows} row\\(s\\) split random.* "
                                        f"give {counts};"):
        prepare_table(t, s, None, source="tiny.csv")


def test_group_and_column_splits_that_leave_a_split_empty_are_errors():
    t, s = _raw(50), _schema()
    with pytest.raises(DataError, match="split 'valid' would be empty.*group:dom"):
        split_indices(t, s, "group:dom", (0.98, 0.01, 0.01))  # 3 domains, the first takes every row
    t2 = t.set_column(t.column_names.index("fold"), "fold", pa.array(["train"] * 49 + ["test"]))
    with pytest.raises(DataError, match="split 'valid' would be empty"):
        split_indices(t2, s, "column:fold")
    t3 = t.set_column(t.column_names.index("fold"), "fold", pa.array(["train"] * 48 + ["dev", "eval"]))
    with pytest.raises(DataError, match=r"split column 'fold' must hold train / valid / test; values seen: 'dev', 'eval'"):
        split_indices(t3, s, "column:fold")


def test_bad_split_options_are_config_errors():
    with pytest.raises(ConfigError, match="unknown method 'stratify' \\(did you mean 'stratified'\\?\\)"):
        parse_split("stratify:click")
    with pytest.raises(ConfigError, match="three positive numbers summing to 1"):
        parse_split("random", "0.8,0.1")
    with pytest.raises(ConfigError, match="three positive numbers summing to 1"):
        parse_split("random", (0.9, 0.1, 0.0))
    assert parse_split("group:uid", "0.7,0.2,0.1").fractions == (0.7, 0.2, 0.1)
    with pytest.raises(ConfigError, match="fractions do not apply"):
        parse_split("column:fold", "0.7,0.2,0.1")
    with pytest.raises(ConfigError, match="'random' takes no column"):
        parse_split("random:uid")
    t, s = _raw(100), _schema()
    with pytest.raises(ConfigError, match="stratified needs a binary task; 'r' is regression"):
        split_indices(t, s, "stratified:r")
    with pytest.raises(ConfigError, match="no task or column named 'clik'"):
        split_indices(t, s, "stratified:clik")
    with pytest.raises(DataError, match="missing column 'nope'"):
        split_indices(t, s, "column:nope")
    t4 = t.set_column(t.column_names.index("ts"), "ts", pa.array([None] + list(range(99)), pa.int64()))
    with pytest.raises(DataError, match="timestamp column 'ts' has 1 missing value"):
        split_indices(t4, s, "temporal")
