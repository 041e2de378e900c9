"""Item index for top-k lookup: exact torch top-k, FAISS ``IndexFlatIP`` (exact) and HNSW (approximate),
and the recall of an approximate index against the exact one.

FAISS is an optional dependency (``pip install dynarec[faiss]``); :func:`require_faiss` raises a
:class:`DynarecError` naming that extra when it is missing. Scores are inner products; with
``metric="cosine"`` the item and query vectors are L2-normalised first.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dynarec.errors import ConfigError, DynarecError
from dynarec.retrieval.data import CSR
from dynarec.retrieval.score import check_metric

__all__ = ["require_faiss", "exact_topk", "ItemIndex", "ann_recall", "INDEX_KINDS"]

INDEX_KINDS = ("flat", "hnsw")
FAISS_HINT = "faiss is not installed: pip install dynarec[faiss] (or pip install faiss-cpu)"


def require_faiss():
    """The ``faiss`` module, or a DynarecError naming the ``faiss`` extra."""
    try:
        import faiss
    except ImportError as e:
        raise DynarecError(FAISS_HINT) from e
    return faiss


def _prep(x: torch.Tensor, metric: str) -> torch.Tensor:
    x = x.detach().float()
    return F.normalize(x, dim=-1) if metric == "cosine" else x


def _exclude(scores: torch.Tensor, exclude: CSR | None, rows: torch.Tensor | None) -> torch.Tensor:
    if exclude is not None:
        rows = torch.arange(len(scores)) if rows is None else rows
        pos, col = exclude.pairs(rows)
        scores[pos.to(scores.device), col.to(scores.device)] = float("-inf")
    return scores


@torch.no_grad()
def exact_topk(queries: torch.Tensor, items: torch.Tensor, k: int, metric: str = "dot",
               exclude: CSR | None = None, exclude_rows: torch.Tensor | None = None, batch_size: int = 4096):
    """Exact top-k by brute force in batches.

    Args:
        queries: [Q, k_dim]. items: [I, k_dim]. k: results per query (≤ I). exclude: CSR of item ids
        masked per row (rows = ``exclude_rows[q]`` or q). Returns (scores [Q, k], ids Long [Q, k])."""
    check_metric(metric)
    q, v = _prep(queries, metric), _prep(items, metric)
    out_s, out_i = [], []
    for s in range(0, len(q), batch_size):
        sl = slice(s, s + batch_size)
        rows = None if exclude_rows is None else exclude_rows[sl].cpu()
        if exclude is not None and rows is None:
            rows = torch.arange(s, min(s + batch_size, len(q)))
        sc = _exclude(q[sl] @ v.T, exclude, rows)
        top = torch.topk(sc, k, dim=1)
        out_s.append(top.values)
        out_i.append(top.indices)
    return torch.cat(out_s), torch.cat(out_i)


class ItemIndex:
    """Item vectors in a FAISS index; ids returned are rows of ``items`` (or ``ids[row]`` when given).

    Args:
        items: [I, k] item vectors. kind: "flat" (``IndexFlatIP``, exact) or "hnsw" (``IndexHNSWFlat`` with
        inner-product metric). metric: "dot" | "cosine". hnsw_m: neighbours per node. ef_construction,
        ef_search: HNSW beam widths. ids: Long [I] external item ids."""

    def __init__(self, items: torch.Tensor, kind: str = "flat", metric: str = "dot", hnsw_m: int = 32,
                 ef_construction: int = 200, ef_search: int = 128, ids: torch.Tensor | None = None):
        faiss = require_faiss()
        check_metric(metric)
        if kind not in INDEX_KINDS:
            raise ConfigError(f"index.kind: expected one of {', '.join(INDEX_KINDS)}, got '{kind}'")
        self.kind, self.metric = kind, metric
        x = np.ascontiguousarray(_prep(items, metric).cpu().numpy(), dtype=np.float32)
        d = x.shape[1]
        if kind == "flat":
            self.index = faiss.IndexFlatIP(d)
        else:
            self.index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = ef_construction
            self.index.hnsw.efSearch = ef_search
        self.index.add(x)
        self.ids = None if ids is None else ids.long().cpu()

    def __len__(self) -> int:
        return self.index.ntotal

    def search(self, queries: torch.Tensor, k: int, exclude: CSR | None = None,
               exclude_rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k (scores [Q, k], ids Long [Q, k]). With ``exclude`` (CSR over item rows) the index is asked
        for k + the longest excluded row and the excluded items are dropped; missing results read id −1."""
        q = np.ascontiguousarray(_prep(queries, self.metric).cpu().numpy(), dtype=np.float32)
        extra = 0
        rows = torch.arange(len(q)) if exclude_rows is None else exclude_rows.long().cpu()
        if exclude is not None:
            extra = int(exclude.lengths()[rows].max()) if len(rows) else 0
        kk = min(k + extra, len(self))
        s, i = self.index.search(q, kk)
        scores, idx = torch.from_numpy(s), torch.from_numpy(i).long()
        if exclude is not None:
            pos, col = exclude.pairs(rows)
            n = len(self)
            keys = torch.arange(len(q)).view(-1, 1) * n + idx.clamp_min(0)
            bad = (idx < 0) | torch.isin(keys, pos * n + col)
            scores = scores.masked_fill(bad, float("-inf"))
            order = torch.sort(scores, dim=1, descending=True, stable=True).indices
            scores, idx = scores.gather(1, order), idx.gather(1, order).masked_fill(
                torch.isinf(scores.gather(1, order)), -1)
        scores, idx = scores[:, :k], idx[:, :k]
        if self.ids is not None:
            idx = torch.where(idx >= 0, self.ids[idx.clamp_min(0)], idx)
        return scores, idx

    def save(self, path: str) -> None:
        """Write the FAISS index to ``path`` (the metric and ids are the caller's to store)."""
        require_faiss().write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str, metric: str = "dot", ids: torch.Tensor | None = None) -> "ItemIndex":
        """Read an index written by :meth:`save`."""
        faiss = require_faiss()
        check_metric(metric)
        self = cls.__new__(cls)
        self.index = faiss.read_index(str(path))
        self.kind = "hnsw" if isinstance(self.index, faiss.IndexHNSW) else "flat"
        self.metric, self.ids = metric, None if ids is None else ids.long().cpu()
        return self


def ann_recall(approx_ids: torch.Tensor, exact_ids: torch.Tensor) -> float:
    """Mean over queries of ``|approx ∩ exact| / k`` for top-k id lists [Q, k] (1.0 = the ANN index
    returns the exact top-k)."""
    k = exact_ids.shape[1]
    hit = (approx_ids.unsqueeze(2) == exact_ids.unsqueeze(1)).any(2)
    return float(hit.sum(1).double().mean() / k)
