"""CAN co-action unit / layer (Bian et al., CAN, WSDM 2022; layout of alibaba/DeepRec's CAN model)."""
import pytest
import torch

from dynarec.nn.coaction import CoActionLayer, CoActionUnit, coaction_param_dim

ATOL = 1e-5


def test_param_width_and_output_width_match_the_reference_defaults():
    unit = CoActionUnit()
    assert unit.param_dim == 16 * 8 + 8 * 4 == 160  # Σ(d_{l-1}·d_l) of weight_emb_w [[16, 8], [8, 4]], no biases
    assert unit.out_dim == 36  # 3 orders × (8 + 4)
    assert coaction_param_dim([[16, 8], [8, 4]], [8, 4], 3, True) == 3 * (160 + 12)
    assert CoActionUnit(orders=3, order_indep=True).param_dim == 480


def _reference(theta, feed, mask, orders=3):
    """Straight transcription of DeepRec gen_coaction (mode 'can', shared orders, no bias)."""
    w1 = theta[:, :128].view(-1, 16, 8)
    w2 = theta[:, 128:160].view(-1, 8, 4)
    outs = []
    for c in range(1, orders + 1):
        h1 = torch.tanh(torch.bmm(feed ** c, w1))
        h2 = torch.bmm(h1, w2)
        outs += [h1, h2]
    return (torch.cat(outs, 2) * mask.unsqueeze(-1)).sum(1)


def test_unit_matches_reference_transcription():
    torch.manual_seed(0)
    unit = CoActionUnit()
    theta, feed = torch.randn(4, 160) * 0.3, torch.randn(4, 5, 16) * 0.5
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1] * 5, [0] * 5]).float()
    out = unit(theta, feed, mask)
    assert out.shape == (4, 36)
    torch.testing.assert_close(out, _reference(theta, feed, mask), atol=ATOL, rtol=ATOL)
    assert torch.equal(out[3], torch.zeros(36))


def test_zero_induction_params_contribute_nothing():
    unit = CoActionUnit(weight_emb_b=[8, 4])  # biases too come from θ
    out = unit(torch.zeros(3, unit.param_dim), torch.randn(3, 4, 16), torch.ones(3, 4))
    assert torch.equal(out, torch.zeros(3, 36))


def test_padding_contributes_exactly_zero():
    torch.manual_seed(0)
    unit = CoActionUnit()
    theta = torch.randn(2, 160)
    feed = torch.randn(2, 4, 16)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]]).float()
    feed2 = feed.clone()
    feed2[mask == 0] = 7.0
    assert torch.equal(unit(theta, feed, mask), unit(theta, feed2, mask))


def test_output_depends_on_both_sides():
    torch.manual_seed(0)
    unit = CoActionUnit()
    th, p = torch.randn(2, 160) * 0.3, torch.randn(2, 3, 16) * 0.5
    base = unit(th[:1], p[:1])
    assert not torch.allclose(unit(th[1:], p[:1]), base, atol=1e-4)  # other item, same user
    assert not torch.allclose(unit(th[:1], p[1:]), base, atol=1e-4)  # same item, other user


def test_orders_are_powers_and_independent_orders_use_their_own_slice():
    torch.manual_seed(0)
    unit = CoActionUnit(orders=2, order_indep=True)
    theta, feed = torch.randn(3, 320) * 0.3, torch.randn(3, 2, 16) * 0.5
    out = unit(theta, feed)
    one = CoActionUnit(orders=1)
    torch.testing.assert_close(out[:, :12], one(theta[:, :160], feed), atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(out[:, 12:], one(theta[:, 160:], feed ** 2), atol=ATOL, rtol=ATOL)


def test_segments_sum_each_feed_field_separately():
    torch.manual_seed(0)
    unit = CoActionUnit()
    theta, feed = torch.randn(2, 160) * 0.3, torch.randn(2, 5, 16) * 0.5
    mask = torch.ones(2, 5)
    out = unit(theta, feed, mask, segments=[1, 4])
    torch.testing.assert_close(out[:, :36], unit(theta, feed[:, :1]), atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(out[:, 36:], unit(theta, feed[:, 1:]), atol=ATOL, rtol=ATOL)


def test_layer_has_its_own_sparse_tables_and_masks_id_zero():
    torch.manual_seed(0)
    layer = CoActionLayer(num_induction=10, num_feed=20)
    assert layer.induction.weight.shape == (10, 160) and layer.feed.weight.shape == (20, 16)
    assert layer.induction.sparse and layer.feed.sparse
    ids = torch.tensor([[3, 4, 0, 0]])
    out = layer(torch.tensor([2]), ids)
    torch.testing.assert_close(out, layer(torch.tensor([2]), ids[:, :2]))
    out.sum().backward()
    g = layer.induction.weight.grad.coalesce()
    assert g.indices().flatten().tolist() == [2]


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="chain"):
        CoActionUnit(weight_emb_w=[[16, 8], [6, 4]])
    with pytest.raises(ValueError, match="weight_emb_b"):
        CoActionUnit(weight_emb_b=[0])
    with pytest.raises(ValueError, match="width"):
        CoActionUnit()(torch.zeros(1, 100), torch.zeros(1, 2, 16))
