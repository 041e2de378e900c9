"""``dynarec data prepare --engine``: the out-of-core prepare with its per-file work (row counts, fit pass,
encode pass) on a multi-worker engine (dynarec/data/distprep.py, engines.py) gives the one-process prepare's
folder: the same encoders.json and schema.json (merged statistics, bit for bit while quantiles are exact) and
the same rows of each split in the same order (row for row, every column)."""
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from dynarec.data.distprep import prepare_on_engine
from dynarec.data.engines import LocalEngine
from dynarec.data.outofcore import prepare_out_of_core
from dynarec.data.schema import Schema
from dynarec.data.split import SPLITS
from dynarec.errors import ConfigError

N = 9_000
SCHEMA = {"features": [{"name": "user", "group": "user", "min_count": 2}, {"name": "item"},
                       {"name": "price", "kind": "dense", "transform": "log1p"},
                       {"name": "score", "kind": "dense", "buckets": 8},
                       {"name": "ctx", "kind": "dense", "embedding": "ple"}],
          "tasks": [{"name": "click"}], "domain": "dom", "user": "user", "timestamp": "ts"}


def _table(n: int = N, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"dom": rng.choice(["a", "b", "c"], n), "user": rng.integers(0, 900, n).astype(str),
                     "item": rng.integers(0, 400, n).astype(str), "price": np.round(rng.lognormal(2, 1, n), 2),
                     "score": rng.normal(0, 1, n), "ctx": rng.normal(3, 2, n), "ts": np.arange(n),
                     "click": rng.integers(0, 2, n)})


def _split_files(t: pa.Table, d, fmt: str, sizes=(2500, 4000, 2500)):
    d.mkdir()
    lo = 0
    for i, k in enumerate(sizes):  # unequal files, rows numbered across them in name order
        part = t.slice(lo, k)
        (pq.write_table if fmt == "parquet" else pacsv.write_csv)(part, d / f"p{i}.{fmt}")
        lo += k
    return d


def _read_split(folder, s) -> pa.Table:
    return pa.concat_tables(pq.read_table(f) for f in sorted((folder / f"{s}.parquet").glob("*.parquet")))


def _same_folder(a, b):
    for f in ("encoders.json", "schema.json"):
        assert json.loads((a / f).read_text()) == json.loads((b / f).read_text()), f
    ia, ib = (json.loads((x / "split.json").read_text())["rows"] for x in (a, b))
    assert ia == ib
    for s in SPLITS:
        ta, tb = _read_split(a, s), _read_split(b, s)
        assert ta.num_rows == ia[s] > 0
        assert ta.equals(tb), s  # row for row, every column, in the same order


@pytest.mark.parametrize("split", ["random", "group", "stratified"])
def test_per_file_engine_equals_one_process(tmp_path, split):
    """The per-file path in this process (engine ``local`` as an object): the merge of per-file statistics
    and the per-file encode give the one-process folder (many chunks per file: 100 kB blocks)."""
    d = _split_files(_table(), tmp_path / "raw", "parquet")
    kw = dict(progress=False, block_bytes=100_000, row_group_rows=500, shard_rows=2000)
    prepare_out_of_core(d, Schema.from_dict(SCHEMA), tmp_path / "one", split, seed=3, **kw)
    prepare_on_engine(LocalEngine(), d, Schema.from_dict(SCHEMA), tmp_path / "eng", split, seed=3, **kw)
    _same_folder(tmp_path / "one", tmp_path / "eng")


def test_engine_refuses_temporal_and_unknown_names(tmp_path):
    d = _split_files(_table(300), tmp_path / "raw", "parquet", (100, 100, 100))
    with pytest.raises(ConfigError, match="temporal"):
        prepare_on_engine(LocalEngine(), d, Schema.from_dict(SCHEMA), tmp_path / "o", "temporal", progress=False)
    assert not (tmp_path / "o").exists()
    (tmp_path / "s.json").write_text(json.dumps(SCHEMA))
    r = subprocess.run([sys.executable, "-m", "dynarec", "data", "prepare", str(d), "--schema",
                        str(tmp_path / "s.json"), "--out", str(tmp_path / "o"), "--engine", "spark"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "'spark'" in r.stderr and "dask" in r.stderr and not (tmp_path / "o").exists()


def test_dask_two_workers_equals_local_cli(tmp_path):
    """``--engine dask`` (a local cluster of 2 worker processes) = ``--engine local``, through the CLI, on CSV
    files of unequal sizes."""
    pytest.importorskip("distributed", reason="the dask extra is not installed (pip install 'dynarec[dask]')")
    d = _split_files(_table(), tmp_path / "raw", "csv")
    (tmp_path / "s.json").write_text(json.dumps(SCHEMA))
    cmd = [sys.executable, "-m", "dynarec", "data", "prepare", str(d), "--schema", str(tmp_path / "s.json"),
           "--split", "random", "--seed", "7", "--memory-budget", "64"]
    for eng in ("local", "dask"):
        r = subprocess.run(cmd + ["--out", str(tmp_path / eng), "--engine", eng], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    assert "dask, all passes" in r.stdout
    _same_folder(tmp_path / "local", tmp_path / "dask")
    names = sorted(p.name for p in (tmp_path / "dask" / "train.parquet").glob("*.parquet"))
    assert names[0] == "part-00000-00000.parquet" and len(names) == 3  # one shard per input file here
