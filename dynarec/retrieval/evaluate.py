"""Exact full-corpus evaluation of a retrieval model (two-tower or popularity) on a :class:`RetrievalData`
split: every query scored against every corpus item in batches, seen items masked,
Recall / NDCG / MRR / HitRate at 10, 20, 50 overall and per domain (:func:`retrieval_metrics`)."""
from __future__ import annotations

import torch

from dynarec.inference import eval_mode
from dynarec.retrieval.metrics import KS, retrieval_metrics

__all__ = ["embed_rows", "corpus_vectors", "evaluate_retrieval"]


@torch.no_grad()
def embed_rows(fn, table, batch_size: int = 65536) -> torch.Tensor:
    """``fn(batch)`` over ``table`` in batches, concatenated ([N, k])."""
    return torch.cat([fn(b) for b in table.batches(batch_size)])


@torch.no_grad()
def corpus_vectors(model, data, batch_size: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """(query vectors [Q, k], item vectors [I, k]) of every query and corpus item, normalised for the score
    (their inner product is the model's score); eval mode during the call."""
    with eval_mode(model):
        u = embed_rows(model.query_vectors, data.queries, batch_size)
        v = embed_rows(model.item_vectors, data.items, batch_size)
    return model.prepared(u, v)


def evaluate_retrieval(model, data, split: str = "test", ks=KS, vectors=None) -> dict:
    """``{"recall@10": {"all": x, "domain=<d>": y}, ...}`` on ``data.evals[split]`` (``vectors``: precomputed
    :func:`corpus_vectors`)."""
    ev = data.evals.get(split)
    if ev is None or not len(ev.queries):
        return {}
    q, v = vectors if vectors is not None else corpus_vectors(model, data)
    return retrieval_metrics(q[ev.queries], v, ev.relevant, ev.seen, data.query_user[ev.queries],
                             data.query_domain[ev.queries], _names(data), ks)


def _names(data):
    names = ["<unknown>"] + list(data.domain_names)
    n = int(data.query_domain.max()) + 1 if len(data.query_domain) else 1
    return names + [str(i) for i in range(len(names), n)]
