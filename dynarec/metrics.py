"""Metrics on the full evaluation set: AUC (ties averaged, Mann–Whitney) with DeLong's standard error,
logloss, gAUC grouped by user (impression-weighted, users with one class skipped), RMSE for regression
tasks; per task, overall and per domain, with the positives of each slice. Vectorised numpy; equal to
scikit-learn's ``roc_auc_score`` / ``log_loss`` (tested)."""
from __future__ import annotations

import math

import numpy as np
import torch


def _avg_ranks(sorted_keys_equal_prev: np.ndarray, n: int) -> np.ndarray:
    """Average 1-based ranks for a sorted array given a mask 'equal to previous element'."""
    run_start = ~sorted_keys_equal_prev
    run_id = np.cumsum(run_start) - 1
    starts = np.flatnonzero(run_start)
    ends = np.append(starts[1:], n)  # exclusive
    avg = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    return avg[run_id]


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC with ties counted as 1/2; NaN when only one class is present."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    n = len(y)
    n_pos = float(y.sum())
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ps = p[order]
    eq = np.concatenate([[False], ps[1:] == ps[:-1]])
    ranks = _avg_ranks(eq, n)
    return float((ranks[y[order] > 0.5].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_delong(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(AUC, DeLong standard error) — DeLong, DeLong & Clarke-Pearson (1988), in the midrank form of Sun & Xu
    (2014): with m positives X, n negatives Y, ``V10_i = (T_i − Tx_i)/n`` (placement of positive i among the
    negatives), ``V01_j = 1 − (T_j − Ty_j)/m``; ``var = s²(V10)/m + s²(V01)/n``. NaN when a class has
    fewer than 2 rows (no variance estimate).

    Example::

        a, se = auc_delong(np.array([0, 0, 1, 1, 0, 1]), np.array([.1, .4, .35, .8, .2, .9]))
        lo, hi = a - 1.96 * se, a + 1.96 * se  # 95 % interval
    """
    y = np.asarray(y, dtype=np.float64) > 0.5
    p = np.asarray(p, dtype=np.float64)
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        return float("nan"), float("nan")

    def midranks(x):
        order = np.argsort(x, kind="mergesort")
        xs = x[order]
        r = np.empty(len(x))
        r[order] = _avg_ranks(np.concatenate([[False], xs[1:] == xs[:-1]]), len(x))
        return r

    t = midranks(p)
    v10 = (t[y] - midranks(p[y])) / n
    v01 = 1.0 - (t[~y] - midranks(p[~y])) / m
    a = float(v10.mean())
    if m < 2 or n < 2:
        return a, float("nan")
    return a, float(np.sqrt(v10.var(ddof=1) / m + v01.var(ddof=1) / n))


def logloss(y: np.ndarray, p: np.ndarray) -> float:
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), np.finfo(np.float64).eps, 1 - np.finfo(np.float64).eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def gauc(y: np.ndarray, p: np.ndarray, group: np.ndarray) -> float:
    """Σ_u n_u AUC_u / Σ_u n_u over users with both classes (ties averaged within a user)."""
    num, den = gauc_parts(y, p, group)
    return float(num / den) if den else float("nan")


def gauc_parts(y: np.ndarray, p: np.ndarray, group: np.ndarray) -> tuple[float, float]:
    """(Σ_u n_u AUC_u, Σ_u n_u) over the users with both classes: :func:`gauc`'s sums, which add up over
    row sets that split no user (``dynarec.evalgauc`` sums them over hash partitions of the users)."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    g = np.asarray(group)
    n = len(y)
    if n == 0:
        return 0.0, 0.0
    order = np.lexsort((p, g))
    gs, ps, ys = g[order], p[order], y[order]
    new_group = np.concatenate([[True], gs[1:] != gs[:-1]])
    eq = np.concatenate([[False], (ps[1:] == ps[:-1]) & ~new_group[1:]])
    gid = np.cumsum(new_group) - 1
    gstart = np.flatnonzero(new_group)
    ranks = _avg_ranks(eq, n) - gstart[gid]  # within-group ranks
    n_g = np.bincount(gid).astype(np.float64)
    pos_g = np.bincount(gid, weights=ys)
    rank_pos = np.bincount(gid, weights=ranks * (ys > 0.5))
    neg_g = n_g - pos_g
    ok = (pos_g > 0) & (neg_g > 0)
    if not ok.any():
        return 0.0, 0.0
    auc_g = (rank_pos[ok] - pos_g[ok] * (pos_g[ok] + 1) / 2) / (pos_g[ok] * neg_g[ok])
    return float((auc_g * n_g[ok]).sum()), float(n_g[ok].sum())


def rmse(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(y, np.float64) - np.asarray(p, np.float64)) ** 2)))


def _clean(x: float):
    return None if isinstance(x, float) and math.isnan(x) else x


def compute_metrics(labels: dict[str, np.ndarray], preds: dict[str, np.ndarray], domain: np.ndarray,
                    domain_names: list[str], user: np.ndarray | None = None,
                    task_types: dict[str, str] | None = None) -> dict:
    """Metrics dict: {"auc"|"logloss"|"gauc"|"rmse"|"auc_se"|"positives": {task: {"all": x, "domain=<d>": x}},
    "count": {slice: rows}}. ``auc_se``: DeLong's standard error of the AUC (:func:`auc_delong`; a 95 %
    interval is ``auc ± 1.96·se``); ``positives``: rows with label 1 (binary tasks). NaN is reported as None."""
    task_types = task_types or {}
    out: dict = {"auc": {}, "logloss": {}, "gauc": {}, "rmse": {}, "count": {}, "auc_se": {}, "positives": {}}
    masks = {"all": np.ones(len(domain), bool)}
    for d in np.unique(domain):
        name = domain_names[d - 1] if 0 < d <= len(domain_names) else "<unknown>"
        masks[f"domain={name}"] = domain == d
    out["count"] = {k: int(m.sum()) for k, m in masks.items()}
    for t, p in preds.items():
        y = labels[t]
        if task_types.get(t, "binary") == "binary":
            out["auc"][t] = {k: _clean(auc(y[m], p[m])) for k, m in masks.items()}
            out["auc_se"][t] = {k: _clean(auc_delong(y[m], p[m])[1]) for k, m in masks.items()}
            out["positives"][t] = {k: int((y[m] > 0.5).sum()) for k, m in masks.items()}
            out["logloss"][t] = {k: _clean(logloss(y[m], p[m])) for k, m in masks.items()}
            if user is not None:
                out["gauc"][t] = {k: _clean(gauc(y[m], p[m], user[m])) for k, m in masks.items()}
        else:
            out["rmse"][t] = {k: _clean(rmse(y[m], p[m])) for k, m in masks.items()}
    return {k: v for k, v in out.items() if v}


@torch.no_grad()
def predict_table(model, table, batch_size: int = 65536) -> dict[str, np.ndarray]:
    """Eval-mode predictions (probabilities for binary tasks) for every row of ``table``."""
    was = model.training
    model.eval()
    types = {t.name: t.type for t in model.schema.tasks}
    chunks: dict[str, list] = {}
    for b in table.batches(batch_size):
        for t, v in model(b).items():
            chunks.setdefault(t, []).append(torch.sigmoid(v) if types.get(t, "binary") == "binary" else v)
    model.train(was)
    return {t: torch.cat(v).double().cpu().numpy() for t, v in chunks.items()}


def evaluate_model(model, table, batch_size: int = 65536) -> dict:
    preds = predict_table(model, table, batch_size)
    labels = {t: v.double().numpy() for t, v in table.labels.items()}
    user = None if table.user is None else table.user.numpy()
    return compute_metrics(labels, preds, table.domain.numpy(), model.schema.domain_values, user,
                           {t.name: t.type for t in model.schema.tasks})
