"""Defining properties of the gate models (SPEC §2.2–2.7, §2.11): each starts as its backbone, gates stay in
(0, γ), stop-gradients sit only on gate inputs, PEPNet's chunks map to tasks, config errors are clear."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dynarec.data.schema import Schema
from dynarec.errors import ConfigError
from dynarec.losses import task_losses
from dynarec.models import build_model
from dynarec.models.registry import active_params

SMALL = {"embed_dim": 4, "hidden": [16, 8]}


@pytest.fixture(scope="module")
def data(small_synth):
    return small_synth


@pytest.fixture(scope="module")
def batch(data):
    return data[1]["train"].take(torch.arange(128))


def _build(name, schema, seed=0, **kw):
    torch.manual_seed(seed)
    small = active_params(name, {**SMALL, **kw})  # SMALL keys without effect on the model are left out
    return build_model(name, schema, {k: v for k, v in {**SMALL, **kw}.items() if k in small or k in kw})


def _out(model, batch):
    model.eval()
    with torch.no_grad():
        return model(batch)


def _train_steps(model, table, steps=5):
    from dynarec.train.config import TrainerConfig
    from dynarec.train.trainer import Trainer

    tr = Trainer(model, TrainerConfig(lr=2e-2, embedding_lr=0.1, progress=False))
    model.train()
    for s in range(steps):
        tr._step(table.take(torch.arange(s * 256, (s + 1) * 256)))


def _dnn_like(name, schema, model, **kw):
    """A dnn with the same embedding and layer weights as ``model.mlp`` (a GatedMLP ending in T logits)."""
    dnn = _build("dnn", schema, **kw)
    dnn.tables["features"].load_state_dict(model.tables["features"].state_dict())
    lins = [m for m in dnn.mlp.net if isinstance(m, nn.Linear)]
    for a, b in zip(lins, model.mlp.linears):
        a.load_state_dict(b.state_dict())
    for i, t in enumerate(dnn.tasks):
        dnn.heads[t].weight.data.copy_(model.mlp.out.weight[i:i + 1])
        dnn.heads[t].bias.data.copy_(model.mlp.out.bias[i:i + 1])
    return dnn


def _assert_same(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for t in a:
        torch.testing.assert_close(a[t], b[t], atol=atol, rtol=1e-5)


def _differs(a, b):
    return any(not torch.allclose(a[t], b[t], atol=1e-4) for t in a)


# ---- "the model starts as its backbone" ---------------------------------------------------------
@pytest.mark.parametrize("name,kw", [("ppnet", {}), ("ppnet", {"gate_position": "output"}), ("lhuc", {}),
                                     ("poso", {})])
def test_zero_init_gates_give_the_plain_dnn(data, batch, name, kw):
    schema, tables, _ = data
    m = _build(name, schema, **kw)
    dnn = _dnn_like(name, schema, m)
    _assert_same(_out(m, batch), _out(dnn, batch))
    _train_steps(m, tables["train"])  # gates move away from 1: no longer the dnn
    assert _differs(_out(m, batch), _out(_dnn_like(name, schema, m), batch))


def test_epnet_at_init_is_the_mlp_on_E(data, batch):
    schema, tables, _ = data
    m = _build("epnet", schema)
    plain = {t: v for t, v in zip(m.tasks, m.mlp(m.flat_input(batch)).T)}
    _assert_same(_out(m, batch), {k: v.detach() for k, v in plain.items()})


def test_mmoe_poso_at_init_is_plain_mmoe(data, batch):
    schema, _, _ = data
    m = _build("poso", schema, form="mmoe")
    m.eval()
    with torch.no_grad():
        x = m.flat_input(batch)
        ex = torch.stack([e(x) for e in m.experts], 1)
        ref = {t: m.towers[t](torch.einsum("bn,bnd->bd", torch.softmax(m.task_gates[t](x), -1), ex)).squeeze(-1)
               for t in m.tasks}
    _assert_same(_out(m, batch), ref)
    assert m.pc_gates[0].out_dim == m.experts[0].out_features  # one gate vector per expert (NextRec)
    assert _build("poso", schema, form="mmoe", expert_gate="scalar").pc_gates[0].out_dim == 1


def test_latent_cross_option_starts_as_dnn_and_learns_context(data, batch):
    schema, tables, _ = data
    lc = _build("dnn", schema, latent_cross=True)
    plain = _build("dnn", schema)
    plain.load_state_dict({k: v for k, v in lc.state_dict().items() if "latent_cross" not in k})
    _assert_same(_out(lc, batch), _out(plain, batch))
    lc.train()
    out = lc(batch)
    sum(out.values()).sum().backward()
    g = lc.latent_cross.table.weight.grad
    assert g[:24].abs().sum() > 0 and g[24:].abs().sum() > 0  # hour and device both get gradient
    assert _build("dnn", schema).latent_cross is None  # off by default


# ---- gate ranges ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kw", [("ppnet", {}), ("poso", {}), ("poso", {"form": "mmoe"}), ("pepnet", {}),
                                     ("epnet", {})])
def test_recorded_gates_in_range_and_one_at_init(data, batch, name, kw):
    schema, tables, _ = data
    m = _build(name, schema, **kw)
    m.record_gates = True
    m(batch)
    for g, _ in m.recorded_gates.values():
        torch.testing.assert_close(g, torch.ones_like(g), atol=1e-6, rtol=0)
    _train_steps(m, tables["train"], steps=8)
    m(batch)
    moved = False
    for g, _ in m.recorded_gates.values():
        assert (g > 0).all() and (g < 2).all()
        moved |= bool((g - 1).abs().max() > 1e-3)
    assert moved


def test_poso_gates_not_normalised_and_ignore_non_user_features(data, batch):
    schema, tables, _ = data
    m = _build("poso", schema)
    _train_steps(m, tables["train"], steps=8)
    m.eval()
    m.record_gates = True
    m(batch)
    g1 = [g.detach().clone() for g, _ in m.recorded_gates.values()]
    assert not torch.allclose(g1[0].sum(-1), torch.ones(len(batch)))  # C·σ, not a softmax
    other = copy.copy(batch)
    other.sparse = batch.sparse.clone()
    non_user = [i for i, f in enumerate(schema.sparse) if f.group != "user"]
    other.sparse[:, non_user] = batch.sparse[:, non_user].roll(1, 0)  # change x, keep x^pc
    other.dense = batch.dense.clone()
    other.dense[:, 1:] = batch.dense[:, 1:].roll(1, 0)  # item_price, ctx_score (user_activity is column 0)
    out_a = m(batch)
    out_b = m(other)
    g2 = [g.detach() for g, _ in m.recorded_gates.values()]  # gates of the changed batch
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert _differs({k: v.detach() for k, v in out_a.items()}, {k: v.detach() for k, v in out_b.items()})


def test_lhuc_gates_per_domain(data, batch):
    schema, tables, _ = data
    m = _build("lhuc", schema)
    _train_steps(m, tables["train"], steps=8)
    r = m.lhuc[0].r
    g = m.lhuc[0].gate(torch.arange(r.shape[0]))
    assert (g > 0).all() and (g < 2).all()
    assert r.shape[0] == schema.num_domains and g.std(0).max() > 1e-3  # domains have different gates


# ---- stop-gradient placement ------------------------------------------------------------------------
def test_ppnet_gate_gradient_skips_shared_tables_main_path_does_not(data, batch):
    schema, tables, _ = data
    m = _build("ppnet", schema, gate_init="default")  # non-zero last layer: gradient flows at once
    assert m.mlp.gate_dims == [m.input_dim, 16, 8]  # one gate per layer, as wide as its input
    m.train()
    m.record_gates = True
    out = m(batch)
    gates = sum(g.sum() for g, _ in m.recorded_gates.values())
    g_shared, g_prior = torch.autograd.grad(gates, [m.embedding.weight.weight, m.priors.table.weight],
                                            allow_unused=True, retain_graph=True)
    assert g_shared is None or g_shared.coalesce().values().abs().sum() == 0
    assert g_prior.abs().sum() > 0
    loss = sum(task_losses(out, batch.labels, {t: "binary" for t in m.tasks}).values())
    (g_main,) = torch.autograd.grad(loss, [m.embedding.weight.weight])
    rows = g_main.coalesce().indices()[0]
    for f in range(len(schema.sparse)):  # every shared field trains through the main path
        assert torch.isin(batch.sparse[:, f] + m.embedding.sparse_offsets[f], rows).any()


def test_pepnet_ppnet_gates_get_nothing_from_epnet_or_shared_tables(data, batch):
    schema, tables, _ = data
    m = _build("pepnet", schema, gate_init="default")
    m.train()
    m.record_gates = True
    m(batch)
    pp = sum(g.sum() for k, (g, _) in m.recorded_gates.items() if k.startswith("ppnet"))
    targets = [m.embedding.weight.weight] + list(m.epnet.parameters())
    grads = torch.autograd.grad(pp, targets + [m.priors.table.weight], allow_unused=True)
    for g in grads[:-1]:
        if g is not None:
            assert (g.coalesce().values() if g.is_sparse else g).abs().sum() == 0
    assert grads[-1].abs().sum() > 0
    ep, allowed = m.recorded_gates["epnet"]
    (ge,) = torch.autograd.grad(ep.sum(), [m.embedding.weight.weight])
    rows = ge.coalesce()
    rows = rows.indices()[0][rows.values().abs().sum(1) > 0]
    dom_rows = batch.sparse[:, allowed[0]] + m.embedding.sparse_offsets[allowed[0]]
    assert torch.isin(rows, dom_rows).all() and len(rows) > 0  # only E(F_d) trains through the EPNet gate


# ---- PEPNet structure ---------------------------------------------------------------------------------
def _freeze_gates_at_one(m):
    for g in [m.epnet.gate, *m.ppnet.gates]:
        nn.init.zeros_(g.fc2.weight)
        nn.init.zeros_(g.fc2.bias)


def test_pepnet_with_unit_gates_is_plain_multi_tower(data, batch):
    from dynarec.nn.mlp import MLP

    schema, tables, _ = data
    m = _build("pepnet", schema)
    _train_steps(m, tables["train"])
    trained = _out(m, batch)
    _freeze_gates_at_one(m)
    frozen = _out(m, batch)
    assert _differs(trained, frozen)
    ref = {}
    with torch.no_grad():
        x = m.flat_input(batch)
        for t in m.tasks:
            tower = MLP(m.input_dim, m.config.tower_hidden, 1)
            lins = [l for l in tower.net if isinstance(l, nn.Linear)]
            for a, b in zip(lins, list(m.towers[t].linears) + [m.towers[t].out]):
                a.load_state_dict(b.state_dict())
            ref[t] = tower(x).squeeze(-1)
    _assert_same(frozen, ref)


def test_pepnet_task_t_uses_chunk_t(data, batch):
    schema, tables, _ = data
    m = _build("pepnet", schema)
    _train_steps(m, tables["train"])
    ref = _out(m, batch)
    assert m.ppnet.chunks == 2 and m.ppnet.gates[0].out_dim == 2 * m.input_dim
    sw = copy.deepcopy(m)
    with torch.no_grad():
        for g, w in zip(sw.ppnet.gates, sw.ppnet.widths):  # swap the two chunks of every gate ...
            idx = torch.cat([torch.arange(w, 2 * w), torch.arange(w)])
            g.fc2.weight.copy_(g.fc2.weight[idx])
            g.fc2.bias.copy_(g.fc2.bias[idx])
        a = {k: v.clone() for k, v in sw.towers["click"].state_dict().items()}
        b = {k: v.clone() for k, v in sw.towers["conversion"].state_dict().items()}
        sw.towers["click"].load_state_dict(b)  # ... and the two towers: the outputs swap
        sw.towers["conversion"].load_state_dict(a)
    got = _out(sw, batch)
    torch.testing.assert_close(got["click"], ref["conversion"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got["conversion"], ref["click"], atol=1e-6, rtol=1e-5)


def test_pepnet_output_gating_and_epnet_granularity(data, batch):
    schema, _, _ = data
    m = _build("pepnet", schema, gate_position="output", epnet_granularity="dim")
    assert m.ppnet.widths == m.config.tower_hidden
    assert m.epnet.gate.out_dim == m.num_fields * 4
    assert _build("pepnet", schema).epnet.gate.out_dim == m.num_fields


# ---- configuration errors ---------------------------------------------------------------------------
def _schema_without(schema, group):
    d = schema.to_dict()
    d["features"] = [f for f in d["features"] if f["group"] != group]
    return Schema.from_dict(d)


@pytest.mark.parametrize("name,group,kw", [("ppnet", "author", {"gate_groups": ["user", "item", "author"]}),
                                           ("pepnet", "author", {"gate_groups": ["user", "item", "author"]}),
                                           ("poso", "user", {}), ("dnn", "context", {"latent_cross": True}),
                                           ("epnet", "domain", {"domain_groups": ["position"]})])
def test_missing_group_is_a_config_error(data, name, group, kw):
    schema = data[0]
    s = schema if group == "domain" else _schema_without(schema, group)
    with pytest.raises(ConfigError, match=group if group != "domain" else "position"):
        _build(name, s, **kw)


@pytest.mark.parametrize("name", ["ppnet", "pepnet"])
def test_default_gate_priors_are_the_id_groups_the_schema_has(data, name):
    schema = data[0]
    full = _build(name, schema)
    groups = {schema.fields[i].group for i in full.prior_fields}
    assert groups == {"user", "item", "author"}
    s = _schema_without(schema, "author")  # e.g. MovieLens: no author group -> priors from user and item
    m = _build(name, s)
    assert {s.fields[i].group for i in m.prior_fields} == {"user", "item"}


@pytest.mark.parametrize("name,kw,key", [("ppnet", {"gate_position": "middle"}, "gate_position"),
                                         ("pepnet", {"gamma": 1.0}, "gamma"),
                                         ("epnet", {"epnet_granularity": "row"}, "epnet_granularity"),
                                         ("poso", {"form": "mha"}, "form"),
                                         ("lhuc", {"group_feature": "nope"}, "group_feature"),
                                         ("ppnet", {"gate_features": ["hist_categories"]}, "hist_categories"),
                                         ("ppnet", {"gate_init": "ones"}, "gate_init")])
def test_bad_options_are_config_errors(data, name, kw, key):
    with pytest.raises(ConfigError, match=key):
        _build(name, data[0], **kw)
