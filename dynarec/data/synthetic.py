"""Built-in synthetic multi-domain, multi-task click data with a KNOWN ground truth.

Six domains with long-tailed sizes (45 % ... 1.5 %); user / item / author ids with power-law (Zipf)
popularity; context (hour, device), dense features and a user-history sequence (categories). The true
click logit mixes a component shared by all domains with domain-specific weights:

    logit_click = a_d + b_user + b_item + b_author + 2 <s_seg, M_d c_cat> + w_d · dense + c_d[device]
                  + h[hour] + κ · 1[item category ∈ user history]

where s_seg / c_cat are latent vectors of the user segment and item category, ``M_d = diag(m_d)`` and ``m_d = 1 + ρ_d ε_d`` departs further from the shared weights the smaller
the domain, so a static model that learns mostly from the big domains underfits the small ones.
The conversion (second, rarer task) happens only after a click: p_conv = p_click · σ(logit_cvr).
``generate`` returns the raw table and the true probabilities, so the Bayes-optimal AUC is known.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from dynarec.data.schema import Feature, Schema, Task

DOMAIN_SHARES = np.array([0.45, 0.25, 0.13, 0.09, 0.065, 0.015])
DOMAIN_NAMES = ["d0", "d1", "d2", "d3", "d4", "d5"]
LATENT = 8
HIST_LEN = 6
N_CATEGORIES = 40
N_SEGMENTS = 6


def _zipf_sample(rng: np.random.Generator, n_ids: int, size: int, a: float = 1.05) -> np.ndarray:
    p = 1.0 / np.arange(1, n_ids + 1) ** a
    cdf = np.cumsum(p / p.sum())
    perm = rng.permutation(n_ids)  # popularity rank -> id, so id order carries no signal
    return perm[np.minimum(np.searchsorted(cdf, rng.random(size)), n_ids - 1)]


def synthetic_schema() -> Schema:
    return Schema(
        features=[
            Feature("domain", "sparse", "domain"),
            Feature("user_id", "sparse", "user"),
            Feature("user_segment", "sparse", "user"),
            Feature("item_id", "sparse", "item"),
            Feature("item_category", "sparse", "item", table="category"),
            Feature("author_id", "sparse", "author"),
            Feature("hour", "sparse", "context"),
            Feature("device", "sparse", "context"),
            Feature("hist_categories", "sequence", "user", table="category", max_len=HIST_LEN),
            Feature("user_activity", "dense", "user"),
            Feature("item_price", "dense", "item"),
            Feature("ctx_score", "dense", "context"),
        ],
        tasks=[Task("click"), Task("conversion")],
        domain="domain",
        user="user_id",
        timestamp="ts",
    )


def generate(rows: int = 100_000, seed: int = 0, domain_shift: float = 1.0) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """Return (raw table, truth) where truth has ``p_click`` and ``p_conversion`` per row.

    ``domain_shift`` scales how far the domain-specific weights depart from the shared ones."""
    rng = np.random.default_rng(seed)
    n_users = max(200, rows // 100)
    n_items = max(100, rows // 150)
    n_authors = max(20, n_items // 8)
    D = len(DOMAIN_SHARES)

    # --- world (fixed for the seed) -----------------------------------------------------------
    seg_vec = rng.normal(0, 1, (N_SEGMENTS, LATENT)) / np.sqrt(LATENT)
    cat_vec = rng.normal(0, 1, (N_CATEGORIES, LATENT))
    u_bias = rng.normal(0, 0.3, n_users)
    i_bias = rng.normal(0, 0.3, n_items)
    a_bias = rng.normal(0, 0.2, n_authors)
    item_author = rng.integers(0, n_authors, n_items)
    item_cat = rng.integers(0, N_CATEGORIES, n_items)
    user_seg = rng.integers(0, N_SEGMENTS, n_users)
    hist_len = rng.integers(1, HIST_LEN + 1, n_users)
    hist = rng.integers(0, N_CATEGORIES, (n_users, HIST_LEN))
    user_act = rng.gamma(2.0, 1.0, n_users)
    price = rng.lognormal(3.0, 0.8, n_items)
    # domain-specific weights: smaller domains depart more from the shared ones
    rho = domain_shift * np.array([0.3, 0.6, 1.0, 1.3, 1.6, 2.0])
    m_d = 1.0 + rho[:, None] * rng.normal(0, 1, (D, LATENT))  # [D, k]
    a_d = np.array([-1.2, -1.0, -0.7, -1.5, -0.4, -0.9])
    w_dense = rng.normal(0, 0.3, (1, 3)) + rho[:, None] * rng.normal(0, 0.3, (D, 3))
    c_dev = rng.normal(0, 0.3, (D, 4))
    h_eff = 0.3 * np.sin(np.arange(24) / 24 * 2 * np.pi)
    cvr_item = rng.normal(0, 0.6, n_items)
    cvr_d = rng.normal(-0.5, 0.5, D)

    # --- impressions ---------------------------------------------------------------------------
    dom = rng.choice(D, rows, p=DOMAIN_SHARES)
    uid = _zipf_sample(rng, n_users, rows)
    iid = _zipf_sample(rng, n_items, rows)
    hour = rng.integers(0, 24, rows)
    device = rng.integers(0, 4, rows)
    ctx = rng.normal(0, 1, rows)
    ts = np.sort(rng.integers(1_600_000_000, 1_600_000_000 + 30 * 86400, rows))

    z_act = (np.log1p(user_act[uid]) - 0.9) / 0.5
    z_price = (np.log(price[iid]) - 3.0) / 0.8
    dense = np.stack([z_act, z_price, ctx], 1)
    in_hist = (hist[uid] == item_cat[iid][:, None])
    in_hist &= np.arange(HIST_LEN)[None, :] < hist_len[uid][:, None]
    inter = np.einsum("bk,bk->b", seg_vec[user_seg[uid]] * m_d[dom], cat_vec[item_cat[iid]])
    logit = (a_d[dom] + u_bias[uid] + i_bias[iid] + a_bias[item_author[iid]] + 2.0 * inter
             + np.einsum("bk,bk->b", dense, w_dense[dom]) + c_dev[dom, device] + h_eff[hour]
             + 0.8 * in_hist.any(1))
    p_click = 1.0 / (1.0 + np.exp(-logit))
    logit_cvr = cvr_d[dom] + cvr_item[iid] + 0.5 * z_act - 0.4 * z_price
    p_cvr = 1.0 / (1.0 + np.exp(-logit_cvr))
    click = (rng.random(rows) < p_click).astype(np.int8)
    conv = (click & (rng.random(rows) < p_cvr)).astype(np.int8)

    # history as "c1|c2|..." strings, built per user once then gathered
    hist_str = np.array(["|".join(f"c{c}" for c in hist[u, :hist_len[u]]) for u in range(n_users)], dtype=object)
    table = pa.table({
        "domain": pa.array(np.array(DOMAIN_NAMES, dtype=object)[dom].tolist(), pa.string()),
        "user_id": uid.astype(np.int64),
        "user_segment": user_seg[uid].astype(np.int64),
        "item_id": iid.astype(np.int64),
        "item_category": pa.array([f"c{c}" for c in range(N_CATEGORIES)], pa.string()).take(pa.array(item_cat[iid])),
        "author_id": item_author[iid].astype(np.int64),
        "hour": hour.astype(np.int64),
        "device": device.astype(np.int64),
        "hist_categories": pa.array(hist_str, pa.string()).take(pa.array(uid)),
        "user_activity": user_act[uid].astype(np.float32),
        "item_price": price[iid].astype(np.float32),
        "ctx_score": ctx.astype(np.float32),
        "ts": ts.astype(np.int64),
        "click": click,
        "conversion": conv,
    })
    return table, {"p_click": p_click, "p_conversion": p_click * p_cvr, "domain": dom}


def position_biased(rows: int, seed: int, n_items: int = 100, fixed_position: int | None = None):
    """Clicks confounded by position, with a known answer (for the position-bias tower, SPEC §2.12).

    Items have a true relevance r and an independent 'promotion' score q that the logging policy used to
    place them (high q -> position 1, positions 1-3). Clicks: σ(r − 1 + β_pos), β = (+1.5, 0, −1.5).
    ``fixed_position`` shows every item at one position (the unbiased test set). The item world is fixed
    (seed 1234); ``seed`` draws the impressions. Returns (table with domain / item_id / position / click,
    true click probabilities)."""
    world = np.random.default_rng(1234)
    r = world.normal(0, 1, n_items)
    q = world.normal(0, 1, n_items)
    rng = np.random.default_rng(seed)
    item = rng.integers(0, n_items, rows)
    if fixed_position is None:
        s = q[item] + rng.normal(0, 0.3, rows)
        pos = np.where(s > 0.5, 1, np.where(s > -0.5, 2, 3))
    else:
        pos = np.full(rows, fixed_position)
    beta = np.array([0.0, 1.5, 0.0, -1.5])
    p = 1 / (1 + np.exp(-(r[item] - 1.0 + beta[pos])))
    click = (rng.random(rows) < p).astype(np.int8)
    dom = np.where(item % 2 == 0, "a", "b")
    return pa.table({"domain": dom.tolist(), "item_id": item, "position": pos, "click": click}), p
