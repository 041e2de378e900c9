"""APG models (apg_<backbone>, apg_multitask) and the backbones: condition designs resolved from the schema,
exact merge through checkpoints, clear config errors, backbone structure kept."""
import io

import pytest
import torch

from dynarec.errors import ConfigError
from dynarec.models import build_model
from dynarec.models.registry import active_params
from dynarec.nn.apg import APGLinear

SMALL = {"embed_dim": 4, "hidden": [16, 8], "rank_k": 4, "overparam_p": 8, "hypernet_hidden": [8],
         "condition_dim": 6}
BACKBONES = ["dnn", "wdl", "deepfm", "dcn", "dcnv2", "pnn", "fibinet", "autoint"]


@pytest.fixture(scope="module")
def data(small_synth):
    schema, tables, _ = small_synth
    return schema, tables["test"].take(torch.arange(48))


def _build(name, schema, **kw):
    torch.manual_seed(0)
    p = dict(SMALL)
    if not name.startswith("apg"):
        p = {k: p[k] for k in ("embed_dim", "hidden")}
    p.update(kw)
    small = active_params(name, p)  # SMALL keys without effect in this design are left out
    return build_model(name, schema, {k: v for k, v in p.items() if k in small or k in kw})


def _apg_layers(model):
    return [m for m in model.modules() if isinstance(m, APGLinear)]


@pytest.mark.parametrize("bb", BACKBONES)
def test_apg_replaces_only_the_mlp_of_its_backbone(data, bb):
    schema, batch = data
    base, apg = _build(bb, schema), _build(f"apg_{bb}", schema)
    base_keys = {k for k in base.state_dict() if not k.startswith("mlp.")}
    apg_keys = set(apg.state_dict())
    assert base_keys <= apg_keys, base_keys - apg_keys
    assert not any(k.startswith("mlp.net") for k in apg_keys)
    assert len(_apg_layers(apg)) == 2 and not _apg_layers(base)
    assert {k for k, v in base.state_dict().items() if not k.startswith("mlp.")} == base_keys
    for k in base_keys:  # same shapes: the interaction parts are the backbone's
        assert apg.state_dict()[k].shape == base.state_dict()[k].shape
    assert set(apg(batch)) == set(schema.task_names)


def test_group_wise_domain_equal_ids_equal_S(data):
    schema, batch = data
    model = _build("apg_dnn", schema, version="v4").eval()
    z = model.apg_condition(batch, model.embed(batch))
    S = _apg_layers(model)[0].generate(z)["S"]
    d = batch.domain
    i, j = [int(k) for k in torch.nonzero(d == d[0]).flatten()[:2]]
    other = int(torch.nonzero(d != d[0]).flatten()[0])
    torch.testing.assert_close(S[i], S[j], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(S[i], S[other])


def test_group_wise_on_user_group_reads_user_fields_only(data):
    schema, batch = data
    model = _build("apg_dnn", schema, condition_groups=["user"]).eval()
    emb = model.embed(batch)
    z = model.apg_condition(batch, emb)
    user_idx = model.field_index("user")
    n_dense = len(model._apg_dense["user"])  # user_activity: the group's dense features join its condition
    assert n_dense == 1 and z.shape == (len(batch), len(user_idx) * 4 + n_dense)
    emb2 = emb.clone()
    other = [i for i in range(emb.shape[1]) if i not in user_idx]
    emb2[:, other] += 1.0  # non-user fields do not move the condition
    torch.testing.assert_close(model.apg_condition(batch, emb2), z)
    emb2[:, user_idx[0]] += 1.0
    assert not torch.allclose(model.apg_condition(batch, emb2), z)


def test_mix_wise_input_vs_output_aggregation(data):
    schema, batch = data
    groups = ["domain", "user", "item"]
    inp = _build("apg_dnn", schema, condition_mode="mix-wise", condition_groups=groups, aggregation="mean")
    z = inp.apg_condition(batch, inp.embed(batch))
    assert isinstance(z, torch.Tensor) and z.shape == (len(batch), 6)  # projected to condition_dim, averaged
    assert all(len(layer.hypernets) == 1 for layer in _apg_layers(inp))
    out = _build("apg_dnn", schema, condition_mode="mix-wise", condition_groups=groups, aggregation="mean",
                 aggregate_at="output")
    zs = out.apg_condition(batch, out.embed(batch))
    assert isinstance(zs, list) and len(zs) == 3
    assert all(len(layer.hypernets) == 3 for layer in _apg_layers(out))  # one S^j per factor
    att = _build("apg_dnn", schema, condition_mode="mix-wise", condition_groups=groups, aggregation="attention",
                 aggregate_at="output").eval()
    with torch.no_grad():
        att(batch)
    a = _apg_layers(att)[0].last_attention
    assert a.shape == (len(batch), 3) and torch.allclose(a.sum(1), torch.ones(len(batch)))
    cat = _build("apg_dnn", schema, condition_mode="mix-wise", condition_groups=groups)
    width = 6 + 4 * (len(cat.field_index("user")) + len(cat.field_index("item"))) + 2  # + user_activity, item_price
    assert cat.apg_condition(batch, cat.embed(batch)).shape == (len(batch), width)


def test_self_wise_needs_no_condition_features(data):
    schema, batch = data
    # a group the schema lacks is an error for group-wise; self-wise takes no condition_groups at all
    with pytest.raises(ConfigError, match="position"):
        _build("apg_dnn", schema, condition_groups=["position"])
    with pytest.raises(ConfigError, match="'condition_groups' has no effect"):
        _build("apg_dnn", schema, condition_mode="self-wise", condition_groups=["position"])
    model = _build("apg_dnn", schema, condition_mode="self-wise")
    assert model.apg_condition(batch, model.embed(batch)) is None
    assert not hasattr(model, "apg_domain_table")
    assert all(layer.self_wise for layer in _apg_layers(model))
    assert model(batch)["click"].shape == (len(batch),)


@pytest.mark.parametrize("name", ["apg_dnn", "apg_deepfm", "apg_multitask"])
def test_merge_exact_param_count_of_v4_and_checkpoint_roundtrip(data, name):
    schema, batch = data
    model = _build(name, schema, overparam_p=11).eval()
    with torch.no_grad():
        ref = model(batch)
    unmerged_state = {k: v.clone() for k, v in model.state_dict().items()}
    assert model.merge_for_inference() is model
    model.merge_for_inference()  # idempotent
    with torch.no_grad():
        got = model(batch)
    for t in ref:
        torch.testing.assert_close(got[t], ref[t], atol=1e-5, rtol=1e-5)
    assert all(11 not in p.shape for p in model.parameters())
    v4 = _build(name, schema, version="v4")
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in v4.parameters())
    # evaluation from a checkpoint: the merged state loads into a fresh (unmerged) model, merging it
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(5)
    fresh = build_model(name, schema, {**SMALL, "overparam_p": 11}).eval()
    fresh.load_state_dict(torch.load(buf))
    assert all(layer.merged for layer in _apg_layers(fresh))
    with torch.no_grad():
        again = fresh(batch)
    for t in ref:
        torch.testing.assert_close(again[t], ref[t], atol=1e-5, rtol=1e-5)
    # and an unmerged checkpoint still loads into the merged model
    model.load_state_dict(unmerged_state)


@pytest.mark.parametrize("params,what", [
    ({"version": "v9"}, "version"),
    ({"rank_k": 9}, "rank_k"),  # hidden [16, 8]
    ({"version": "v5", "overparam_p": 3}, "overparam_p"),
    ({"condition_mode": "group-wise", "condition_groups": ["domain", "user"]}, "condition_groups"),
    ({"condition_mode": "mix-wise", "condition_groups": ["domain"]}, "condition_groups"),
    ({"condition_mode": "mix-wise", "condition_groups": ["domain", "user"], "aggregate_at": "output"}, "aggregation"),
    ({"condition_mode": "cluster-wise"}, "condition_mode"),
    ({"aggregation": "max"}, "aggregation"),
    ({"aggregate_at": "middle"}, "aggregate_at"),
    ({"hidden": []}, "hidden"),
])
def test_config_errors(data, params, what):
    schema, _ = data
    with pytest.raises(ConfigError, match=what):
        _build("apg_dnn", schema, **params)


def test_apg_autoint_needs_its_dnn(data):
    with pytest.raises(ConfigError, match="use_dnn"):
        _build("apg_autoint", data[0], use_dnn=False)


def test_apg_multitask_has_one_apg_tower_per_task(data):
    schema, batch = data
    model = _build("apg_multitask", schema, tower_hidden=[8, 8], hidden=[])
    assert set(model.towers) == set(schema.task_names)
    assert len(_apg_layers(model)) == 2 * len(schema.task_names)
    out = model(batch)
    assert not torch.allclose(out["click"], out["conversion"])


@pytest.mark.parametrize("version", ["v1", "v2", "v3", "v4", "v5"])
def test_every_version_builds_and_backpropagates_into_the_condition_table(data, version):
    schema, batch = data
    model = _build("apg_dnn", schema, version=version)
    model(batch)["click"].sum().backward()
    g = model.apg_domain_table.weight.grad
    assert g is not None and g[batch.domain.unique()].abs().sum() > 0
    # the condition is APG's own table alone: nothing shared to detach, so detach_condition is rejected
    with pytest.raises(ConfigError, match="detach_condition"):
        _build("apg_dnn", schema, version=version, detach_condition=True)


@pytest.mark.parametrize("name", ["apg_dnn", "apg_multitask"])
def test_detach_condition_detaches_shared_embeddings_only(data, name):
    """Issue 12 A.3: with detach_condition APG's own domain table still trains (it moves after steps) while
    the shared embeddings of the condition get no gradient through G."""
    from dynarec.train.trainer import Trainer
    from dynarec.train.config import TrainerConfig

    schema, batch = data
    kw = dict(condition_mode="mix-wise", condition_groups=["domain", "user"])
    det = _build(name, schema, detach_condition=True, **kw)
    before = det.apg_domain_table.weight.detach().clone()
    tr = Trainer(det, TrainerConfig(lr=1e-2, progress=False), seed=0)
    det.train()
    for _ in range(3):
        tr._step(batch)
    moved = (det.apg_domain_table.weight.detach() - before).abs().sum(1)
    assert (moved[batch.domain.unique()] > 0).all(), "APG's own domain table did not train with detach_condition"
    # gradient of the generated weights w.r.t. the shared table: none through the condition when detached
    und = _build(name, schema, **kw)
    for model, expect in ((det, False), (und, True)):
        emb = model.embed(batch)
        cond = model.apg_condition(batch, emb)
        g = torch.autograd.grad(cond.sum(), model.embedding.weight.weight, allow_unused=True)[0]
        got = g is not None and bool((g.to_dense() if g.is_sparse else g).abs().sum() > 0)
        assert got == expect


def test_dense_domain_features_join_the_condition(data):
    """Issue 12 A.3: a dense feature of the condition group is part of the condition (was silently dropped)."""
    import dataclasses

    schema, batch = data
    feats = [dataclasses.replace(f, group="domain") if f.name == "ctx_score" else f for f in schema.features]
    s2 = dataclasses.replace(schema, features=feats)
    model = _build("apg_dnn", s2).eval()
    assert not model.apg_per_group
    assert model._apg_cond_dim == SMALL["condition_dim"] + 1
    j = model._apg_dense["domain"]
    assert len(j) == 1
    dense = batch.dense.clone()
    dense[:, j[0]] += 3.0
    with torch.no_grad():
        z = model.apg_condition(batch, model.embed(batch))
        z2 = model.apg_condition(dataclasses.replace(batch, dense=dense), model.embed(batch))
    assert torch.equal(z[:, :-1], z2[:, :-1]) and torch.allclose(z2[:, -1] - z[:, -1], torch.full_like(z[:, -1], 3.0))
    assert _build("apg_dnn", schema).apg_per_group  # the synthetic schema: domain id alone, per-group path kept


@pytest.mark.parametrize("name,params", [("pnn", {"product": "both"}), ("pnn", {"product": "outer"}),
                                         ("dcnv2", {"structure": "stacked", "low_rank": 4}),
                                         ("fibinet", {"bilinear_type": "field_all"}),
                                         ("autoint", {"use_dnn": False})])
def test_backbone_options(data, name, params):
    schema, batch = data
    out = _build(name, schema, **params)(batch)
    assert set(out) == set(schema.task_names) and out["click"].shape == (len(batch),)


@pytest.mark.parametrize("name,params,what", [("pnn", {"product": "x"}, "product"),
                                              ("dcnv2", {"structure": "x"}, "structure"),
                                              ("dcn", {"cross_layers": 0}, "cross_layers")])
def test_backbone_config_errors(data, name, params, what):
    with pytest.raises(ConfigError, match=what):
        _build(name, data[0], **params)


@pytest.mark.parametrize("name", ["apg_dnn", "apg_multitask"])
def test_per_group_generation_equals_per_row(data, name):
    """Group-wise on the domain id runs G once per domain and gathers: same outputs and gradients as per row."""
    schema, batch = data
    model = _build(name, schema)
    assert model.apg_per_group
    out = model(batch)
    sum(v.sum() for v in out.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None and not p.grad.is_sparse}
    model.zero_grad(set_to_none=True)
    model.apg_per_group = False
    ref = model(batch)
    sum(v.sum() for v in ref.values()).backward()
    for t in out:
        torch.testing.assert_close(out[t], ref[t], atol=1e-5, rtol=1e-5)
    for n, g in grads.items():
        torch.testing.assert_close(g, model.get_parameter(n).grad, atol=1e-5, rtol=1e-4)
    assert not _build("apg_dnn", schema, condition_groups=["user"]).apg_per_group
