"""Table-driven bad-input suite: every user mistake exits 2 with ONE stderr line that names the offending file,
column or key — never a traceback — across data prepare / train / evaluate / predict / benchmark / config /
schema. Each case builds its inputs in a fresh folder from a few shared fixtures (a raw CSV + schema, a
prepared folder, a trained checkpoint); ``{raw}``, ``{schema}``, ``{data}``, ``{ckpt}``, ``{tmp}`` in a case's
argv are replaced by their paths."""
from __future__ import annotations

import json
import shutil

import pyarrow.csv as pacsv
import pytest
import yaml

from dynarec.cli import main
from dynarec.data.synthetic import generate

SCHEMA = {"domain": "domain", "user": "user_id",
          "features": [{"name": "user_id", "group": "user"}, {"name": "item_id", "group": "item"},
                       {"name": "item_price", "kind": "dense", "group": "item"}],
          "tasks": [{"name": "click"}, {"name": "conversion"}]}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    t, _ = generate(600, seed=3)
    pacsv.write_csv(t.drop_columns(["hist_categories"]), d / "raw.csv")
    (d / "schema.yaml").write_text(yaml.safe_dump(SCHEMA))
    assert main(["data", "prepare", "--schema", str(d / "schema.yaml"), str(d / "raw.csv"), "--out", str(d / "data")]) == 0
    assert main(["train", "--model", "dnn", "--data", str(d / "data"), "--epochs", "1", "--batch-size", "256",
                 "--set", "model.hidden=[8]", "--set", "trainer.progress=false", "--out", str(d / "ckpt")]) == 0
    return d


def _schema(**over):
    d = json.loads(json.dumps(SCHEMA))
    feats = over.pop("features_patch", None)
    if feats:
        for i, patch in feats.items():
            d["features"][i].update(patch)
    d.update(over)
    return yaml.safe_dump(d)


def _csv_mutated(fn):
    def make(tmp, base):
        lines = (base / "raw.csv").read_text().splitlines()
        (tmp / "raw.csv").write_text("\n".join(fn(lines)) + "\n")
    return make


def _write(name, text):
    def make(tmp, base):
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(text)
    return make


def _copy_data(mutate=None):
    def make(tmp, base):
        shutil.copytree(base / "data", tmp / "data")
        if mutate:
            mutate(tmp / "data")
    return make


def _copy_ckpt(mutate=None):
    def make(tmp, base):
        shutil.copytree(base / "ckpt", tmp / "ckpt")
        if mutate:
            mutate(tmp / "ckpt")
    return make


def _truncate(path_name, keep=0.5):
    def mutate(folder):
        p = folder / path_name
        b = p.read_bytes()
        p.write_bytes(b[: int(len(b) * keep)])
    return mutate


def _schema_case(id_, expect, schema_text=None, **over):
    text = schema_text if schema_text is not None else _schema(**over)
    return pytest.param([_write("schema.yaml", text)], ["data", "prepare", "--schema", "{tmp}/schema.yaml", "{raw}",
                                                        "--out", "{tmp}/out"], expect, id=id_)


P = ["data", "prepare", "--schema", "{schema}"]
TRAIN = ["train", "--model", "dnn", "--data", "{data}", "--epochs", "1", "--out", "{tmp}/run"]
EVAL = ["evaluate", "--checkpoint", "{ckpt}", "--data", "{data}"]

CASES = [
    # ---- data prepare: files -------------------------------------------------------------------------------
    pytest.param([], P + ["{tmp}/nope.csv", "--out", "{tmp}/o"], "nope.csv", id="prepare-missing-file"),
    pytest.param([], P + ["{tmp}", "--out", "{tmp}/o"], "directory", id="prepare-input-is-dir"),
    pytest.param([], ["data", "prepare", "--schema", "{tmp}/none.yaml", "{raw}", "--out", "{tmp}/o"], "none.yaml",
                 id="prepare-schema-missing"),
    pytest.param([], ["data", "prepare", "--schema", "{tmp}", "{raw}", "--out", "{tmp}/o"], "directory",
                 id="prepare-schema-is-dir"),
    pytest.param([_write("e.csv", "")], P + ["{tmp}/e.csv", "--out", "{tmp}/o"], "e.csv", id="prepare-empty-file"),
    pytest.param([_csv_mutated(lambda ls: ls[:1])], P + ["{tmp}/raw.csv", "--out", "{tmp}/o"], "raw.csv",
                 id="prepare-header-only"),
    pytest.param([_csv_mutated(lambda ls: ls[:2])], P + ["{tmp}/raw.csv", "--out", "{tmp}/o"], "valid",
                 id="prepare-one-row"),
    pytest.param([_csv_mutated(lambda ls: ls[:6])], P + ["{tmp}/raw.csv", "--out", "{tmp}/o"], "split",
                 id="prepare-five-rows"),
    pytest.param([_csv_mutated(lambda ls: [ls[0] + "," + ls[0].split(",")[0]] + [x + ",1" for x in ls[1:]])],
                 P + ["{tmp}/raw.csv", "--out", "{tmp}/o"], "duplicate", id="prepare-duplicate-columns"),
    pytest.param([_csv_mutated(lambda ls: [ls[0].replace("item_id", "itemid")] + ls[1:])],
                 P + ["{tmp}/raw.csv", "--out", "{tmp}/o"], "item_id", id="prepare-missing-feature-column"),
    pytest.param([_csv_mutated(lambda ls: [ls[0].replace("click", "klick")] + ls[1:])],
                 P + ["{tmp}/raw.csv", "--out", "{tmp}/o"], "click", id="prepare-missing-label-column"),
    pytest.param([_csv_mutated(lambda ls: [ls[0].replace("domain", "dom")] + ls[1:])],
                 P + ["{tmp}/raw.csv", "--out", "{tmp}/o"], "domain", id="prepare-missing-domain-column"),
    pytest.param([_write("o", "x")], P + ["{raw}", "--out", "{tmp}/o"], "{tmp}/o", id="prepare-out-is-file"),
    pytest.param([], P + ["{raw}", "--format", "parquet", "--out", "{tmp}/o"], "raw.csv", id="prepare-csv-as-parquet"),
    pytest.param([], P + ["{raw}", "--split", "temporal", "--out", "{tmp}/o"], "timestamp",
                 id="prepare-temporal-without-timestamp"),
    pytest.param([], ["data", "prepare", "nodataset", "--raw", "{tmp}", "--out", "{tmp}/o"], "nodataset",
                 id="prepare-unknown-dataset"),
    pytest.param([], ["data", "prepare", "movielens", "--raw", "{tmp}", "--out", "{tmp}/o"], "{tmp}",
                 id="prepare-raw-folder-without-files"),
    pytest.param([], ["data", "synthetic", "--rows", "10", "--out", "{tmp}/o"], "--rows", id="synthetic-too-few-rows"),
    # ---- schema: structure and values -----------------------------------------------------------------------
    _schema_case("schema-invalid-yaml", "schema.yaml", schema_text="features: [a, b\n"),
    _schema_case("schema-top-level-list", "schema.yaml", schema_text="- a\n- b\n"),
    _schema_case("schema-unknown-feature-key", "kind", features_patch={2: {"type": "dense"}}),
    _schema_case("schema-unknown-top-key", "feature", feature=[]),
    _schema_case("schema-min-count-string", "min_count", features_patch={0: {"min_count": "two"}}),
    _schema_case("schema-min-count-negative", "min_count", features_patch={0: {"min_count": -1}}),
    _schema_case("schema-fill-value-string", "fill_value", features_patch={2: {"fill_value": "zero"}}),
    _schema_case("schema-max-len-negative", "max_len", features_patch={0: {"max_len": -1}}),
    _schema_case("schema-bad-kind", "kind", features_patch={0: {"kind": "categorical"}}),
    _schema_case("schema-bad-group", "group", features_patch={0: {"group": "usr"}}),
    _schema_case("schema-bad-nan-policy", "nan_policy", features_patch={2: {"nan_policy": "drop"}}),
    _schema_case("schema-feature-without-name", "name", features_patch={0: {"name": None}}),
    _schema_case("schema-duplicate-feature", "user_id", features_patch={1: {"name": "user_id"}}),
    _schema_case("schema-label-as-feature", "click", features_patch={1: {"name": "click"}}),
    _schema_case("schema-bad-task-type", "type", tasks=[{"name": "click", "type": "multiclass"}]),
    _schema_case("schema-no-tasks", "tasks", tasks=[]),
    _schema_case("schema-features-not-list", "features", features={"a": 1}),
    _schema_case("schema-missing-domain", "domain", domain=None),
    _schema_case("schema-missing-normalize-bool", "normalize", features_patch={2: {"normalize": "yes please"}}),
    # ---- train: data folder ----------------------------------------------------------------------------------
    pytest.param([], ["train", "--model", "dnn", "--data", "{tmp}/none", "--out", "{tmp}/r"], "none",
                 id="train-data-missing"),
    pytest.param([_copy_data(lambda d: (d / "schema.json").unlink())], TRAIN[:4] + ["{tmp}/data"] + TRAIN[5:],
                 "schema.json", id="train-no-schema-json"),
    pytest.param([_copy_data(_truncate("schema.json"))], TRAIN[:4] + ["{tmp}/data"] + TRAIN[5:], "schema.json",
                 id="train-truncated-schema-json"),
    pytest.param([_copy_data(lambda d: (d / "encoders.json").unlink())], TRAIN[:4] + ["{tmp}/data"] + TRAIN[5:],
                 "encoders.json", id="train-no-encoders-json"),
    pytest.param([_copy_data(_truncate("train.parquet"))], TRAIN[:4] + ["{tmp}/data"] + TRAIN[5:], "train.parquet",
                 id="train-truncated-parquet"),
    pytest.param([], ["train", "--out", "{tmp}/r"], "--data", id="train-no-data"),
    # ---- train: config and values ----------------------------------------------------------------------------
    pytest.param([], ["train", "--model", "dnnn", "--data", "{data}"], "dnnn", id="train-unknown-model"),
    pytest.param([], TRAIN[:6] + ["0"] + TRAIN[7:], "epochs", id="train-epochs-0"),
    pytest.param([], TRAIN + ["--batch-size", "-5"], "batch_size", id="train-batch-negative"),
    pytest.param([], TRAIN + ["--lr", "0"], "lr", id="train-lr-0"),
    pytest.param([], TRAIN + ["--lr", "-1"], "lr", id="train-lr-negative"),
    pytest.param([], TRAIN + ["--lr", "abc"], "--lr", id="train-lr-not-number"),
    pytest.param([], TRAIN + ["--set", "trainer.lr=abc"], "trainer.lr", id="set-lr-string"),
    pytest.param([], TRAIN + ["--set", "trainer.embedding_lr=0"], "embedding_lr", id="set-embedding-lr-0"),
    pytest.param([], TRAIN + ["--set", "trainer.patience=-1"], "patience", id="set-patience-negative"),
    pytest.param([], TRAIN + ["--set", "trainer.grad_clip=-1"], "grad_clip", id="set-grad-clip-negative"),
    pytest.param([], TRAIN + ["--set", "trainer.threads=-2"], "threads", id="set-threads-negative"),
    pytest.param([], TRAIN + ["--set", "trainer.eval_batch_size=0"], "eval_batch_size", id="set-eval-batch-0"),
    pytest.param([], TRAIN + ["--set", "trainer.monitor=accuracy"], "monitor", id="set-monitor-unknown"),
    pytest.param([], TRAIN + ["--set", "trainer.monitor=auc:nope"], "nope", id="set-monitor-unknown-task"),
    pytest.param([], TRAIN + ["--set", "trainer.task_weighting=fixed", "--set", "trainer.loss_weights={nope: 1.0}"],
                 "nope", id="set-loss-weights-unknown-task"),
    pytest.param([], TRAIN + ["--set", "trainer.task_weighting=magic"], "task_weighting", id="set-weighting-unknown"),
    pytest.param([], TRAIN + ["--set", "trainer.embedding_optimizer=adamax"], "embedding_optimizer",
                 id="set-emb-opt-unknown"),
    pytest.param([], TRAIN + ["--set", "trainer.dense_optimizer=lion"], "dense_optimizer", id="set-dense-opt-unknown"),
    pytest.param([], TRAIN + ["--set", "trainer.epoch=3"], "epoch", id="set-trainer-typo"),
    pytest.param([], TRAIN + ["--set", "trainer.lr"], "trainer.lr", id="set-without-equals"),
    pytest.param([], TRAIN + ["--set", "model.embed_dim=0"], "embed_dim", id="model-embed-dim-0"),
    pytest.param([], TRAIN + ["--set", "model.hidden=[16, 0]"], "hidden", id="model-hidden-zero-width"),
    pytest.param([], TRAIN + ["--set", "model.dropout=1.0"], "dropout", id="model-dropout-1"),
    pytest.param([], TRAIN + ["--set", "model.dropout=-0.1"], "dropout", id="model-dropout-negative"),
    pytest.param([], TRAIN + ["--set", "model.activation=swishy"], "activation", id="model-activation-unknown"),
    pytest.param([], TRAIN + ["--set", "model.hiden=[4]"], "hiden", id="model-unknown-key"),
    pytest.param([], TRAIN + ["--set", "model.tower_hidden=[8]"], "tower_hidden", id="model-key-without-effect"),
    pytest.param([], ["train", "--config", "{tmp}/none.yaml"], "none.yaml", id="config-missing"),
    pytest.param([_write("c.yaml", "model: [dnn\n")], ["train", "--config", "{tmp}/c.yaml"], "c.yaml",
                 id="config-invalid-yaml"),
    pytest.param([_write("c.yaml", "modle: dnn\n")], ["train", "--config", "{tmp}/c.yaml"], "modle",
                 id="config-unknown-key"),
    pytest.param([_write("c.yaml", "model: dnn\ntrainer: {epochs: 'many'}\n")], ["train", "--config", "{tmp}/c.yaml"],
                 "trainer.epochs", id="config-wrong-type"),
    pytest.param([], ["train", "--config", "{tmp}"], "directory", id="config-is-dir"),
    pytest.param([_write("run", "x")], TRAIN[:-1] + ["{tmp}/run"], "{tmp}/run", id="train-out-is-file"),
    # ---- evaluate -------------------------------------------------------------------------------------------
    pytest.param([], ["evaluate", "--checkpoint", "{tmp}/none", "--data", "{data}"], "none", id="eval-ckpt-missing"),
    pytest.param([], ["evaluate", "--checkpoint", "{tmp}", "--data", "{data}"], "model.pt", id="eval-ckpt-empty-dir"),
    pytest.param([_copy_ckpt(_truncate("model.pt"))], ["evaluate", "--checkpoint", "{tmp}/ckpt", "--data", "{data}"],
                 "model.pt", id="eval-ckpt-truncated"),
    pytest.param([], ["evaluate", "--checkpoint", "{ckpt}", "--data", "{tmp}/none.csv"], "none.csv",
                 id="eval-data-missing"),
    pytest.param([_csv_mutated(lambda ls: [ls[0].replace("item_id", "itemid")] + ls[1:])],
                 ["evaluate", "--checkpoint", "{ckpt}", "--data", "{tmp}/raw.csv"], "item_id",
                 id="eval-raw-missing-column"),
    pytest.param([], EVAL + ["--mc-dropout", "-1"], "--mc-dropout", id="eval-mc-dropout-negative"),
    pytest.param([], ["evaluate", "--checkpoint", "{ckpt}", "--data", "{raw}", "--split", "valid"], "--split",
                 id="eval-split-with-raw-file"),
    pytest.param([], EVAL + ["--split", "dev"], "--split", id="eval-split-unknown"),
    # ---- benchmark ------------------------------------------------------------------------------------------
    pytest.param([], ["benchmark", "--suite", "{tmp}/none.yaml"], "none.yaml", id="bench-suite-missing"),
    pytest.param([], ["benchmark", "--suite", "{tmp}"], "directory", id="bench-suite-is-dir"),
    pytest.param([_write("s.yaml", "name: [x\n")], ["benchmark", "--suite", "{tmp}/s.yaml"], "s.yaml",
                 id="bench-suite-invalid-yaml"),
    pytest.param([_write("s.yaml", "name: s\nmodles: []\n")], ["benchmark", "--suite", "{tmp}/s.yaml"], "modles",
                 id="bench-suite-unknown-key"),
    pytest.param([_write("s.yaml", "name: s\ndatasets: [{name: d, dataset: synthetic, rows: 500}]\n"
                                   "models: [{model: dnnn}]\n")],
                 ["benchmark", "--suite", "{tmp}/s.yaml", "--out", "{tmp}/o"], "dnnn", id="bench-suite-unknown-model"),
    pytest.param([_write("s.yaml", "name: s\nseeds: [0, 1, 2]\ndatasets: [{name: d, dataset: synthetic, rows: 500}]\n"
                                   "models: [{model: dnn}]\ntrainer: {epochs: 0}\n")],
                 ["benchmark", "--suite", "{tmp}/s.yaml", "--out", "{tmp}/o"], "epochs", id="bench-suite-bad-trainer"),
    # ---- command line ---------------------------------------------------------------------------------------
    pytest.param([], ["trian"], "trian", id="cli-unknown-verb"),
    pytest.param([], ["train", "--epochs", "x"], "--epochs", id="cli-epochs-not-int"),
]


@pytest.mark.parametrize("setup,argv,expect", CASES)
def test_bad_input(setup, argv, expect, base, tmp_path, capsys):
    for make in setup:
        make(tmp_path, base)
    subs = {"{raw}": str(base / "raw.csv"), "{schema}": str(base / "schema.yaml"), "{data}": str(base / "data"),
            "{ckpt}": str(base / "ckpt"), "{tmp}": str(tmp_path)}

    def sub(s):
        for k, v in subs.items():
            s = s.replace(k, v)
        return s

    try:
        rc = main([sub(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2, (rc, err)
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    assert sub(expect) in err[0], err[0]


def test_case_count():
    assert len(CASES) >= 60
