"""Latent Cross (Beutel et al., WSDM 2018): identity at zero embeddings, exact residual form, gradient to every context."""
import torch

from dynarec.nn.cross import LatentCross


def _ctx(b=32):
    return torch.stack([torch.randint(0, 24, (b,)), torch.randint(0, 4, (b,))], 1)


def test_zero_embeddings_are_identity():
    torch.manual_seed(0)
    lc = LatentCross([24, 4], 8)
    h = torch.randn(32, 8)
    torch.testing.assert_close(lc(h, _ctx()), h, atol=0, rtol=0)


def test_residual_is_sum_of_context_embeddings_times_h():
    torch.manual_seed(0)
    lc = LatentCross([24, 4], 8, init_std=0.5)
    h, c = torch.randn(32, 8), _ctx()
    w = lc.table.weight[c[:, 0]] + lc.table.weight[24 + c[:, 1]]  # fields laid end to end
    torch.testing.assert_close(lc(h, c) - h, w * h, atol=1e-6, rtol=1e-5)


def test_every_context_gets_gradient_from_zero_init():
    torch.manual_seed(0)
    lc = LatentCross([24, 4], 8)
    c = _ctx()
    lc(torch.randn(32, 8), c).sum().backward()
    g = lc.table.weight.grad
    assert g[:24].abs().sum() > 0 and g[24:].abs().sum() > 0
    used_hours = set(c[:, 0].tolist())
    nz = {i for i in range(24) if g[i].abs().sum() > 0}
    assert nz == used_hours  # exactly the rows seen in the batch
