"""CLI contract: JSON output shape, train -> evaluate round trip, and one-line errors for bad input."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml

from dynarec.cli import main
from dynarec.data.synthetic import generate


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    d = tmp_path_factory.mktemp("syn")
    assert main(["data", "synthetic", "--rows", "3000", "--out", str(d / "data")]) == 0
    return d / "data"


def _last_json(capsys):
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def _error(capsys, argv) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    assert len(err) == 1 and err[0].startswith("dynarec: error:"), err  # one line, no traceback
    return err[0]


def test_train_json_then_evaluate_json_same_test_metrics(prepared, tmp_path, capsys):
    ck = tmp_path / "run"
    assert main(["train", "--model", "dnn", "--data", str(prepared), "--epochs", "1", "--batch-size", "512",
                 "--out", str(ck), "--set", "model.hidden=[16]", "--json"]) == 0
    tr = _last_json(capsys)
    assert tr["model"] == "dnn" and tr["epochs"] == 1 and tr["train_rows_per_s"] > 0
    assert set(tr["metrics"]) >= {"auc", "logloss", "gauc"}
    assert "domain=d0" in tr["metrics"]["auc"]["click"]
    assert main(["evaluate", "--checkpoint", tr["checkpoint"], "--data", str(prepared), "--json"]) == 0
    ev = _last_json(capsys)
    assert ev["metrics"] == tr["metrics"]


def test_train_json_reports_mmoe_gate_usage_consistent_with_the_model(prepared, tmp_path, capsys):
    """MoE models add per-gate usage on the test split to the JSON and to gate_usage.json; the mean weights
    of a softmax gate sum to 1 and the top-1 shares count rows. dnn (no gates) has no such key."""
    ck = tmp_path / "moe"
    assert main(["train", "--model", "mmoe", "--data", str(prepared), "--epochs", "1", "--batch-size", "512",
                 "--out", str(ck), "--set", "model.hidden=[16]", "--set", "model.num_experts=3", "--json"]) == 0
    tr = _last_json(capsys)
    usage = tr["gate_usage"]
    assert set(usage) == {"click", "conversion"}
    for u in usage.values():
        assert len(u["mean_weight"]) == 3 and abs(sum(u["mean_weight"]) - 1) < 1e-3
        assert abs(sum(u["top1_share"]) - 1) < 1e-3 and 0 <= u["entropy"] <= 1
    assert json.loads((ck / "gate_usage.json").read_text()) == usage
    assert main(["train", "--model", "dnn", "--data", str(prepared), "--epochs", "1", "--batch-size", "512",
                 "--out", str(tmp_path / "dnn"), "--set", "model.hidden=[16]", "--json"]) == 0
    assert "gate_usage" not in _last_json(capsys)


def test_evaluate_raw_file_with_unseen_domain_maps_counts_and_reports(prepared, tmp_path, capsys):
    ck = tmp_path / "run"
    assert main(["train", "--model", "dnn", "--data", str(prepared), "--epochs", "1", "--out", str(ck),
                 "--set", "model.hidden=[8]", "--json"]) == 0
    capsys.readouterr()
    t, _ = generate(500, seed=7)
    dom = np.array(t.column("domain").to_pylist(), dtype=object)
    dom[:40] = "brand_new_domain"
    t = t.set_column(0, "domain", pa.array(dom.tolist()))
    pq.write_table(t, tmp_path / "new.parquet")
    assert main(["evaluate", "--checkpoint", str(ck), "--data", str(tmp_path / "new.parquet"), "--json"]) == 0
    cap = capsys.readouterr()
    ev = json.loads(cap.out.strip().splitlines()[-1])
    assert ev["unknown"]["domain"] == 40
    assert ev["metrics"]["count"]["domain=<unknown>"] == 40
    assert "unseen in training" in cap.err


def test_models_json_lists_registry(capsys):
    assert main(["models", "--json"]) == 0
    names = {m["name"] for m in json.loads(capsys.readouterr().out)}
    assert {"dnn", "shared_bottom", "mmoe"} <= names


def test_bad_config_key_and_type(prepared, tmp_path, capsys):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({"model": "dnn", "data": {"path": str(prepared)}, "trainer": {"epohcs": 1}}))
    assert "unknown key 'epohcs' (did you mean 'epochs'?)" in _error(capsys, ["train", "--config", str(cfg)])
    cfg.write_text(yaml.safe_dump({"model": "dnn", "data": {"path": str(prepared)}, "trainer": {"epochs": "two"}}))
    assert "trainer.epochs: expected int" in _error(capsys, ["train", "--config", str(cfg)])
    assert "unknown key 'hiden'" in _error(capsys, ["train", "--model", "dnn", "--data", str(prepared),
                                                     "--set", "model.hiden=[4]"])
    assert "unknown model 'mmo'" in _error(capsys, ["train", "--model", "mmo", "--data", str(prepared)])


def _raw_csv(tmp_path, mutate=None, rows=400):
    t, _ = generate(rows, seed=3)
    t = t.drop_columns(["hist_categories"])
    if mutate:
        t = mutate(t)
    pacsv.write_csv(t, tmp_path / "raw.csv")
    return tmp_path / "raw.csv"


def _schema_file(tmp_path, name="schema.yaml", **over):
    d = {"domain": "domain", "user": "user_id",
         "features": [{"name": "user_id", "group": "user"}, {"name": "item_id", "group": "item"},
                      {"name": "item_price", "kind": "dense", "group": "item", "nan_policy": "error"}],
         "tasks": [{"name": "click"}, {"name": "conversion"}]}
    d.update(over)
    p = tmp_path / name
    p.write_text(yaml.safe_dump(d))
    return p


def test_prepare_generic_csv_and_train(tmp_path, capsys):
    raw = _raw_csv(tmp_path)
    assert main(["data", "prepare", "--format", "csv", "--schema", str(_schema_file(tmp_path)), str(raw),
                 "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "schema.json").exists() and (tmp_path / "p" / "train.parquet").exists()


def test_bad_data_inputs_each_give_one_clear_line(tmp_path, capsys):
    sch = _schema_file(tmp_path)
    out = str(tmp_path / "p")
    raw = _raw_csv(tmp_path, lambda t: t.drop_columns(["item_id"]))
    assert "missing column 'item_id'" in _error(capsys, ["data", "prepare", "--schema", str(sch), str(raw), "--out", out])
    bad = _schema_file(tmp_path, "bad.yaml", features=[{"name": "click", "group": "item"}])
    raw = _raw_csv(tmp_path)
    assert "label column 'click' is also declared as a feature" in _error(
        capsys, ["data", "prepare", "--schema", str(bad), str(raw), "--out", out])
    (tmp_path / "empty.csv").write_text("")
    assert "empty" in _error(capsys, ["data", "prepare", "--schema", str(sch), str(tmp_path / "empty.csv"), "--out", out])
    t, _ = generate(300, seed=1)
    pq.write_table(t, tmp_path / "x.parquet")
    b = (tmp_path / "x.parquet").read_bytes()
    (tmp_path / "x.parquet").write_bytes(b[: len(b) // 3])
    assert "truncated" in _error(capsys, ["data", "prepare", "--schema", str(sch), str(tmp_path / "x.parquet"), "--out", out])

    def nan_price(t):
        p = t.column("item_price").to_numpy().copy()
        p[5] = np.nan
        return t.set_column(t.column_names.index("item_price"), "item_price", pa.array(p))

    raw = _raw_csv(tmp_path, nan_price)
    assert "'item_price' has 1 NaN" in _error(capsys, ["data", "prepare", "--schema", str(sch), str(raw), "--out", out])

    def three_valued(t):
        c = t.column("click").to_numpy().astype(np.int64).copy()
        c[0] = 2
        return t.set_column(t.column_names.index("click"), "click", pa.array(c))

    raw = _raw_csv(tmp_path, three_valued)
    assert "'click' must be binary" in _error(capsys, ["data", "prepare", "--schema", str(sch), str(raw), "--out", out])
    assert "not a prepared data folder" in _error(capsys, ["train", "--model", "dnn", "--data", str(tmp_path)])


def test_train_from_config_file_with_overrides(prepared, tmp_path, capsys):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({"model": "mmoe", "data": {"path": str(prepared)}, "seed": 3,
                                   "params": {"hidden": [8], "num_experts": 2},
                                   "trainer": {"epochs": 1, "batch_size": 256}, "out": str(tmp_path / "run")}))
    assert main(["train", "--config", str(cfg), "--set", "trainer.lr=0.005", "--json"]) == 0
    res = _last_json(capsys)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert res["model"] == "mmoe" and saved["params"] == {"hidden": [8], "num_experts": 2}
    assert saved["trainer"]["lr"] == 0.005 and saved["trainer"]["batch_size"] == 256 and saved["seed"] == 3


def test_resume_as_users_type_it_same_args_accepted_differing_ones_named(prepared, tmp_path, capsys, monkeypatch):
    """The interrupted command with ``--resume DIR`` appended continues the run (and ends where the
    uninterrupted run ends); arguments that differ from the saved run's are refused, each one named."""
    from dynarec.train.step import TrainStep

    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({"trainer": {"patience": 5, "lr": 0.003}}))
    run, ref = tmp_path / "run", tmp_path / "ref"
    args = ["train", "--config", str(cfg), "--model", "dnn", "--data", str(prepared), "--epochs", "3",
            "--batch-size", "256", "--seed", "3", "--set", "model.hidden=[16]", "--set", "trainer.progress=false"]
    assert main(args + ["--out", str(ref)]) == 0
    real, calls = TrainStep.step, []

    def flaky(self, batch):
        calls.append(1)
        if len(calls) == 10 + 3:  # 10 steps per epoch (2,400 train rows / 256): inside epoch 2
            raise KeyboardInterrupt
        return real(self, batch)
    monkeypatch.setattr(TrainStep, "step", flaky)
    assert main(args + ["--out", str(run)]) == 130
    monkeypatch.setattr(TrainStep, "step", real)
    capsys.readouterr()
    for extra, named in ((["--epochs", "4"], "--epochs (4; the interrupted run has 3)"),
                         (["--set", "model.hidden=[8]"], "--set model.hidden ([8]; the interrupted run has [16])"),
                         (["--set", "trainer.lr=0.01"], "--set trainer.lr (0.01; the interrupted run has 0.003)"),
                         (["--out", str(tmp_path / "other")], "is not the resumed run's folder")):
        err = _error(capsys, args + ["--out", str(run)] + extra + ["--resume", str(run)])
        assert named in err, err
    assert "--seed" not in _error(capsys, args + ["--epochs", "5", "--resume", str(run)])  # only the differing ones
    assert main(args + ["--out", str(run), "--resume", str(run)]) == 0
    assert json.loads((run / "metrics.json").read_text()) == json.loads((ref / "metrics.json").read_text())
