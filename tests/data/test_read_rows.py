import json

import numpy as np
import pyarrow as pa
import pyarrow.csv  # noqa: F401  (pa.csv)
import pyarrow.parquet as pq
import pytest
import torch

from dynarec.data.encode import Encoders
from dynarec.data.prepare import ROW, encode_raw, load_encoders, load_prepared, prepare_file, read_raw, to_tensor_table
from dynarec.data.read import read_table
from dynarec.data.schema import Schema
from dynarec.errors import DataError

CSV = "Domain;Job;Age;Income\n" + "".join(
    f"{d};{j};{a};{inc}\n" for d, j, a, inc in
    [("nord", "café", 31, ">50K"), ("sud", "?", "?", "<=50K"), ("nord", "acier", 45, "<=50K"),
     ("sud", "café", "NA", ">50K")] * 15)

SCHEMA = {
    "read": {"delimiter": ";", "null_values": ["?"], "encoding": "latin-1",
             "rename": {"Domain": "region", "Job": "job", "Age": "age", "Income": "income"}},
    "domain": "region",
    "features": [{"name": "job", "group": "user"},
                 {"name": "age", "kind": "dense", "group": "user", "fill_value": 18, "normalize": False}],
    "tasks": [{"name": "rich", "column": "income", "positive": [">50K"]}],
}


@pytest.fixture()
def files(tmp_path):
    (tmp_path / "adult.csv").write_bytes(CSV.encode("latin-1"))
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    return tmp_path


def test_csv_read_options_delimiter_nulls_encoding_rename(files):
    s = Schema.load(files / "schema.json")
    t = read_raw(files / "adult.csv", s)
    assert t.column_names == ["region", "job", "age", "income"]
    assert t.column("job").to_pylist()[:4] == ["café", None, "acier", "café"]  # latin-1 decoded, '?' missing
    assert pa.types.is_integer(t.column("age").type) and t.column("age").null_count == 30  # '?' and 'NA'
    tables = prepare_file(files / "adult.csv", s, files / "p", seed=0)
    ages = t.column("age").to_numpy(zero_copy_only=False)
    for tab in tables.values():
        rows = tab.row.numpy()
        exp = np.where(np.isnan(ages[rows]), 18.0, ages[rows])
        assert tab.dense[:, 0].numpy().tolist() == exp.tolist()  # filled with 18 years, raw units


def test_parquet_null_tokens_and_file_errors(tmp_path):
    pq.write_table(pa.table({"a": ["x", "?", "NA"], "b": [1, 2, 3]}), tmp_path / "t.parquet")
    s = Schema.from_dict({"read": {"null_values": ["?"]}, "domain": "a", "features": [],
                          "tasks": [{"name": "b", "type": "regression"}]})
    assert read_raw(tmp_path / "t.parquet", s).column("a").to_pylist() == ["x", None, "NA"]
    (tmp_path / "dup.csv").write_text("a,b,a\n1,2,3\n")
    with pytest.raises(DataError, match="dup.csv: duplicate column name 'a'"):
        read_table(tmp_path / "dup.csv")
    s2 = Schema.from_dict({"read": {"rename": {"Region": "a"}}, "domain": "a", "features": [],
                           "tasks": [{"name": "b", "type": "regression"}]})
    with pytest.raises(DataError, match=r"t.parquet: read.rename names column 'Region', which the file does not have"):
        read_raw(tmp_path / "t.parquet", s2)
    with pytest.raises(DataError, match="expected a csv or parquet file, got a directory"):
        read_table(tmp_path)


def test_row_ids_round_trip_to_the_raw_file(files):
    s = Schema.load(files / "schema.json")
    prepare_file(files / "adult.csv", s, files / "p", split="stratified:rich", fractions="0.6,0.2,0.2", seed=3)
    schema, tables = load_prepared(files / "p")
    raw = read_raw(files / "adult.csv", schema)
    rows = np.concatenate([tables[k].row.numpy() for k in ("train", "valid", "test")])
    assert sorted(rows.tolist()) == list(range(raw.num_rows))
    enc = load_encoders(files / "p", schema)
    for k, tab in tables.items():
        again = to_tensor_table(schema, enc.transform(raw.take(pa.array(tab.row.numpy())), k))
        assert torch.equal(again.sparse, tab.sparse) and torch.equal(again.dense, tab.dense)
        assert torch.equal(again.labels["rich"], tab.labels["rich"])
    # _row is no feature: not in the schema, not in any model input
    assert ROW not in [f.name for f in schema.features]
    assert tables["train"].sparse.shape[1] == len(schema.sparse) and tables["train"].dense.shape[1] == schema.dense_dim
    batch = tables["train"].full()
    assert not hasattr(batch, "row")
    split = json.loads((files / "p" / "split.json").read_text())
    assert split["method"] == "stratified" and split["by"] == "rich" and split["seed"] == 3
    assert sum(split["rows"].values()) == raw.num_rows


def test_prepared_folder_without_row_ids_still_loads(files):
    s = Schema.load(files / "schema.json")
    prepare_file(files / "adult.csv", s, files / "p", seed=0)
    for k in ("train", "valid", "test"):  # the format before row ids
        f = files / "p" / f"{k}.parquet"
        pq.write_table(pq.read_table(f).drop_columns([ROW]), f)
    schema, tables = load_prepared(files / "p")
    assert tables["train"].row is None and len(tables["train"]) > 0


EXAMPLE = """\
read:
  null_values: ["?"]
  rename: {native-country: country}
domain: workclass
user: person_id
features:
  - {name: occupation, group: user, min_count: 2}
  - {name: country, group: context, null_values: [South]}
  - {name: age, kind: dense, group: user, buckets: 10}
  - {name: capital-gain, kind: dense, group: user, fill_value: 0, clip: [0, 50000], transform: log1p}
  - {name: hours-per-week, kind: dense, group: context, boundaries: [20, 35, 40, 50, 60]}
  - {name: fnlwgt, kind: dense, group: context, normalize: minmax}
tasks:
  - {name: income, positive: [">50K"]}
  - {name: married, column: marital-status, positive: [Married-civ-spouse, Married-AF-spouse]}
"""


def _adult_like(tmp_path, n=600, labels=True):
    rng = np.random.default_rng(0)
    cols = {"person_id": rng.integers(0, 150, n), "workclass": rng.choice(["Private", "State-gov", "?"], n),
            "occupation": rng.choice(["Sales", "Tech", "?"], n), "native-country": rng.choice(["US", "South", "?"], n),
            "age": rng.integers(17, 90, n), "capital-gain": np.where(rng.random(n) < 0.1, "?", rng.integers(0, 99999, n).astype(str)),
            "hours-per-week": rng.integers(1, 99, n), "fnlwgt": rng.integers(10_000, 900_000, n)}
    if labels:
        cols["income"] = rng.choice([">50K", "<=50K"], n)
        cols["marital-status"] = rng.choice(["Never-married", "Married-civ-spouse", "Divorced"], n)
    p = tmp_path / ("adult.csv" if labels else "unlabeled.csv")
    pa.csv.write_csv(pa.table(cols), p)
    return p


def test_documented_schema_example_prepares_and_unlabeled_rows_encode_alike(tmp_path):
    (tmp_path / "schema.yaml").write_text(EXAMPLE)
    s = Schema.load(tmp_path / "schema.yaml")
    tables = prepare_file(_adult_like(tmp_path), s, tmp_path / "p", split="group", fractions=(0.8, 0.1, 0.1), seed=0)
    schema, loaded = load_prepared(tmp_path / "p")
    assert [f.name for f in schema.sparse] == ["workclass", "occupation", "country", "age", "hours-per-week"]
    assert [f.name for f in schema.dense] == ["capital-gain", "fnlwgt"]
    assert schema.feature("hours-per-week").vocab_size == 7 and schema.feature("age").vocab_size == 11  # n buckets + id 0
    assert float(loaded["train"].dense[:, 1].min()) == 0.0 and float(loaded["train"].dense[:, 1].max()) == 1.0
    assert set(loaded["train"].labels) == {"income", "married"}
    enc = load_encoders(tmp_path / "p", schema)
    tab, unknown = encode_raw(_adult_like(tmp_path, labels=False), schema, enc, labels=False)
    assert tab.labels == {} and torch.equal(tab.row, torch.arange(600))
    rows = loaded["test"].row
    assert torch.equal(tab.sparse[rows], loaded["test"].sparse) and torch.equal(tab.dense[rows], loaded["test"].dense)
    assert torch.equal(tables["test"].sparse, loaded["test"].sparse)


def test_nan_policy_error_counts_the_whole_file(tmp_path):
    t = pa.table({"d": ["a"] * 50, "x": [None if i % 10 == 0 else float(i) for i in range(50)],
                  "y": [i % 2 for i in range(50)]})
    s = Schema.from_dict({"domain": "d", "features": [{"name": "x", "kind": "dense", "nan_policy": "error"}],
                          "tasks": [{"name": "y"}]})
    from dynarec.data.prepare import prepare_table

    with pytest.raises(DataError, match="raw.csv: dense column 'x' has 5 NaN value"):
        prepare_table(t, s, None, source="raw.csv")


def test_broken_prepared_folders_name_the_file(files):
    from dynarec.errors import DynarecError

    s = Schema.load(files / "schema.json")
    prepare_file(files / "adult.csv", s, files / "p", seed=0)
    schema, _ = load_prepared(files / "p")
    (files / "p" / "encoders.json").write_text('{"categorical": {"job": ["a"')
    with pytest.raises(DataError, match="encoders.json: truncated or not an encoders file"):
        load_encoders(files / "p", schema)
    (files / "p" / "encoders.json").unlink()
    with pytest.raises(DataError, match="encoders.json: missing"):
        load_encoders(files / "p", schema)
    text = (files / "p" / "schema.json").read_text()
    (files / "p" / "schema.json").write_text(text[: len(text) // 2])
    with pytest.raises(DynarecError, match="schema.json: not a valid JSON schema"):
        load_prepared(files / "p")
    (files / "p" / "schema.json").write_text(text)
    f = files / "p" / "valid.parquet"
    pq.write_table(pq.read_table(f).drop_columns(["age"]), f)
    with pytest.raises(DataError, match="valid.parquet: no column 'age'"):
        load_prepared(files / "p")
