"""Uncertainty weighting (SPEC §2.15), heteroscedastic and logit-sampling losses (SPEC §2.16)."""
import pytest
import torch
import torch.nn.functional as F

from dynarec.errors import ConfigError
from dynarec.losses import (UncertaintyWeighting, WEIGHTINGS, build_weighting, heteroscedastic_loss,
                            model_task_losses, sampled_logit_bce, task_losses)

ATOL = 1e-5


def test_uncertainty_weighting_at_sigma_one_is_the_plain_sum():
    w = build_weighting("uncertainty", ["a", "b"], {"a": "binary", "b": "binary"})
    assert isinstance(w, UncertaintyWeighting) and "uncertainty" in WEIGHTINGS
    assert [p.shape for p in w.parameters()] == [torch.Size([2])]
    losses = {"a": torch.tensor(0.7), "b": torch.tensor(0.2)}
    torch.testing.assert_close(w(losses), torch.tensor(0.9))
    # regression keeps the ½ factor: c = ½
    wr = build_weighting("uncertainty", ["a", "r"], {"a": "binary", "r": "regression"})
    torch.testing.assert_close(wr({"a": torch.tensor(0.7), "r": torch.tensor(2.0)}), torch.tensor(0.7 + 1.0))
    assert w.sigma() == {"a": 1.0, "b": 1.0}
    with pytest.raises(ConfigError):
        build_weighting("uncertanity", ["a"], {})


def test_uncertainty_weighting_gradient_matches_formula():
    w = UncertaintyWeighting(["a", "r"], {"a": "binary", "r": "regression"})
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.4, -0.8]))
    L = {"a": torch.tensor(0.3), "r": torch.tensor(1.7)}
    (g,) = torch.autograd.grad(w(L), [w.log_vars])
    c = torch.tensor([1.0, 0.5])
    s = w.log_vars.detach()
    expected = 0.5 - c * torch.exp(-s) * torch.tensor([0.3, 1.7])
    torch.testing.assert_close(g, expected, atol=ATOL, rtol=ATOL)


def test_noise_task_ends_with_larger_sigma_and_sigmas_move_both_ways():
    """Two BCE tasks on the same inputs: 'clean' is a deterministic function of x, 'noise' is a coin
    flip. The optimum is s_t = log(2 L_t): the clean task's σ must fall below 1 and the noise task's rise
    above 1 (a clamp at 0, as in SPEC §4's pitfall, would freeze the clean one)."""
    torch.manual_seed(0)
    n = 2000
    x = torch.randn(n, 4)
    y = {"clean": (x[:, 0] + x[:, 1] > 0).float(), "noise": torch.randint(0, 2, (n,)).float()}
    net = torch.nn.Linear(4, 2)
    w = build_weighting("uncertainty", ["clean", "noise"], {"clean": "binary", "noise": "binary"})
    opt = torch.optim.Adam(list(net.parameters()) + list(w.parameters()), lr=0.05)
    for _ in range(300):
        idx = torch.randint(0, n, (256,))
        out = net(x[idx])
        losses = task_losses({"clean": out[:, 0], "noise": out[:, 1]}, {k: v[idx] for k, v in y.items()},
                             {"clean": "binary", "noise": "binary"})
        opt.zero_grad()
        w(losses).backward()
        opt.step()
    sig = w.sigma()
    assert sig["noise"] > sig["clean"]
    assert sig["clean"] < 0.9 and sig["noise"] > 1.1  # moved in both directions from σ = 1


def test_heteroscedastic_loss_at_zero_log_variance_is_half_mse():
    torch.manual_seed(0)
    m, y = torch.randn(50), torch.randn(50)
    torch.testing.assert_close(heteroscedastic_loss(m, torch.zeros(50), y), 0.5 * F.mse_loss(m, y))
    # the optimal per-row log-variance is log of the squared error
    s = torch.zeros(50, requires_grad=True)
    (g,) = torch.autograd.grad(heteroscedastic_loss(m, s, y), [s])
    torch.testing.assert_close(g * 50, 0.5 - 0.5 * (y - m) ** 2, atol=ATOL, rtol=ATOL)


def test_sampled_logit_loss_tends_to_bce_and_penalises_confident_errors_less():
    torch.manual_seed(0)
    f = torch.randn(100) * 3
    y = (torch.rand(100) < 0.5).float()
    bce = F.binary_cross_entropy_with_logits(f, y)
    torch.testing.assert_close(sampled_logit_bce(f, torch.full((100,), -40.0), y, 10), bce, atol=ATOL, rtol=ATOL)
    # a large σ on a confidently wrong logit lowers its loss (the attenuation of noisy rows)
    wrong_f, wrong_y = torch.tensor([6.0]), torch.tensor([0.0])
    lo = sampled_logit_bce(wrong_f, torch.tensor([-40.0]), wrong_y, 200)
    hi = sampled_logit_bce(wrong_f, torch.tensor([4.0]), wrong_y, 200)
    assert hi < lo - 1.0


def test_model_task_losses_falls_back_to_task_losses():
    out = {"a": torch.tensor([0.5, -1.0])}
    lab = {"a": torch.tensor([1.0, 0.0])}
    plain = torch.nn.Linear(1, 1)
    torch.testing.assert_close(model_task_losses(plain, out, lab, {"a": "binary"})["a"],
                               task_losses(out, lab, {"a": "binary"})["a"])
