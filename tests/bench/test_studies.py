"""The evidence studies' own helpers (benchmarks/study_common.py): DeLong's AUC variance against a
brute-force and a bootstrap reference, the sparse-domain downsampling, the cold-user buckets and the
model-variant specs."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from study_common import (BUCKETS, cut_split, delong_auc_var, delong_paired, downsample_domain,  # noqa: E402
                          parse_variant, user_buckets)

from dynarec.metrics import auc as ref_auc  # noqa: E402


def _scored(m: int, n: int, seed: int, decimals: int = 1):
    """m positives, n negatives; scores rounded so that ties (within and across classes) are frequent."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(m), np.zeros(n)]
    p = np.round(rng.normal(0.8 * y, 1.0), decimals)
    return y, p


def _brute(y, p):
    """DeLong's structural components by the definition: psi = 1[x > y] + 1/2 1[x == y] over all pairs."""
    pos, neg = p[y == 1], p[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return psi.mean(1), psi.mean(0)


def test_delong_variance_equals_the_structural_components_formula_with_ties():
    """AUC = mean psi and var = S10/m + S01/n (sample variances of the components), computed pairwise.
    Both sides sum the same ~m*n terms of size <= 1 in float64, so they agree to ~1e-12."""
    y, p = _scored(37, 53, seed=0)
    v10, v01 = _brute(y, p)
    a, var = delong_auc_var(y, p)
    assert abs(a - v10.mean()) < 1e-12 and abs(a - ref_auc(y, p)) < 1e-12
    assert abs(var - (v10.var(ddof=1) / 37 + v01.var(ddof=1) / 53)) < 1e-12
    shuffled = np.random.default_rng(1).permutation(len(y))  # row order does not matter
    assert abs(delong_auc_var(y[shuffled], p[shuffled])[1] - var) < 1e-12
    assert all(np.isnan(delong_auc_var(np.array([1, 0, 0]), np.array([0.2, 0.1, 0.3]))))  # one positive: no variance


def test_delong_variance_agrees_with_a_stratified_bootstrap():
    """The bootstrap that resamples positives and negatives separately estimates the same variance up to
    (a) its Monte-Carlo error, relative sd sqrt(2 / (B - 1)) = 3.2 % at B = 2000 (4 sd = 13 %), and (b) the
    O(1/m + 1/n) = 0.7 % terms DeLong's first-order expansion drops: |ratio - 1| < 0.14."""
    m = n = 300
    y, p = _scored(m, n, seed=2, decimals=2)
    _, var = delong_auc_var(y, p)
    rng = np.random.default_rng(3)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    boot = []
    for _ in range(2000):
        idx = np.r_[rng.choice(pos, m), rng.choice(neg, n)]
        boot.append(ref_auc(y[idx], p[idx]))
    assert abs(np.var(boot, ddof=1) / var - 1) < 0.14


def test_paired_delong_variance_of_a_difference():
    """var(AUC1 - AUC2) = var1 + var2 - 2 cov from the pairwise components; 0 for the same scores."""
    y, p1 = _scored(41, 47, seed=4)
    p2 = np.round(p1 + np.random.default_rng(5).normal(0, 0.7, len(y)), 1)
    a1, a2, dv = delong_paired(y, p1, p2)
    (x1, z1), (x2, z2) = _brute(y, p1), _brute(y, p2)
    expect = np.var(x1 - x2, ddof=1) / 41 + np.var(z1 - z2, ddof=1) / 47
    assert abs(dv - expect) < 1e-12 and abs(a1 - x1.mean()) < 1e-12 and abs(a2 - x2.mean()) < 1e-12
    assert dv < delong_auc_var(y, p1)[1] + delong_auc_var(y, p2)[1]  # positively correlated scores
    assert delong_paired(y, p1, p1)[2] == 0.0


def test_downsampling_keeps_the_share_of_one_domain_and_everything_else(small_synth):
    schema, tables, _ = small_synth
    train = tables["train"]
    dom = train.domain.numpy()
    d = int(np.bincount(dom).argmax())  # the biggest domain, so 5 % is a real cut
    n_d = int((dom == d).sum())
    for frac in (1.0, 0.2, 0.05, 0.001):
        split, kept = cut_split(tables, d, frac, seed=7)
        assert split["test"] is tables["test"] and split["valid"] is tables["valid"]  # untouched
        cut = split["train"]
        assert kept == (n_d if frac == 1 else max(1, round(frac * n_d)))
        cdom = cut.domain.numpy()
        assert int((cdom == d).sum()) == kept and len(cut) == len(train) - n_d + kept
        other = dom != d  # every other domain: the same rows in the same order
        assert torch.equal(cut.sparse[torch.from_numpy(cdom != d)], train.sparse[torch.from_numpy(other)])
        assert torch.equal(cut.dense[torch.from_numpy(cdom != d)], train.dense[torch.from_numpy(other)])
        for t in schema.task_names:
            assert torch.equal(cut.labels[t][torch.from_numpy(cdom != d)], train.labels[t][torch.from_numpy(other)])
        # the kept rows are distinct rows of that domain (the row identity: full sparse + dense + label content)
        rows = {tuple(r) for r in torch.cat([train.sparse.double(), train.dense.double()], 1)[dom == d].tolist()}
        kept_rows = [tuple(r) for r in torch.cat([cut.sparse.double(), cut.dense.double()], 1)[cdom == d].tolist()]
        assert set(kept_rows) <= rows and len(set(kept_rows)) == len(kept_rows) == kept
    a, _ = downsample_domain(train, d, 0.2, seed=1)
    b, _ = downsample_domain(train, d, 0.2, seed=2)
    assert not torch.equal(a.sparse, b.sparse)  # the seed draws the subsample


def test_user_buckets_partition_test_users_by_training_counts():
    rng = np.random.default_rng(0)
    counts = np.r_[0, 5, 6, 20, 21, 100, 101, 400, rng.integers(0, 300, 200)]  # every bound, both sides
    train_user = np.repeat(np.arange(len(counts)), counts)
    rng.shuffle(train_user)
    test_user = rng.integers(0, len(counts) + 3, 5000)  # + users never seen in training
    b = user_buckets(train_user, test_user)
    assert b.min() >= 0 and len(b) == len(test_user)  # every test row in exactly one bucket
    full = np.r_[counts, 0, 0, 0]
    for u in np.unique(test_user):
        lo, hi = BUCKETS[b[test_user == u][0]]
        assert (b[test_user == u] == b[test_user == u][0]).all()  # a user's rows share one bucket
        assert lo <= full[u] and (hi is None or full[u] <= hi)
    first = {c: b[test_user == u][0] for u, c in enumerate(full) if (test_user == u).any() and u < 8}
    assert first == {0: 0, 5: 0, 6: 1, 20: 1, 21: 2, 100: 2, 101: 3, 400: 3}


def test_a_bare_model_name_trains_with_default_keys_and_a_variant_names_its_keys():
    assert parse_variant("star") == ("star", {})
    assert parse_variant('apg_dnn+condition_groups=["user"]+condition_dim=8') == \
        ("apg_dnn", {"condition_groups": ["user"], "condition_dim": 8})
    assert parse_variant("star+partitioned_norm=false+star_mode=gather") == \
        ("star", {"partitioned_norm": False, "star_mode": "gather"})
