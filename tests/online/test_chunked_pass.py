"""Online passes read in chunks (online.chunk_mb, dynarec/online/chunks.py): with shuffling off, a run whose
pass files are read in chunks that cut across batches equals the run that reads each pass whole, bit for bit:
the same ids admitted / evicted (pass rows), the same progressive metrics and losses, the same weights, index
and optimizer state in every pass checkpoint, the same deltas. online.shuffle with chunk_mb is refused."""
import shutil

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

from dynarec.data.scan import scan_chunks
from dynarec.data.schema import Schema
from dynarec.errors import ConfigError
from dynarec.online.config import load_online_config
from dynarec.online.runner import run_online
from dynarec.train.checkpoint import read_checkpoint

from tests.online.conftest import SMALL

SETS = SMALL + ["trainer.batch_size=300", "trainer.eval_batch_size=200", "online.max_rows=150",
                "online.expiry_passes=1"]  # a small table: admissions, evictions and expiry all happen


SKIP = {"train_rows_per_s", "chunk_mb"}  # a timing, and the key that differs on purpose


def _same(a, b, where="") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in set(a) - SKIP:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), (where, a, b)  # NaN == NaN here


def _run(passes, out, *extra):
    cfg = load_online_config(None, SETS + list(extra), "pepnet")
    rows = list(run_online(Schema.load(passes / "schema.yaml"), passes, out, cfg))
    return rows


@pytest.fixture(scope="module")
def csv_stream(stream, tmp_path_factory):
    d = tmp_path_factory.mktemp("csvstream")
    shutil.copy(stream / "schema.yaml", d / "schema.yaml")
    for f in sorted(stream.glob("pass-*.parquet")):
        pacsv.write_csv(pq.read_table(f), d / f"{f.stem}.csv")
    return d


@pytest.mark.parametrize("fmt,mb", [("parquet", 0.001), ("csv", 0.01)])
def test_chunked_passes_equal_whole_passes(stream, csv_stream, tmp_path, fmt, mb):
    passes = stream if fmt == "parquet" else csv_stream
    first = sorted(passes.glob(f"pass-*.{fmt}"))[0]
    sizes = [t.num_rows for _, t in scan_chunks([first], block_bytes=max(4096, int(mb * (1 << 20))))]
    assert len(sizes) > 1 and any(s % 300 or s % 200 for s in sizes[:-1])  # chunks cut across the batches
    whole = _run(passes, tmp_path / "whole")
    chunked = _run(passes, tmp_path / "chunked", f"online.chunk_mb={mb}")
    assert sum(r["admitted"] for r in whole) > 0 and sum(r["evicted"] + r["expired"] for r in whole) > 0
    _same(chunked, whole, "rows")  # admitted / evicted / expired, metrics, losses, table rows, delta sizes
    for k in range(len(whole)):
        a = read_checkpoint(tmp_path / "whole" / "passes" / f"{k:04d}" / "model.pt")
        b = read_checkpoint(tmp_path / "chunked" / "passes" / f"{k:04d}" / "model.pt")
        _same(b["state_dict"], a["state_dict"], f"pass {k} weights")
        _same(b["extra"], a["extra"], f"pass {k} index / optimizer / generators")
        _same(torch.load(tmp_path / "chunked" / "passes" / f"{k:04d}" / "delta.pt", weights_only=False),
              torch.load(tmp_path / "whole" / "passes" / f"{k:04d}" / "delta.pt", weights_only=False), f"delta {k}")


def test_shuffle_with_chunks_and_eval_budget_without_are_refused():
    with pytest.raises(ConfigError, match="online.shuffle"):
        load_online_config(None, ["online.chunk_mb=1", "online.shuffle=true"], "pepnet")
    with pytest.raises(ConfigError, match="online.eval_budget_mb"):
        load_online_config(None, ["online.eval_budget_mb=8"], "pepnet")


def test_chunked_pass_past_its_eval_budget_reports_histogram_auc_within_its_bound(stream, tmp_path):
    whole = _run(stream, tmp_path / "whole")
    small = _run(stream, tmp_path / "small", "online.chunk_mb=0.001", "online.eval_budget_mb=0.01")
    for a, b in zip(whole, small):
        for slice_, v in a["auc"]["click"].items():
            if v is not None:  # the same model before the pass (training is unchanged), scored by histograms
                assert abs(b["auc"]["click"][slice_] - v) <= b["auc_error_bound"]["click"][slice_] + 1e-12
        assert b["admitted"] == a["admitted"] and b["train_loss"] == a["train_loss"]
