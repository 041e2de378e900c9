"""Numeric embeddings (Gorishniy et al. 2022): PLE values, continuity, shapes, gradients, per-feature
independence, trainable periodic frequencies."""
import pytest
import torch

from dynarec.nn.numeric import (PeriodicEmbedding, PiecewiseLinearEmbedding, pad_edges,
                                piecewise_linear_encoding)

EDGES = [torch.tensor([0.0, 1.0, 3.0, 7.0]), torch.tensor([-1.0, 1.0])]  # T = 3 and T = 1


def _ple(x, edges=EDGES, extrapolate=True):
    padded, n = pad_edges(edges)
    return piecewise_linear_encoding(torch.as_tensor(x, dtype=torch.float32), padded, n, extrapolate)


def test_ple_values_by_hand():
    # feature 0, edges 0 | 1 | 3 | 7: below the first edge, inside bin 2, above the last edge
    got = _ple([[-1.0, 0.0], [2.0, 0.0], [9.0, 0.0]])[:, 0]
    want = torch.tensor([[-1.0, 0.0, 0.0],      # first component extrapolates below b_0 (eq. 1)
                         [1.0, 0.5, 0.0],       # (2 - 1) / (3 - 1)
                         [1.0, 1.0, 1.5]])      # last component extrapolates above b_T: (9 - 3) / 4
    torch.testing.assert_close(got, want)
    clipped = _ple([[-1.0, 0.0], [2.0, 0.0], [9.0, 0.0]], extrapolate=False)[:, 0]
    torch.testing.assert_close(clipped, torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.5, 0.0], [1.0, 1.0, 1.0]]))


def test_ple_pads_features_with_fewer_bins_with_zeros():
    got = _ple([[2.0, 0.0], [2.0, 5.0]])[:, 1]  # feature 1 has one bin: [x - (-1)] / 2, then padding
    torch.testing.assert_close(got, torch.tensor([[0.5, 0.0, 0.0], [3.0, 0.0, 0.0]]))


def test_ple_is_continuous_and_piecewise_linear():
    x = torch.linspace(-2.0, 9.0, 2201)  # step 0.005; edges 0, 1, 3, 7 are on the grid
    e = _ple(torch.stack([x, torch.zeros_like(x)], 1))[:, 0]  # [N, 3]
    step = x[1] - x[0]
    assert (e[1:] - e[:-1]).abs().max() <= 1.0 * step + 1e-5  # no jumps (slopes are at most 1 / 1)
    second = e[2:] - 2 * e[1:-1] + e[:-2]  # zero away from the edges: linear between them
    kinks = second.abs().sum(1) > 1e-4
    at = x[1:-1][kinks]
    assert len(at) > 0 and all(min(abs(v - b) for b in (0.0, 1.0, 3.0, 7.0)) < 1e-3 for v in at.tolist())


def test_edges_must_increase():
    with pytest.raises(ValueError, match="feature 1"):
        pad_edges([torch.tensor([0.0, 1.0]), torch.tensor([2.0, 2.0])])


@pytest.mark.parametrize("make", [
    lambda: PiecewiseLinearEmbedding(EDGES, 8),
    lambda: PiecewiseLinearEmbedding(torch.tensor([[0.0, 1.0, 2.0], [0.0, 5.0, 9.0]]), 8, activation=True),
    lambda: PeriodicEmbedding(2, 8, n_frequencies=4, sigma=0.5),
])
def test_shapes_gradients_and_per_feature_independence(make):
    torch.manual_seed(0)
    m = make()
    x = torch.randn(16, 2) * 3
    out = m(x)
    assert out.shape == (16, 2, 8)
    (out ** 2).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    x2 = x.clone()
    x2[:, 1] += 0.7
    out2 = m(x2)
    torch.testing.assert_close(out2[:, 0], out[:, 0], atol=0, rtol=0)
    assert not torch.allclose(out2[:, 1], out[:, 1])


def test_periodic_frequencies_are_trainable_and_drawn_with_sigma():
    torch.manual_seed(0)
    m = PeriodicEmbedding(3, 4, n_frequencies=2000, sigma=0.3)
    assert m.frequencies.requires_grad and abs(m.frequencies.std().item() - 0.3) < 0.02
    before = m.frequencies.detach().clone()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m(torch.randn(32, 3)).sum().backward()
    opt.step()
    assert not torch.equal(before, m.frequencies.detach())


def test_periodic_matches_sin_cos_formula():
    torch.manual_seed(0)
    m = PeriodicEmbedding(1, 2, n_frequencies=3, activation=False)
    x = torch.tensor([[0.25]])
    c = m.frequencies[0]
    v = torch.cat([torch.sin(2 * torch.pi * c * 0.25), torch.cos(2 * torch.pi * c * 0.25)])
    want = v @ m.linear.weight[0] + m.linear.bias[0]
    torch.testing.assert_close(m(x)[0, 0], want)


def test_wrong_input_width_is_an_error():
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        PiecewiseLinearEmbedding(EDGES, 4)(torch.zeros(3, 5))
