"""Model conformance suite: every registered model (``list_models()``, so a new model file is covered
without writing a test) plus a few non-default variants must pass

* batch independence — in eval mode a row's output is the same alone, inside a batch and after the
  batch is permuted (catches M2M's batch-as-sequence attention, SPEC §4);
* gradient reach — after one backward every trainable parameter and every embedding table gets a
  non-zero gradient (catches PPNet's detached main path, SPEC §4);
* stop-gradient gates — for models recording their gates (``record_gates``, see
  ``dynarec/models/gate_recorder.py``), no gradient reaches a shared embedding row through a gate except
  rows of the fields the model declares as non-detached gate inputs;
* signed logits — the model can emit negative and positive logits (catches a ReLU on the logit, SPEC §4);
* save → load gives identical outputs; building and training are deterministic under a seed;
* it learns: AUC on the synthetic data clearly above 0.5 after one short epoch;
* table ownership — every ``nn.Embedding`` / ``nn.EmbeddingBag`` among the model's modules is owned by its
  table collection ``model.tables`` (no table is trained silently as a dense parameter or missed by
  eviction / sharding / export);
* plain-tensor entry — ``forward(batch)`` equals ``forward_tensors(sparse, dense, domain, sequences)``.

Gates are zero-initialised (SPEC §1), so at initialisation a gate's first layer gets no gradient and a
batch-mixing bug inside a gate would be invisible; every check therefore runs after a couple of optimiser
steps (``_warm``) that move the gates away from 1.
"""
from __future__ import annotations

import copy
import dataclasses
import io

import pytest
import torch

from dynarec.train.config import TrainerConfig
from dynarec.losses import task_losses
from dynarec.models import build_model, get_model_info, list_models
from dynarec.models.base import BaseModel
from dynarec.models.registry import active_params
from dynarec.train.trainer import Trainer

# Small dimensions for every model; a key is applied only where the model's Config has it with a
# default of the same type and it has an effect on the model (dynarec.models.keys).
SMALL = {"embed_dim": 4, "hidden": [16, 8], "tower_hidden": [8], "num_experts": 2, "gate_hidden_dim": 8,
         "gate_emb_dim": 4, "gate_hidden": 8, "rank_k": 4, "overparam_p": 16, "hypernet_hidden": [8]}

# Non-default options worth the same guarantees (only for models that are registered).
VARIANTS = [
    ("dnn", {"latent_cross": True}),
    ("ppnet", {"gate_position": "output"}),
    ("epnet", {"epnet_granularity": "dim", "epnet_input": "domain_only"}),
    ("pepnet", {"gate_position": "output", "epnet_granularity": "dim"}),
    ("poso", {"form": "mmoe"}),
    ("poso", {"form": "mmoe", "expert_gate": "scalar"}),
    ("lhuc", {"gate_init": "default"}),
]

# Per-model minimum click AUC after one epoch on 3.2k rows (default TRAIN_AUC; measured 2026-11-25 at
# lr 1e-2: every registered model 0.60-0.76, chance = 0.5 ± 0.02). A model listed in the exceptions
# learns more slowly on so little data; the comment must say why.
TRAIN_AUC = 0.58
TRAIN_AUC_EXCEPTIONS: dict[str, float] = {}

# Parameters allowed to have an all-zero gradient after one backward, per model (name substring -> why).
# Keep this explicit: a silently untrained parameter is the bug this suite exists to catch.
GRAD_EXCEPTIONS: dict[str, dict[str, str]] = {}


def _names():
    return [m.name for m in list_models()]


def _cases():
    names = _names()
    cases = [pytest.param(n, {}, id=n) for n in names]
    for n, p in VARIANTS:
        if n in names:
            cases.append(pytest.param(n, p, id=n + "[" + ",".join(f"{k}={v}" for k, v in p.items()) + "]"))
    return cases


CASES = _cases()


def small_params(name: str, extra: dict | None = None) -> dict:
    cfg = get_model_info(name).config_cls
    defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
                for f in dataclasses.fields(cfg)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    out = {k: v for k, v in SMALL.items() if k in defaults and type(defaults[k]) is type(v)}
    out.update(extra or {})
    # drop the small dimensions that have no effect on this model / variant (they would be rejected)
    small = active_params(name, out)
    return {k: v for k, v in out.items() if k in small or k in (extra or {})}


def _build(name, schema, params, seed=0):
    torch.manual_seed(seed)
    return build_model(name, schema, small_params(name, params))


def _trainer(model, lr=1e-2):
    return Trainer(model, TrainerConfig(lr=lr, embedding_lr=0.1, progress=False), seed=0)


def _warm(model, table, steps=3, bs=256):
    """A few optimiser steps so zero-initialised gates leave 1 (deterministic batches)."""
    tr = _trainer(model)
    model.train()
    for s in range(steps):
        tr._step(table.take(torch.arange(s * bs, (s + 1) * bs) % len(table)))
    return tr


_WARM_CACHE: dict[str, dict] = {}


def _warmed(name, schema, params, table):
    """A fresh copy of the model built with seed 0 and warmed 3 steps (state cached per case)."""
    key = name + repr(sorted(params.items()))
    model = _build(name, schema, params)
    if key not in _WARM_CACHE:
        _warm(model, table)
        _WARM_CACHE[key] = copy.deepcopy(model.state_dict())
    else:
        sd = copy.deepcopy(_WARM_CACHE[key])
        model.prepare_for_load(sd)
        model.load_state_dict(sd)
    return model


def _outputs(model, batch):
    model.eval()
    with torch.no_grad():
        return {k: v.clone() for k, v in model(batch).items()}


@pytest.fixture(scope="module")
def data(small_synth):
    return small_synth


# ---------------------------------------------------------------------------------------------------
def check_batch_independence(model, table, name=""):
    idx = torch.arange(64)
    full = _outputs(model, table.take(idx))
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    permuted = _outputs(model, table.take(idx[perm]))
    for t in full:
        torch.testing.assert_close(permuted[t], full[t][perm], atol=1e-6, rtol=1e-5,
                                   msg=lambda m: f"{name}/{t}: output depends on row order in the batch\n{m}")
    for i in (0, 17, 63):
        alone = _outputs(model, table.take(idx[i:i + 1]))
        for t in full:
            torch.testing.assert_close(alone[t][0], full[t][i], atol=1e-6, rtol=1e-5,
                                       msg=lambda m: f"{name}/{t}: row {i} scored alone differs from in-batch\n{m}")


@pytest.mark.parametrize("name,params", CASES)
def test_batch_independence(data, name, params):
    schema, tables, _ = data
    check_batch_independence(_warmed(name, schema, params, tables["train"]), tables["test"], name)


def _nonzero(g: torch.Tensor | None) -> bool:
    if g is None:
        return False
    if g.is_sparse:
        g = g.coalesce().values()
    return bool(g.abs().sum() > 0)


def check_gradient_reach(model, table, name=""):
    model.train()
    model.zero_grad(set_to_none=True)
    batch = table.take(torch.arange(512, 1024))
    out = model(batch)
    loss = sum(task_losses(out, batch.labels, model.schema.task_types).values())
    extra = model.extra_loss()
    if extra is not None:
        loss = loss + extra
    loss.backward()
    allowed = GRAD_EXCEPTIONS.get(name, {})
    dead = [n for n, p in model.named_parameters()
            if p.requires_grad and not _nonzero(p.grad) and not any(a in n for a in allowed)]
    assert not dead, f"{name}: parameters with no gradient after one backward: {dead}"
    # every embedding table that feeds the model (rows of the fused table, per table name)
    g = model.embedding.weight.weight.grad
    g = g.to_dense() if g.is_sparse else g
    cold = [t for t in model.embedding.table_sizes if g[model.embedding.table_rows(t)].abs().sum() == 0]
    assert not cold, f"{name}: embedding tables with no gradient: {cold}"


@pytest.mark.parametrize("name,params", CASES)
def test_gradient_reach(data, name, params):
    schema, tables, _ = data
    check_gradient_reach(_warmed(name, schema, params, tables["train"]), tables["train"], name)


GATED = [c for c in CASES if hasattr(get_model_info(c.values[0]).cls, "record_gates")]


@pytest.mark.parametrize("name,params", GATED)
def test_stop_gradient_gate_inputs(data, name, params):
    """No gradient reaches a shared-table row through a gate, except rows of declared gate-input fields."""
    schema, tables, _ = data
    model = _warmed(name, schema, params, tables["train"])
    model.train()
    model.record_gates = True
    batch = tables["train"].take(torch.arange(256))
    model(batch)
    assert model.recorded_gates, f"{name}: record_gates set but no gate was recorded"
    table = model.embedding.weight.weight
    params_ = [p for p in model.parameters() if p.requires_grad and p is not table]
    offs = model.embedding.sparse_offsets
    for gname, (gate, allowed) in model.recorded_gates.items():
        grads = torch.autograd.grad(gate.sum(), [table] + params_, allow_unused=True, retain_graph=True)
        gt = grads[0]
        if gt is not None:
            gt = (gt.to_dense() if gt.is_sparse else gt).abs().sum(1)
            ok = torch.zeros_like(gt, dtype=torch.bool)
            for f in allowed:
                ok[batch.sparse[:, f] + offs[f]] = True
            leaked = torch.nonzero((gt > 0) & ~ok).flatten()
            assert len(leaked) == 0, f"{name}: gate {gname} sends gradient to stop-gradient embedding rows {leaked[:5].tolist()}"
        assert any(_nonzero(g) for g in grads[1:]), f"{name}: gate {gname} has no trainable parameter"


def check_signed_logits(make_model, table, name=""):
    """Trained toward all-positive labels the logits must turn > 0, and (from a fresh init) toward
    all-negative labels < 0: a ReLU on the logit (SPEC §4) can never emit a negative one."""
    batch = table.take(torch.arange(64))
    for target, sign in ((1.0, 1), (0.0, -1)):
        model = make_model()  # fresh model and optimiser per direction
        tr = _trainer(model, lr=5e-2)
        batch.labels = {t: torch.full((64,), target) for t in batch.labels}
        model.train()
        for _ in range(10):
            tr._step(batch)
        for t, v in _outputs(model, batch).items():
            assert (sign * v).mean() > 0, f"{name}/{t}: logits stuck at mean {v.mean():.3f} (wanted sign {sign})"


@pytest.mark.parametrize("name,params", CASES)
def test_logits_take_both_signs(data, name, params):
    schema, tables, _ = data
    check_signed_logits(lambda: _build(name, schema, params), tables["train"], name)


@pytest.mark.parametrize("name,params", CASES)
def test_save_load_identical(data, name, params, tmp_path):
    from dynarec.train.checkpoint import load_checkpoint, save_checkpoint

    schema, tables, _ = data
    model = _warmed(name, schema, params, tables["train"])
    batch = tables["test"].take(torch.arange(128))
    ref = _outputs(model, batch)
    save_checkpoint(tmp_path, model, small_params(name, params))
    torch.manual_seed(123)  # a different init must be fully overwritten by the checkpoint
    loaded, _ = load_checkpoint(tmp_path, merge=False)
    got = _outputs(loaded, batch)
    for t in ref:
        assert torch.equal(ref[t], got[t]), f"{name}/{t}: outputs changed after save -> load"
    if type(model).merge_for_inference is not BaseModel.merge_for_inference:
        merged, _ = load_checkpoint(tmp_path, merge=True)
        for t, v in _outputs(merged, batch).items():
            torch.testing.assert_close(v, ref[t], atol=1e-5, rtol=1e-5)
    # round trip through a plain state_dict too
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    other = _build(name, schema, params, seed=7)
    buf.seek(0)
    sd = torch.load(buf)
    other.prepare_for_load(sd)
    other.load_state_dict(sd)
    for t, v in _outputs(other, batch).items():
        assert torch.equal(v, ref[t])


@pytest.mark.parametrize("name,params", CASES)
def test_deterministic_under_seed(data, name, params):
    schema, tables, _ = data
    batch = tables["test"].take(torch.arange(64))
    ref = _outputs(_warmed(name, schema, params, tables["train"]), batch)  # seed 0 + 3 steps (cached)
    again = _build(name, schema, params, seed=0)
    _warm(again, tables["train"])
    got = _outputs(again, batch)
    for t in ref:
        assert torch.equal(ref[t], got[t]), f"{name}/{t}: not deterministic under a fixed seed"
    a, b = _outputs(_build(name, schema, params, seed=0), batch), _outputs(_build(name, schema, params, seed=6), batch)
    assert any(not torch.equal(a[t], b[t]) for t in a), f"{name}: the seed has no effect"


@pytest.mark.parametrize("name", _names())
def test_learns_on_synthetic(data, name):
    """One epoch over 3.2k rows (batch 128, lr 1e-2) with the real Trainer; click AUC averaged over the
    valid and test splits (800 rows: the AUC of a random scorer has std ≈ 0.02 there)."""
    from dynarec.metrics import evaluate_model

    schema, tables, _ = data
    model = _build(name, schema, {})
    Trainer(model, TrainerConfig(epochs=1, batch_size=128, lr=1e-2, embedding_lr=0.1, progress=False),
            seed=0).fit(tables["train"])
    a = sum(evaluate_model(model, tables[s])["auc"]["click"]["all"] for s in ("valid", "test")) / 2
    need = TRAIN_AUC_EXCEPTIONS.get(name, TRAIN_AUC)
    assert a > need, f"{name}: click AUC {a:.3f} after one epoch (need > {need})"


def check_tables_owned(model, name=""):
    from dynarec.tables import TableCollection, unowned_tables

    assert isinstance(model.tables, TableCollection), f"{name}: model.tables is not a TableCollection"
    stray = unowned_tables(model, model.tables)
    assert not stray, f"{name}: id-indexed tables not owned by model.tables: {stray}"
    keys = [k for k in model.state_dict() if k.startswith("tables.")]
    assert sorted(keys) == sorted(f"tables.{n}.weight" for n in model.tables.specs), f"{name}: {keys}"


@pytest.mark.parametrize("name,params", CASES)
def test_tables_owned_by_the_collection(data, name, params):
    schema, _, _ = data
    check_tables_owned(_build(name, schema, params), name)


def check_forward_tensors(model, table, name=""):
    batch = table.take(torch.arange(64))
    seqs = tuple(batch.sequences[f.name] for f in model.schema.sequences)
    model.eval()
    with torch.no_grad():
        ref = model(batch)
        got = model.forward_tensors(batch.sparse, batch.dense, batch.domain, seqs)
    assert set(got) == set(ref) == set(model.tasks), f"{name}: tasks {sorted(got)} vs {sorted(ref)}"
    for t in ref:
        assert torch.equal(ref[t], got[t]), f"{name}/{t}: forward(batch) differs from forward_tensors(...)"


@pytest.mark.parametrize("name,params", CASES)
def test_forward_equals_forward_tensors(data, name, params):
    schema, tables, _ = data
    model = _warmed(name, schema, params, tables["train"])
    assert type(model).forward is BaseModel.forward, f"{name}: forward(batch) must stay BaseModel's thin wrapper"
    check_forward_tensors(model, tables["test"], name)


# ---- the suite itself catches the public bugs of SPEC §4 -------------------------------------------
def _bugged(kind, schema):
    from dynarec.models.dnn import DNN

    class Bugged(DNN):
        def forward(self, batch):
            if kind == "detached_main_path":  # Scenario-Wise-Rec PPNet: sg on the main path
                h = self.mlp(self.flat_input(batch).detach())
                return {t: head(h).squeeze(-1) for t, head in self.heads.items()}
            out = super().forward(batch)
            if kind == "batch_mixing":  # M2M: rows attend to the other rows of the batch
                return {t: v + 0.1 * v.mean() for t, v in out.items()}
            if kind == "relu_logit":  # STAR: ReLU on the output logit
                return {t: torch.relu(v) for t, v in out.items()}
            if kind == "forward_not_tensors":  # forward(batch) with logic forward_tensors does not have
                return {t: v + batch.labels[t] for t, v in out.items()}
            return out

    torch.manual_seed(0)
    model = Bugged(schema, DNN.Config(embed_dim=4, hidden=[16, 8]))
    if kind == "stray_table":  # an id table outside the collection: trained as a dense parameter, never evicted
        model.stray = torch.nn.Embedding(10, 4, sparse=True)
    if kind == "layer_private_table":  # a layer built without the model's collection (a private one)
        from dynarec.nn.cross import LatentCross

        model.cross = LatentCross([5], 4)
    return model


@pytest.mark.parametrize("kind,check", [("batch_mixing", "batch"), ("detached_main_path", "grad"),
                                        ("relu_logit", "sign"), ("stray_table", "tables"),
                                        ("layer_private_table", "tables"), ("forward_not_tensors", "tensors")])
def test_suite_catches_known_bugs(data, kind, check):
    schema, tables, _ = data
    with pytest.raises(AssertionError):
        if check == "batch":
            model = _bugged(kind, schema)
            _warm(model, tables["train"])
            check_batch_independence(model, tables["test"], kind)
        elif check == "grad":
            check_gradient_reach(_bugged(kind, schema), tables["train"], kind)
        elif check == "tables":
            check_tables_owned(_bugged(kind, schema), kind)
        elif check == "tensors":
            check_forward_tensors(_bugged(kind, schema), tables["test"], kind)
        else:
            check_signed_logits(lambda: _bugged(kind, schema), tables["train"], kind)
