"""Exact full-corpus retrieval metrics: Recall, NDCG, MRR and HitRate at K, overall and per domain.

Every query is scored against every item in batches (``q @ Vᵀ``); the items in the query's ``seen`` row
(training interactions) are masked to −∞ before the top-K. A test positive that is also seen cannot be
retrieved and is dropped from the query's relevant set; a query left with no relevant item is skipped.
Per query, with ``rel`` its relevant set and ``hit_r`` whether the rank-r item is relevant (r = 1..K):

* Recall@K = Σ_r hit_r / |rel|;  HitRate@K = 1[Σ_r hit_r > 0];  MRR@K = 1 / (rank of the first hit), 0 if none;
* NDCG@K = (Σ_r hit_r / log2(r + 1)) / (Σ_{r ≤ min(K, |rel|)} 1 / log2(r + 1)).

Each metric is the mean over queries, overall (``"all"``) and over the queries of each domain
(``"domain=<d>"``).
"""
from __future__ import annotations

import torch

from dynarec.errors import DataError
from dynarec.retrieval.data import CSR

__all__ = ["KS", "NAMES", "retrieval_metrics", "per_query_metrics"]

KS = (10, 20, 50)
NAMES = ("recall", "ndcg", "mrr", "hitrate")


def _masked_scores(q, items, seen, seen_rows):
    scores = q @ items.T
    if seen is not None:
        pos, col = seen.pairs(seen_rows)
        scores[pos.to(scores.device), col.to(scores.device)] = float("-inf")
    return scores


@torch.no_grad()
def per_query_metrics(query_emb: torch.Tensor, item_emb: torch.Tensor, relevant: CSR, seen: CSR | None = None,
                      query_user: torch.Tensor | None = None, ks=KS, batch_size: int = 1024):
    """Metric values per query.

    Args:
        query_emb: [Q, k] query vectors. item_emb: [I, k] item vectors (row = item id). relevant: CSR with
        Q rows, the test positives of each query. seen: CSR of items masked per user (rows indexed by
        ``query_user``, or by query when ``query_user`` is None). query_user: Long [Q]. ks: cut-offs.
    Returns:
        ``({"recall@10": [Q'], ...}, kept)`` with ``kept`` Long [Q'] the queries that have a relevant item."""
    n_q, n_i = query_emb.shape[0], item_emb.shape[0]
    if relevant.num_rows != n_q:
        raise DataError(f"retrieval metrics: {relevant.num_rows} relevant rows for {n_q} queries")
    k_max = min(max(ks), n_i)
    out = {f"{m}@{k}": [] for m in NAMES for k in ks}
    kept_all = []
    discount = 1.0 / torch.log2(torch.arange(2, k_max + 2, dtype=torch.float64))
    cum_disc = torch.cumsum(discount, 0)
    for s in range(0, n_q, batch_size):
        rows = torch.arange(s, min(s + batch_size, n_q))
        seen_rows = rows if query_user is None else query_user[rows].long().cpu()
        scores = _masked_scores(query_emb[rows.to(query_emb.device)], item_emb, seen, seen_rows)
        dev = scores.device
        pos, col = (t.to(dev) for t in relevant.pairs(rows))
        ok = torch.isfinite(scores[pos, col])                          # seen positives cannot be retrieved
        pos, col = pos[ok], col[ok]
        n_rel = torch.bincount(pos, minlength=len(rows)).double()
        top = torch.topk(scores, k_max, dim=1).indices
        top_keys = torch.arange(len(rows), device=dev).view(-1, 1) * n_i + top
        hit = torch.isin(top_keys, pos * n_i + col).double().cpu()
        n_rel = n_rel.cpu()
        keep = n_rel > 0
        hit, n_rel = hit[keep], n_rel[keep]
        kept_all.append(rows[keep])
        first = torch.where(hit.any(1), hit.argmax(1).double() + 1, torch.full_like(n_rel, float("inf")))
        for k in ks:
            kk = min(k, k_max)
            h = hit[:, :kk]
            out[f"recall@{k}"].append(h.sum(1) / n_rel)
            out[f"hitrate@{k}"].append((h.sum(1) > 0).double())
            out[f"mrr@{k}"].append(torch.where(first <= kk, 1.0 / first, torch.zeros_like(first)))
            ideal = cum_disc[(n_rel.clamp(max=kk) - 1).long()]
            out[f"ndcg@{k}"].append((h * discount[:kk]).sum(1) / ideal)
    return {name: torch.cat(v) for name, v in out.items()}, torch.cat(kept_all)


def retrieval_metrics(query_emb: torch.Tensor, item_emb: torch.Tensor, relevant: CSR, seen: CSR | None = None,
                      query_user: torch.Tensor | None = None, domain: torch.Tensor | None = None,
                      domain_names=None, ks=KS, batch_size: int = 1024) -> dict[str, dict[str, float]]:
    """Recall / NDCG / MRR / HitRate at ``ks`` as ``{"recall@10": {"all": x, "domain=<d>": y}, ...}``.

    Args: as :func:`per_query_metrics`, plus ``domain`` Long [Q] (the domain of each query) and
    ``domain_names`` (a sequence: domain id -> name; default the id)."""
    values, kept = per_query_metrics(query_emb, item_emb, relevant, seen, query_user, ks, batch_size)
    result: dict[str, dict[str, float]] = {}
    dom = None if domain is None else domain.long().cpu()[kept]
    for name, v in values.items():
        entry = {"all": float(v.mean()) if len(v) else float("nan")}
        if dom is not None:
            for d in torch.unique(dom).tolist():
                label = domain_names[d] if domain_names is not None else d
                entry[f"domain={label}"] = float(v[dom == d].mean())
        result[name] = entry
    return result
