"""``train --resume`` of a TorchRec run from its sharded resume point (2 real gloo processes, column_wise;
:mod:`tests.scale.resume_worker`).

* 2 → 2: the run interrupted inside epoch 3 and resumed ends BITWISE where the uninterrupted run ends: the
  same processes take the same batches through the same ops, and the resume point is a copy (DCP writes and
  reads the bytes of every shard, dense weight and optimizer state), so no rounding enters anywhere.
* 2 → 1: the resume point loaded into ONE process (DCP reshards the column shards into rows of the fused
  table) equals, exactly, what the two ranks held when they wrote it (assembled here from their own
  tensors, not through DCP); one training step from it equals, exactly, the step from the same state
  written as a one-file ``last.pt`` (same state, same process, same ops)."""
import io
import json
from pathlib import Path

import pytest
import torch

from dynarec.config import build_dataclass
from dynarec.errors import DataError
from dynarec.train.checkpoint import load_checkpoint
from dynarec.train.sharded_resume import load_into_one
from tests.scale.test_ddp import _torchrun
from tests.scale.test_torchrec import needs_torchrec

WORKER = Path(__file__).with_name("resume_worker.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    two = _torchrun(str(WORKER), str(d), timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    return d


def _log(folder: Path) -> list[list[str]]:
    """log.csv without its timing columns (rows_per_s, seconds differ between runs)."""
    rows = [r.split(",") for r in (folder / "log.csv").read_text().splitlines()]
    keep = [i for i, name in enumerate(rows[0]) if name not in ("rows_per_s", "seconds")]
    return [[r[i] for i in keep] for r in rows]


@needs_torchrec
def test_two_to_two_resume_equals_the_uninterrupted_run_bitwise(runs):
    assert not (runs / ".run.partial").exists()  # the resumed run finished: its work folder swapped in
    assert json.loads((runs / "run" / "metrics.json").read_text()) == json.loads(
        (runs / "ref" / "metrics.json").read_text())
    assert _log(runs / "run") == _log(runs / "ref") and len(_log(runs / "ref")) == 4  # header + 3 epochs
    got, blob = load_checkpoint(runs / "run", merge=False)
    want, ref = load_checkpoint(runs / "ref", merge=False)
    assert blob["extra"] == ref["extra"]  # the best epoch and its score
    a, b = got.state_dict(), want.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@needs_torchrec
def test_no_rank_assembles_a_table_to_write_the_resume_point(runs):
    for rank in (0, 1):
        held = json.loads((runs / f"held.{rank}.json").read_text())
        assert held == [0, 0]  # two epochs' resume points: the fused table still released on both ranks
    files = json.loads((runs / "kept" / "shards.json").read_text())["files"]
    assert {"shards/__0_0.distcp", "shards/__1_0.distcp", "position.0.pt", "position.1.pt", "meta.pt"} <= set(files)


def _assembled(runs: Path) -> dict:
    """Every tensor the two ranks held at the resume point, whole: each rank's pieces put at their offsets
    (replicated tensors: rank 0's, checked equal to rank 1's)."""
    ranks = [torch.load(runs / f"pieces.{r}.pt", weights_only=False) for r in (0, 1)]
    out = {}
    for k in ranks[0]:
        pieces = ranks[0][k] + ranks[1][k]
        shape = [max(o[d] + t.shape[d] for o, t in pieces) for d in range(pieces[0][1].dim())]
        whole, seen = torch.full(shape, float("nan"), dtype=pieces[0][1].dtype), []
        for o, t in pieces:
            idx = tuple(slice(a, a + n) for a, n in zip(o, t.shape))
            if (o, tuple(t.shape)) in seen:  # a replica: equal on both ranks
                assert torch.equal(whole[idx], t), k
            seen.append((o, tuple(t.shape)))
            whole[idx] = t
        assert not whole.isnan().any(), k  # every number came from a rank
        out[k] = whole
    return out


def _one_process():
    from dynarec.models import build_model
    from dynarec.train.config import TrainerConfig
    from dynarec.train.trainer import Trainer
    from tests.scale.ddp_worker import data
    from tests.scale.resume_worker import CFG

    schema, tables = data()
    torch.manual_seed(0)
    model = build_model("dnn", schema, {})
    cfg = build_dataclass(TrainerConfig, {**CFG, "distributed": "ddp", "checkpoint": "file"}, "trainer")
    return model, Trainer(model, cfg, seed=0), tables


@needs_torchrec
def test_two_to_one_the_resharded_state_is_exactly_the_saved_state(runs):
    model, tr, _ = _one_process()
    state = load_into_one(runs / "kept", model, tr.step.optimizers)
    held = _assembled(runs)
    meta = torch.load(runs / "kept" / "meta.pt", weights_only=False)
    adagrad, adam = tr.step.optimizers
    assert isinstance(adagrad, torch.optim.Adagrad) and isinstance(adam, torch.optim.Adam)
    w = model.get_submodule("embedding").weight.weight
    acc = adagrad.state[w]["sum"]
    covered = set()
    assert w.shape[0] == sum(t["rows"] for t in meta["tables"].values())  # the fused table: these tables only
    for k, t in meta["tables"].items():
        rows = slice(t["offset"], t["offset"] + t["rows"])
        assert torch.equal(w[rows], held[k]), k  # every table row
        opt_key = meta["fused"][k]["momentum1"]
        assert torch.equal(acc[rows], held[opt_key]), opt_key  # the fused Adagrad accumulators
        covered |= {k, opt_key}
    for k, v in model.state_dict().items():
        if v.data_ptr() != w.data_ptr():
            assert torch.equal(v, held[k]), k  # every dense weight
            covered.add(k)
    for pid, st in adam.state_dict()["state"].items():
        for name, v in st.items():
            key = f"optim.dense.0.state.{pid}.{name}"
            assert torch.equal(v, held[key]), key  # the dense Adam
            covered.add(key)
    assert covered == set(held)  # nothing the ranks held is left out
    assert state["epoch"] == 2 and len(state["history"]["epochs"]) == 2
    best = [s for s in state["callbacks"].values() if "best_state" in s]
    assert len(best) == 1 and best[0]["best_state"] is not None
    assert torch.equal(best[0]["best_state"]["mlp.net.0.weight"], held["mlp.net.0.weight"])  # epoch 2 was best


@needs_torchrec
def test_two_to_one_a_step_from_the_shards_equals_a_step_from_a_one_file_state(runs, tmp_path):
    from dynarec.train.loop import Loop
    from dynarec.train.checkpoint import sealed, write_atomic
    from dynarec.train.resume import FORMAT, load_state

    model_a, tr_a, tables = _one_process()
    state_a = load_into_one(runs / "kept", model_a, tr_a.step.optimizers)
    # the same state as a one-file last.pt, built from what the ranks held
    model_b, tr_b, _ = _one_process()
    held = _assembled(runs)
    meta = torch.load(runs / "kept" / "meta.pt", weights_only=False)
    position = torch.load(runs / "kept" / "position.0.pt", weights_only=False)
    sd = {k: v.clone() for k, v in model_b.state_dict().items()}
    fused_key = "tables.features.weight"
    assert model_b.state_dict()[fused_key].data_ptr() == model_b.get_submodule("embedding").weight.weight.data_ptr()
    opts = [o.state_dict() for o in tr_b.step.optimizers]
    acc = opts[0]["state"][0]["sum"].clone()
    for k, t in meta["tables"].items():
        sd[fused_key][t["offset"]:t["offset"] + t["rows"]] = held[k]
        acc[t["offset"]:t["offset"] + t["rows"]] = held[meta["fused"][k]["momentum1"]]
    opts[0]["state"][0]["sum"] = acc
    sd.update({k: held[k] for k in sd if k in held})
    opts[1]["state"] = {int(k.split(".")[4]): {} for k in held if k.startswith("optim.dense.0.state.")}
    for k in held:
        if k.startswith("optim.dense.0.state."):
            opts[1]["state"][int(k.split(".")[4])][k.split(".")[5]] = held[k]
    loop = {"epoch": position["epoch"], "stop": position["stop"], "model": sd,
            "step": {"optimizers": opts, "weighting": {}}, "rng": position["rng"],
            "history": position["history"], "callbacks": {}}
    buf = io.BytesIO()  # written as the trainer writes it: sealed (dynarec.train.resume.save_state)
    torch.save({"format": FORMAT, "meta": position["meta"], "loop": loop}, buf)
    write_atomic(tmp_path / "last.pt", sealed(FORMAT, buf.getvalue()))
    state_b = load_state(tmp_path / "last.pt", position["meta"])
    batch = next(iter(tables["train"].batches(256, shuffle=False)))
    for model, tr, state in ((model_a, tr_a, state_a), (model_b, tr_b, state_b)):
        Loop(model, tr.step, []).load_state_dict(state)
        model.train()
        tr.step(batch)
    for (k, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), k
    assert not torch.equal(model_a.state_dict()[fused_key], sd[fused_key])  # the step moved the table
    for oa, ob in zip(tr_a.step.optimizers, tr_b.step.optimizers):
        sa, sb = oa.state_dict()["state"], ob.state_dict()["state"]
        assert sa.keys() == sb.keys()
        for pid in sa:
            assert sa[pid].keys() == sb[pid].keys()
            for name in sa[pid]:
                assert torch.equal(sa[pid][name], sb[pid][name]), (pid, name)


@needs_torchrec
def test_a_corrupted_resume_shard_is_one_clear_error(runs, tmp_path):
    import shutil

    folder = tmp_path / "kept"
    shutil.copytree(runs / "kept", folder)
    shard = folder / "shards" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    model, tr, _ = _one_process()
    with pytest.raises(DataError, match="__1_0.distcp: checksum mismatch"):
        load_into_one(folder, model, tr.step.optimizers)


@needs_torchrec
def test_train_model_resumes_a_two_process_run_in_one_process(runs, tmp_path):
    """The 2-process run's work folder (resume point of epoch 2) resumed by ``train_model(resume=True)`` in one
    ``ddp`` process: epoch 3 then runs at the same global batch in one process (its validation AUCs within
    1e-5 of the 2-process run's). Epoch 2 is the best epoch of both runs, so the final weights are early
    stopping's best-state copy, carried from the 2 ranks' shards through the resume point and the 2->1 load:
    equal bit for bit to the uninterrupted run's (a copy, no arithmetic)."""
    import shutil

    from dynarec.train.run import train_model
    from tests.scale.ddp_worker import data
    from tests.scale.resume_worker import CFG

    schema, tables = data()
    shutil.copytree(runs / "partial", tmp_path / ".run.partial")
    res = train_model("dnn", schema, tables, {}, {**CFG, "distributed": "ddp"}, seed=0, out=tmp_path / "run",
                      resume=True)
    assert [r["epoch"] for r in res.history.epochs] == [1, 2, 3]
    ref = _log(runs / "ref")
    got_log = _log(tmp_path / "run")
    assert got_log[:3] == ref[:3]  # epochs 1-2: the 2-process run's own rows
    aucs = [i for i, name in enumerate(ref[0]) if name.startswith("valid_auc")]
    assert aucs and all(abs(float(got_log[3][i]) - float(ref[3][i])) <= 1e-5 for i in aucs)
    got, _ = load_checkpoint(tmp_path / "run", merge=False)
    want, blob = load_checkpoint(runs / "ref", merge=False)
    assert res.history.best_epoch == blob["extra"]["best_epoch"] == 2
    for k, v in want.state_dict().items():  # both are epoch 2's best-state copy: the resumed one came through
        assert torch.equal(got.state_dict()[k], v), k  # the 2 ranks' shards and the 2->1 load unchanged


def test_resume_may_continue_a_run_under_another_placement():
    """``--resume DIR --set trainer.distributed=ddp`` (2 -> 1 through the CLI) is accepted and applied; other
    keys that differ are still refused."""
    from dynarec.errors import DynarecError
    from dynarec.experiment import ExperimentConfig
    from dynarec.resume_args import check_resume_args

    saved = ExperimentConfig(model="dnn", out="runs/r")
    saved.trainer.distributed, saved.trainer.sharding = "torchrec", "column_wise"
    check_resume_args(saved, "runs/r", None, {}, ["trainer.distributed=ddp", "trainer.sharding=auto"])
    assert (saved.trainer.distributed, saved.trainer.sharding) == ("ddp", "auto")
    with pytest.raises(DynarecError, match="--set trainer.lr"):
        check_resume_args(saved, "runs/r", None, {}, ["trainer.lr=0.5"])
