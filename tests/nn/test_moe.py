"""Experts, MMoE gates with expert dropout, CGC/PLE and noisy top-k MoE (Ma et al., KDD 2018; Zhao et al.,
RecSys 2019; Tang et al., RecSys 2020; Shazeer et al., ICLR 2017)."""
import math

import pytest
import torch

from dynarec.errors import ConfigError
from dynarec.nn.moe import (CGC, Experts, MMoELayer, NoisyTopKGate, NoisyTopKMoE, PLELayer, SoftmaxGate,
                            cv_squared, expert_dropout, gate_usage_stats)

ATOL = 1e-5


def test_experts_match_independent_mlps():
    torch.manual_seed(0)
    ex = Experts(5, 3, [4, 2])
    x = torch.randn(7, 5)
    y = ex(x)
    assert y.shape == (7, 3, 2)
    for i in range(3):
        h = torch.relu(x @ ex.weights[0][i] + ex.biases[0][i])
        h = torch.relu(h @ ex.weights[1][i] + ex.biases[1][i])
        torch.testing.assert_close(y[:, i], h, atol=ATOL, rtol=ATOL)
    # per-expert inputs [B, n, d]: expert i only sees input i
    xs = torch.randn(7, 3, 5)
    y2 = ex(xs)
    for i in range(3):
        torch.testing.assert_close(y2[:, i], ex(xs[:, i])[:, i], atol=ATOL, rtol=ATOL)
    # the optimiser sees every expert's weights (registered tensors with a leading expert axis)
    names = dict(ex.named_parameters())
    assert names["weights.0"].shape == (3, 5, 4)


def test_expert_dropout_eval_is_identity_and_train_rows_sum_to_one():
    torch.manual_seed(0)
    gate = SoftmaxGate(6, 4, dropout=0.3)
    x = torch.randn(2000, 6)
    gate.eval()
    ge = gate(x)
    torch.testing.assert_close(ge, torch.softmax(gate.linear(x), -1))
    assert (ge > 0).all()  # nothing dropped in eval
    gate.train()
    gt = gate(x)
    torch.testing.assert_close(gt.sum(-1), torch.ones(2000), atol=ATOL, rtol=ATOL)
    dropped = (gt == 0).float().mean().item()
    # each weight dropped with p = 0.3 except in rows that would lose all 4 (prob 0.3^4 ≈ 0.8 %)
    assert abs(dropped - 0.3 * (1 - 0.3 ** 3)) < 0.03
    # kept weights are the eval weights renormalised over the kept experts
    keep = gt > 0
    ren = ge * keep / (ge * keep).sum(-1, keepdim=True)
    torch.testing.assert_close(gt, ren, atol=ATOL, rtol=ATOL)


def test_expert_dropout_row_never_loses_every_expert():
    torch.manual_seed(0)
    g = torch.softmax(torch.randn(5000, 2), -1)
    out = expert_dropout(g, 0.9, training=True)
    torch.testing.assert_close(out.sum(-1), torch.ones(5000), atol=ATOL, rtol=ATOL)
    all_kept = (out > 0).all(-1)
    # P(both dropped) = 0.81 -> those rows keep their original gates
    assert all_kept.float().mean() > 0.7
    torch.testing.assert_close(out[all_kept], g[all_kept])
    with pytest.raises(ConfigError):
        SoftmaxGate(3, 2, dropout=1.0)


def test_mmoe_layer_is_gated_mixture():
    torch.manual_seed(0)
    layer = MMoELayer(5, 3, 2, [4], expert_dropout=0.5).eval()
    x = torch.randn(6, 5)
    outs = layer(x)
    ex = layer.experts(x)
    for t in range(2):
        g = torch.softmax(layer.gates[t].linear(x), -1)
        torch.testing.assert_close(outs[t], (g.unsqueeze(-1) * ex).sum(1), atol=ATOL, rtol=ATOL)


# ---------------------------------------------------------------- PLE
def _copy_cgc_to_mmoe(cgc: CGC, mm: MMoELayer):
    with torch.no_grad():
        for p, q in zip(mm.experts.parameters(), cgc.shared.parameters()):
            p.copy_(q)
        for g_m, g_c in zip(mm.gates, cgc.gates):
            g_m.linear.load_state_dict(g_c.linear.state_dict())


def test_one_level_without_specific_experts_is_mmoe():
    torch.manual_seed(0)
    ple = PLELayer(5, 2, levels=1, n_specific=0, n_shared=3, hidden=[4]).eval()
    mm = MMoELayer(5, 3, 2, [4]).eval()
    _copy_cgc_to_mmoe(ple.levels[0], mm)
    x = torch.randn(9, 5)
    for a, b in zip(ple(x), mm(x)):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=ATOL)


def test_each_gate_covers_exactly_its_experts():
    torch.manual_seed(0)
    cgc = CGC(5, num_tasks=2, n_specific=2, n_shared=1, hidden=[4], shared_gate=True).eval()
    assert cgc.gates[0].linear.out_features == 3  # 2 own + 1 shared
    assert cgc.shared_gate.linear.out_features == 5  # 2 + 2 specific + 1 shared
    x = torch.randn(8, 5)
    (o0, o1), sh = cgc([x, x], x)
    with torch.no_grad():  # perturb task 1's own experts
        cgc.specific[1].weights[0].add_(1.0)
    (p0, p1), sh2 = cgc([x, x], x)
    torch.testing.assert_close(p0, o0)  # task 0's gate never sees task 1's experts
    assert (p1 - o1).abs().max() > 1e-3
    assert (sh2 - sh).abs().max() > 1e-3  # the shared gate covers all experts
    # two levels: task 1's level-0 expert reaches task 0 only through the shared path
    torch.manual_seed(0)
    ple = PLELayer(5, 2, levels=2, n_specific=1, n_shared=1, hidden=[4]).eval()
    a0, _ = ple(x)
    assert ple.levels[1].shared_gate is None
    with torch.no_grad():
        ple.levels[0].specific[1].weights[0].add_(1.0)
    b0, _ = ple(x)
    assert (b0 - a0).abs().max() > 1e-4
    with pytest.raises(ConfigError):
        CGC(5, 2, 0, 0, [4])


# ---------------------------------------------------------------- noisy top-k
@pytest.mark.parametrize("k", [1, 2, 3])
def test_noisy_topk_routes_each_row_to_exactly_k(k):
    torch.manual_seed(0)
    gate = NoisyTopKGate(6, 5, k)
    with torch.no_grad():
        gate.w_gate.normal_()
        gate.w_noise.normal_()
    x = torch.randn(300, 6)
    for mode in (True, False):
        gate.train(mode)
        g = gate(x)
        assert ((g > 0).sum(-1) == k).all()
        torch.testing.assert_close(g.sum(-1), torch.ones(300), atol=ATOL, rtol=ATOL)


def test_noisy_topk_eval_is_noise_free_and_deterministic():
    torch.manual_seed(0)
    gate = NoisyTopKGate(6, 5, 2)
    with torch.no_grad():
        gate.w_gate.normal_()
        gate.w_noise.normal_()
    x = torch.randn(50, 6)
    gate.eval()
    g1, g2 = gate(x), gate(x)
    torch.testing.assert_close(g1, g2, atol=0, rtol=0)
    clean = x @ gate.w_gate
    top = clean.topk(2, -1).indices
    ref = torch.zeros_like(clean).scatter(-1, top, torch.softmax(clean.gather(-1, top), -1))
    torch.testing.assert_close(g1, ref, atol=ATOL, rtol=ATOL)
    # one row alone gives the same gates as inside the batch
    torch.testing.assert_close(gate(x[3:4]), g1[3:4])
    gate.train()
    assert not torch.equal(gate(x), gate(x))  # training adds noise


def test_balance_losses_zero_when_uniform_positive_otherwise():
    gate = NoisyTopKGate(2, 4, 2, balance_coef=1.0).eval()
    # half the rows prefer experts {0,1}, the other half {2,3}: importance and load uniform
    with torch.no_grad():
        gate.w_gate.copy_(torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).repeat(10, 1)
    gate(x)
    assert float(gate.balance_loss.detach()) == pytest.approx(0.0, abs=1e-9)
    assert cv_squared(torch.ones(4)) == 0
    gate(x[::2])  # every row routed to experts {0, 1}
    imp = torch.tensor([5.0, 5.0, 0.0, 0.0])
    expected = 2 * (imp.var(unbiased=False) / imp.mean() ** 2)  # importance and load have the same CV²
    assert float(gate.balance_loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert float(gate.balance_loss.detach()) > 0.5


def test_load_loss_has_gradient_for_both_gating_weights():
    torch.manual_seed(0)
    gate = NoisyTopKGate(4, 6, 2).train()
    x = torch.randn(64, 4)
    gate(x)
    load_only = cv_squared(gate._prob_in_top_k(x @ gate.w_gate, *_noisy(gate, x)).sum(0))
    gw, gn = torch.autograd.grad(load_only, [gate.w_gate, gate.w_noise])
    assert gw.abs().sum() > 0 and gn.abs().sum() > 0


def _noisy(gate, x):
    clean = x @ gate.w_gate
    std = torch.nn.functional.softplus(x @ gate.w_noise) + gate.noise_eps
    noisy = clean + torch.randn_like(clean) * std
    return noisy, std, noisy.topk(gate.k + 1, -1).values


def test_load_probability_uses_kth_excluding_self():
    torch.manual_seed(0)
    gate = NoisyTopKGate(3, 5, 2)
    x = torch.randn(40, 3)
    with torch.no_grad():
        gate.w_gate.normal_()
    clean = x @ gate.w_gate
    noisy, std, top = _noisy(gate, x)
    p = gate._prob_in_top_k(clean, noisy, std, top)
    # reference: expert i is in the top k iff its value beats the k-th largest of the OTHER experts
    ref = torch.empty_like(p)
    for i in range(5):
        others = torch.cat([noisy[:, :i], noisy[:, i + 1:]], 1)
        thr = others.topk(2, -1).values[:, 1]
        ref[:, i] = 0.5 * (1 + torch.erf((clean[:, i] - thr) / std[:, i] / math.sqrt(2)))
    torch.testing.assert_close(p, ref, atol=ATOL, rtol=ATOL)


def test_gradients_reach_gating_weights_through_the_output():
    torch.manual_seed(0)
    moe = NoisyTopKMoE(4, [8], num_experts=4, k=2).train()
    x = torch.randn(128, 4)
    y = moe(x)
    (y.pow(2).sum() + moe.balance_loss).backward()
    assert moe.gate.w_gate.grad.abs().sum() > 0
    assert moe.gate.w_noise.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in moe.experts.parameters())
    with pytest.raises(ConfigError):
        NoisyTopKGate(4, 3, k=4)


def test_gate_usage_stats():
    one_hot = torch.eye(3)[torch.zeros(10, dtype=torch.long)]
    s = gate_usage_stats(one_hot)
    assert s["polarised"] and s["entropy"] == 0 and s["top1_share"] == [1.0, 0.0, 0.0]
    u = gate_usage_stats(torch.full((10, 4), 0.25))
    assert not u["polarised"] and u["entropy"] == pytest.approx(1.0) and u["mean_weight"] == [0.25] * 4
