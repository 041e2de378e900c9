import numpy as np
import pyarrow as pa
import pytest
import torch

from dynarec.data.encode import Encoders
from dynarec.data.numeric import NumericEncoder
from dynarec.data.prepare import prepare_table, split_indices
from dynarec.data.schema import Feature, Schema, Task
from dynarec.errors import DataError, SchemaError


def _schema(*dense):
    return Schema(features=[Feature("dom", "sparse", "domain"), *dense], tasks=[Task("y")], domain="dom")


def _table(x):
    n = len(x)
    return pa.table({"dom": ["a"] * n, "x": pa.array(x, pa.float64()), "y": [i % 2 for i in range(n)]})


def _encode(f, train, test=None):
    s = _schema(f)
    enc = Encoders(s).fit(_table(train))
    return enc, enc.transform(_table(train if test is None else test), "t")["x"], s


def test_fill_value_is_in_raw_units_before_standardising():
    raw = [1.0, None, 3.0, 5.0]
    enc, out, _ = _encode(Feature("x", "dense", fill_value=-1.0), raw)
    filled = np.array([1.0, -1.0, 3.0, 5.0])
    assert out == pytest.approx((filled - filled.mean()) / filled.std(), abs=1e-6)  # -1 raw, not -1 sigma
    _, out, _ = _encode(Feature("x", "dense", fill_value=-1.0, normalize=False), raw)
    assert out.tolist() == [1.0, -1.0, 3.0, 5.0]
    with pytest.raises(DataError, match="log1p needs values > -1, got -1"):  # the fill comes before log1p
        _encode(Feature("x", "dense", fill_value=-1.0, transform="log1p"), [1.0, None])


def test_fill_before_log1p_and_clip_in_raw_units():
    _, out, _ = _encode(Feature("x", "dense", fill_value=9.0, transform="log1p", normalize=False), [0.0, None, 99.0])
    assert out == pytest.approx(np.log1p([0.0, 9.0, 99.0]), abs=1e-6)
    _, out, _ = _encode(Feature("x", "dense", clip=[None, 10.0], normalize=False), [1.0, 50.0, -3.0])
    assert out.tolist() == [1.0, 10.0, -3.0]
    _, out, _ = _encode(Feature("x", "dense", clip=[0, 10], transform="log1p", normalize=False), [-5.0, 50.0])
    assert out == pytest.approx(np.log1p([0.0, 10.0]), abs=1e-6)
    with pytest.raises(DataError, match="'x': transform log1p needs values > -1, got -5"):
        _encode(Feature("x", "dense", transform="log1p"), [-5.0, 1.0])


def test_default_fill_keeps_the_old_behaviour_missing_becomes_the_train_mean():
    _, out, _ = _encode(Feature("x", "dense"), [1.0, None, 3.0, 5.0])
    ok = np.array([1.0, 3.0, 5.0])
    assert out[[0, 2, 3]] == pytest.approx((ok - ok.mean()) / ok.std(), abs=1e-6) and out[1] == 0.0


def test_scaling_is_fitted_on_train_only():
    f = Feature("x", "dense", normalize="minmax")
    enc, out, _ = _encode(f, [2.0, 4.0, 6.0], test=[0.0, 4.0, 10.0])
    assert (enc.dense["x"].min, enc.dense["x"].max) == (2.0, 6.0)
    assert out.tolist() == [-0.5, 0.5, 2.0]
    enc, out, _ = _encode(Feature("x", "dense"), [2.0, 4.0, 6.0], test=[100.0])
    assert enc.dense["x"].mean == 4.0 and out[0] == pytest.approx((100 - 4) / np.std([2, 4, 6]))


def test_quantile_buckets_fitted_on_train_become_an_embedded_field():
    train = np.arange(1, 101, dtype=float).tolist() + [None]
    enc, ids, s = _encode(Feature("x", "dense", "item", buckets=4), train, test=[-1e9, 25.0, 26.0, 1e9, None])
    e = enc.dense["x"]
    assert e.edges == pytest.approx(np.quantile(np.arange(1, 101), [0.25, 0.5, 0.75]).tolist())
    assert ids.dtype == np.int32 and ids.tolist() == [1, 1, 2, 4, 0]  # 0 = missing; outside train range clamps
    f = s.feature("x")
    assert f.vocab_size == 5 and f in s.sparse and f not in s.dense and s.dense_dim == 0
    assert [g.name for g in s.fields] == ["dom", "x"]


def test_given_boundaries_and_fill_then_bucket():
    _, ids, s = _encode(Feature("x", "dense", boundaries=[0, 10, 100], fill_value=50), [-1.0, 0.0, 9.9, 10.0, 500.0, None])
    assert ids.tolist() == [1, 2, 2, 3, 4, 3]
    assert s.feature("x").vocab_size == 5


def test_buckets_through_prepare_use_train_rows_only_and_feed_a_model():
    from dynarec.models import build_model

    rng = np.random.default_rng(0)
    n = 2000
    x = rng.exponential(10.0, n)
    t = pa.table({"dom": rng.choice(["a", "b"], n), "x": x, "z": rng.normal(size=n), "y": (rng.random(n) < x / 40).astype(int)})
    s = Schema(features=[Feature("dom", "sparse", "domain"), Feature("x", "dense", "item", buckets=8),
                         Feature("z", "dense", "context")], tasks=[Task("y")], domain="dom")
    idx = split_indices(t, s, "random", seed=0)
    x2 = x.copy()
    x2[idx["test"]] *= 1000  # test rows far outside: the fitted edges must not move
    tables = prepare_table(t.set_column(1, "x", pa.array(x2)), s, None, seed=0)
    edges = np.quantile(x[idx["train"]], np.linspace(0, 1, 9)[1:-1])
    col = [f.name for f in s.sparse].index("x")
    assert torch.equal(tables["train"].sparse[:, col], torch.from_numpy(np.searchsorted(edges, x[idx["train"]], "right") + 1))
    assert (tables["test"].sparse[:, col] == 8).all()
    assert tables["train"].dense.shape[1] == 1
    model = build_model("dnn", s, {})
    out = model(tables["valid"].full())
    assert out["y"].shape == (len(tables["valid"]),)


def test_legacy_encoders_fill_after_scaling_as_they_did():
    f = Feature("x", "dense", fill_value=-1.0)
    e = NumericEncoder.from_dict({"mean": 2.0, "std": 2.0})  # encoders.json written before raw-unit fills
    assert e.legacy and e.to_dict() == {"mean": 2.0, "std": 2.0}
    assert e.transform(np.array([4.0, np.nan]), f, "t").tolist() == [1.0, -1.0]
    new = NumericEncoder.from_dict(NumericEncoder(mean=2.0, std=2.0).to_dict())
    assert not new.legacy and new.transform(np.array([4.0, np.nan]), f, "t").tolist() == [1.0, -1.5]


def test_per_feature_null_values_for_sparse_and_dense():
    t = pa.table({"dom": ["a", "a", "?", "b"], "x": [1.0, -1.0, 3.0, -1.0], "y": [0, 1, 0, 1]})
    s = Schema(features=[Feature("dom", "sparse", "domain", null_values=["?"]),
                         Feature("x", "dense", null_values=[-1], fill_value=0.0, normalize=False,
                                 missing_indicator=True)], tasks=[Task("y")], domain="dom")
    enc = Encoders(s).fit(t)
    out = enc.transform(t, "t")
    assert "?" not in enc.cat["dom"].vocab and out["dom"][2] == 0
    assert out["x"].tolist() == [1.0, 0.0, 3.0, 0.0] and out["x__missing"].tolist() == [0, 1, 0, 1]


def test_numeric_options_that_cannot_apply_are_schema_errors():
    for kw, msg in [({"buckets": 4, "transform": "log1p"}, "'transform' has no effect on a bucketised"),
                    ({"buckets": 4, "missing_indicator": True}, "'missing_indicator' has no effect"),
                    ({"buckets": 4, "boundaries": [1, 2]}, "not both"),
                    ({"buckets": 4, "normalize": "minmax"}, "'normalize' has no effect"),
                    ({"buckets": 4, "table": "other"}, "cannot share a table")]:
        with pytest.raises(SchemaError, match=msg):
            Feature("x", "dense", **kw)
    with pytest.raises(SchemaError, match="key 'clip' applies to dense features only"):
        Feature("x", "sparse", clip=[0, 1])


def test_ple_edges_fitted_on_train_after_fill_clip_log1p_and_scaling():
    train = [0.0, None, 1.0, 3.0, 7.0, 15.0, 1000.0]
    f = Feature("x", "dense", fill_value=0.0, clip=[None, 31.0], transform="log1p", embedding="ple", bins=4)
    enc, out, s = _encode(f, train)
    model_units = np.log1p(np.clip(np.array([0.0, 0.0, 1, 3, 7, 15, 1000]), None, 31.0))
    z = (model_units - model_units.mean()) / model_units.std()
    expect = np.unique(np.quantile(z, np.linspace(0, 1, 5)))
    assert s.feature("x").ple_edges == pytest.approx(expect.tolist(), abs=1e-9)
    assert out == pytest.approx(z, abs=1e-6)  # the column the model receives: the edges are in its units
    # another split's values do not move the edges; the edges survive encoders.json
    enc2 = Encoders(_schema(Feature("x", "dense", embedding="ple", bins=4))).fit(_table([5.0, 6.0, 7.0]))
    assert enc2.dense["x"].ple_edges != enc.dense["x"].ple_edges
    back = Encoders.from_dict(s, enc.to_dict())
    assert back.dense["x"].ple_edges == enc.dense["x"].ple_edges
    assert back.transform(_table(train), "t")["x"] == pytest.approx(out)


def test_ple_default_bins_and_old_encoders_json_without_ple_edges_load():
    train = list(np.random.default_rng(0).normal(size=500))
    enc, _, s = _encode(Feature("x", "dense", embedding="ple"), train)
    assert len(s.feature("x").ple_edges) == 17  # PLE_BINS = 16 bins
    old = {"mean": 0.0, "std": 1.0, "min": 0.0, "max": 1.0, "edges": None, "raw_fill": True}
    assert NumericEncoder.from_dict(old).ple_edges is None
    assert "ple_edges" not in NumericEncoder.from_dict(old).to_dict()  # no new key in files without PLE


def test_constant_column_gets_one_ple_bin():
    _, _, s = _encode(Feature("x", "dense", embedding="ple", normalize=False), [2.0, 2.0, 2.0])
    assert s.feature("x").ple_edges == [1.0, 3.0]
