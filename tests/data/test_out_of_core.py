"""Out-of-core prepare (dynarec/data/outofcore.py): on data that fits, the same encoders and split rows as the
in-memory prepare; per-row splits keep their defining property; the quantile sketch's error bound holds."""
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from dynarec.data.outofcore import prepare_out_of_core
from dynarec.data.prepare import load_prepared, prepare_table
from dynarec.data.rowsplit import random_split
from dynarec.data.schema import Schema
from dynarec.data.sketch import QuantileSketch
from dynarec.data.split import SPLITS
from dynarec.data.synthetic import generate, synthetic_schema

N = 12_000


def _schema() -> Schema:
    d = synthetic_schema().to_dict()
    d["features"] += [dict(name="price_b", kind="dense", buckets=8), dict(name="ctx_ple", kind="dense", embedding="ple"),
                      dict(name="act_mm", kind="dense", normalize="minmax", transform="log1p", clip=[0, None])]
    return Schema.from_dict(d)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    t, _ = generate(N, 3)
    t = t.append_column("price_b", t.column("item_price")).append_column("ctx_ple", t.column("ctx_score")) \
        .append_column("act_mm", t.column("user_activity"))
    d = tmp_path_factory.mktemp("raw")
    for i, lo in enumerate(range(0, N, 5000)):  # three files; rows numbered across them in name order
        pq.write_table(t.slice(lo, 5000), d / f"part{i}.parquet")
    return t, d


def _ooc(src, out, split, **kw):
    s = _schema()
    info = prepare_out_of_core(src, s, out, split, progress=False, block_bytes=150_000, row_group_rows=700,
                               shard_rows=2800, **kw)  # many chunks, shards and row groups
    return s, info


def _ulp32(x):
    return np.spacing(np.abs(x).astype(np.float32)).astype(np.float64)


def _same_encoders(mem_dir, ooc_dir):
    e1 = json.loads((mem_dir / "encoders.json").read_text())
    e2 = json.loads((ooc_dir / "encoders.json").read_text())
    assert e1["categorical"] == e2["categorical"]  # exact counts: the same vocabularies, same order
    for k, a in e1["dense"].items():
        b = e2["dense"][k]
        assert a["edges"] == b["edges"]  # exact quantiles: the same bucket edges, bit for bit
        assert (a["min"], a["max"]) == (b["min"], b["max"])
        # mean / std: a merged float64 sum instead of numpy's pairwise one; both within ~n eps of exact
        tol = N * np.finfo(np.float64).eps
        assert b["mean"] == pytest.approx(a["mean"], rel=tol, abs=tol * a["std"])
        assert b["std"] == pytest.approx(a["std"], rel=tol)
        if "ple_edges" in a:  # quantiles of (x - mean) / std: exact up to that rounding of mean / std
            np.testing.assert_allclose(b["ple_edges"], a["ple_edges"], rtol=tol, atol=tol)


def _same_rows(mem_dir, ooc_dir):
    _, a = load_prepared(mem_dir)
    _, b = load_prepared(ooc_dir)
    for s in SPLITS:
        ia, ib = np.argsort(a[s].row.numpy()), np.argsort(b[s].row.numpy())
        assert np.array_equal(a[s].row.numpy()[ia], b[s].row.numpy()[ib])
        assert np.array_equal(a[s].sparse.numpy()[ia], b[s].sparse.numpy()[ib])
        da, db = a[s].dense.numpy()[ia], b[s].dense.numpy()[ib]
        assert (np.abs(da - db) <= 2 * _ulp32(da) + 1e-12).all()  # float32 of inputs equal to ~1e-15
        for k in a[s].labels:
            assert np.array_equal(a[s].labels[k].numpy()[ia], b[s].labels[k].numpy()[ib])
        for k in a[s].sequences:
            assert np.array_equal(a[s].sequences[k].numpy()[ia], b[s].sequences[k].numpy()[ib])


def test_temporal_equals_in_memory_prepare(raw, tmp_path):
    t, d = raw
    prepare_table(t, _schema(), tmp_path / "mem", "temporal")
    _, info = _ooc(d, tmp_path / "ooc", "temporal")
    assert info["exact"] and sum(info["rows"].values()) == N
    _same_encoders(tmp_path / "mem", tmp_path / "ooc")
    _same_rows(tmp_path / "mem", tmp_path / "ooc")
    shards = sorted((tmp_path / "ooc" / "train.parquet").iterdir())
    assert len(shards) > 1 and all(pq.ParquetFile(f).metadata.num_row_groups >= 1 for f in shards)
    assert pq.ParquetFile(shards[0]).metadata.row_group(0).num_rows == 700


def test_random_is_a_per_row_hash_equal_to_a_column_split(raw, tmp_path):
    """The out-of-core random split is the hash of (row, seed); given that split as a column, the in-memory
    prepare fits the same encoders and puts the same rows in each split."""
    t, d = raw
    code = random_split(np.arange(N), (0.8, 0.1, 0.1), seed=5)
    col = pa.array(np.array(SPLITS)[code])
    prepare_table(t.append_column("which", col), _schema(), tmp_path / "mem", "column:which")
    _, info = _ooc(d, tmp_path / "ooc", "random", seed=5)
    _same_encoders(tmp_path / "mem", tmp_path / "ooc")
    _same_rows(tmp_path / "mem", tmp_path / "ooc")
    # the defining property: each split's share follows the fractions (6 binomial sd: fails with p < 1e-8)
    for s, f in zip(SPLITS, (0.8, 0.1, 0.1)):
        assert abs(info["rows"][s] - f * N) <= 6 * np.sqrt(N * f * (1 - f))
    _, info2 = _ooc(d, tmp_path / "ooc2", "random", seed=6)
    assert info2["rows"] != info["rows"]  # another seed, other rows


def test_group_split_keeps_each_key_in_one_split(raw, tmp_path):
    t, d = raw
    _ooc(d, tmp_path / "g", "group")
    _, tabs = load_prepared(tmp_path / "g")
    users = {s: set(t.column("user_id").to_numpy()[tabs[s].row.numpy()].tolist()) for s in SPLITS}
    assert not (users["train"] & users["valid"]) and not (users["train"] & users["test"]) \
        and not (users["valid"] & users["test"])
    assert sum(len(tabs[s]) for s in SPLITS) == N


def test_csv_glob_cli_equals_in_memory_csv(tmp_path):
    """CLI on a glob of CSV files (with read options) = the in-memory prepare of their concatenation."""
    rng = np.random.default_rng(0)
    n = 3000
    t = pa.table({"dom": rng.choice(["a", "b", "c"], n), "item": rng.integers(0, 300, n).astype(str),
                  "price": np.round(rng.lognormal(2, 1, n), 3), "ts": rng.integers(0, 500, n),
                  "buy": rng.choice(["yes", "no"], n)})
    schema = {"features": [{"name": "item", "min_count": 3}, {"name": "price", "kind": "dense", "buckets": 5}],
              "tasks": [{"name": "buy", "positive": ["yes"]}], "domain": "dom", "timestamp": "ts",
              "read": {"delimiter": ";"}}
    (tmp_path / "s.json").write_text(json.dumps(schema))
    opts = pacsv.WriteOptions(delimiter=";")
    for i, lo in enumerate(range(0, n, 1000)):
        pacsv.write_csv(t.slice(lo, 1000), tmp_path / f"day{i}.csv", opts)
    pacsv.write_csv(t, tmp_path / "all.txt", opts)
    cmd = [sys.executable, "-m", "dynarec", "data", "prepare"]
    r = subprocess.run(cmd + [str(tmp_path / "day*.csv"), "--schema", str(tmp_path / "s.json"), "--out",
                              str(tmp_path / "ooc"), "--split", "temporal"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(cmd + [str(tmp_path / "all.txt"), "--format", "csv", "--schema", str(tmp_path / "s.json"),
                              "--out", str(tmp_path / "mem"), "--split", "temporal"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    e1, e2 = (json.loads((tmp_path / k / "encoders.json").read_text()) for k in ("mem", "ooc"))
    assert e1 == e2
    _, a = load_prepared(tmp_path / "mem")
    _, b = load_prepared(tmp_path / "ooc")
    for s in SPLITS:
        assert sorted(a[s].row.tolist()) == sorted(b[s].row.tolist())
    from dynarec.cli import main

    assert main(["data", "prepare", str(tmp_path / "all.txt"), "--format", "csv", "--schema", str(tmp_path / "s.json"),
                 "--out", str(tmp_path / "m2"), "--memory-budget", "64"]) == 2  # it would have no effect: refused
    assert not (tmp_path / "m2").exists()
    r = subprocess.run(cmd + [str(tmp_path / "nothing*.csv"), "--schema", str(tmp_path / "s.json"), "--out",
                              str(tmp_path / "x")], capture_output=True, text=True)
    assert r.returncode == 2 and "no file matches" in r.stderr and "Traceback" not in r.stderr


def test_quantile_sketch_exact_then_bounded():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(200_000)
    qs = np.linspace(0, 1, 33)
    exact = QuantileSketch(cap=1 << 20)
    for part in np.array_split(x, 7):
        exact.add(part)
    assert exact.exact and np.array_equal(exact.quantile(qs), np.quantile(x, qs))  # np.quantile, bit for bit
    small = QuantileSketch(cap=2048)  # forces compactions: values, not rows, bound the memory
    for part in np.array_split(x, 50):
        small.add(part)
    assert not small.exact and len(small.values) <= 2048
    xs = np.sort(x)
    got = small.quantile(qs[1:-1])
    err = np.abs(np.searchsorted(xs, got) - qs[1:-1] * (len(x) - 1))  # rank error of each quantile, in rows
    assert err.max() <= small.rank_error + 1  # the tracked bound holds (+1: the interpolation's position)
    assert small.rank_error / len(x) < 0.05  # and is small enough to use


def test_folder_inputs(tmp_path):
    from dynarec.data.scan import resolve_inputs
    from dynarec.errors import DataError

    t = pa.table({"x": [1, 2]})
    for f in ("a.parquet", "sub/b.parquet", ".hidden/c.parquet", "prep/train.parquet/part-0.parquet",
              "run/log.parquet"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(t, tmp_path / f)
    for f in ("schema.json", "prep/schema.json", "run/model.pt"):  # a schema next to the data is the user's
        (tmp_path / f).write_text("{}")
    assert resolve_inputs(tmp_path) == [tmp_path / "a.parquet", tmp_path / "sub" / "b.parquet"]
    pacsv.write_csv(t, tmp_path / "sub" / "d.csv")
    with pytest.raises(DataError, match="both csv and parquet"):
        resolve_inputs(tmp_path)
    assert resolve_inputs(str(tmp_path / "sub" / "*.csv")) == [tmp_path / "sub" / "d.csv"]
