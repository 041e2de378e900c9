"""Drifting synthetic click streams for online training by passes, with a KNOWN ground truth.

The click model is the one of :mod:`dynarec.data.synthetic` (shared + domain-specific weights,
``logit = a_d + b_user + b_item + b_author + 2 <s_seg, M_d c_cat> + w_d · dense + c_d[device] + h[hour]
+ κ · 1[category ∈ history]``, conversion only after a click), on a world that changes pass by pass:

* ids are born and die: each pass a fraction ``churn`` (at least one) of the active authors retires (with their items),
  the same fraction of the active users / items retires, and as many never-seen ids are born (ids
  increase with birth), so the active pools stay the same size while the distinct ids grow linearly;
* popularity drifts: a fraction ``drift`` of the Zipf popularity ranks is reshuffled each pass, and the
  newborn ids take the retired ids' ranks;
* one new domain (``d6``, its own weights) appears at pass ``passes // 2`` with ``new_domain_share``
  of the rows.

How much the ids matter is a parameter, ``id_share``: the id terms ``b_user + b_item + b_author`` are
multiplied by one factor ``id_scale``, solved on the rows of pass 0 so that the id terms' variance over the
click logit's variance (over rows, so popular ids weigh more) is exactly ``id_share`` there; the factor then
stays fixed (the share measured on each later pass moves a little: the id pools turn over and ``d6``, whose
interaction weights depart most, adds logit variance). The default, :data:`ID_SHARE` = 0.5, makes the ids
carry half of the click logit, as ids carry much of the signal in real CTR data: on MovieLens-100K an L2
logistic regression on one-hots of every feature puts 0.64 of its logit's variance on the user / item ids
(ids alone reach 0.70 test AUC on the last 20 % by time, every other feature together 0.54;
``benchmarks/online_quality.py --measure-id-share``), so 0.5 stays below a real stream's share. Before the
parameter the unscaled biases (sd 0.3 / 0.3 / 0.2) carried 0.02-0.05 of the logit variance, so no id policy
could matter; ``id_share=None`` keeps that unscaled world (factor 1).

``write_stream`` writes ``pass-0000.parquet ...`` (raw columns), ``truth-0000.npz`` (``p_click``,
``p_conversion``, ``domain``, ``new_user`` / ``new_item`` = id born in this pass, ``id_logit`` = the scaled id
terms of each row and its parts ``user_logit`` / ``item_logit`` / ``author_logit``, ``rest_logit`` = the logit
without them, and the scalars ``id_share`` = the share measured on this pass, ``id_scale``), ``stream.yaml`` (the
generator's parameters and, per pass, the measured id share and the expected AUC of three oracles: the true
probabilities (Bayes), the id terms alone, the logit without the id terms — the best a model can do whose
ids all read one unknown row) and ``schema.yaml`` (user / item / author ids ``dynamic: true``; the domains
``d0`` ... ``d6`` declared in ``domain_values``, so the domain born mid-stream has its own id, 7, instead of
the unknown id 0). ``id_stream`` yields batches of raw ids with churn over millions of distinct ids generated
on the fly (for memory benchmarks of dynamic tables).
"""
from __future__ import annotations

import inspect
import numbers
from dataclasses import fields, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from dynarec.data.schema import Schema
from dynarec.data.synthetic import DOMAIN_NAMES, DOMAIN_SHARES, HIST_LEN, LATENT, N_CATEGORIES, N_SEGMENTS, \
    synthetic_schema

DYNAMIC_IDS = ("user_id", "item_id", "author_id")
NEW_DOMAIN = "d6"
ID_SHARE = 0.5  # default share of the click logit's variance carried by the user / item / author id terms
T0 = 1_600_000_000
PASS_SECONDS = 86_400


def stream_schema() -> Schema:
    """The synthetic schema with the user / item / author ids marked ``dynamic`` and the domains of the stream
    (``d0`` ... ``d5``, then the new ``d6``) declared, so ``d6`` has its own domain id."""
    s = synthetic_schema()
    s.features = [replace(f, dynamic=f.name in DYNAMIC_IDS) for f in s.features]
    s.domain_values = DOMAIN_NAMES + [NEW_DOMAIN]
    return s


def check_id_share(id_share: float | None) -> None:
    """Raise ``ValueError`` (one line) unless ``id_share`` is None or a number in [0, 1)."""
    if id_share is None:
        return
    if isinstance(id_share, bool) or not isinstance(id_share, numbers.Real) or not 0 <= id_share < 1:
        raise ValueError(f"id_share must be a number in [0, 1), got {id_share!r}")


def _id_scale(ids: np.ndarray, rest: np.ndarray, share: float) -> float:
    """The factor s >= 0 with var(s·ids) / var(s·ids + rest) = ``share`` on these rows (exact, covariance kept)."""
    if share == 0:
        return 0.0
    vi, vr = float(np.var(ids)), float(np.var(rest))
    c = float(np.mean((ids - ids.mean()) * (rest - rest.mean())))
    if vi == 0:
        raise ValueError("id_share: the id terms have no variance on the first pass (too few rows)")
    # s² vi (1 - t) - 2 t c s - t vr = 0, the positive root
    a, b, cc = vi * (1 - share), -2 * share * c, -share * vr
    return float((-b + np.sqrt(b * b - 4 * a * cc)) / (2 * a))


def expected_auc(score: np.ndarray, p: np.ndarray) -> float:
    """The AUC that ``score`` reaches in expectation when each row's label is drawn with probability ``p``
    (concordant pairs weighted by p_i (1 - p_j), ties count half; the ratio of expectations, no sampling noise)."""
    score, p = np.asarray(score, np.float64), np.asarray(p, np.float64)
    u, inv = np.unique(score, return_inverse=True)
    pos = np.bincount(inv, p, len(u))
    neg = np.bincount(inv, 1 - p, len(u))
    below = np.cumsum(neg) - neg  # negatives' weight at strictly lower scores
    num = float(np.sum(pos * (below + 0.5 * neg)) - 0.5 * np.sum(p * (1 - p)))  # i = j pairs left out
    den = float(pos.sum() * neg.sum() - np.sum(p * (1 - p)))
    return num / den


def save_schema_yaml(schema: Schema, path: str | Path) -> None:
    """Write ``schema`` as YAML (loadable with ``Schema.load``), each feature / task with its non-default keys."""
    def short(obj) -> dict:
        return {f.name: getattr(obj, f.name) for f in fields(obj)
                if f.name == "name" or getattr(obj, f.name) != f.default and not (f.name == "table" and obj.table == obj.name)
                or (f.name == "embedding" and getattr(obj, "kind", None) == "dense")}  # null: no default encoding
    d = schema.to_dict()
    d["features"], d["tasks"] = [short(f) for f in schema.features], [short(t) for t in schema.tasks]
    Path(path).write_text(yaml.safe_dump(d, sort_keys=False))


class _Pool:
    """Active ids of one kind in popularity-rank order (position 0 = most popular) + per-id attributes
    indexed by id (grown at each birth)."""

    def __init__(self, n: int, make, rng: np.random.Generator):
        self.make, self.rng = make, rng
        self.attr = make(n, rng)
        self.born = np.zeros(n, np.int64)
        self.ids = rng.permutation(n).astype(np.int64)
        self.next = n
        self.newborn = np.arange(n, dtype=np.int64)

    def turn(self, retire: np.ndarray, drift: float, pass_idx: int) -> None:
        """Replace the ids at rank positions ``retire`` (bool mask) with newborns; reshuffle ``drift`` of ranks."""
        pos = np.flatnonzero(retire)
        new = np.arange(self.next, self.next + len(pos), dtype=np.int64)
        self.next += len(pos)
        self.newborn = new
        for k, v in self.make(len(pos), self.rng).items():
            self.attr[k] = np.concatenate([self.attr[k], v])
        self.born = np.concatenate([self.born, np.full(len(pos), pass_idx, np.int64)])
        self.ids[pos] = self.rng.permutation(new)
        moved = np.flatnonzero(self.rng.random(len(self.ids)) < drift)
        self.ids[moved] = self.ids[self.rng.permutation(moved)]

    def __getitem__(self, key: str) -> np.ndarray:
        return self.attr[key]


def _retire(rng: np.random.Generator, n: int, churn: float) -> np.ndarray:
    """A mask of exactly ``max(1, round(churn · n))`` random positions out of ``n``."""
    mask = np.zeros(n, bool)
    mask[rng.choice(n, min(n, max(1, round(churn * n))), replace=False)] = True
    return mask


def _zipf_ranks(rng: np.random.Generator, n: int, size: int, a: float = 1.05) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** a
    cdf = np.cumsum(p / p.sum())
    return np.minimum(np.searchsorted(cdf, rng.random(size)), n - 1)


def generate_stream(passes: int, rows_per_pass: int, seed: int = 0, churn: float = 0.15, drift: float = 0.2,
                    new_domain_share: float = 0.2, domain_shift: float = 1.0, id_share: float | None = ID_SHARE
                    ) -> Iterator[tuple[pa.Table, dict[str, np.ndarray]]]:
    """Yield ``(raw table, truth)`` for each pass (see the module docstring).

    Args:
        passes: number of passes; the new domain appears at pass ``passes // 2``.
        rows_per_pass: impressions per pass.
        churn: fraction of the active users / items / authors retired (and replaced by newborns) each pass.
        drift: fraction of popularity ranks reshuffled each pass.
        new_domain_share: share of the rows in the new domain once it is live.
        id_share: share of the click logit's variance (on pass 0) carried by the user / item / author id terms,
            in [0, 1); None: the unscaled id biases (about 0.02-0.03).
    Returns (per pass): the table (columns as ``synthetic.generate``'s, ``ts`` increasing across passes) and
    truth with ``p_click``, ``p_conversion``, ``domain`` (int, 6 = new), ``new_user``, ``new_item``, ``id_logit``
    [rows] and its parts ``user_logit`` / ``item_logit`` / ``author_logit``, ``rest_logit`` [rows] (the logit
    without the id terms), and the scalars ``id_share`` (measured on
    this pass) and ``id_scale``."""
    check_id_share(id_share)
    rng = np.random.default_rng(seed)
    scale = None if id_share is not None else 1.0
    n_users, n_items = max(200, rows_per_pass // 100), max(100, rows_per_pass // 150)
    n_authors = max(20, n_items // 8)
    D = len(DOMAIN_SHARES) + 1
    seg_vec = rng.normal(0, 1, (N_SEGMENTS, LATENT)) / np.sqrt(LATENT)
    cat_vec = rng.normal(0, 1, (N_CATEGORIES, LATENT))
    rho = domain_shift * np.array([0.3, 0.6, 1.0, 1.3, 1.6, 2.0, 2.0])
    m_d = 1.0 + rho[:, None] * rng.normal(0, 1, (D, LATENT))
    a_d = np.array([-1.2, -1.0, -0.7, -1.5, -0.4, -0.9, -0.6])
    w_dense = rng.normal(0, 0.3, (1, 3)) + rho[:, None] * rng.normal(0, 0.3, (D, 3))
    c_dev = rng.normal(0, 0.3, (D, 4))
    h_eff = 0.3 * np.sin(np.arange(24) / 24 * 2 * np.pi)
    cvr_d = rng.normal(-0.5, 0.5, D)
    authors = _Pool(n_authors, lambda n, r: {"bias": r.normal(0, 0.2, n)}, rng)

    def new_items(n, r):
        author = authors.ids[r.integers(0, len(authors.ids), n)]
        k = min(n, len(authors.newborn))  # every newborn author publishes at least one newborn item
        author[r.permutation(n)[:k]] = authors.newborn[:k]
        return {"bias": r.normal(0, 0.3, n), "cat": r.integers(0, N_CATEGORIES, n), "author": author,
                "price": r.lognormal(3.0, 0.8, n), "cvr": r.normal(0, 0.6, n)}

    users = _Pool(n_users, lambda n, r: {"bias": r.normal(0, 0.3, n), "seg": r.integers(0, N_SEGMENTS, n),
                                         "hlen": r.integers(1, HIST_LEN + 1, n),
                                         "hist": r.integers(0, N_CATEGORIES, (n, HIST_LEN)),
                                         "act": r.gamma(2.0, 1.0, n)}, rng)
    items = _Pool(n_items, new_items, rng)
    names = pa.array(DOMAIN_NAMES + [NEW_DOMAIN], pa.string())
    cats = pa.array([f"c{c}" for c in range(N_CATEGORIES)], pa.string())
    for p in range(passes):
        if p > 0:  # authors first: items of retired authors retire with them, newborn items pick live authors
            dead_a = _retire(rng, n_authors, churn)
            gone = authors.ids[dead_a]
            authors.turn(dead_a, drift, p)
            items.turn(_retire(rng, n_items, churn) | np.isin(items["author"][items.ids], gone), drift, p)
            users.turn(_retire(rng, n_users, churn), drift, p)
        shares = DOMAIN_SHARES if p < passes // 2 else np.append(DOMAIN_SHARES * (1 - new_domain_share),
                                                                  new_domain_share)
        dom = rng.choice(len(shares), rows_per_pass, p=shares / shares.sum())
        ur = _zipf_ranks(rng, n_users, rows_per_pass)
        uid, iid = users.ids[ur], items.ids[_zipf_ranks(rng, n_items, rows_per_pass)]
        aid = items["author"][iid]
        hour = rng.integers(0, 24, rows_per_pass)
        device = rng.integers(0, 4, rows_per_pass)
        ctx = rng.normal(0, 1, rows_per_pass)
        ts = np.sort(rng.integers(T0 + p * PASS_SECONDS, T0 + (p + 1) * PASS_SECONDS, rows_per_pass))
        act, price, cat = users["act"][uid], items["price"][iid], items["cat"][iid]
        z_act, z_price = (np.log1p(act) - 0.9) / 0.5, (np.log(price) - 3.0) / 0.8
        dense = np.stack([z_act, z_price, ctx], 1)
        in_hist = (users["hist"][uid] == cat[:, None]) & (np.arange(HIST_LEN)[None, :] < users["hlen"][uid][:, None])
        inter = np.einsum("bk,bk->b", seg_vec[users["seg"][uid]] * m_d[dom], cat_vec[cat])
        id_terms = users["bias"][uid] + items["bias"][iid] + authors["bias"][aid]
        rest = (a_d[dom] + 2.0 * inter + np.einsum("bk,bk->b", dense, w_dense[dom]) + c_dev[dom, device]
                + h_eff[hour] + 0.8 * in_hist.any(1))
        if scale is None:  # solved once, on pass 0; the world keeps it
            scale = _id_scale(id_terms, rest, id_share)
        id_logit = scale * id_terms
        parts = {"user_logit": scale * users["bias"][uid], "item_logit": scale * items["bias"][iid],
                 "author_logit": scale * authors["bias"][aid]}
        logit = rest + id_logit
        p_click = 1.0 / (1.0 + np.exp(-logit))
        p_cvr = 1.0 / (1.0 + np.exp(-(cvr_d[dom] + items["cvr"][iid] + 0.5 * z_act - 0.4 * z_price)))
        click = (rng.random(rows_per_pass) < p_click).astype(np.int8)
        conv = (click & (rng.random(rows_per_pass) < p_cvr)).astype(np.int8)
        # history strings for the active users only (rank order), gathered by rank
        hist_str = pa.array(["|".join(f"c{c}" for c in users["hist"][u, :users["hlen"][u]]) for u in users.ids],
                            pa.string())
        table = pa.table({
            "domain": names.take(pa.array(dom)), "user_id": uid, "user_segment": users["seg"][uid].astype(np.int64),
            "item_id": iid, "item_category": cats.take(pa.array(cat)), "author_id": aid.astype(np.int64),
            "hour": hour.astype(np.int64), "device": device.astype(np.int64), "hist_categories": hist_str.take(pa.array(ur)),
            "user_activity": act.astype(np.float32), "item_price": price.astype(np.float32),
            "ctx_score": ctx.astype(np.float32), "ts": ts.astype(np.int64), "click": click, "conversion": conv,
        })
        v = float(np.var(logit))
        yield table, {"p_click": p_click, "p_conversion": p_click * p_cvr, "domain": dom,
                      "new_user": users.born[uid] == p, "new_item": items.born[iid] == p,
                      "id_logit": id_logit, "rest_logit": rest, **parts,
                      "id_share": np.float64(np.var(id_logit) / v if v > 0 else 0.0), "id_scale": np.float64(scale)}


def write_stream(out: str | Path, passes: int, rows_per_pass: int, seed: int = 0, **kw) -> list[Path]:
    """Write ``pass-NNNN.parquet`` + ``truth-NNNN.npz`` per pass, ``stream.yaml`` (parameters, measured id share
    and oracle AUCs per pass) and ``schema.yaml`` to ``out``; return the pass files. ``kw``: the options of
    :func:`generate_stream`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files, per = [], []
    for p, (table, truth) in enumerate(generate_stream(passes, rows_per_pass, seed, **kw)):
        files.append(out / f"pass-{p:04d}.parquet")
        pq.write_table(table, files[-1])
        np.savez(out / f"truth-{p:04d}.npz", **truth)
        pc = truth["p_click"]
        per.append({"pass": p, "id_share": round(float(truth["id_share"]), 4),
                    "bayes_auc": round(expected_auc(pc, pc), 4),
                    "id_only_auc": round(expected_auc(truth["id_logit"], pc), 4),
                    "no_id_auc": round(expected_auc(truth["rest_logit"], pc), 4)})
        scale = float(truth["id_scale"])
    opts = {k: v.default for k, v in inspect.signature(generate_stream).parameters.items()
            if v.default is not inspect.Parameter.empty and k != "seed"} | kw
    meta = {"passes": passes, "rows_per_pass": rows_per_pass, "seed": seed, **opts,
            "id_scale": round(scale, 6) if files else None, "per_pass": per}
    Path(out / "stream.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    save_schema_yaml(stream_schema(), out / "schema.yaml")
    return files


def id_stream(total_ids: int = 10_000_000, batch: int = 65_536, window: int = 2_000_000, births: int | None = None,
              seed: int = 0) -> Iterator[np.ndarray]:
    """Yield int64 id batches over ``total_ids`` distinct ids generated on the fly (nothing is stored).

    Ids are born in increasing order; each batch holds the ``births`` newborn ids (default: enough for all
    ``total_ids`` to be born in ``4 × total_ids / batch`` batches) and, for the rest, ids drawn from the live
    window of the ``window`` most recent births (Zipf-skewed towards the young), so old ids stop appearing
    (churn). Every id appears at least once; the batches come shuffled.

    Args:
        total_ids: distinct ids over the whole stream.  batch: ids per batch [batch].
        window: how many of the most recent ids are still alive.  births: newborn ids per batch."""
    rng = np.random.default_rng(seed)
    births = births or max(1, batch // 4)
    if births > batch:
        raise ValueError(f"births ({births}) must be <= batch ({batch})")
    p = 1.0 / np.arange(1, window + 1) ** 0.8
    cdf = np.cumsum(p / p.sum())
    born = 0
    while born < total_ids:
        new = np.arange(born, min(born + births, total_ids), dtype=np.int64)
        born += len(new)
        age = np.minimum(np.searchsorted(cdf, rng.random(batch - len(new))), born - 1)
        ids = np.concatenate([new, born - 1 - age])
        yield ids[rng.permutation(len(ids))]
