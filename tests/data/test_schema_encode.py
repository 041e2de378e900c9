import numpy as np
import pyarrow as pa
import pytest

from dynarec.data.encode import Encoders, pad_sequences
from dynarec.data.schema import Feature, Schema, Task
from dynarec.errors import DataError, SchemaError


def _schema(**kw):
    feats = kw.pop("features", None) or [
        Feature("dom", "sparse", "domain"), Feature("uid", "sparse", "user", min_count=2),
        Feature("price", "dense", "item", missing_indicator=True), Feature("hist", "sequence", "user", table="cat", max_len=3),
        Feature("cat", "sparse", "item", table="cat")]
    return Schema(features=feats, tasks=[Task("click")], domain="dom", **kw)


def _table():
    return pa.table({"dom": ["a", "a", "b", "b", "c"], "uid": [1, 1, 2, 3, 1],
                     "price": [1.0, None, 3.0, 5.0, float("nan")], "hist": ["x|y", "", "y|z|x|x", "z", "q"],
                     "cat": ["x", "y", "z", "y", "x"], "click": [0, 1, 1, 0, 1]})


def test_label_used_as_feature_is_an_error():
    with pytest.raises(SchemaError, match="label column 'click'"):
        Schema(features=[Feature("click", "sparse", "item")], tasks=[Task("click")], domain="d")


def test_unknown_schema_key_names_the_closest_key():
    with pytest.raises(SchemaError, match="unknown key 'tsks'.*'tasks'"):
        Schema.from_dict({"features": [], "tsks": [], "domain": "d"})
    with pytest.raises(SchemaError, match="key .kind. expects one of sparse, dense, sequence"):
        Feature("x", kind="categorical")


def test_schema_json_round_trip(tmp_path):
    s = _schema(user="uid")
    s.save(tmp_path / "schema.json")
    s2 = Schema.load(tmp_path / "schema.json")
    assert s2.to_dict() == s.to_dict()
    assert [f.name for f in s2.fields] == ["dom", "uid", "cat", "hist"]  # sparse first, then sequences


def test_encoders_fit_on_train_min_count_unknown_and_shared_tables():
    s = _schema()
    t = _table()
    enc = Encoders(s).fit(t)
    # uid: 1 appears 3x, 2 and 3 once -> with min_count=2 only '1' gets an id; others map to 0
    out = enc.transform(t, "t")
    assert out["uid"].tolist() == [1, 1, 0, 0, 1]
    # shared table: 'cat' and 'hist' use one vocabulary -> same id for the same value
    cat_ids = dict(zip(t.column("cat").to_pylist(), out["cat"].tolist()))
    assert out["hist"][0, 0] == cat_ids["x"] and out["hist"][0, 1] == cat_ids["y"]
    assert s.feature("cat").vocab_size == s.feature("hist").vocab_size == enc.cat["cat"].size
    # unseen values at inference map to 0 and are counted
    new = pa.table({"dom": ["zz", "a"], "uid": [1, 99], "price": [2.0, 2.0], "hist": ["nope", "x"],
                    "cat": ["x", "nope"], "click": [0, 1]})
    o2 = enc.transform(new, "new")
    assert o2["dom"].tolist()[0] == 0 and enc.unknown_counts["dom"] == 1
    assert enc.unknown_counts["cat"] == 1 and enc.unknown_counts["hist"] == 1 and o2["hist"][0, 0] == 0


def test_dense_nan_fill_indicator_normalise_and_error_policy():
    s = _schema()
    t = _table()
    enc = Encoders(s).fit(t)
    out = enc.transform(t, "t")
    ok = np.array([1.0, 3.0, 5.0])
    assert enc.dense["price"].mean == pytest.approx(ok.mean())
    assert out["price"][[0, 2, 3]] == pytest.approx((ok - ok.mean()) / ok.std(), abs=1e-6)
    assert out["price"][[1, 4]].tolist() == [0.0, 0.0]
    assert out["price__missing"].tolist() == [0, 1, 0, 0, 1]
    s.feature("price").nan_policy = "error"
    with pytest.raises(DataError, match="'price' has 2 NaN"):
        enc.transform(t, "t")


def test_non_binary_label_is_an_error():
    s = _schema()
    t = _table().set_column(5, "click", pa.array([0, 1, 2, 0, 1]))
    enc = Encoders(s).fit(_table())
    with pytest.raises(DataError, match="'click' must be binary"):
        enc.transform(t, "t")


def test_pad_sequences_truncates_and_pads():
    ids = np.array([5, 6, 7, 8, 9, 1], dtype=np.int32)
    offs = np.array([0, 2, 2, 6])
    out = pad_sequences(ids, offs, 3)
    assert out.tolist() == [[5, 6, 0], [0, 0, 0], [7, 8, 9]]


def test_empty_sequence_string_is_no_unknown_token():
    s = _schema()
    enc = Encoders(s).fit(_table())
    new = pa.table({"dom": ["a", "a", "b"], "uid": [1, 1, 1], "price": [1.0, 1.0, 1.0], "hist": ["", "x||y", "nope|"],
                    "cat": ["x", "x", "x"], "click": [0, 1, 0]})
    out = enc.transform(new, "new")
    assert enc.unknown_counts["hist"] == 1  # only 'nope'; neither '' nor the empty token of 'x||y' / 'nope|'
    assert out["hist"][0].tolist() == [0, 0, 0]
    x, y = (enc.cat["cat"].vocab.index(v) + 1 for v in "xy")
    assert out["hist"][1].tolist() == [x, 0, y]  # positions unchanged: the empty token is padding id 0
    # a list-typed sequence column: an empty list and an empty-string item are no unknowns either
    lst = new.set_column(3, "hist", pa.array([[], ["x", ""], ["nope"]], pa.list_(pa.string())))
    enc.transform(lst, "list")
    assert enc.unknown_counts["hist"] == 1
