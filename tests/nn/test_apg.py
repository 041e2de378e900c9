"""APGLinear (Yan et al., APG, NeurIPS 2022): versions, conditions, exact inference merge, no (B, d_in, d_out) tensors."""
import io

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dynarec.errors import ConfigError
from dynarec.nn.apg import APGLinear, APGMLP, InputAggregation, merge_for_inference

ATOL = RTOL = 1e-5


def _layer(version, seed=0, **kw):
    torch.manual_seed(seed)
    kw.setdefault("rank_k", 4)
    kw.setdefault("overparam_p", 8)
    kw.setdefault("hypernet_hidden", [8])
    return APGLinear(kw.pop("d_in", 12), kw.pop("d_out", 10), kw.pop("cond", 5), version=version, **kw)


class _MaxTensor(TorchDispatchMode):
    """Records the largest tensor (numel) produced by any aten op."""

    def __init__(self):
        super().__init__()
        self.max_numel, self.max_shape = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor) and t.numel() > self.max_numel:
                self.max_numel, self.max_shape = t.numel(), tuple(t.shape)
        return out


def test_v2_equals_v3_for_same_generated_factors():
    v2 = _layer("v2")
    v3 = _layer("v3", seed=1)
    v3.load_state_dict(v2.state_dict())  # same generator -> same U_i, S_i, V_i
    x, z = torch.randn(7, 12), torch.randn(7, 5)
    g = v2.generate(z)
    torch.testing.assert_close(v2.apply_generated(x, g), v3.apply_generated(x, g), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(v2(x, z), v3(x, z), atol=ATOL, rtol=RTOL)
    # and both equal the explicit x_i (U_i S_i V_i) + b_i
    ref = torch.einsum("bn,bnk,bkl,blm->bm", x, g["U"], g["S"], g["V"]) + g["b"]
    torch.testing.assert_close(v3(x, z), ref, atol=ATOL, rtol=RTOL)


def test_v4_forward_is_x_U_S_V_plus_b():
    layer = _layer("v4")
    x, z = torch.randn(6, 12), torch.randn(6, 5)
    g = layer.generate(z)
    assert set(g) == {"S", "b"} and g["S"].shape == (6, 4, 4)
    ref = torch.einsum("bn,nk,bkl,lm->bm", x, layer.U, g["S"], layer.V) + g["b"]
    torch.testing.assert_close(layer(x, z), ref, atol=ATOL, rtol=RTOL)


def test_v1_generates_full_weight_per_instance():
    layer = _layer("v1")
    x, z = torch.randn(5, 12), torch.randn(5, 5)
    g = layer.generate(z)
    assert g["W"].shape == (5, 12, 10)
    torch.testing.assert_close(layer(x, z), torch.einsum("bn,bnm->bm", x, g["W"]) + g["b"], atol=ATOL, rtol=RTOL)


def test_v5_merge_exact_idempotent_no_P_dim_and_v4_param_count():
    P = 13  # a width no other tensor has
    layer = _layer("v5", overparam_p=P)
    layer.eval()
    x, z = torch.randn(9, 12), torch.randn(9, 5)
    before = layer(x, z)
    with torch.no_grad():
        before_nograd = layer(x, z)  # eval path without autograd
    layer.merge_for_inference()
    after = layer(x, z)
    torch.testing.assert_close(after, before, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(after, before_nograd, atol=ATOL, rtol=RTOL)
    assert all(P not in t.shape for t in list(layer.parameters()) + list(layer.buffers()))
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.merge_for_inference()  # idempotent
    assert layer.state_dict().keys() == state.keys()
    for k in state:
        assert torch.equal(layer.state_dict()[k], state[k])
    v4 = _layer("v4")
    assert sum(p.numel() for p in layer.parameters()) == sum(p.numel() for p in v4.parameters())
    assert sorted(n for n, _ in layer.named_parameters()) == sorted(n for n, _ in v4.named_parameters())


def test_v5_merged_checkpoint_loads_into_unmerged_layer_and_back():
    a = _layer("v5")
    x, z = torch.randn(4, 12), torch.randn(4, 5)
    a.eval()
    ref = a(x, z)
    buf = io.BytesIO()
    merged = _layer("v5")
    merged.load_state_dict(a.state_dict())
    merged.merge_for_inference()
    torch.save(merged.state_dict(), buf)
    buf.seek(0)
    fresh = _layer("v5", seed=3).eval()
    fresh.load_state_dict(torch.load(buf))
    assert fresh.merged
    torch.testing.assert_close(fresh(x, z), ref, atol=ATOL, rtol=RTOL)
    # unmerged checkpoint into a merged layer
    m2 = _layer("v5", seed=4).merge_for_inference().eval()
    m2.load_state_dict(a.state_dict())
    torch.testing.assert_close(m2(x, z), ref, atol=ATOL, rtol=RTOL)


def _fused_adam(params):
    try:
        return torch.optim.Adam(params, lr=0.1, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=0.1)


@pytest.mark.parametrize("update", ["add_", "data", "fused_adam"])
def test_v5_eval_follows_every_parameter_update(update):
    """Eval-mode v5 output always uses the current factors, also after updates that do not bump a tensor's
    version counter (``p.data`` writes, torch's fused CPU Adam: they made a version-keyed cache stale)."""
    layer = _layer("v5").eval()
    x, z = torch.randn(3, 12), torch.randn(3, 5)
    with torch.no_grad():
        y0 = layer(x, z)
    if update == "add_":
        with torch.no_grad():
            layer.U_r.add_(0.5)
    elif update == "data":
        layer.U_r.data.add_(0.5)
    else:
        opt = _fused_adam([layer.U_l, layer.U_r, layer.V_l, layer.V_r])
        layer.train()
        layer(x, z).sum().backward()
        opt.step()
        layer.eval()
    with torch.no_grad():
        y1 = layer(x, z)
        U, V = layer.U_l @ layer.U_r, layer.V_l @ layer.V_r
        g = layer.generate(z)
        ref = torch.bmm((x @ U).unsqueeze(1), g["S"]).squeeze(1) @ V + g["b"]
    assert not torch.allclose(y0, y1)
    torch.testing.assert_close(y1, ref, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("kw,what", [
    (dict(version="v4", rank_k=11), "rank_k"),  # K > min(12, 10)
    (dict(version="v3", rank_k=11), "rank_k"),
    (dict(version="v5", rank_k=6, overparam_p=5), "overparam_p"),  # P < K
    (dict(version="v6"), "version"),
    (dict(version="v4", cond=[3, 4], output_aggregation="concat"), "output_aggregation"),
])
def test_bad_config_is_a_clear_config_error(kw, what):
    with pytest.raises(ConfigError, match=what):
        _layer(**kw)


def test_v1_ignores_rank():
    _layer("v1", rank_k=100)  # K is not used by v1


def test_equal_condition_gives_equal_S_and_different_condition_different_S():
    layer = _layer("v4")
    emb = torch.nn.Embedding(3, 5)
    ids = torch.tensor([1, 2, 1, 0, 2])
    g = layer.generate(emb(ids))
    torch.testing.assert_close(g["S"][0], g["S"][2], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(g["S"][1], g["S"][4], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(g["S"][0], g["S"][1])


def test_output_aggregation_mean_equals_mean_S_and_differs_from_input_aggregation():
    torch.manual_seed(0)
    layer = APGLinear(12, 10, [5, 3], version="v4", rank_k=4, hypernet_hidden=[8], output_aggregation="mean")
    x, z1, z2 = torch.randn(6, 12), torch.randn(6, 5), torch.randn(6, 3)
    g1, g2 = layer.generate(z1, 0), layer.generate(z2, 1)
    S_bar, b_bar = (g1["S"] + g2["S"]) / 2, (g1["b"] + g2["b"]) / 2
    ref = torch.einsum("bn,nk,bkl,lm->bm", x, layer.U, S_bar, layer.V) + b_bar
    torch.testing.assert_close(layer(x, [z1, z2]), ref, atol=ATOL, rtol=RTOL)
    # input aggregation (concat) on the same factors: one generator on z1 ⊕ z2 -> a different function
    agg = InputAggregation([5, 3], "concat")
    torch.manual_seed(0)
    inp = APGLinear(12, 10, agg.out_dim, version="v4", rank_k=4, hypernet_hidden=[8])
    with torch.no_grad():
        inp.U.copy_(layer.U)
        inp.V.copy_(layer.V)
    assert not torch.allclose(inp(x, agg([z1, z2])), layer(x, [z1, z2]), atol=1e-3)
    # attention output aggregation: convex weights per row over factors
    att = APGLinear(12, 10, [5, 3], version="v4", rank_k=4, hypernet_hidden=[8], output_aggregation="attention")
    y = att(x, [z1, z2])
    a = att.last_attention
    assert a.shape == (6, 2) and torch.allclose(a.sum(1), torch.ones(6))
    o = torch.stack([att.apply_generated(x, att.generate(z, j)) for j, z in enumerate([z1, z2])], 1)
    torch.testing.assert_close(y, (a.unsqueeze(-1) * o).sum(1), atol=ATOL, rtol=RTOL)


def test_input_aggregations():
    torch.manual_seed(0)
    z = [torch.randn(4, 5), torch.randn(4, 3)]
    cat = InputAggregation([5, 3], "concat")
    assert torch.equal(cat(z), torch.cat(z, 1)) and cat.out_dim == 8
    mean = InputAggregation([5, 3], "mean", width=6)
    ref = (mean.proj[0](z[0]) + mean.proj[1](z[1])) / 2
    torch.testing.assert_close(mean(z), ref)
    att = InputAggregation([5, 3], "attention", width=6)
    with torch.no_grad():
        att.proj.load_state_dict(mean.proj.state_dict())
    out = att(z)
    a = att.last_attention
    assert torch.allclose(a.sum(1), torch.ones(4)) and not torch.allclose(out, ref)
    p = torch.stack([att.proj[0](z[0]), att.proj[1](z[1])], 1)
    torch.testing.assert_close(out, (a.unsqueeze(-1) * p).sum(1))
    with pytest.raises(ConfigError, match="aggregation"):
        InputAggregation([5], "max")


def test_self_wise_needs_no_condition_and_depends_on_input_through_G():
    layer = APGLinear(12, 10, None, version="v4", rank_k=4, hypernet_hidden=[8])
    x = torch.randn(5, 12)
    g = layer.generate(x)
    ref = torch.einsum("bn,nk,bkl,lm->bm", x, layer.U, g["S"], layer.V) + g["b"]
    torch.testing.assert_close(layer(x), ref, atol=ATOL, rtol=RTOL)
    # the hypernetwork sees x: scaling x changes S_i (a group-wise layer's S_i would not move)
    assert not torch.allclose(layer.generate(2 * x)["S"], g["S"], atol=1e-4)
    grouped = _layer("v4")
    with pytest.raises(ValueError, match="condition"):
        grouped(x)


def test_detach_condition_stops_gradient_into_condition():
    z = torch.randn(4, 5, requires_grad=True)
    x = torch.randn(4, 12)
    _layer("v5", detach_condition=True)(x, z).sum().backward()
    assert z.grad is None
    _layer("v5")(x, z).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


@pytest.mark.parametrize("version", ["v3", "v4", "v5"])
def test_no_B_din_dout_tensor_v3_to_v5(version):
    B, n, m = 64, 48, 40
    torch.manual_seed(0)
    layer = APGLinear(n, m, 6, version=version, rank_k=8, overparam_p=16, hypernet_hidden=[8])
    x, z = torch.randn(B, n, requires_grad=True), torch.randn(B, 6)
    with _MaxTensor() as mode:
        layer(x, z).sum().backward()
    assert mode.max_numel < B * n * m / 2, mode.max_shape  # v3 holds U_i, V_i: B(n+m)K


def test_v1_v2_do_allocate_B_din_dout_positive_control():
    B, n, m = 16, 12, 10
    for v in ("v1", "v2"):
        layer = APGLinear(n, m, 6, version=v, rank_k=4, hypernet_hidden=[8])
        with _MaxTensor() as mode:
            layer(torch.randn(B, n), torch.randn(B, 6))
        assert mode.max_numel >= B * n * m


@pytest.mark.parametrize("version", ["v4", "v5"])
def test_peak_tensor_far_below_4Bd2_at_B4096_d1024(version):
    B, d = 4096, 1024
    layer = APGLinear(d, d, 8, version=version, rank_k=32, overparam_p=64, hypernet_hidden=[16])
    with torch.no_grad(), _MaxTensor() as mode:
        layer(torch.randn(B, d), torch.randn(B, 8))
    assert 4 * mode.max_numel < 4 * B * d * d / 100


def test_apg_mlp_and_module_merge():
    torch.manual_seed(0)
    mlp = APGMLP(12, [10, 8], 5, out_dim=1, version="v5", rank_k=4, overparam_p=6, hypernet_hidden=[8]).eval()
    x, z = torch.randn(5, 12), torch.randn(5, 5)
    y = mlp(x, z)
    assert y.shape == (5, 1)
    assert merge_for_inference(mlp) == 2 and merge_for_inference(mlp) == 0
    torch.testing.assert_close(mlp(x, z), y, atol=ATOL, rtol=RTOL)
    # gradient reaches every parameter of an unmerged APG MLP
    mlp2 = APGMLP(12, [10], None, out_dim=1, version="v5", rank_k=4, overparam_p=6, hypernet_hidden=[8])
    mlp2(torch.randn(5, 12)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mlp2.parameters())


@pytest.mark.parametrize("version", ["v4", "v5"])
def test_grouped_product_equals_gather_path_in_value_and_gradient(version, monkeypatch):
    """The index= path multiplies x U by every group's S at once and keeps each row's block; forcing the
    gather-per-row fallback (GROUPED_MAX_COLS = 0) must give the same outputs and parameter gradients."""
    import dynarec.nn.apg as apg

    table = torch.randn(4, 5)
    ids = torch.tensor([3, 0, 2, 3, 1, 1, 0, 2])
    x = torch.randn(8, 12)
    res = {}
    for cols in (apg.GROUPED_MAX_COLS, 0):
        monkeypatch.setattr(apg, "GROUPED_MAX_COLS", cols)
        torch.manual_seed(0)
        layer = _layer(version)
        y = layer(x, table, index=ids)
        (y * torch.arange(y.numel()).reshape(y.shape)).sum().backward()
        res[cols] = (y.detach(), {n: p.grad.clone() for n, p in layer.named_parameters()})
    (y1, g1), (y0, g0) = res.values()
    torch.testing.assert_close(y1, y0, atol=ATOL, rtol=RTOL)
    assert g1.keys() == g0.keys()
    for n in g1:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-5, rtol=1e-4)


def test_index_runs_G_per_group_and_equals_per_row():
    layer = _layer("v5")
    table = torch.randn(3, 5)
    ids = torch.tensor([2, 0, 2, 1, 1, 0])
    x = torch.randn(6, 12)
    torch.testing.assert_close(layer(x, table, index=ids), layer(x, table[ids]), atol=ATOL, rtol=RTOL)
    with pytest.raises(ValueError, match="index"):
        APGLinear(12, 10, None, rank_k=4, overparam_p=8)(x, index=ids)
