"""Batched experts (one GEMM per layer, nn/moe.py): the same function as the per-expert einsum it replaced.

Reference: the einsum formulation evaluated in float64. Tolerance: the forward error bound of a float32
dot product of length k, ``|fl(x·w) − x·w| ≤ γ_k Σ|x_i w_i|`` with ``γ_k = k·u/(1 − k·u)``, ``u = 2⁻²⁴``
(Higham, Accuracy and Stability of Numerical Algorithms, §3.1). ReLU is 1-Lipschitz, so the errors of the
layers add up to ``γ_K · M`` with ``K`` the sum of the layers' inner dimensions (+1 per bias) and ``M`` the
same network run on ``|x|``, ``|W|``, ``|b|`` (float64): a bound that holds on any BLAS / any summation
order, not a number tuned on this CPU."""
from __future__ import annotations

import pytest
import torch

from dynarec.nn.moe import Experts, MMoELayer

U = 2.0 ** -24


def gamma(k: int) -> float:
    return k * U / (1 - k * U)


def einsum_experts64(x, weights, biases, absolute=False):
    """Today's einsum formulation, float64 (``absolute``: on |x|, |W|, |b| — the error bound's scale)."""
    h = x.double().abs() if absolute else x.double()
    for w, b in zip(weights, biases):
        w, b = w.detach().double(), b.detach().double()
        if absolute:
            w, b = w.abs(), b.abs()
        eq = "bi,nio->bno" if h.dim() == 2 else "bni,nio->bno"
        h = torch.relu(torch.einsum(eq, h, w) + b)
    return h


@pytest.mark.parametrize("per_expert_input", [False, True])
def test_batched_experts_equal_the_einsum_experts_to_float32_rounding(per_expert_input):
    torch.manual_seed(0)
    n, d_in, hidden = 4, 37, [64, 24, 16]
    ex = Experts(d_in, n, hidden)
    x = torch.randn(513, n, d_in) if per_expert_input else torch.randn(513, d_in)
    got = ex(x).double()
    ref = einsum_experts64(x, ex.weights, ex.biases)
    scale = einsum_experts64(x, ex.weights, ex.biases, absolute=True)
    k = sum(d + 1 for d in [d_in] + hidden[:-1])
    assert got.shape == (513, n, hidden[-1])
    assert ((got - ref).abs() <= gamma(k) * scale).all()
    # not vacuous: a wrong expert order (weights of expert 0 and 1 swapped) breaks the bound
    w0 = ex.weights[-1].detach().clone()
    with torch.no_grad():
        ex.weights[-1][[0, 1]] = ex.weights[-1][[1, 0]]
    assert not ((ex(x).double() - ref).abs() <= gamma(k) * scale).all()
    with torch.no_grad():
        ex.weights[-1].copy_(w0)


def test_batched_experts_gradients_equal_the_einsum_gradients():
    """Backward of the batched form = backward of the einsum form (both float64, so only rounding of the
    float64 GEMMs separates them: 1e-12 relative is ~10⁴ ulps of float64 at these sizes)."""
    torch.manual_seed(1)
    ex = Experts(20, 3, [32, 8]).double()
    x = torch.randn(64, 20, dtype=torch.float64, requires_grad=True)
    ex(x).pow(2).sum().backward()
    got = [x.grad.clone()] + [p.grad.clone() for p in ex.parameters()]
    ex.zero_grad()
    x.grad = None
    h = x
    for w, b in zip(ex.weights, ex.biases):
        h = torch.relu(torch.einsum("bi,nio->bno" if h.dim() == 2 else "bni,nio->bno", h, w) + b)
    h.pow(2).sum().backward()
    want = [x.grad] + [p.grad for p in ex.parameters()]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_mmoe_layer_output_matches_the_einsum_mixture():
    torch.manual_seed(2)
    layer = MMoELayer(30, 4, 2, [48, 16]).eval()
    x = torch.randn(300, 30)
    outs = layer(x)
    ex = einsum_experts64(x, layer.experts.weights, layer.experts.biases)
    scale = einsum_experts64(x, layer.experts.weights, layer.experts.biases, absolute=True)
    k = 31 + 49 + 4  # two layers (+bias), then the mixture: a dot product of length 4 with the gates
    for g, out in zip(layer.gates, outs):
        w = g.last.double()  # the float32 gate weights this forward used (the gates are not what changed)
        ref = torch.einsum("bn,bnd->bd", w, ex)
        bound = gamma(k) * torch.einsum("bn,bnd->bd", w, scale)
        assert ((out.double() - ref).abs() <= bound).all()
