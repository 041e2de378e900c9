"""The registry of retrieval losses: one :class:`Objective` per value of the two-tower model's ``loss`` key,
declaring its family (``softmax``: the score defaults to cosine; ``gramian``: to dot), the state it keeps
in the step (saved in resume points) and its loss on a batch. :class:`~dynarec.retrieval.step.RetrievalStep`
reads the objective of ``model.loss`` from :data:`OBJECTIVES`; the model's ``loss`` choices are its keys.

A new loss: a function in :mod:`dynarec.retrieval.losses`, a class here and one line in :data:`OBJECTIVES`.

Example::

    from dynarec.retrieval.objectives import OBJECTIVES

    sorted(OBJECTIVES)              # ['inbatch', 'sagram', 'sampled', 'sogram']
    OBJECTIVES["sogram"].family     # 'gramian'
"""
from __future__ import annotations

import torch

from dynarec.retrieval.gramian import SAGram, SOGram
from dynarec.retrieval.losses import gramian_loss, inbatch_loss, sampled_loss
from dynarec.retrieval.sampling import NegativeSampler, StreamingFrequency

__all__ = ["Objective", "OBJECTIVES", "family"]


class Objective:
    """One retrieval loss: built by the step (``step.state``: an ``nn.ModuleDict`` for the loss's state),
    called with the batch and its prepared query / item vectors ``u``, ``v`` and item ids ``ids``."""

    family = "softmax"

    def __init__(self, step):
        pass

    def __call__(self, step, batch, u: torch.Tensor, v: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class InBatch(Objective):
    """In-batch softmax with the streaming item frequency p̂ (Yi et al., RecSys 2019, Alg. 2) for logQ."""

    def __init__(self, step):
        step.state["freq"] = StreamingFrequency(max(4 * len(step.data.item_ids), 1024), alpha=0.05, warm_start=True)

    def __call__(self, step, batch, u, v, ids):
        freq = step.state["freq"]
        freq.update(ids)
        return inbatch_loss(u, v, freq.log_q(ids) if step.c.logq else None, item_ids=ids)


class Sampled(Objective):
    """Sampled softmax over ``negatives`` shared items drawn uniformly or by popularity from the corpus."""

    def __init__(self, step):
        data, c = step.data, step.c
        self.sampler = NegativeSampler(len(data.item_ids), c.sampler,
                                       data.item_counts() if c.sampler == "popularity" else None)

    def __call__(self, step, batch, u, v, ids):
        m, c = step.model, step.c
        neg, log_q = self.sampler.sample(c.negatives, step.gen)
        v_neg = m.prepared(u[:1], m.item_vectors(step.data.items.take(neg)))[1]
        pos_rows = step.item_row[ids]
        return sampled_loss(u, v, v_neg, log_q, self.sampler.log_q(pos_rows), pos_rows, neg)


class Gramian(Objective):
    """The Gramian penalty ``λ⟨G_u, G_v⟩`` (Krichene et al., ICLR 2019; see :mod:`dynarec.retrieval.step`):
    each step draws |B′| corpus items uniformly, embedded with gradient, for the estimates."""

    family = "gramian"

    def grams(self, step, batch, u, items, v_c):
        raise NotImplementedError

    def __call__(self, step, batch, u, v, ids):
        m, c = step.model, step.c
        items = torch.randint(0, len(step.data.item_ids), (len(batch),), generator=step.gen)
        v_c = m.prepared(u[:1], m.item_vectors(step.data.items.take(items)))[1]
        gu, gv = self.grams(step, batch, u, items, v_c)
        return gramian_loss(u, v, gu, gv, c.lam, pair_loss=c.pair_loss, v_gravity=v_c)


class SOGramLoss(Gramian):
    """Stochastic-average Gramians folded in with weight ``alpha`` (eq. 11)."""

    def __init__(self, step):
        step.state["u"], step.state["v"] = SOGram(step.c.dim, step.c.alpha), SOGram(step.c.dim, step.c.alpha)

    def grams(self, step, batch, u, items, v_c):
        return step.state["u"].update(u), step.state["v"].update(v_c)


class SAGramLoss(Gramian):
    """Cached vectors, one per query and per item (eq. 9)."""

    def __init__(self, step):
        # batches are training pairs: a query's cache row is drawn as often as it has pairs (weights)
        pairs = torch.bincount(step.data.train_query, minlength=len(step.data.query_user)).double()
        step.state["u"] = SAGram(len(step.data.query_user), step.c.dim, step.c.beta, weights=pairs)
        step.state["v"] = SAGram(len(step.data.item_ids), step.c.dim, step.c.beta)

    def grams(self, step, batch, u, items, v_c):
        return step.state["u"].step(step.query_rows(batch), u), step.state["v"].step(items, v_c)


#: ``model.loss`` -> its objective
OBJECTIVES: dict[str, type[Objective]] = {"inbatch": InBatch, "sampled": Sampled, "sogram": SOGramLoss,
                                          "sagram": SAGramLoss}


def family(name: str) -> tuple[str, ...]:
    """The loss names of one family ("softmax" | "gramian"), in registry order."""
    return tuple(k for k, o in OBJECTIVES.items() if o.family == name)
