"""STARLinear / PartitionedNorm / STARMLP (Sheng et al., STAR, CIKM 2021), and two public ports' bugs made
impossible: a ReLU on the logit, batch statistics over the whole mixed batch at evaluation."""
import pytest
import torch
from torch import nn

from dynarec.nn.star import PartitionedNorm, STARLinear, STARMLP

ATOL = 1e-5


def _randomise_domains(layer: STARLinear, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.domain_weight.copy_(1 + 0.5 * torch.randn(layer.domain_weight.shape, generator=g))
        layer.domain_bias.copy_(0.5 * torch.randn(layer.domain_bias.shape, generator=g))


@pytest.mark.parametrize("mode", ["group", "gather"])
def test_star_linear_identity_domains_equal_shared_fcn(mode):
    torch.manual_seed(0)
    layer = STARLinear(7, 5, num_domains=4, mode=mode)  # init: W_p = 1, b_p = 0
    ref = nn.Linear(7, 5)
    with torch.no_grad():
        ref.weight.copy_(layer.weight.T)
        ref.bias.copy_(layer.bias)
    x = torch.randn(32, 7)
    dom = torch.randint(0, 4, (32,))
    torch.testing.assert_close(layer(x, dom), ref(x), atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("mode", ["group", "gather"])
def test_star_linear_rows_use_their_domain_effective_weight(mode):
    torch.manual_seed(0)
    layer = STARLinear(6, 3, num_domains=3, mode=mode)
    _randomise_domains(layer)
    x = torch.randn(1, 6).repeat(2, 1)  # the same input in two domains
    dom = torch.tensor([1, 2])
    out = layer(x, dom)
    for r, d in enumerate(dom.tolist()):
        w = layer.domain_weight[d] * layer.weight  # product form W_p ⊙ W
        b = layer.domain_bias[d] + layer.bias
        torch.testing.assert_close(out[r], x[r] @ w + b, atol=ATOL, rtol=ATOL)
    assert not torch.allclose(out[0], out[1], atol=1e-3)


def test_star_linear_group_and_gather_agree_and_keep_row_order():
    torch.manual_seed(0)
    a = STARLinear(5, 4, 5, mode="group")
    _randomise_domains(a, 1)
    b = STARLinear(5, 4, 5, mode="gather")
    b.load_state_dict(a.state_dict())
    x = torch.randn(50, 5)
    dom = torch.randint(0, 5, (50,))
    torch.testing.assert_close(a(x, dom), b(x, dom), atol=ATOL, rtol=ATOL)
    # row r's output is computed from row r alone (permutation equivariance)
    perm = torch.randperm(50)
    torch.testing.assert_close(a(x[perm], dom[perm]), a(x, dom)[perm], atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("mode", ["group", "gather"])
def test_star_linear_per_domain_params_registered_and_only_present_domains_get_gradient(mode):
    layer = STARLinear(4, 3, 5, mode=mode)
    names = {n for n, _ in layer.named_parameters()}
    assert {"domain_weight", "domain_bias"} <= names  # registered tensors, not a plain list the optimiser never sees
    x = torch.randn(10, 4)
    dom = torch.tensor([1, 3] * 5)
    layer(x, dom).pow(2).sum().backward()
    gw = layer.domain_weight.grad.abs().sum((1, 2))
    gb = layer.domain_bias.grad.abs().sum(1)
    assert (gw[[1, 3]] > 0).all() and (gb[[1, 3]] > 0).all()
    assert (gw[[0, 2, 4]] == 0).all() and (gb[[0, 2, 4]] == 0).all()


def test_partitioned_norm_eval_output_independent_of_batch_companions():
    torch.manual_seed(0)
    pn = PartitionedNorm(4, 3, decay=0.5)
    for _ in range(20):  # give each domain different running statistics
        dom = torch.randint(0, 3, (64,))
        x = torch.randn(64, 4) * (1 + dom[:, None]) + 3 * dom[:, None]
        pn(x, dom)
    with torch.no_grad():
        pn.domain_weight.add_(torch.randn(3, 4) * 0.3)
        pn.domain_bias.add_(torch.randn(3, 4) * 0.3)
    pn.eval()
    row = torch.randn(1, 4)
    alone = pn(row, torch.tensor([1]))
    others = torch.randn(9, 4) * 10 + 5
    for dom_others in (torch.zeros(9, dtype=torch.long), torch.full((9,), 2), torch.randint(0, 3, (9,))):
        mixed = pn(torch.cat([others, row]), torch.cat([dom_others, torch.tensor([1])]))
        torch.testing.assert_close(mixed[-1:], alone, atol=1e-6, rtol=1e-6)
    # the same row in another domain (different statistics) gives another output
    assert not torch.allclose(pn(row, torch.tensor([2])), alone, atol=1e-3)


def test_partitioned_norm_training_uses_each_domains_own_batch_statistics():
    torch.manual_seed(0)
    pn = PartitionedNorm(3, 3)
    x = torch.randn(8, 3)
    dom = torch.tensor([1, 1, 1, 1, 2, 2, 2, 2])
    out = pn(x, dom)
    # domain-1 rows are normalised with domain-1 moments only (biased variance)
    x1 = x[:4]
    ref = (x1 - x1.mean(0)) / torch.sqrt(x1.var(0, unbiased=False) + pn.eps)
    torch.testing.assert_close(out[:4], ref, atol=ATOL, rtol=ATOL)
    # changing the other domain's rows leaves domain-1 rows unchanged
    x2 = x.clone()
    x2[4:] = torch.randn(4, 3) * 100
    torch.testing.assert_close(pn(x2, dom)[:4], out[:4], atol=ATOL, rtol=ATOL)


def test_partitioned_norm_running_stats_converge_to_each_domains_moments():
    torch.manual_seed(0)
    means = torch.tensor([[0.0, 0.0], [3.0, -2.0], [-5.0, 1.0]])
    stds = torch.tensor([[1.0, 1.0], [0.5, 2.0], [3.0, 0.2]])
    pn = PartitionedNorm(2, 3, decay=0.9)
    for _ in range(300):
        dom = torch.randint(1, 3, (256,))  # domain 0 never appears
        x = means[dom] + stds[dom] * torch.randn(256, 2)
        pn(x, dom)
    for d in (1, 2):
        torch.testing.assert_close(pn.running_mean[d], means[d], atol=0.1 * stds[d].max(), rtol=0)
        torch.testing.assert_close(pn.running_var[d], stds[d] ** 2, atol=0.0, rtol=0.15)
    # the absent domain kept its initial statistics
    assert torch.equal(pn.running_mean[0], torch.zeros(2)) and torch.equal(pn.running_var[0], torch.ones(2))
    assert pn.num_batches_tracked.tolist() == [0, 300, 300]


def test_partitioned_norm_single_row_domain_uses_running_stats_and_does_not_update_them():
    pn = PartitionedNorm(2, 3)
    with torch.no_grad():
        pn.running_mean[2] = torch.tensor([1.0, 2.0])
        pn.running_var[2] = torch.tensor([4.0, 9.0])
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 8.0]])
    out = pn(x, torch.tensor([1, 1, 2]))
    ref = (x[2] - torch.tensor([1.0, 2.0])) / torch.sqrt(torch.tensor([4.0, 9.0]) + pn.eps)
    torch.testing.assert_close(out[2], ref, atol=ATOL, rtol=ATOL)
    assert torch.equal(pn.running_mean[2], torch.tensor([1.0, 2.0]))
    assert pn.num_batches_tracked.tolist() == [0, 1, 0]


def test_partitioned_norm_scale_shift_is_shared_times_domain():
    pn = PartitionedNorm(2, 2).eval()
    with torch.no_grad():
        pn.weight.fill_(2.0)
        pn.bias.fill_(0.5)
        pn.domain_weight[1] = torch.tensor([3.0, -1.0])
        pn.domain_bias[1] = torch.tensor([1.0, 2.0])
    x = torch.tensor([[1.0, 1.0]])
    z = x / (1 + pn.eps) ** 0.5
    torch.testing.assert_close(pn(x, torch.tensor([1])), z * torch.tensor([6.0, -2.0]) + torch.tensor([1.5, 2.5]))


def test_star_mlp_last_layer_has_no_activation():
    torch.manual_seed(0)
    mlp = STARMLP(6, [8, 4], 1, num_domains=2)
    with torch.no_grad():
        mlp.out.bias.fill_(-50.0)
    y = mlp(torch.randn(16, 6), torch.randint(0, 2, (16,)))
    assert (y < 0).all()  # a ReLU on the logit would clamp these to 0
    with torch.no_grad():
        mlp.out.bias.fill_(50.0)
    assert (mlp(torch.randn(16, 6), torch.randint(0, 2, (16,))) > 0).all()


def test_star_mlp_with_partitioned_norm_is_batch_independent_in_eval():
    torch.manual_seed(0)
    mlp = STARMLP(5, [8], 2, num_domains=3, norm=True)
    for _ in range(3):
        mlp(torch.randn(30, 5), torch.randint(0, 3, (30,)))
    mlp.eval()
    x, dom = torch.randn(20, 5), torch.randint(0, 3, (20,))
    full = mlp(x, dom)
    for r in (0, 7, 19):
        torch.testing.assert_close(mlp(x[r:r + 1], dom[r:r + 1]), full[r:r + 1], atol=1e-6, rtol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        STARLinear(3, 3, 2, mode="loop")
    with pytest.raises(ValueError, match="decay"):
        PartitionedNorm(3, 2, decay=1.0)
    with pytest.raises(IndexError, match="num_domains"):
        STARLinear(3, 3, 2)(torch.randn(2, 3), torch.tensor([0, 5]))


def test_star_mlp_identity_domains_equal_the_shared_mlp():
    from dynarec.nn.mlp import MLP

    torch.manual_seed(0)
    star = STARMLP(6, [8, 4], 2, num_domains=3)
    ref = MLP(6, [8, 4], 2)
    lins = [m for m in ref.net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for lin, s in zip(lins, [*star.layers, star.out]):
            lin.weight.copy_(s.weight.T)
            lin.bias.copy_(s.bias)
    x = torch.randn(12, 6)
    for d in range(3):
        torch.testing.assert_close(star(x, torch.full((12,), d)), ref(x), atol=ATOL, rtol=ATOL)


def test_partitioned_norm_running_stats_are_bias_corrected_early():
    # after k < 1/(1-decay) updates the running stats are the plain average of the k batch statistics,
    # not (mostly) the 0/1 init: eval right after a short training normalises like training did
    torch.manual_seed(0)
    pn = PartitionedNorm(3, 2, decay=0.99)
    batches = [torch.randn(64, 3) * 0.1 + 2.0 for _ in range(5)]
    dom = torch.ones(64, dtype=torch.long)
    for x in batches:
        pn(x, dom)
    torch.testing.assert_close(pn.running_mean[1], torch.stack([x.mean(0) for x in batches]).mean(0))
    torch.testing.assert_close(pn.running_var[1], torch.stack([x.var(0) for x in batches]).mean(0))
    pn.eval()
    z = pn(batches[-1], dom)
    assert 0.7 < z.std(0).mean() < 1.3  # ~unit scale; the init Var = 1 would give ~0.1
    assert z.mean(0).abs().max() < 0.5  # centred; the init E = 0 would leave it at ~20


def test_starmlp_dropout_is_a_module_mc_dropout_can_switch_on():
    """STARMLP's dropout lives in ``nn.Dropout`` modules: in eval mode with only those in training mode
    (what MC dropout does), two passes differ; fully in eval mode they are equal."""
    torch.manual_seed(0)
    mlp = STARMLP(6, [16, 8], 1, num_domains=2, dropout=0.5).eval()
    x, dom = torch.randn(32, 6), torch.randint(0, 2, (32,))
    with torch.no_grad():
        assert torch.equal(mlp(x, dom), mlp(x, dom))
        drops = [m for m in mlp.modules() if isinstance(m, torch.nn.Dropout)]
        assert len(drops) == 2
        for m in drops:
            m.train()
        assert not torch.equal(mlp(x, dom), mlp(x, dom))


def test_all_domains_form_used_for_export_equals_the_grouped_form():
    from dynarec.nn.star import STARLinear

    torch.manual_seed(0)
    lin = STARLinear(6, 5, 4)
    with torch.no_grad():
        lin.domain_weight.normal_()
        lin.domain_bias.normal_()
    x, dom = torch.randn(33, 6), torch.randint(0, 4, (33,))
    torch.testing.assert_close(lin._all_domains(x, dom), lin._grouped(x, dom), atol=1e-5, rtol=1e-5)
