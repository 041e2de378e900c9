"""Interaction layers of the APG paper's backbones: each checked against its defining formula."""
import itertools

import pytest
import torch

from dynarec.errors import ConfigError
from dynarec.nn.interaction import (FM, BilinearInteraction, CrossNetwork, CrossNetworkV2, InnerProduct,
                                    InteractingLayer, OuterProduct, SENet)

torch.manual_seed(0)
B, F, D = 5, 4, 3


def _emb():
    return torch.randn(B, F, D)


def test_fm_equals_sum_of_pairwise_inner_products():
    e = _emb()
    ref = sum((e[:, i] * e[:, j]).sum(-1) for i, j in itertools.combinations(range(F), 2))
    torch.testing.assert_close(FM()(e).squeeze(1), ref)
    torch.testing.assert_close(FM(reduce_sum=False)(e).sum(1), ref)


def test_inner_product_pairs():
    e = _emb()
    p = InnerProduct(F)(e)
    assert p.shape == (B, F * (F - 1) // 2)
    torch.testing.assert_close(p[:, 0], (e[:, 0] * e[:, 1]).sum(-1))
    torch.testing.assert_close(p[:, -1], (e[:, F - 2] * e[:, F - 1]).sum(-1))
    torch.testing.assert_close(p.sum(1), FM()(e).squeeze(1))


def test_outer_product_kernel():
    e = _emb()
    op = OuterProduct(F, D)
    p = op(e)
    torch.testing.assert_close(p[:, 0], torch.einsum("bd,de,be->b", e[:, 0], op.kernel[0], e[:, 1]))
    with torch.no_grad():
        op.kernel.copy_(torch.eye(D).expand_as(op.kernel))  # identity kernel = inner product
    torch.testing.assert_close(op(e), InnerProduct(F)(e))


def test_cross_network_formula():
    x0 = torch.randn(B, 6)
    cn = CrossNetwork(6, 2)
    with torch.no_grad():
        cn.b.normal_()
    x1 = x0 * (x0 @ cn.w[0]).unsqueeze(1) + cn.b[0] + x0
    x2 = x0 * (x1 @ cn.w[1]).unsqueeze(1) + cn.b[1] + x1
    torch.testing.assert_close(cn(x0), x2)


def test_cross_network_v2_formula_and_low_rank():
    x0 = torch.randn(B, 6)
    cn = CrossNetworkV2(6, 2)
    l0, l1 = cn.layers
    x1 = x0 * (x0 @ l0.weight.T + l0.bias) + x0
    torch.testing.assert_close(cn(x0), x0 * (x1 @ l1.weight.T + l1.bias) + x1)
    lr = CrossNetworkV2(6, 1, low_rank=2)
    assert lr.layers[0][0].weight.shape == (2, 6)
    with pytest.raises(ConfigError, match="low_rank"):
        CrossNetworkV2(6, 1, low_rank=7)


def test_senet_reweights_fields():
    e = _emb()
    se = SENet(F, reduction=2)
    out = se(e)
    a = se.last_weights
    assert a.shape == (B, F) and (a >= 0).all()
    torch.testing.assert_close(out, e * a.unsqueeze(-1))
    torch.testing.assert_close(a, se.net(e.mean(-1)))


@pytest.mark.parametrize("kind", BilinearInteraction.KINDS)
def test_bilinear_formula(kind):
    e = _emb()
    bl = BilinearInteraction(F, D, kind)
    out = bl(e)
    pairs = list(itertools.combinations(range(F), 2))
    assert out.shape == (B, len(pairs), D)
    for p, (i, j) in enumerate(pairs):
        W = bl.W[{"field_all": 0, "field_each": i, "field_interaction": p}[kind]]
        torch.testing.assert_close(out[:, p], (e[:, i] @ W) * e[:, j])
    with pytest.raises(ConfigError, match="bilinear_type"):
        BilinearInteraction(F, D, "nope")


def test_interacting_layer_matches_manual_attention_and_is_per_sample():
    e = _emb()
    layer = InteractingLayer(D, attn_dim=2, num_heads=2)
    out = layer(e)
    assert out.shape == (B, F, 4)
    q, k, v = layer.q(e), layer.k(e), layer.v(e)
    heads = []
    for h in range(2):
        sl = slice(2 * h, 2 * h + 2)
        a = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2), -1)
        heads.append(a @ v[..., sl])
    torch.testing.assert_close(out, torch.relu(torch.cat(heads, -1) + layer.res(e)))
    # attention runs over fields within a row: a row alone gives the same output
    torch.testing.assert_close(layer(e[2:3]), out[2:3], atol=1e-6, rtol=1e-5)
