"""DeLong's AUC standard error against the brute-force definition, its interval's coverage on simulated
data with a known AUC, and the per-slice positives of ``compute_metrics``."""
import math

import numpy as np

from dynarec.metrics import auc, auc_delong, compute_metrics


def _delong_bruteforce(y, p):
    """DeLong et al. (1988) from the definition: ψ(x, y) = 1 if x > y, 1/2 if equal, over every pair."""
    x, z = p[y == 1], p[y == 0]
    psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
    v10, v01 = psi.mean(1), psi.mean(0)
    s10 = ((v10 - v10.mean()) ** 2).sum() / (len(x) - 1)
    s01 = ((v01 - v01.mean()) ** 2).sum() / (len(z) - 1)
    return psi.mean(), math.sqrt(s10 / len(x) + s01 / len(z))


def test_delong_matches_the_definition_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 57)
    p = np.round(rng.random(57) + 0.3 * y, 1)            # rounded: many ties, within and across classes
    a, se = auc_delong(y, p)
    a_ref, se_ref = _delong_bruteforce(y, p)
    # the same finite sums in another order: agreement to float64 rounding on 57 terms
    assert math.isclose(a, a_ref, rel_tol=1e-12) and math.isclose(a, auc(y, p), rel_tol=1e-12)
    assert math.isclose(se, se_ref, rel_tol=1e-9)


def test_delong_known_small_case():
    # 2 positives (0.8, 0.4), 2 negatives (0.6, 0.2): V10 = (1, 1/2), V01 = (1/2, 1), AUC 3/4
    # s²(V10) = s²(V01) = 1/8 -> var = 1/16 + 1/16, se = sqrt(1/8)
    a, se = auc_delong(np.array([1, 0, 1, 0]), np.array([0.8, 0.6, 0.4, 0.2]))
    assert a == 0.75 and math.isclose(se, math.sqrt(1 / 8), rel_tol=1e-12)
    assert math.isnan(auc_delong(np.array([1, 0, 0]), np.array([0.3, 0.2, 0.1]))[1])  # one positive: no variance


def test_delong_interval_covers_the_true_auc():
    # binormal scores: negatives N(0, 1), positives N(1, 1): true AUC = Φ(1/√2)
    true_auc = 0.5 * (1 + math.erf(0.5))
    rng = np.random.default_rng(1)
    sims, hits = 1000, 0
    y = np.r_[np.ones(60), np.zeros(140)]
    for _ in range(sims):
        p = rng.normal(size=200) + y
        a, se = auc_delong(y, p)
        hits += abs(a - true_auc) <= 1.96 * se
    # nominal 95 %; 4 binomial standard deviations of the simulation (0.0069 each) either side
    assert abs(hits / sims - 0.95) <= 4 * math.sqrt(0.95 * 0.05 / sims)


def test_compute_metrics_reports_positives_and_se_per_slice():
    rng = np.random.default_rng(2)
    dom = np.r_[np.ones(80, int), np.full(20, 2)]
    y = rng.integers(0, 2, 100).astype(float)
    p = rng.random(100)
    m = compute_metrics({"click": y}, {"click": p}, dom, ["a", "b"])
    assert m["positives"]["click"] == {"all": int(y.sum()), "domain=a": int(y[:80].sum()), "domain=b": int(y[80:].sum())}
    assert m["count"] == {"all": 100, "domain=a": 80, "domain=b": 20}
    assert math.isclose(m["auc_se"]["click"]["domain=b"], auc_delong(y[80:], p[80:])[1], rel_tol=1e-12)
