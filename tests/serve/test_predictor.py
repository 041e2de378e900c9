"""The checkpoint predictor: raw rows give the metrics of the prepared folder for the same rows, unknown
categories are counted as a hand count finds them, and unlabeled rows get the labeled rows' predictions."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dynarec.data.prepare import write_synthetic
from dynarec.data.prepare import load_prepared, split_indices
from dynarec.data.synthetic import generate, synthetic_schema
from dynarec.errors import DataError
from dynarec.metrics import evaluate_model
from dynarec.serve import Predictor
from dynarec.train.run import train_model

ROWS, SEED = 3000, 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("pred")
    write_synthetic(d / "data", ROWS, SEED)
    schema, tables = load_prepared(d / "data")
    enc = json.loads((d / "data" / "encoders.json").read_text())
    train_model("dnn", schema, tables, {"hidden": [8], "embed_dim": 4},
                {"epochs": 1, "batch_size": 512, "progress": False}, 0, d / "ck", enc)
    raw, _ = generate(ROWS, SEED)
    test_rows = raw.take(pa.array(split_indices(raw, synthetic_schema(), "random", seed=SEED)["test"]))
    return d, test_rows, enc


def test_raw_test_rows_give_the_prepared_folders_metrics(trained, tmp_path):
    d, test_rows, _ = trained
    pq.write_table(test_rows, tmp_path / "test.parquet")
    p = Predictor.load(d / "ck")
    from_raw = p.evaluate(tmp_path / "test.parquet")
    from_folder = p.evaluate(d / "data")
    assert from_raw["rows"] == from_folder["rows"] == len(test_rows)
    assert from_raw["metrics"] == from_folder["metrics"]
    assert from_raw["metrics"] == evaluate_model(p.model, load_prepared(d / "data", ("test",))[1]["test"])
    assert set(from_raw["metrics"]) >= {"auc", "gauc", "logloss"}


def test_unknown_counts_equal_a_hand_count(trained):
    d, test_rows, enc = trained
    rows = test_rows.slice(0, 200).to_pylist()
    for i in range(13):
        rows[i]["user_id"] = 10**9 + i  # never seen
    for i in range(5, 12):
        rows[i]["item_category"] = "no-such-category"
        rows[i]["hist_categories"] = "c1|no-such-category|other-new"
    rows[20]["device"] = None  # missing values are not unknown categories
    p = Predictor.load(d / "ck")
    got = p.encode_rows(rows).unknown
    by_hand = {}
    for f in p.schema.fields:
        vocab = set(enc["categorical"][f.table])
        vals = [r[f.name] for r in rows if r[f.name] is not None]
        if f.kind == "sequence":
            vals = [v for s in vals for v in str(s).split(f.separator)]
        by_hand[f.name] = sum(str(v) not in vocab for v in vals)
    assert got == by_hand
    assert by_hand["user_id"] >= 13 and by_hand["hist_categories"] >= 14 and by_hand["item_category"] >= 7


def test_unlabeled_rows_get_the_labeled_rows_predictions(trained):
    d, test_rows, _ = trained
    p = Predictor.load(d / "ck")
    labeled = p.predict(p.encode(test_rows))
    preds, unknown = p.predict_rows(test_rows.drop_columns(["click", "conversion"]).to_pylist())
    assert set(preds) == set(p.tasks) == {"click", "conversion"}
    for t in p.tasks:
        np.testing.assert_array_equal(preds[t], labeled[t])
        assert preds[t].shape == (len(test_rows),) and ((preds[t] > 0) & (preds[t] < 1)).all()
    assert unknown == p.encode(test_rows).unknown
    enc = p.encode(test_rows.drop_columns(["click"]))
    assert not enc.has_labels
    with pytest.raises(DataError, match="metrics need labels"):
        p.metrics(enc)


def test_bad_rows_fail_with_one_clear_line(trained):
    d, test_rows, _ = trained
    p = Predictor.load(d / "ck")
    with pytest.raises(DataError, match="missing column 'item_price'"):
        p.encode_rows(test_rows.drop_columns(["item_price"]).to_pylist())
    with pytest.raises(DataError, match="rows: no rows"):
        p.encode_rows([])
    with pytest.raises(DataError, match="missing column 'click'"):
        p.encode(test_rows.drop_columns(["click"]), labels=True)
    meta = p.metadata()
    assert meta["tasks"] == ["click", "conversion"] and "item_price" in meta["features"]
    assert len(meta["version"]) == 12 and meta["model"] == "dnn"


def test_mc_dropout_without_dropout_is_the_point_prediction(trained):
    """The trained dnn has no dropout: every pass is the same, so the MC mean is the eval prediction (a
    probability, not a logit) and the variance is exactly 0 — which ``predict_mc`` refuses to return as if it
    were an uncertainty (``strict=False`` gets it)."""
    from dynarec.errors import ConfigError
    from dynarec.uncertainty import mc_dropout_predict

    d, test_rows, _ = trained
    p = Predictor.load(d / "ck")
    enc = p.encode(test_rows)
    with pytest.raises(ConfigError, match="--mc-dropout: the dnn model has no dropout"):
        p.predict_mc(enc, 3)
    mean, var = (
        {t: v.double().numpy() for t, v in x.items()} for x in mc_dropout_predict(p.model, enc.table, 3, strict=False))
    point = p.predict(enc)
    for t in p.tasks:
        np.testing.assert_allclose(mean[t], point[t], atol=1e-6)
        assert (var[t] == 0).all()


def test_server_columns_encode_as_the_table_encoder_does():
    """``encode_columns`` (the server's micro-batch path: Python lists, through the one encoder) gives exactly
    what ``encode`` (files) gives on the same rows: ids, dense transforms, bucket ids, missing indicators,
    padded sequences, unknown counts per feature; and its per-row unknowns match a hand count (null tokens and
    nulls are not unknown)."""
    from types import SimpleNamespace

    import torch

    from dynarec.data.encode import Encoders
    from dynarec.data.schema import Schema
    from dynarec.serve.rows import columns_to_table, rows_to_columns

    schema = Schema.from_dict({
        "domain": "dom", "tasks": [{"name": "click"}],
        "features": [{"name": "uid", "group": "user", "null_values": ["NA"]},
                     {"name": "price", "kind": "dense", "group": "item", "transform": "log1p",
                      "missing_indicator": True, "null_values": ["-1"]},
                     {"name": "age", "kind": "dense", "group": "user", "buckets": 4},
                     {"name": "hist", "kind": "sequence", "group": "user", "max_len": 3, "null_values": ["x"]}]})
    rng = np.random.default_rng(0)
    train = [{"dom": f"d{i % 3}", "uid": f"u{i % 20}", "price": float(rng.uniform(0, 50)), "age": float(20 + i % 40),
              "hist": "|".join(f"c{j}" for j in rng.integers(0, 9, size=int(rng.integers(0, 5))))} for i in range(300)]
    enc = Encoders(schema).fit(columns_to_table(rows_to_columns(train, schema), schema))
    rows = [dict(train[0]), dict(train[1], uid="never-seen", price=None, hist=["c1", "zzz", "x", "c2", "yyy"]),
            dict(train[2], uid="NA", dom=None, price=-1, age=None, hist=""), dict(train[3], uid=7, hist="c1||zzz"),
            dict(train[4], hist=["c1", "c2", "c3", "qqq"], dom="d9")]
    p = Predictor(SimpleNamespace(schema=schema), enc)
    cols = rows_to_columns(rows, schema)
    fast = p.encode_columns(cols)
    ref = p.encode(columns_to_table(cols, schema), labels=False)
    for name in ("sparse", "dense"):
        assert torch.equal(getattr(fast.table, name), getattr(ref.table, name)), name
    assert torch.equal(fast.table.sequences["hist"], ref.table.sequences["hist"])
    # hist: zzz, yyy; zzz; qqq (past max_len still counts); an empty sequence or token is null, not unknown
    assert fast.unknown == ref.unknown and fast.unknown["uid"] == 2
    assert fast.unknown["hist"] == 4
    per_row = {f.name: fast.unknown_rows[:, j].tolist() for j, f in enumerate(schema.fields)}
    assert per_row["uid"] == [0, 1, 0, 1, 0]  # "never-seen", 7; "NA" is a null token
    assert per_row["dom"] == [0, 0, 0, 0, 1]  # None is missing, d9 unseen
    assert per_row["hist"] == [0, 1, 0, 1, 0]  # within max_len 3: zzz (x is a null token); qqq is 4th


def test_a_dense_value_beyond_float32_is_refused_naming_its_column(trained, tmp_path):
    """1e308 is a finite float64 but inf in float32 (NaN predictions): ``predict`` / ``evaluate`` refuse it with
    one line naming the column and the row; the server's engine answers that request 422 and still answers
    the other requests of the same micro-batch (the batch is re-run request by request)."""
    d, test_rows, _ = trained
    p = Predictor.load(d / "ck")
    rows = test_rows.slice(0, 4).to_pylist()
    rows[2]["item_price"] = -1e308
    with pytest.raises(DataError, match=r"dense column 'item_price' has 1 value\(s\) beyond the float32 range.*"
                                        r"-1e\+308 at row 2"):
        p.predict_rows(rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet: dense column 'item_price' .* at row 2"):
        p.evaluate(tmp_path / "bad.parquet")

    from dynarec.serve.backends import EagerBackend
    from dynarec.serve.engine import Engine, _Pending
    from dynarec.serve.rows import rows_to_columns
    from dynarec.serve.served import Served
    from dynarec.serve.server import ServerConfig

    pytest.importorskip("prometheus_client", reason="the server needs the serve extra: pip install 'dynarec[serve]'")
    served = Served(d / "ck", {"model_version": "v"}, "eager", p, EagerBackend(d / "ck", p.model), p.tasks)
    eng = Engine(served, ServerConfig())
    answers = {}
    good, bad = rows[:2], rows[2:]
    batch = [_Pending(rows_to_columns(r, p.schema), len(r), lambda s, b, k=k: answers.setdefault(k, (s, b)), 0.0)
             for k, r in (("good", good), ("bad", bad))]
    eng._run(served, batch)
    status, body = answers["bad"]
    assert status == 422 and b"dense column 'item_price'" in body and b"at row 0" in body  # row 0 of that request
    status, body = answers["good"]
    assert status == 200
    want, _ = p.predict_rows(good)
    got = json.loads(body)["predictions"]
    for t in p.tasks:  # the same eager model on the same ids: equal to float32 rounding
        np.testing.assert_allclose(got[t], want[t], rtol=0, atol=1e-6)
