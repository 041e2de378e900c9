import pytest
import torch

from dynarec.retrieval.gramian import SAGram, SOGram, gram_penalty, gram_surrogate, gramian, psd_project, relative_error


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_gram_form_equals_bruteforce_double_sum():
    u, v = _rand(7, 4, seed=1), _rand(5, 4, seed=2)
    brute = sum(float(u[i] @ v[j]) ** 2 for i in range(7) for j in range(5)) / (7 * 5)
    assert float(gram_penalty(gramian(u), gramian(v))) == pytest.approx(brute, rel=1e-12)


def test_sogram_alpha_one_is_the_batch_gramian():
    for warm in (True, False):
        est = SOGram(3, alpha=1.0, warm_start=warm).double()
        for s in range(3):
            x = _rand(6, 3, seed=s)
            assert torch.allclose(est.update(x), gramian(x))


def test_sogram_follows_eq11():
    est = SOGram(3, alpha=0.3, warm_start=False).double()
    x1, x2 = _rand(6, 3, seed=1), _rand(6, 3, seed=2)
    est.update(x1)
    expect = 0.7 * (0.3 * gramian(x1)) + 0.3 * gramian(x2)
    assert torch.allclose(est.update(x2), expect)
    warm = SOGram(3, alpha=0.3).double()          # warm start: the first batch sets the estimate
    assert torch.allclose(warm.update(x1), gramian(x1))


def test_sagram_fully_refreshed_cache_is_exact():
    n, k = 20, 3
    est = SAGram(n, k, beta=1.0).double()
    x = _rand(n, k, seed=3)
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    for chunk in rows.split(6):
        dup = torch.cat([chunk, chunk[:2]])               # repeats in a batch count once
        est.refresh(dup, x[dup])
    assert torch.allclose(est.gram_avg, gramian(x))
    assert torch.allclose(est.exact(), gramian(x))
    # the cache is current: the SAGA correction vanishes and the estimate is the exact Gramian
    assert torch.allclose(est.estimate(rows[:5], x[rows[:5]]), gramian(x))
    # new embeddings replace old contributions exactly
    x2 = _rand(n, k, seed=4)
    est.refresh(torch.arange(n), x2)
    assert torch.allclose(est.gram_avg, gramian(x2))


def _stale_sagram(beta, n=12, k=3):
    est = SAGram(n, k, beta=beta, project=False).double()
    est.refresh(torch.arange(n), _rand(n, k, seed=5))  # stale cache
    return est, _rand(n, k, seed=6)                      # current embeddings


def test_sagram_beta_one_unbiased_in_expectation():
    est, x = _stale_sagram(1.0)
    n = len(x)
    target = gramian(x)
    # exact expectation over single-row batches drawn uniformly
    mean1 = sum(est.estimate(torch.tensor([r]), x[[r]]) for r in range(n)) / n
    assert torch.allclose(mean1, target)
    # Monte Carlo over random batches of 4 rows (with replacement)
    g = torch.Generator().manual_seed(7)
    draws = torch.stack([est.estimate(rows, x[rows]) for rows in torch.randint(0, n, (4000, 4), generator=g)])
    mc_err = (draws.mean(0) - target).abs().max()
    se = draws.std(0).max() / 4000 ** 0.5
    assert mc_err < 5 * se
    biased, _ = _stale_sagram(1.0 / n)   # the SAG form (β = 1/N) is biased towards the stale cache
    mean_sag = sum(biased.estimate(torch.tensor([r]), x[[r]]) for r in range(n)) / n
    assert (mean_sag - target).abs().max() > 20 * mc_err


def test_no_gradient_reaches_gram_estimates():
    u = _rand(8, 3, seed=8).requires_grad_()
    v = _rand(8, 3, seed=9).requires_grad_()
    est = SOGram(3, alpha=0.5).double()
    g_est = est.update(u)
    assert not g_est.requires_grad
    sa = SAGram(8, 3).double()
    assert not sa.step(torch.arange(8), u).requires_grad
    gu = gramian(u.detach()).requires_grad_()
    gv = gramian(v.detach()).requires_grad_()
    gram_surrogate(u, v, gu, gv).backward()
    assert gu.grad is None and gv.grad is None
    # with exact Gramians the surrogate's gradient is the gradient of g = ⟨G_u, G_v⟩ (eq. 8)
    gsu, gsv = u.grad.clone(), v.grad.clone()
    u.grad = v.grad = None
    gram_penalty(gramian(u), gramian(v)).backward()
    assert torch.allclose(gsu, u.grad) and torch.allclose(gsv, v.grad)


def test_psd_projection():
    a = _rand(5, 5, seed=10)
    sym = (a + a.T) / 2
    assert torch.linalg.eigvalsh(sym).min() < 0
    p = psd_project(sym)
    assert torch.linalg.eigvalsh(p).min() > -1e-10
    assert torch.allclose(psd_project(p), p, atol=1e-10)                 # idempotent
    psd = a @ a.T
    assert torch.allclose(psd_project(psd), psd, atol=1e-10)             # identity on PSD input
    est, x = _stale_sagram(1.0)
    est.project = True
    assert torch.linalg.eigvalsh(est.estimate(torch.tensor([0, 1]), x[[0, 1]])).min() > -1e-10


def test_relative_error_and_resync():
    from dynarec.retrieval.gramian import relative_error

    x = _rand(10, 3, seed=11)
    assert relative_error(gramian(x), gramian(x)) == 0.0
    assert relative_error(2 * gramian(x), gramian(x)) == pytest.approx(1.0)
    est = SAGram(10, 3).double()
    est.refresh(torch.arange(10), x)
    est.gram_avg += 1.0                                   # simulated drift
    est.resync()
    assert torch.allclose(est.gram_avg, gramian(x))


# ---- SAGram under the sampling training uses: batches of pairs, one cache row per query --------------------
PAIR_QUERY = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2, 3])   # query of each training pair: query 0 holds 6 of 10


def _pair_case(weights):
    n, k = 4, 3
    est = SAGram(n, k, beta=1.0, project=False, weights=weights).double()
    est.refresh(torch.arange(n), _rand(n, k, seed=11))           # a stale cache
    x = _rand(n, k, seed=12)                                      # the current query vectors
    w = torch.bincount(PAIR_QUERY, minlength=n).double() / len(PAIR_QUERY)
    target = (x * w.view(-1, 1)).T @ x                            # the pairs' query Gramian, mean over pairs
    assert torch.allclose(target, gramian(x[PAIR_QUERY]))
    return est, x, target


def _exact_mean_over_pairs(est, x):
    """E[Ĝ] when a batch position holds a uniformly drawn pair (each batch position of a shuffled epoch does)."""
    return sum(est.estimate(PAIR_QUERY[[i]], x[PAIR_QUERY[[i]]]) for i in range(len(PAIR_QUERY))) / len(PAIR_QUERY)


def test_sagram_weighted_by_pair_frequency_is_unbiased_under_pair_sampling():
    est, x, target = _pair_case(torch.bincount(PAIR_QUERY, minlength=4).double())
    assert torch.allclose(_exact_mean_over_pairs(est, x), target, atol=1e-12)
    # the actual sampling: shuffled epochs of the 10 pairs cut into batches of 4 (the last one of 2)
    g, draws = torch.Generator().manual_seed(3), []
    for _ in range(3000):
        for b in torch.randperm(len(PAIR_QUERY), generator=g).split(4):
            draws.append(est.estimate(PAIR_QUERY[b], x[PAIR_QUERY[b]]))
    draws = torch.stack(draws)
    # batch positions are uniform over pairs, so every batch mean has expectation G; 5 standard errors
    se = draws.std(0) / len(draws) ** 0.5
    assert ((draws.mean(0) - target).abs() <= 5 * se + 1e-12).all()


def test_sagram_uniform_cache_is_biased_under_pair_sampling():
    """The estimator before the fix (a cache averaged over distinct queries, rows drawn by pair frequency):
    its expectation misses G by exactly Σ_r (1/N − w_r) û_r û_rᵀ, a large error on this toy case."""
    est, x, target = _pair_case(None)
    w = torch.bincount(PAIR_QUERY, minlength=4).double() / len(PAIR_QUERY)
    bias = ((1 / 4 - w).view(-1, 1) * est.cache).T @ est.cache
    mean = _exact_mean_over_pairs(est, x)
    assert torch.allclose(mean - target, bias, atol=1e-12)
    assert relative_error(mean, target) > 0.1


def test_sagram_weights_refresh_and_projection():
    w = torch.tensor([3.0, 1.0, 0.0, 4.0])
    est = SAGram(4, 2, weights=w).double()
    x = _rand(4, 2, seed=13)
    est.refresh(torch.tensor([0, 1, 2, 3, 3]), x[[0, 1, 2, 3, 3]])
    assert torch.allclose(est.gram_avg, gramian(x[[0, 0, 0, 1, 3, 3, 3, 3]]))  # Σ w_r x_r x_rᵀ, w normalised
    assert torch.allclose(est.exact(), est.gram_avg)
    assert est.project and not SAGram(4, 2, beta=0.1, weights=w).project  # β ≤ min positive w: PSD without it
    assert "weight" not in est.state_dict()                                # derived from the data, not saved
    with pytest.raises(ValueError, match="weights"):
        SAGram(4, 2, weights=torch.tensor([1.0, -1.0, 0.0, 0.0]))
