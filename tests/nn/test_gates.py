"""Defining properties of the gate layers (LHUC: Swietojanski et al., TASLP 2016; Gate NU and
EPNet: Chang et al., PEPNet, KDD 2023; gates start at exactly 1, a dynarec choice)."""
import pytest
import torch
from torch import nn

from dynarec.nn.gates import EPNet, GatedMLP, GateNU, LayerGates, LHUC
from dynarec.nn.mlp import MLP


def _randomise_last(gate: GateNU, std=1.0):
    nn.init.normal_(gate.fc2.weight, std=std)
    nn.init.normal_(gate.fc2.bias, std=std)


# ---- GateNU ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("gamma", [2.0, 3.0])
def test_gatenu_zero_init_is_exactly_one(gamma):
    torch.manual_seed(0)
    g = GateNU(7, 5, gamma=gamma)
    out = g(torch.randn(64, 7) * 3)
    assert out.shape == (64, 5)
    torch.testing.assert_close(out, torch.ones_like(out), atol=1e-6, rtol=0)


def test_gatenu_range_and_bounds():
    torch.manual_seed(0)
    g = GateNU(6, 9, hidden_dim=4)
    _randomise_last(g)
    out = g(torch.randn(512, 6))
    assert (out > 0).all() and (out < 2).all()
    assert out.std() > 0.05  # really a function of the input, not constant
    ext = g(torch.randn(512, 6) * 1e4)
    assert (ext >= 0).all() and (ext <= 2).all()
    assert g.fc1.out_features == 4


def test_gatenu_hidden_defaults_to_out_dim_and_default_init_is_not_one():
    torch.manual_seed(0)
    g = GateNU(6, 9, zero_init_last=False)
    assert g.fc1.out_features == 9
    assert not torch.allclose(g(torch.randn(16, 6)), torch.ones(16, 9))


# ---- LHUC -----------------------------------------------------------------------------------------
def test_lhuc_zero_is_identity_and_range():
    torch.manual_seed(0)
    m = LHUC(4, 8)
    h = torch.randn(32, 8)
    grp = torch.randint(0, 4, (32,))
    torch.testing.assert_close(m(h, grp), h, atol=0, rtol=0)
    with torch.no_grad():
        m.r.normal_(0, 3)
    gate = m.gate(grp)
    assert (gate > 0).all() and (gate < 2).all()
    torch.testing.assert_close(m(h, grp), gate * h)


def test_lhuc_only_present_groups_get_gradient():
    m = LHUC(5, 3)
    grp = torch.tensor([1, 3, 3, 1])
    m(torch.randn(4, 3), grp).pow(2).sum().backward()
    nz = (m.r.grad.abs().sum(1) > 0).tolist()
    assert nz == [False, True, False, True, False]


# ---- EPNet ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("gran", ["field", "dim"])
def test_epnet_identity_at_init_and_shape(gran):
    torch.manual_seed(0)
    layer = EPNet(3, 5, 4, granularity=gran)
    emb, dom = torch.randn(10, 5, 4), torch.randn(10, 3)
    out = layer(emb, dom)
    assert out.shape == emb.shape
    torch.testing.assert_close(out, emb, atol=1e-6, rtol=0)
    assert layer.gate.fc1.out_features == 20  # gate hidden width = d_E


@pytest.mark.parametrize("gran", ["field", "dim"])
def test_epnet_no_gradient_to_E_through_gate_input(gran):
    torch.manual_seed(0)
    layer = EPNet(3, 5, 4, granularity=gran)
    _randomise_last(layer.gate)
    emb = torch.randn(10, 5, 4, requires_grad=True)
    dom = torch.randn(10, 3, requires_grad=True)
    g = layer.gates(emb, dom)
    ge, gd = torch.autograd.grad(g.sum(), [emb, dom], allow_unused=True)
    assert ge is None or ge.abs().max() == 0  # sg(E) in the gate input
    assert gd.abs().sum() > 0  # the domain side trains the gate
    (out_grad,) = torch.autograd.grad(layer(emb, dom).sum(), [emb])
    torch.testing.assert_close(out_grad, layer.gates(emb, dom).expand_as(emb).detach())  # d(δ⊙E)/dE = δ


def test_epnet_domain_changes_output_and_granularity():
    torch.manual_seed(0)
    field = EPNet(3, 5, 4, granularity="field")
    dim = EPNet(3, 5, 4, granularity="dim")
    for m in (field, dim):
        _randomise_last(m.gate)
    emb, dom = torch.randn(6, 5, 4), torch.randn(6, 3)
    assert not torch.allclose(field(emb, dom), field(emb, dom + 1.0))  # F_d alone changes O_ep
    gf = field.gates(emb, dom)
    assert gf.shape == (6, 5, 1)
    gd = dim.gates(emb, dom)
    assert gd.shape == (6, 5, 4) and gd.std(-1).max() > 0  # per-dimension gates differ within a field


def test_epnet_domain_only_ignores_embeddings():
    torch.manual_seed(0)
    m = EPNet(3, 5, 4, gate_input="domain_only")
    _randomise_last(m.gate)
    dom = torch.randn(6, 3)
    torch.testing.assert_close(m.gates(torch.randn(6, 5, 4), dom), m.gates(torch.randn(6, 5, 4), dom))
    assert m.gate.in_dim == 3


# ---- LayerGates / GatedMLP -----------------------------------------------------------------------
def test_layer_gates_chunks():
    lg = LayerGates(7, [5, 3], chunks=2)
    out = lg(torch.randn(4, 7))
    assert [o.shape for o in out] == [(4, 2, 5), (4, 2, 3)]
    assert lg.gates[0].fc1.out_features == 10  # hidden = out width (T·w) by default
    torch.testing.assert_close(out[0], torch.ones(4, 2, 5))


def _copy(mlp: MLP, g: GatedMLP):
    lins = [m for m in mlp.net if isinstance(m, nn.Linear)]
    mine = list(g.linears) + ([g.out] if g.out is not None else [])
    for a, b in zip(lins, mine):
        b.load_state_dict(a.state_dict())


@pytest.mark.parametrize("pos", ["input", "output"])
def test_gated_mlp_with_unit_gates_is_the_mlp(pos):
    torch.manual_seed(0)
    mlp = MLP(6, [8, 4], 2)
    g = GatedMLP(6, [8, 4], 2, position=pos)
    _copy(mlp, g)
    assert g.gate_dims == ([6, 8, 4] if pos == "input" else [8, 4])
    x = torch.randn(16, 6)
    ones = [torch.ones(16, w) for w in g.gate_dims]
    torch.testing.assert_close(g(x, ones), mlp(x), atol=1e-6, rtol=0)


def test_gated_mlp_input_gate_equals_row_scaled_weights():
    """(δ ⊙ h)W = h (diag(δ) W): an input gate is a per-sample rescaling of the layer's weight rows."""
    torch.manual_seed(0)
    g = GatedMLP(6, [8], 3, position="input")
    x = torch.randn(1, 6)
    d0, d1 = torch.rand(1, 6) * 2, torch.rand(1, 8) * 2
    ref = GatedMLP(6, [8], 3, position="input")
    ref.load_state_dict(g.state_dict())
    with torch.no_grad():
        ref.linears[0].weight.mul_(d0)  # weight is [out, in]: scale input columns
        ref.out.weight.mul_(d1)
    torch.testing.assert_close(g(x, [d0, d1]), ref(x), atol=1e-6, rtol=1e-5)


def test_gated_mlp_output_position_leaves_logit_layer_ungated():
    torch.manual_seed(0)
    g = GatedMLP(6, [8], 3, position="output")
    x = torch.randn(5, 6)
    zero = g(x, [torch.zeros(5, 8)])
    torch.testing.assert_close(zero, g.out.bias.expand(5, 3))  # hidden killed, logit layer still adds its bias
    with pytest.raises(ValueError):
        g(x, [])
