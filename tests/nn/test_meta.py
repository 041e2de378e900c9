"""M2M meta unit / attention / tower and the per-sample sequence attention (Zhang et al., M2M, WSDM 2022);
no sample attends to the other samples of its batch (a public port's bug)."""
import torch

from dynarec.nn.meta import MetaAttention, MetaTower, MetaUnit, SequenceSelfAttention

ATOL = 1e-5


def _reference(unit: MetaUnit, x, cond):
    """h_k = act(h_{k-1} W_k + b_k) with W_k, b_k from ``generate`` (one row at a time)."""
    outs = []
    for r in range(x.shape[0]):
        h = x[r]
        params = unit.generate(cond[r:r + 1])
        for k, (w, b) in enumerate(params):
            h = h @ w[0] + b[0]
            if k < len(params) - 1 or unit.last_activation:
                h = unit.act(h)
        outs.append(h)
    return torch.stack(outs)


def test_meta_unit_equals_generated_per_sample_mlp_in_both_paths():
    torch.manual_seed(0)
    for last in (True, False):
        unit = MetaUnit(6, [5, 3], cond_dim=4, act="sigmoid", last_activation=last)
        x, cond = torch.randn(9, 6), torch.randn(9, 4)
        ref = _reference(unit, x, cond)
        torch.testing.assert_close(unit(x, cond), ref, atol=ATOL, rtol=ATOL)  # factorised 2-D path
        torch.testing.assert_close(unit(x.unsqueeze(1), cond).squeeze(1), ref, atol=ATOL, rtol=ATOL)  # bmm path


def test_generated_weights_equal_for_equal_condition_and_differ_otherwise():
    torch.manual_seed(0)
    unit = MetaUnit(4, [3], cond_dim=5)
    c = torch.randn(1, 5)
    cond = torch.cat([c, c, torch.randn(1, 5)])
    (w, b), = unit.generate(cond)
    assert w.shape == (3, 4, 3) and b.shape == (3, 3)
    torch.testing.assert_close(w[0], w[1], atol=1e-6, rtol=1e-6)  # GEMM rows: equal up to blocking round-off
    torch.testing.assert_close(b[0], b[1], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(w[0], w[2], atol=1e-4)


def test_meta_unit_rows_do_not_mix():
    torch.manual_seed(0)
    unit = MetaUnit(6, [5, 3], cond_dim=4)
    x, cond = torch.randn(12, 3, 6), torch.randn(12, 4)
    full = unit(x, cond)
    torch.testing.assert_close(unit(x[4:5], cond[4:5]), full[4:5], atol=1e-6, rtol=1e-6)
    perm = torch.randperm(12)
    torch.testing.assert_close(unit(x[perm, 0], cond[perm]), unit(x[:, 0], cond)[perm], atol=1e-6, rtol=1e-6)


def test_meta_attention_weights_sum_to_one_and_mix_experts():
    torch.manual_seed(0)
    att = MetaAttention(expert_dim=5, task_dim=3, cond_dim=4, widths=[6, 6])
    ex, task, cond = torch.randn(7, 4, 5), torch.randn(3), torch.randn(7, 4)
    r, alpha = att(ex, task, cond)
    assert alpha.shape == (7, 4) and (alpha > 0).all()
    torch.testing.assert_close(alpha.sum(1), torch.ones(7))
    torch.testing.assert_close(r, (alpha.unsqueeze(-1) * ex).sum(1))
    # attention is over the experts of one sample: changing another sample changes nothing here
    ex2 = ex.clone()
    ex2[1:] = torch.randn(6, 4, 5)
    torch.testing.assert_close(att(ex2, task, cond)[0][0], r[0])


def test_meta_tower_with_zero_generators_and_relu_is_relu_of_residual():
    torch.manual_seed(0)
    tower = MetaTower(5, cond_dim=3, layers=2, hidden=[4], act="relu")
    with torch.no_grad():
        for p in tower.parameters():
            p.zero_()
    x = torch.randn(8, 5)
    torch.testing.assert_close(tower(x, torch.randn(8, 3)), torch.relu(x))  # L^j = ReLU(L^{j-1})


def test_meta_tower_residual_is_used():
    torch.manual_seed(0)
    tower = MetaTower(4, cond_dim=3, layers=1, hidden=[4], act="relu")
    x, cond = torch.randn(6, 4), torch.randn(6, 3)
    torch.testing.assert_close(tower(x, cond), torch.relu(tower.units[0](x, cond) + x))


def test_sequence_attention_is_within_sample_and_ignores_padding():
    torch.manual_seed(0)
    att = SequenceSelfAttention(8, heads=2)
    tok = torch.randn(5, 6, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0], [1] * 6, [0] * 6, [1, 1, 0, 0, 0, 0]]).bool()
    out = att(tok, mask)
    assert out.shape == (5, 8) and torch.isfinite(out).all()
    assert torch.equal(out[3], torch.zeros(8))  # no real token -> zeros
    # each row alone gives the same output (the pitfall: a [B, d] tensor read as one sequence of length B)
    for r in range(5):
        torch.testing.assert_close(att(tok[r:r + 1], mask[r:r + 1]), out[r:r + 1], atol=1e-6, rtol=1e-6)
    # padded tokens' values do not matter
    tok2 = tok.clone()
    tok2[~mask] = 100.0
    torch.testing.assert_close(att(tok2, mask), out, atol=1e-6, rtol=1e-6)
    # real tokens attend to each other: changing one real token changes the row
    tok3 = tok.clone()
    tok3[0, 2] += 1.0
    assert not torch.allclose(att(tok3, mask)[0], out[0], atol=1e-4)
