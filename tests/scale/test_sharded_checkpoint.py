"""``trainer.checkpoint: sharded`` (2 real gloo processes, CPU, TorchRec): each rank writes its own table
shards through torch.distributed.checkpoint, no rank assembles a table, and the folder loads in ONE process
(another world size: DCP reshards) into exactly the weights the same run writes as ``model.pt`` — a load is a
copy, and two runs of the same 2-process program on the same data are the same computation, so the
comparison is bitwise. A corrupted or missing shard is one DataError naming the file."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from dynarec.config import build_dataclass
from dynarec.errors import ConfigError, DataError
from dynarec.train.checkpoint import load_checkpoint
from dynarec.train.config import TrainerConfig
from dynarec.train.placement import Placement, TorchRec
from dynarec.train.sharded_checkpoint import AUTO_BYTES, MANIFEST, wanted
from tests.scale.test_ddp import _torchrun
from tests.scale.test_torchrec import needs_torchrec

WORKER = Path(__file__).with_name("sharded_worker.py")
SHARDINGS = ["table_wise", "column_wise"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("sharded")
    two = _torchrun(str(WORKER), str(d), ",".join(SHARDINGS), timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    return d


@needs_torchrec
@pytest.mark.parametrize("sharding", SHARDINGS)
def test_sharded_checkpoint_loads_in_one_process_as_the_file_checkpoint(runs, sharding):
    folder = runs / f"{sharding}-sharded"
    assert not (folder / "model.pt").exists() and (folder / MANIFEST).exists()
    assert sorted(p.name for p in (folder / "shards").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert json.loads((folder / "metrics.json").read_text()) == json.loads(
        (runs / f"{sharding}-file" / "metrics.json").read_text())
    got, blob = load_checkpoint(folder, merge=False)
    want, ref = load_checkpoint(runs / f"{sharding}-file", merge=False)
    assert blob["model"] == ref["model"] and blob["params"] == ref["params"] and blob["schema"] == ref["schema"]
    assert blob["extra"]["trainer"].pop("checkpoint") == "sharded"
    assert ref["extra"]["trainer"].pop("checkpoint") == "file"
    assert blob["extra"] == ref["extra"]
    a, b = got.state_dict(), want.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # the tables (assembled from 2 ranks' shards) and the dense weights


@needs_torchrec
def test_evaluate_and_predict_read_the_sharded_folder(runs):
    from dynarec.metrics import evaluate_model
    from dynarec.serve.predictor import Predictor
    from tests.scale.ddp_worker import data

    test = data()[1]["test"]
    got, want = Predictor.load(runs / "column_wise-sharded"), Predictor.load(runs / "column_wise-file")
    assert evaluate_model(got.model, test) == evaluate_model(want.model, test)  # the same weights: the same scores


@needs_torchrec
def test_export_from_shards_equals_export_from_the_file(runs, tmp_path):
    from dynarec.serve.export import export_bundle

    a = export_bundle(runs / "table_wise-sharded", tmp_path / "a", "torch")
    b = export_bundle(runs / "table_wise-file", tmp_path / "b", "torch")
    assert a["backends"] == b["backends"] == ["eager", "torch"]
    assert max(a["parity"]["torch"].values()) <= 1e-5  # the bundle's own parity bound
    got, _ = load_checkpoint(tmp_path / "a", merge=False)
    want, _ = load_checkpoint(tmp_path / "b", merge=False)
    assert all(torch.equal(x, y) for x, y in zip(got.state_dict().values(), want.state_dict().values()))
    assert got.state_dict().keys() == want.state_dict().keys()


@needs_torchrec
def test_no_rank_assembles_a_table_when_the_checkpoint_is_sharded(runs):
    rows = json.loads((runs / "rows.json").read_text())
    for sharding in SHARDINGS:
        assert rows[f"{sharding}-sharded"] == [0, 0]  # the model's own table stays released on every rank
        assert rows[f"{sharding}-file"][0] > 0 and rows[f"{sharding}-file"][1] == 0  # model.pt: on rank 0


@needs_torchrec
def test_sharded_checkpoint_holds_the_optimizer_state(runs):
    import torch.distributed.checkpoint as dcp

    keys = dcp.FileSystemReader(str(runs / "table_wise-sharded" / "shards")).read_metadata().state_dict_metadata
    assert any(k.startswith("optim.fused.") and k.endswith("momentum1") for k in keys)  # Adagrad accumulators
    assert any(k.startswith("optim.dense.") and k.endswith("exp_avg") for k in keys)  # the dense Adam


@needs_torchrec
@pytest.mark.parametrize("damage", ["flip", "remove"])
def test_a_damaged_shard_is_one_clear_error(runs, tmp_path, damage):
    folder = tmp_path / "ckpt"
    shutil.copytree(runs / "table_wise-sharded", folder)
    shard = folder / "shards" / "__1_0.distcp"
    if damage == "flip":
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    else:
        shard.unlink()
    with pytest.raises(DataError, match="__1_0.distcp") as e:
        load_checkpoint(folder)
    assert ("checksum mismatch" if damage == "flip" else "missing") in str(e.value)


def test_sharded_is_refused_outside_torchrec_and_auto_follows_the_table_bytes():
    cfg = build_dataclass(TrainerConfig, {"checkpoint": "sharded"}, "trainer")
    with pytest.raises(ConfigError, match="trainer.checkpoint: sharded needs trainer.distributed: torchrec"):
        Placement.check(cfg, torch.device("cpu"), 1)

    class Layer:
        def __init__(self, n):
            self.n = n

        def held_bytes(self):
            return {"table": self.n}

    auto = build_dataclass(TrainerConfig, {}, "trainer")
    assert auto.checkpoint == "auto"
    assert not wanted(auto, [("a", Layer(AUTO_BYTES))]) and wanted(auto, [("a", Layer(AUTO_BYTES + 1))])
    assert wanted(cfg, [("a", Layer(1))])
    assert not wanted(build_dataclass(TrainerConfig, {"checkpoint": "file"}, "trainer"), [("a", Layer(1 << 40))])
    assert TorchRec.write_sharded is not Placement.write_sharded


def test_cli_refuses_sharded_for_one_process_in_one_line(tmp_path, capsys):
    from dynarec.cli import main

    data = tmp_path / "data"
    assert main(["data", "synthetic", "--rows", "600", "--out", str(data)]) == 0
    capsys.readouterr()
    rc = main(["train", "--model", "dnn", "--data", str(data), "--epochs", "1", "--out", str(tmp_path / "run"),
               "--set", "trainer.progress=false", "--set", "trainer.checkpoint=sharded"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "trainer.checkpoint: sharded needs trainer.distributed: torchrec" in err[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text", ["[]", "{not json", '{"format": "other", "files": {}}'])
def test_a_foreign_manifest_is_one_clear_error(tmp_path, text):
    (tmp_path / MANIFEST).write_text(text)
    with pytest.raises(DataError, match=f"{MANIFEST}: not a"):
        load_checkpoint(tmp_path)


def _fake_sharded_run(folder: Path, valid: dict) -> None:
    """A folder with what refuse_worse reads of a sharded run: meta.pt and its digest in shards.json."""
    from dynarec.outdir import file_sha256
    from dynarec.train.sharded_checkpoint import FORMAT, META

    folder.mkdir(parents=True)
    torch.save({"model": "dnn", "extra": {"valid": valid}}, folder / META)
    (folder / MANIFEST).write_text(json.dumps({"format": FORMAT, "files": {META: file_sha256(folder / META)}}))


def test_a_worse_run_never_replaces_a_better_sharded_run(tmp_path):
    from dynarec.train.better import WorseRunError, refuse_worse

    good = {"monitor": "auc", "score": 0.8, "higher": True, "data": "abc"}
    _fake_sharded_run(tmp_path / "run", good)
    with pytest.raises(WorseRunError, match="better validation auc \\(0.8000 against this run's 0.7000\\)"):
        refuse_worse(tmp_path / "run", {**good, "score": 0.7})
    refuse_worse(tmp_path / "run", {**good, "score": 0.7}, overwrite=True)  # --overwrite replaces it
    refuse_worse(tmp_path / "run", {**good, "score": 0.9})  # a better run replaces it
    refuse_worse(tmp_path / "run", {**good, "score": 0.7, "data": "other"})  # other validation data: no comparison
    meta = tmp_path / "run" / "meta.pt"
    meta.write_bytes(meta.read_bytes() + b"x")  # meta.pt no longer matches its digest: no score to keep
    refuse_worse(tmp_path / "run", {**good, "score": 0.7})


@needs_torchrec
def test_the_sharded_run_of_the_worker_records_its_score_for_better(runs):
    from dynarec.train.better import WorseRunError, recorded_extra, refuse_worse

    rec = recorded_extra(runs / "table_wise-sharded")["valid"]
    assert rec == recorded_extra(runs / "table_wise-file")["valid"] and rec["monitor"] == "auc"
    with pytest.raises(WorseRunError):
        refuse_worse(runs / "table_wise-sharded", {**rec, "score": rec["score"] - 0.01})
