"""Tables streamed from a sharded checkpoint (2 real gloo processes, TorchRec) block by block, and the
memory-mapped serving bundle. The same 2-process program writes a one-file checkpoint and a sharded one of the
same computation (tests/scale/sharded_worker.py), so their tables are bitwise equal: the concatenated blocks
must equal the one-file table exactly."""
import pytest
import torch

from dynarec.serve.dcp_stream import DcpTensor, fused_blocks
from dynarec.train.checkpoint import load_checkpoint
from tests.scale.test_ddp import _torchrun
from tests.scale.test_sharded_checkpoint import WORKER
from tests.scale.test_torchrec import needs_torchrec

SHARDINGS = ["table_wise", "column_wise"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("mapped")
    two = _torchrun(str(WORKER), str(d), ",".join(SHARDINGS), timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    return d


@needs_torchrec
@pytest.mark.parametrize("sharding", SHARDINGS)
@pytest.mark.parametrize("block", [1, 7, 4096])
def test_blocks_of_the_shards_are_the_one_file_table(runs, sharding, block):
    folder = runs / f"{sharding}-sharded"
    meta = torch.load(folder / "meta.pt", weights_only=False)
    want, _ = load_checkpoint(runs / f"{sharding}-file", merge=False)
    w = want.embedding.weight.weight.data
    seen = list(fused_blocks(folder / "shards", meta, "embedding", w.shape[0], block_rows=block))
    starts = [0] + [lo + b.shape[0] for lo, b in seen][:-1]
    assert [lo for lo, _ in seen] == starts  # in row order, no gap, no overlap
    assert all(0 < b.shape[0] <= block for _, b in seen)
    assert torch.equal(torch.cat([b for _, b in seen]), w)
    key = "embedding.ebc.embedding_bags.user_id.weight"
    t = meta["tables"][key]
    one = DcpTensor(folder / "shards", key)
    assert one.shape == (t["rows"], t["dim"]) and one.dtype == torch.float32
    if sharding == "column_wise":
        assert len(one.chunks) == 2  # two ranks' column shards, stitched per block
    assert torch.equal(one.read_rows(3, 11), w[t["offset"] + 3:t["offset"] + 11])


@needs_torchrec
@pytest.mark.parametrize("sharding", SHARDINGS)
def test_export_from_shards_equals_export_from_the_file(runs, sharding, tmp_path, monkeypatch):
    from dynarec.serve.backends import load_backend
    from dynarec.serve.entry import batch_inputs, example_batch
    from dynarec.serve.export import PARITY_TOL, export_bundle
    from dynarec.train import sharded_checkpoint

    def assembled(*a, **k):
        raise AssertionError("the sharded table was assembled in one process")

    b = export_bundle(runs / f"{sharding}-file", tmp_path / "b", "all", map_mb=0.01)
    monkeypatch.setattr(sharded_checkpoint, "load_sharded", assembled)
    a = export_bundle(runs / f"{sharding}-sharded", tmp_path / "a", "all", map_mb=0.01)
    assert a["mapped"] == b["mapped"] and [t["layer"] for t in a["mapped"]["tables"]] == ["embedding"]
    for f in ("table_0.f32", "table_0.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert max(max(v.values()) for v in a["parity"].values()) <= PARITY_TOL
    want, _ = load_checkpoint(runs / f"{sharding}-file")
    args = batch_inputs(want.schema, example_batch(want.schema, 64, seed=3))
    for be in ("torch", "onnx", "eager"):
        got_a, got_b = load_backend(tmp_path / "a", be)(args), load_backend(tmp_path / "b", be)(args)
        for x, y in zip(got_a, got_b):
            assert torch.equal(torch.as_tensor(x), torch.as_tensor(y)), be  # same files, same answers


def _unlinked_files() -> set[str]:
    """What this process holds open that was unlinked (a mapped table of a sharded run, read with pread)."""
    import os

    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return {f for f in out if "dynarec-mapped-" in f}


@needs_torchrec
def test_evaluate_and_predict_of_a_sharded_run_read_mapped_rows(runs, monkeypatch, tmp_path):
    from dynarec.metrics import evaluate_model
    from dynarec.serve import mapped
    from dynarec.serve.predictor import Predictor
    from dynarec.train import sharded_checkpoint
    from tests.scale.ddp_worker import data

    def assembled(*a, **k):
        raise AssertionError("the sharded table was assembled in one process")

    test = data()[1]["test"]
    want = Predictor.load(runs / "column_wise-file")
    monkeypatch.setattr(sharded_checkpoint, "load_sharded", assembled)
    monkeypatch.setattr(mapped, "MAP_MB", 0.01)  # the 404 x 16 table counts as large here
    got = Predictor.load(runs / "column_wise-sharded")
    assert got.model.embedding.weight.weight.shape[0] == 0  # the model holds no row of the table
    assert any(f.endswith("table_0.f32 (deleted)") for f in _unlinked_files())  # read from the unlinked file
    # the same rows, summed in the same order as the layer's own forward: the same scores, exactly
    assert evaluate_model(got.model, test) == evaluate_model(want.model, test)
