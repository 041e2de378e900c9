"""The model conformance checks, public: :func:`check_model` runs them all on one registered ranking model,
as scikit-learn's ``check_estimator`` does for an estimator; each ``check_*`` is also callable alone (the
test suite runs them per registered model and variant, ``tests/models/test_conformance.py``).

* batch independence — in eval mode a row's output is the same alone, inside a batch and after the batch
  is permuted (catches M2M's batch-as-sequence attention, SPEC §4);
* gradient reach — after one backward every trainable parameter and every embedding table gets a non-zero
  gradient (catches PPNet's detached main path, SPEC §4);
* stop-gradient gates — for models recording their gates (``record_gates``), no gradient reaches a shared
  embedding row through a gate except rows of the fields the model declares as non-detached gate inputs;
* signed logits — the model can emit negative and positive logits (catches a ReLU on the logit, SPEC §4);
* save → load gives identical outputs; building and training are deterministic under a seed;
* it learns: AUC on the synthetic data clearly above 0.5 after one short epoch;
* table ownership — every ``nn.Embedding`` / ``nn.EmbeddingBag`` among the model's modules is owned by its
  table collection ``model.tables``;
* plain-tensor entry — ``forward(batch)`` equals ``forward_tensors(sparse, dense, domain, sequences)``.

Gates are zero-initialised (SPEC §1), so at initialisation a gate's first layer gets no gradient and a
batch-mixing bug inside a gate would be invisible; the checks therefore run after a few optimiser steps
(:func:`warm`) that move the gates away from 1.

Example::

    from dynarec.models import register
    from dynarec.testing import check_model

    @register("my_model")
    class MyModel(BaseModel):
        ...

    check_model(MyModel)  # AssertionError naming the model and the broken property, else None
"""
from __future__ import annotations

import copy
import dataclasses
import io
import tempfile

import torch

from dynarec.losses import task_losses
from dynarec.models.base import BaseModel
from dynarec.models.registry import active_params, build_model, get_model_info
from dynarec.train.config import TrainerConfig
from dynarec.train.trainer import Trainer

__all__ = ["check_model", "small_params", "build_small", "warm", "check_batch_independence",
           "check_gradient_reach", "check_stop_gradient_gates", "check_signed_logits", "check_save_load",
           "check_deterministic", "check_learns", "check_tables_owned", "check_forward_tensors"]

# Small dimensions for every model; a key is applied only where the model's Config has it with a default of
# the same type and it has an effect on the model (dynarec.models.keys).
SMALL = {"embed_dim": 4, "hidden": [16, 8], "tower_hidden": [8], "num_experts": 2, "gate_hidden_dim": 8,
         "gate_emb_dim": 4, "gate_hidden": 8, "rank_k": 4, "overparam_p": 16, "hypernet_hidden": [8]}

# Minimum click AUC after one epoch on 3.2k rows (measured 2026-11-25 at lr 1e-2: every registered model
# 0.60-0.76, chance = 0.5 ± 0.02). A model listed in the exceptions learns more slowly on so little data;
# the comment must say why.
TRAIN_AUC = 0.58
TRAIN_AUC_EXCEPTIONS: dict[str, float] = {}

# Parameters allowed to have an all-zero gradient after one backward, per model (name substring -> why).
# Keep this explicit: a silently untrained parameter is the bug these checks exist to catch.
GRAD_EXCEPTIONS: dict[str, dict[str, str]] = {}


def small_params(name: str, extra: dict | None = None) -> dict:
    """:data:`SMALL` dimensions that model ``name`` has and that act on it, plus ``extra``."""
    cfg = get_model_info(name).config_cls
    defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
                for f in dataclasses.fields(cfg)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    out = {k: v for k, v in SMALL.items() if k in defaults and type(defaults[k]) is type(v)}
    out.update(extra or {})
    small = active_params(name, out)  # drop the small dimensions without effect (they would be rejected)
    return {k: v for k, v in out.items() if k in small or k in (extra or {})}


def build_small(name: str, schema, params: dict | None = None, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(name, schema, small_params(name, params))


def _trainer(model, lr=1e-2):
    return Trainer(model, TrainerConfig(lr=lr, embedding_lr=0.1, progress=False), seed=0)


def warm(model, table, steps=3, bs=256):
    """A few optimiser steps so zero-initialised gates leave 1 (deterministic batches)."""
    tr = _trainer(model)
    model.train()
    for s in range(steps):
        tr._step(table.take(torch.arange(s * bs, (s + 1) * bs) % len(table)))
    return tr


def warmed(name, schema, params, table, cache: dict | None = None):
    """A fresh model built with seed 0 and warmed 3 steps (with ``cache``: its state kept per case)."""
    key = name + repr(sorted(params.items()))
    model = build_small(name, schema, params)
    if cache is None or key not in cache:
        warm(model, table)
        if cache is not None:
            cache[key] = copy.deepcopy(model.state_dict())
    else:
        sd = copy.deepcopy(cache[key])
        model.prepare_for_load(sd)
        model.load_state_dict(sd)
    return model


def outputs(model, batch):
    model.eval()
    with torch.no_grad():
        return {k: v.clone() for k, v in model(batch).items()}


def check_batch_independence(model, table, name=""):
    idx = torch.arange(64)
    full = outputs(model, table.take(idx))
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    permuted = outputs(model, table.take(idx[perm]))
    for t in full:
        torch.testing.assert_close(permuted[t], full[t][perm], atol=1e-6, rtol=1e-5,
                                   msg=lambda m: f"{name}/{t}: output depends on row order in the batch\n{m}")
    for i in (0, 17, 63):
        alone = outputs(model, table.take(idx[i:i + 1]))
        for t in full:
            torch.testing.assert_close(alone[t][0], full[t][i], atol=1e-6, rtol=1e-5,
                                       msg=lambda m: f"{name}/{t}: row {i} scored alone differs from in-batch\n{m}")


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
    g = model.embedding.weight.weight.grad  # every embedding table that feeds the model (rows per table)
    g = g.to_dense() if g.is_sparse else g
    cold = [t for t in model.embedding.table_sizes if g[model.embedding.table_rows(t)].abs().sum() == 0]
    assert not cold, f"{name}: embedding tables with no gradient: {cold}"


def check_stop_gradient_gates(model, table, name=""):
    """No gradient reaches a shared-table row through a gate, except rows of declared gate-input fields."""
    model.train()
    model.record_gates = True
    batch = table.take(torch.arange(256))
    model(batch)
    assert model.recorded_gates, f"{name}: record_gates set but no gate was recorded"
    weight = model.embedding.weight.weight
    params_ = [p for p in model.parameters() if p.requires_grad and p is not weight]
    offs = model.embedding.sparse_offsets
    for gname, (gate, allowed) in model.recorded_gates.items():
        grads = torch.autograd.grad(gate.sum(), [weight] + params_, allow_unused=True, retain_graph=True)
        gt = grads[0]
        if gt is not None:
            gt = (gt.to_dense() if gt.is_sparse else gt).abs().sum(1)
            ok = torch.zeros_like(gt, dtype=torch.bool)
            for f in allowed:
                ok[batch.sparse[:, f] + offs[f]] = True
            leaked = torch.nonzero((gt > 0) & ~ok).flatten()
            assert len(leaked) == 0, f"{name}: gate {gname} sends gradient to stop-gradient embedding rows {leaked[:5].tolist()}"
        assert any(_nonzero(g) for g in grads[1:]), f"{name}: gate {gname} has no trainable parameter"
    model.record_gates = False


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
        for t, v in outputs(model, batch).items():
            assert (sign * v).mean() > 0, f"{name}/{t}: logits stuck at mean {v.mean():.3f} (wanted sign {sign})"


def check_save_load(model, make_model, params: dict, table, name=""):
    """Checkpoint and plain state_dict round trips give identical outputs (the merged inference form: equal
    to 1e-5); ``make_model()`` builds a differently initialised twin."""
    from dynarec.train.checkpoint import load_checkpoint, save_checkpoint

    batch = table.take(torch.arange(128))
    ref = outputs(model, batch)
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(tmp, model, params)
        torch.manual_seed(123)  # a different init must be fully overwritten by the checkpoint
        loaded, _ = load_checkpoint(tmp, merge=False)
        got = outputs(loaded, batch)
        for t in ref:
            assert torch.equal(ref[t], got[t]), f"{name}/{t}: outputs changed after save -> load"
        if type(model).merge_for_inference is not BaseModel.merge_for_inference:
            merged, _ = load_checkpoint(tmp, merge=True)
            for t, v in outputs(merged, batch).items():
                torch.testing.assert_close(v, ref[t], atol=1e-5, rtol=1e-5)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    other = make_model()
    buf.seek(0)
    sd = torch.load(buf)
    other.prepare_for_load(sd)
    other.load_state_dict(sd)
    for t, v in outputs(other, batch).items():
        assert torch.equal(v, ref[t]), f"{name}/{t}: outputs changed after a state_dict round trip"


def check_deterministic(ref_model, make_model, train, test, name=""):
    """``ref_model`` (built with seed 0 and warmed) equals a rebuild warmed again; another seed differs."""
    batch = test.take(torch.arange(64))
    ref = outputs(ref_model, batch)
    again = make_model(0)
    warm(again, train)
    got = outputs(again, batch)
    for t in ref:
        assert torch.equal(ref[t], got[t]), f"{name}/{t}: not deterministic under a fixed seed"
    a, b = outputs(make_model(0), batch), outputs(make_model(6), batch)
    assert any(not torch.equal(a[t], b[t]) for t in a), f"{name}: the seed has no effect"


def check_learns(model, tables, name="", need: float | None = None):
    """One epoch (batch 128, lr 1e-2) with the real Trainer; click AUC averaged over the valid and test
    splits (800 rows each in the suite: a random scorer's AUC has std ≈ 0.02 there)."""
    from dynarec.metrics import evaluate_model

    Trainer(model, TrainerConfig(epochs=1, batch_size=128, lr=1e-2, embedding_lr=0.1, progress=False),
            seed=0).fit(tables["train"])
    a = sum(evaluate_model(model, tables[s])["auc"]["click"]["all"] for s in ("valid", "test")) / 2
    need = TRAIN_AUC_EXCEPTIONS.get(name, TRAIN_AUC) if need is None else need
    assert a > need, f"{name}: click AUC {a:.3f} after one epoch (need > {need})"


def check_tables_owned(model, name=""):
    from dynarec.tables import TableCollection, unowned_tables

    assert isinstance(model.tables, TableCollection), f"{name}: model.tables is not a TableCollection"
    stray = unowned_tables(model, model.tables)
    assert not stray, f"{name}: id-indexed tables not owned by model.tables: {stray}"
    keys = [k for k in model.state_dict() if k.startswith("tables.")]
    assert sorted(keys) == sorted(f"tables.{n}.weight" for n in model.tables.specs), f"{name}: {keys}"


def check_forward_tensors(model, table, name=""):
    assert type(model).forward is BaseModel.forward, f"{name}: forward(batch) must stay BaseModel's thin wrapper"
    batch = table.take(torch.arange(64))
    seqs = tuple(batch.sequences[f.name] for f in model.schema.sequences)
    model.eval()
    with torch.no_grad():
        ref = model(batch)
        got = model.forward_tensors(batch.sparse, batch.dense, batch.domain, seqs)
    assert set(got) == set(ref) == set(model.tasks), f"{name}: tasks {sorted(got)} vs {sorted(ref)}"
    for t in ref:
        assert torch.equal(ref[t], got[t]), f"{name}/{t}: forward(batch) differs from forward_tensors(...)"


def check_model(model_cls, params: dict | None = None, data=None) -> None:
    """Every conformance check on the registered ranking model class ``model_cls`` (small dimensions plus
    ``params``) over ``data`` = ``(schema, tables, truth)`` (default: 4,000 synthetic rows, seed 0).
    Raises an AssertionError naming the model and the property that fails."""
    from dynarec.data.prepare import synthetic_tables

    name = getattr(model_cls, "registry_name", None)
    if name is None or get_model_info(name).cls is not model_cls:
        raise ValueError(f"{model_cls!r} is not a registered model class (decorate it with @register)")
    if get_model_info(name).kind != "ranking":
        raise ValueError(f"check_model checks ranking models; {name} is a {get_model_info(name).kind} model")
    params = dict(params or {})
    schema, tables, _ = data if data is not None else synthetic_tables(4000, seed=0)
    train, test = tables["train"], tables["test"]
    check_tables_owned(build_small(name, schema, params), name)
    ref = warmed(name, schema, params, train)
    check_forward_tensors(ref, test, name)
    check_batch_independence(ref, test, name)
    check_gradient_reach(warmed(name, schema, params, train), train, name)
    if hasattr(model_cls, "record_gates"):
        check_stop_gradient_gates(warmed(name, schema, params, train), train, name)
    check_signed_logits(lambda: build_small(name, schema, params), train, name)
    check_save_load(warmed(name, schema, params, train), lambda: build_small(name, schema, params, seed=7),
                    small_params(name, params), test, name)
    check_deterministic(warmed(name, schema, params, train), lambda s: build_small(name, schema, params, seed=s),
                        train, test, name)
    if not params:
        check_learns(build_small(name, schema, {}), tables, name)
