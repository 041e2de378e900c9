import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from dynarec.metrics import auc, compute_metrics, gauc, logloss


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 3000)
    p = rng.integers(0, 20, 3000) / 20.0  # heavy ties
    assert abs(auc(y, p) - roc_auc_score(y, p)) < 1e-6
    q = rng.random(3000)
    assert abs(auc(y, q) - roc_auc_score(y, q)) < 1e-6


def test_auc_single_class_is_nan_and_constant_scores_half():
    assert np.isnan(auc(np.ones(10), np.arange(10)))
    assert auc(np.array([0, 1, 0, 1]), np.zeros(4)) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(3))
def test_logloss_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 1000)
    p = rng.uniform(0.01, 0.99, 1000)
    assert abs(logloss(y, p) - log_loss(y, p)) < 1e-9


def _gauc_reference(y, p, g):
    num = den = 0.0
    for u in np.unique(g):
        m = g == u
        if 0 < y[m].sum() < m.sum():
            num += m.sum() * roc_auc_score(y[m], p[m])
            den += m.sum()
    return num / den


@pytest.mark.parametrize("seed", range(4))
def test_gauc_matches_per_user_sklearn_reference(seed):
    rng = np.random.default_rng(seed)
    n = 4000
    g = rng.integers(0, 150, n)
    y = rng.integers(0, 2, n)
    p = rng.integers(0, 10, n) / 10.0  # ties within users
    g[:30] = 999  # a user with one class only is skipped
    y[:30] = 1
    assert abs(gauc(y, p, g) - _gauc_reference(y, p, g)) < 1e-6


def test_compute_metrics_per_domain_slices_match_direct_auc():
    rng = np.random.default_rng(0)
    n = 2000
    dom = rng.integers(1, 4, n)
    y = rng.integers(0, 2, n).astype(float)
    p = rng.random(n)
    m = compute_metrics({"click": y}, {"click": p}, dom, ["a", "b", "c"])
    assert m["auc"]["click"]["all"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    for i, name in enumerate("abc", start=1):
        assert m["auc"]["click"][f"domain={name}"] == pytest.approx(roc_auc_score(y[dom == i], p[dom == i]), abs=1e-9)
        assert m["count"][f"domain={name}"] == int((dom == i).sum())
