"""mmoe / ple / sparse_moe models: registry defaults, forward contract, eval batch independence,
gradient reach, expert dropout, noisy top-k gates, regression tasks and aleatoric heads."""
import numpy as np
import pyarrow as pa
import pytest
import torch

from dynarec.data.prepare import prepare_table, synthetic_tables
from dynarec.data.schema import Feature, Schema, Task
from dynarec.errors import ConfigError
from dynarec.losses import model_task_losses
from dynarec.models import build_model, get_model_info

MODELS = ["mmoe", "ple", "sparse_moe"]
SMALL = {"embed_dim": 4, "hidden": [16, 8], "tower_hidden": [8]}


@pytest.fixture(scope="module")
def syn():
    schema, tables, _ = synthetic_tables(2000, seed=0)
    return schema, tables


def test_registry_defaults():
    mm = get_model_info("mmoe").config_cls()
    assert (mm.num_experts, mm.expert_dropout, mm.hidden, mm.tower_hidden) == (4, 0.1, [256, 128], [64])
    pl = get_model_info("ple").config_cls()
    assert (pl.levels, pl.n_specific, pl.n_shared) == (2, 1, 1)
    sm = get_model_info("sparse_moe").config_cls()
    assert (sm.num_experts, sm.top_k, sm.balance_coef) == (8, 2, 1e-2)
    assert all(get_model_info(n).multi_task for n in MODELS)


@pytest.mark.parametrize("name,extra", [("mmoe", {}), ("mmoe", {"gate": "noisy_topk"}), ("ple", {}),
                                        ("sparse_moe", {})])
def test_eval_batch_independence_and_gradient_reach(syn, name, extra):
    schema, tables = syn
    torch.manual_seed(0)
    m = build_model(name, schema, dict(SMALL, **extra))
    b = tables["train"].take(torch.arange(64))
    m.eval()
    with torch.no_grad():
        full = m(b)
        alone = m(tables["train"].take(torch.arange(5, 6)))
        perm = torch.randperm(64)
        permuted = m(tables["train"].take(perm))
    for t in schema.task_names:
        assert full[t].shape == (64,)
        torch.testing.assert_close(alone[t], full[t][5:6], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(permuted[t], full[t][perm], atol=1e-5, rtol=1e-5)
    m.train()
    big = tables["train"].take(torch.arange(512))
    out = m(big)
    loss = sum(model_task_losses(m, out, big.labels, {t: "binary" for t in schema.task_names}).values())
    if m.extra_loss() is not None:
        loss = loss + m.extra_loss()
    loss.backward()
    for n, p in m.named_parameters():
        assert p.grad is not None, n
        g = p.grad.coalesce().values() if p.grad.is_sparse else p.grad
        assert g.abs().sum() > 0, n


def test_mmoe_expert_dropout_train_vs_eval(syn):
    schema, tables = syn
    m = build_model("mmoe", schema, dict(SMALL, expert_dropout=0.25))
    b = tables["train"].take(torch.arange(1000))
    m.train()
    m(b)
    for t, g in m.last_gate_weights.items():
        torch.testing.assert_close(g.sum(-1), torch.ones(1000), atol=1e-5, rtol=1e-5)
        assert (g == 0).float().mean() > 0.15  # experts dropped in training
    m.eval()
    m(b)
    for g in m.last_gate_weights.values():
        assert (g > 0).all()  # nothing dropped in eval
    usage = m.gate_usage(tables["valid"])
    assert set(usage) == set(schema.task_names)
    assert len(usage["click"]["mean_weight"]) == 4 and sum(usage["click"]["mean_weight"]) == pytest.approx(1, abs=1e-3)
    with torch.no_grad():  # force a polarised gate: it is flagged
        m.mmoe.gates[0].linear.bias.copy_(torch.tensor([20.0, 0, 0, 0]))
    assert m.gate_usage(tables["valid"])["click"]["polarised"]


def test_noisy_topk_gates_route_k_experts_and_report_balance_loss(syn):
    schema, tables = syn
    for name, params in (("mmoe", dict(SMALL, gate="noisy_topk", top_k=1)), ("sparse_moe", dict(SMALL, top_k=3))):
        m = build_model(name, schema, params).train()
        m(tables["train"].take(torch.arange(256)))
        k = params["top_k"]
        gates = list(m.gate_modules().values())
        for g in gates:
            assert ((g.last > 0).sum(-1) == k).all()
        loss = m.extra_loss()
        assert loss is not None and loss.requires_grad
        (gw,) = torch.autograd.grad(loss, [gates[0].w_gate])
        assert gw.abs().sum() > 0
    assert build_model("mmoe", schema, SMALL).extra_loss() is None


def test_config_errors(syn):
    schema, _ = syn
    bad = [("mmoe", {"gate": "top"}), ("mmoe", {"top_k": 9, "gate": "noisy_topk"}), ("mmoe", {"expert_dropout": 1.0}),
           ("ple", {"n_specific": 0, "n_shared": 0}), ("ple", {"levels": 0}), ("sparse_moe", {"top_k": 0}),
           ("sparse_moe", {"hidden": []}), ("mmoe", {"num_expert": 3}), ("mmoe", {"logit_samples": 0})]
    for name, params in bad:
        with pytest.raises(ConfigError):
            build_model(name, schema, params)


def _regression_tables():
    """y = 2x + noise with noise sd 2.0 where g = 'loud' and 0.2 where g = 'quiet'."""
    rng = np.random.default_rng(0)
    n = 3000
    x = rng.normal(0, 1, n).astype(np.float32)
    loud = rng.random(n) < 0.5
    y = 2 * x + np.where(loud, 2.0, 0.2) * rng.normal(0, 1, n)
    t = pa.table({"domain": np.where(loud, "loud", "quiet").tolist(), "x": x, "y": y.astype(np.float32),
                  "click": (rng.random(n) < 1 / (1 + np.exp(-x))).astype(np.int8)})
    s = Schema(features=[Feature("domain", "sparse", "domain"), Feature("x", "dense", "context")],
               tasks=[Task("y", "regression"), Task("click")], domain="domain")
    return s, prepare_table(t, s)


def _fit(m, table, steps=300, lr=2e-2):
    types = m.schema.task_types
    emb = m.embedding.weight.weight
    opts = [torch.optim.Adagrad([emb], lr=0.1), torch.optim.Adam([p for p in m.parameters() if p is not emb], lr=lr)]
    g = torch.Generator().manual_seed(0)
    m.train()
    step = 0
    while step < steps:
        for b in table.batches(256, shuffle=True, generator=g):
            if step == steps:
                break
            for o in opts:
                o.zero_grad()
            loss = sum(model_task_losses(m, m(b), b.labels, types).values())
            loss.backward()
            for o in opts:
                o.step()
            step += 1
    m.eval()
    return m


@pytest.mark.parametrize("name", MODELS)
def test_regression_task_outputs_values(name):
    s, tabs = _regression_tables()
    torch.manual_seed(0)
    m = _fit(build_model(name, s, dict(SMALL, dropout=0.0)), tabs["train"], steps=100)
    te = tabs["test"].full()
    pred = m.predict(te)
    assert (pred["y"] > 1).any() and (pred["y"] < 0).any()  # raw values, not probabilities
    assert ((pred["click"] > 0) & (pred["click"] < 1)).all()
    rmse = float(((pred["y"] - te.labels["y"]) ** 2).mean().sqrt())
    assert rmse < 0.75 * float(te.labels["y"].std())  # learnt y ≈ 2x (noise floor ≈ 1.42 of std ≈ 2.5)


def test_aleatoric_head_learns_the_noise_level():
    s, tabs = _regression_tables()
    torch.manual_seed(0)
    m = _fit(build_model("mmoe", s, dict(SMALL, aleatoric=True, expert_dropout=0.0)), tabs["train"], steps=200)
    te = tabs["test"].full()
    with torch.no_grad():
        m(te)
    s_y = m.last_log_var["y"]
    loud = te.domain == s.domain_values.index("loud") + 1
    # true log σ²: log 4 ≈ 1.39 (loud) vs log 0.04 ≈ -3.2 (quiet)
    gap = float(s_y[loud].mean()) - float(s_y[~loud].mean())
    assert gap > 2.5
    assert "click" in m.last_log_var  # the binary task has a logit-variance head too
    loss = m.task_loss(m(te), te.labels)
    assert set(loss) == {"y", "click"} and all(torch.isfinite(v) for v in loss.values())
