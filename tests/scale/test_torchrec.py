"""``trainer.distributed: torchrec`` (2 real gloo processes, CPU): every step looks the batch up in the tables
as they are, applies the one-process gradient to the dense part and to the lookup, and moves the tables as
Adagrad does with that gradient; the printed plan is the one asked for, the CLI keeps its JSON contract, and the
refusals are one line.

As in tests/scale/test_ddp.py, what the method guarantees is checked per step, not the weights after several
steps (each step turns float32 rounding into sign flips of near-zero gradients, which differ from one CPU to
another): each recorded step is replayed in this process at the recorded weights (dense part and the tables
assembled from every rank's shards), in float32 and in float64. The lookup, the dense gradient (DDP's average)
and the gradient reaching the lookup (divided by the number of ranks, as TorchRec divides the table gradients)
must be as close to float64 as the one-process float32 replay is (4x its error on THIS CPU) plus sqrt(B)
float32 roundings of the largest entry. The table update is checked against the laws of TorchRec's exact
Adagrad applied to the gradient it received (the recorded one, scattered to rows in float64): rows outside
the batch do not move, no number moves by more than lr (S >= g^2), every number whose gradient sign is
determined moves against it, and on a number's first update (S = g^2) by lr * |g| / (|g| + eps)."""
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dynarec.config import build_dataclass
from dynarec.errors import ConfigError
from dynarec.tables import torchrec_adapter
from dynarec.train.config import TrainerConfig
from dynarec.train.torchrec_shard import EPS, column_shard
from tests.scale.test_ddp import U32, _cat, _env, _torchrun

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("torchrec_worker.py")
MODELS = ["dnn", "deepfm", "mmoe"]  # deepfm: a second fused table (first order, width 2) that stays under DDP;
# mmoe: its best validation epoch is not the last, so the best state is reloaded through the shards
SHARDINGS = ["table_wise", "column_wise"]
TABLE = "tables.features.weight"


needs_torchrec = pytest.mark.skipif(
    not torchrec_adapter.available(),
    reason="TorchRec is not installed: pip install 'dynarec[torchrec]' then pip install --no-deps "
           "torchrec==1.8.0 (docs/scale_out.md)")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("torchrec")
    two = _torchrun(str(WORKER), str(d / "two.pt"), ",".join(MODELS), ",".join(SHARDINGS), timeout=240)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, str(WORKER), str(d / "one.pt"), ",".join(MODELS)], env=_env(),
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert one.returncode == 0, one.stderr[-3000:]
    return torch.load(d / "one.pt", weights_only=False), torch.load(d / "two.pt", weights_only=False)


def _assemble(pieces_per_rank, offsets, shape) -> torch.Tensor:
    """The fused feature table from every rank's (logical table, row, column, shard) pieces."""
    full = torch.full(shape, float("nan"))
    for pieces in pieces_per_rank:
        for tb, r, c, t in pieces:
            o = offsets[tb] + r
            full[o:o + t.shape[0], c:c + t.shape[1]] = t
    assert not full.isnan().any(), "the shards do not cover the table"
    return full


def _params(name) -> dict:
    from tests.scale.ddp_worker import CASES

    return CASES[name][0] if name in CASES else {}


def _replay(name, schema, before, batch, dtype):
    """One-process step of ``batch`` at weights ``before``: (dense gradients, lookup output, its gradient)."""
    from tests.scale.ddp_worker import TRAINER, Recorder

    from dynarec.models import build_model
    from dynarec.train.step import TrainStep

    model = build_model(name, schema, _params(name))
    model.load_state_dict(before)
    model = model.to(dtype).train()
    seen = {}

    def hook(module, args, out):
        seen["lookup"] = out.detach().clone()
        out.register_hook(lambda g: seen.__setitem__("grad", g.detach().clone()))

    handle = model.embedding.register_forward_hook(hook)
    recorder = Recorder()
    try:
        cfg = {k: v for k, v in TRAINER.items() if k != "progress"}
        TrainStep(model, TrainerConfig(**cfg, embedding_grad="sparse")).step(
            batch if dtype == torch.float32 else _cat([batch], dtype))
    finally:
        recorder.close()
        handle.remove()
    grads = {k: g for k, g in recorder.steps[0]["grads"].items() if k != TABLE}
    return grads, seen["lookup"], seen["grad"]


def _within(what, got, g32, g64, n):
    ref = g64.double()
    scale = float(ref.abs().max())
    e_one = float((g32.double() - ref).abs().max())
    e_got = float((got.double() - ref).abs().max())
    bound = 4 * e_one + math.sqrt(n) * U32 * scale
    assert e_got <= bound, f"{what}: off by {e_got:.2e} (bound {bound:.2e}, one-process float32 off by " \
                           f"{e_one:.2e}, largest entry {scale:.2e})"


@needs_torchrec
@pytest.mark.parametrize("sharding", SHARDINGS)
@pytest.mark.parametrize("name", MODELS)
def test_every_step_looks_up_applies_the_one_process_gradient_and_moves_the_tables_as_adagrad(runs, name, sharding):
    from tests.scale.ddp_worker import data

    from dynarec.models import build_model

    _, two = runs
    assert two["world"] == 2
    schema, _ = data()
    ref = build_model(name, schema, _params(name))
    offsets, shape = ref.embedding.layout.table_offsets, tuple(ref.state_dict()[TABLE].shape)
    lr = TrainerConfig().embedding_lr
    steps = two[f"{sharding}/{name}"]["steps"]
    assert len(steps) == 8  # 2 epochs x 1024 rows / 256 per global batch
    touched = torch.zeros(shape, dtype=torch.bool)
    for k, s in enumerate(steps):
        what = f"{sharding} {name} step {k}"
        batch = _cat(s["batches"])
        B = len(batch)
        table = _assemble(s["before_tables"], offsets, shape)
        before = {**s["before"], TABLE: table}
        g32, e32, d32 = _replay(name, schema, before, batch, torch.float32)
        g64, e64, d64 = _replay(name, schema, before, batch, torch.float64)
        assert s["grads"].keys() == g64.keys()
        _within(f"{what} lookup", torch.cat(s["lookup"]), e32, e64, B)
        for key, got in s["grads"].items():
            _within(f"{what} {key}", got, g32[key], g64[key], B)
        sent = torch.cat(s["lookup_grad"]) / len(s["lookup_grad"])  # TorchRec divides by the ranks, as DDP
        _within(f"{what} lookup gradient", sent, d32, d64, B)
        # the table update: Adagrad's laws for the gradient TorchRec received (sent, scattered in float64)
        lookup = build_model(name, schema, _params(name)).double().embedding
        param = lookup.weight.weight
        with torch.no_grad():
            param.copy_(table.double())
        g, mag = (torch.autograd.grad(lookup(batch.sparse, batch.sequences), param, d)[0]
                  for d in (sent.double(), sent.double().abs()))  # mean pooling: weights >= 0, so mag = sum |terms|
        g, mag = (x.to_dense() if x.is_sparse else x for x in (g, mag))
        m = B * (batch.sparse.shape[1] + sum(x.shape[1] for x in batch.sequences.values()))
        a = m * U32 * mag  # bound on the float32 error of TorchRec's own sum of the same terms
        after = _assemble(s["after_tables"], offsets, shape).double()
        delta = after - table.double()
        rounding = 2 * U32 * (table.double().abs() + lr)
        assert (delta[mag == 0] == 0).all(), f"{what}: a number outside the batch moved"  # no term reaches it
        assert (delta.abs() <= lr + rounding).all(), f"{what}: a number moved by more than lr"
        sure = g.abs() > a
        assert (delta[sure] * g[sure] <= 0).all(), f"{what}: a number moved along its gradient"
        first = sure & ~touched
        want = -lr * g[first].sign() * (1 - EPS / (g[first].abs() - a[first] + EPS))
        err = (delta[first] - want).abs()
        assert (err <= lr * EPS / (g[first].abs() - a[first]) + rounding[first] + 4 * U32 * lr).all(), \
            f"{what}: a first update is not lr * |g| / (|g| + eps) (off by {float(err.max()):.2e})"
        touched |= mag != 0  # may have a state from now on (conservative: first updates are checked only before)


@needs_torchrec
def test_a_best_state_was_reloaded_through_the_shards(runs):
    """The weight match above covers early stopping's reload of an earlier epoch's state (held as each
    rank's shards while the fused table is released) only if some case stopped improving: check it did."""
    one, two = runs
    early = [m for m in MODELS if one[f"one/{m}"]["best_epoch"] < len(one[f"one/{m}"]["history"])]
    assert early, "no case reloads an earlier best state; pick a model / seed whose best epoch is not the last"
    for m in early:
        for sharding in SHARDINGS:
            assert two[f"{sharding}/{m}"]["best_epoch"] == one[f"one/{m}"]["best_epoch"]


@needs_torchrec
def test_each_rank_holds_its_share_of_the_shards(runs):
    """During the fit no rank holds the model's fused table (released once the shards have its rows):
    column-wise, each of the 2 ranks holds exactly half of the table bytes; table-wise, the ranks' shards
    together are the tables once. At the end the table is assembled on rank 0 only (the checkpoint's)."""
    one, two = runs
    cw, tw = two["column_wise/dnn"]["held_bytes"], two["table_wise/dnn"]["held_bytes"]
    total = cw[0]["table"]
    assert len(cw) == len(tw) == 2 and total > 0
    assert [r["fused"] for r in cw + tw] == [0] * 4
    assert [r["shards"] for r in cw] == [total // 2, total // 2]
    assert sum(r["shards"] for r in tw) == total and all(r["shards"] > 0 for r in tw)
    full = one["one/dnn"]["table_rows_after"][0]
    assert full > 0
    for sharding in SHARDINGS:
        assert two[f"{sharding}/dnn"]["table_rows_after"] == [full, 0]


def _plan_rows(text: str) -> dict[str, list[list[str]]]:
    """{table: [cells of each row]} of the two tables of TorchRec's printed plan."""
    rows: dict[str, list[list[str]]] = {}
    for line in text.split("torchrec sharding plan:")[1].splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) == 4 and not set(cells[0]) <= {"-"} and cells[0] != "param":
            rows.setdefault(cells[0], []).append(cells[1:])
    return rows


@needs_torchrec
def test_the_printed_plan_is_the_one_asked_for(runs):
    from tests.scale.ddp_worker import data

    _, two = runs
    tables = {f.table: f.vocab_size for f in data()[0].sparse}
    tw = _plan_rows(two["table_wise/dnn"]["stderr"])
    assert set(tw) == set(tables)  # one TorchRec table per logical table of the fused layout
    for t, (kind, place) in tw.items():
        assert kind[:2] == ["table_wise", "fused"] and re.fullmatch(r"\[[01]\]", kind[2])
        assert place[:2] == ["[0, 0]", f"[{tables[t]}, 16]"]  # the whole table on one rank
    assert {p[2] for _, p in tw.values()} == {"rank:0/cpu", "rank:1/cpu"}  # both ranks hold tables
    cw = _plan_rows(two["column_wise/dnn"]["stderr"])
    for t, (kind, *shards) in cw.items():
        assert kind == ["column_wise", "fused", "[0, 1]"]
        assert shards == [["[0, 0]", f"[{tables[t]}, 8]", "rank:0/cpu"], ["[0, 8]", f"[{tables[t]}, 8]", "rank:1/cpu"]]
    assert "the first_order table (width 2, not a multiple of 4) stays in the model under DDP" in \
        two["column_wise/deepfm"]["stderr"]


@needs_torchrec
def test_cli_nproc_2_torchrec_prints_the_json_contract_of_one_process(tmp_path, capsys):
    from dynarec.cli import main

    data = tmp_path / "data"
    assert main(["data", "synthetic", "--rows", "1200", "--out", str(data)]) == 0
    common = ["train", "--model", "dnn", "--data", str(data), "--epochs", "1", "--batch-size", "200", "--json",
              "--set", "model.hidden=[8]", "--set", "trainer.progress=false"]
    capsys.readouterr()
    torch.set_num_threads(1)
    assert main([*common, "--out", str(tmp_path / "one")]) == 0  # one process, in this one
    j1 = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    two = subprocess.run([sys.executable, "-m", "dynarec", *common, "--out", str(tmp_path / "two"), "--nproc", "2",
                          "--set", "trainer.distributed=torchrec", "--set", "trainer.sharding=table_wise"],
                         env=_env(), capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert two.returncode == 0, two.stderr[-3000:]
    j2 = json.loads(two.stdout.strip().splitlines()[-1])
    assert j1.keys() == j2.keys() and j1["metrics"].keys() == j2["metrics"].keys()
    assert abs(j1["metrics"]["auc"]["click"]["all"] - j2["metrics"]["auc"]["click"]["all"]) < 1e-5
    assert two.stderr.count("torchrec sharding plan:") == 1  # rank 0 prints it, once
    for noise in ("find_unused_parameters", "an autograd kernel was not registered", "Warning"):
        assert noise not in two.stderr, noise  # DDP's C++ warning and fbgemm's deprecation, once per rank before
    assert (tmp_path / "two" / "model.pt").exists()


def test_without_torchrec_the_cli_names_the_extra(tmp_path, monkeypatch, capsys):
    from dynarec.cli import main

    monkeypatch.setattr(torchrec_adapter, "available", lambda: False)
    data = tmp_path / "data"
    assert main(["data", "synthetic", "--rows", "600", "--out", str(data)]) == 0
    capsys.readouterr()
    for extra in (["--nproc", "2"], []):  # refused before launching, and in a single process
        code = main(["train", "--model", "dnn", "--data", str(data), "--epochs", "1", "--out", str(tmp_path / "r"),
                     "--set", "trainer.distributed=torchrec", *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert "trainer.distributed: torchrec is not installed" in err and "dynarec[torchrec]" in err
    assert not (tmp_path / "r").exists()


def test_sharding_key_is_checked():
    with pytest.raises(ConfigError, match=re.escape("trainer.sharding: expected one of auto | table_wise | "
                                                    "column_wise | data_parallel | row_wise, got 'diagonal'")):
        build_dataclass(TrainerConfig, {"sharding": "diagonal"}, "trainer")
    with pytest.raises(ConfigError, match="trainer.distributed: expected one of ddp | torchrec"):
        build_dataclass(TrainerConfig, {"distributed": "horovod"}, "trainer")


@needs_torchrec
@pytest.mark.parametrize("over,world,msg", [
    ({"sharding": "row_wise"}, 2, "trainer.sharding: row_wise needs CUDA"),
    ({"embedding_optimizer": "adam"}, 2, "trainer.embedding_optimizer: 'adam' has no fused TorchRec kernel"),
    ({}, 1, "trainer.distributed: torchrec needs several processes"),
])
def test_refusals_are_one_line(over, world, msg):
    from dynarec.train.torchrec_shard import check

    with pytest.raises(ConfigError, match=re.escape(msg)):
        check(TrainerConfig(distributed="torchrec", **over), torch.device("cpu"), world)


@needs_torchrec
def test_a_model_that_looks_up_tokens_is_refused(small_synth):
    """m2m looks its sequence tokens up besides the pooled lookup: under TorchRec's fused optimizer the
    second lookup would apply a second update in the same step (measured: weights 1.6 away from one
    process's), so attaching it is refused in one line before anything is sharded."""
    from dynarec.models import build_model

    model = build_model("m2m", small_synth[0], {})
    with pytest.raises(ConfigError, match=re.escape("torchrec cannot train a model that also looks up unpooled")):
        torchrec_adapter.attach(model)


@pytest.mark.parametrize("name", ["dnn", "deepfm", "pepnet"])
def test_a_deferred_build_replays_the_eager_tables_and_parameters(small_synth, name, monkeypatch):
    """Built inside ``sharded_build`` the TorchRec tables hold no storage, yet their replayed initial rows
    are the eager build's exactly, and every other parameter (drawn after them) is the eager one: the
    generator was advanced as the eager initialisation advances it. Chunks of 16 rows (not 16k) so that
    the small tables are replayed in several chunks, a short last one included."""
    from dynarec.models import build_model
    from dynarec.tables import deferred

    monkeypatch.setattr(deferred, "CHUNK_ROWS", 16)
    schema = small_synth[0]
    torch.manual_seed(3)
    eager = build_model(name, schema, {})
    torch.manual_seed(3)
    with torchrec_adapter.sharded_build():
        lazy = build_model(name, schema, {})
    a, b = eager.state_dict(), lazy.state_dict()
    shardable = {p for p, m in torchrec_adapter.feature_layers(lazy)[0]}
    assert shardable, "no TorchRec table in this model"
    for path, layer in torchrec_adapter.feature_layers(lazy)[0]:
        emb = layer.weight
        assert emb.weight.shape[0] == 0 and "deferred" in emb.__dict__
        rows = torch.cat([t for _, t in deferred.initial_rows(emb.deferred)])
        want = torchrec_adapter.feature_layers(eager)[0]
        want = dict(want)[path].weight.weight
        assert torch.equal(rows, want)
    for k in a:
        if b[k].numel() == 0:
            continue  # a deferred table (checked above)
        assert torch.equal(a[k], b[k]), k


def test_column_shards_are_multiples_of_4():
    assert column_shard(16, 2) == 8 and column_shard(16, 4) == 4 and column_shard(8, 4) == 4
    assert column_shard(24, 4) == 8 and column_shard(12, 2) is None and column_shard(2, 2) is None


@needs_torchrec
def test_the_torchrec_layer_computes_what_feature_embedding_computes(small_synth):
    """One process, no sharding: the KeyedJaggedTensor of a batch (sparse fields, a mean-pooled sequence with
    padding that shares the ``category`` table) through the collection gives FeatureEmbedding's output, in
    training and in evaluation with the fused table released; the state_dict carries the collection's rows
    (as ``local_shard`` entries) through a save / load; consolidation writes them back into the right rows."""
    from dynarec.models import build_model

    schema, tables, _ = small_synth
    model = build_model("dnn", schema, {"hidden": [8]})
    batch = tables["train"].take(torch.arange(64))
    orig = model.embedding
    want = orig(batch.sparse, batch.sequences)
    n_rows = orig.weight.weight.shape[0]
    assert (batch.sequences["hist_categories"] == 0).any()  # padding present
    [(path, layer)] = torchrec_adapter.attach(model)
    assert path == "embedding" and model.embedding is layer and not orig.weight.weight.requires_grad
    layer.scatter()
    held = layer.held_bytes()  # one process, unsharded: the collection holds every logical table once
    assert held["shards"] == held["fused"] == held["table"] == orig.weight.weight.numel() * 4
    layer.release()
    assert orig.weight.weight.shape[0] == 0 and layer.held_bytes()["fused"] == 0
    for mode in (True, False):
        layer.train(mode)
        torch.testing.assert_close(layer(batch.sparse, batch.sequences), want, atol=1e-6, rtol=1e-5)
    state = model.state_dict()
    assert not any(".ebc." in k for k in state) and any(".local_shard." in k for k in state)
    with torch.no_grad():
        layer.ebc.embedding_bags["item_id"].weight.add_(1.0)
    assert not torch.allclose(layer(batch.sparse, batch.sequences), want)
    model.load_state_dict(state)  # strict: the shards come back through their local_shard entries
    torch.testing.assert_close(layer(batch.sparse, batch.sequences), want, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        layer.ebc.embedding_bags["item_id"].weight.add_(1.0)
    layer.consolidate()
    assert orig.weight.weight.shape[0] == n_rows
    after = orig.weight.weight.clone()
    layer.ebc.embedding_bags["item_id"].weight.data.sub_(1.0)
    layer.consolidate()
    before = orig.weight.weight
    rows = orig.table_rows("item_id")
    torch.testing.assert_close(after[rows], before[rows] + 1.0)
    outside = torch.ones(len(before), dtype=torch.bool)
    outside[rows] = False
    assert torch.equal(after[outside], before[outside])
    torchrec_adapter.detach(model, [(path, layer)])
    assert model.embedding is orig and orig.weight.weight.requires_grad
