"""One optimisation step of a two-tower model, the retrieval counterpart of :class:`dynarec.train.step.TrainStep`
(same optimizer groups from :func:`dynarec.train.optim.build_optimizers`, same clipping, same ``step(batch) ->
float`` / ``state_dict`` contract, so :class:`dynarec.train.loop.Loop` drives it unchanged).

What differs from the ranking step: a batch is B observed (query, item) pairs and the loss is the objective
of ``model.loss`` (:data:`dynarec.retrieval.objectives.OBJECTIVES`), with the loss's own state kept here (and in
resume points):

* ``inbatch``: the streaming item frequency p̂ (Yi et al., RecSys 2019, Alg. 2) for the logQ correction;
* ``sampled``: ``negatives`` shared items drawn uniformly or by popularity from the corpus;
* ``sogram`` / ``sagram``: the Gramian penalty ``λ⟨G_u, G_v⟩`` (Krichene et al., ICLR 2019) with G_u the
  Gramian of the training pairs' queries and G_v that of the corpus items (each item counted once, so the
  penalty pushes every (query, item) score towards 0 uniformly, as weighted ALS does). Each step draws C,
  |B′| corpus items uniformly, embedded with gradient: the query side of the eq. 8 surrogate,
  ``⟨u_i, Ĝ_v u_i⟩`` on B′, uses Ĝ_v from C, and the item side, ``⟨v_j, Ĝ_u v_j⟩`` on C, uses Ĝ_u from B′,
  so each estimate is independent of the vectors it multiplies (the paper's separate batches). SOGram folds
  the batches into Ĝ (eq. 11); SAGram (eq. 9) caches one vector per query (weighted by its share of the
  pairs, the frequency it is drawn with) and per item (uniform, as the items C are drawn).

Pair-weighted Gramians for both sides (both batches drawn from the pairs) were tried first: the penalty
then pushes popular items down as much as the pairs pull them up, training converges to a near-constant
score and MovieLens-100K recall@50 stays below popularity's (0.09 against 0.25); pushing only the
items of B′ against a uniform Ĝ_v lets rare items rise to the top of every list (0.06).
"""
from __future__ import annotations

import torch
from torch import nn

from dynarec.retrieval.objectives import OBJECTIVES
from dynarec.train.optim import build_optimizers
from dynarec.train.step import backward_and_step

__all__ = ["RetrievalStep"]


class RetrievalStep:
    """``step(batch) -> loss`` for a :class:`~dynarec.models.two_tower.TwoTowerModel` on ``data``
    (a :class:`~dynarec.retrieval.dataset.RetrievalData`); ``generator`` draws negatives / Gram batches."""

    def __init__(self, model, cfg, data, generator: torch.Generator | None = None):
        self.model, self.cfg, self.data = model, cfg, data
        self.c = model.config
        self.gen = generator or torch.Generator().manual_seed(0)
        self.optimizers, self.clipped = build_optimizers(model, cfg)
        cols = [f.name for f in data.schema.sparse]
        from dynarec.retrieval.dataset import item_feature

        self.icol, self.ucol = cols.index(item_feature(data.schema)), cols.index(data.schema.user)
        self.n_dom = max(data.schema.num_domains, 1) + 1
        self.qkeys = data.query_user * self.n_dom + data.query_domain
        self.item_row = torch.full((int(data.item_ids.max()) + 1,), -1, dtype=torch.long)
        self.item_row[data.item_ids] = torch.arange(len(data.item_ids))
        self.state = nn.ModuleDict()
        self.objective = OBJECTIVES[self.c.loss](self)

    def __call__(self, batch) -> float:
        return self.step(batch)

    def query_rows(self, batch) -> torch.Tensor:
        """The rows of ``batch``'s (user, domain) queries among the data's queries."""
        key = batch.sparse[:, self.ucol] * self.n_dom + batch.domain
        return torch.searchsorted(self.qkeys, key)

    def loss(self, batch) -> torch.Tensor:
        m = self.model
        u, v = m.prepared(m.query_vectors(batch), m.item_vectors(batch))
        return self.objective(self, batch, u, v, batch.sparse[:, self.icol])

    def step(self, batch) -> float:
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)
        loss = self.loss(batch)
        return backward_and_step(loss, self.optimizers, self.clipped, self.cfg.grad_clip)

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers], "loss_state": self.state.state_dict(),
                "generator": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)
        self.state.load_state_dict(state["loss_state"])
        self.gen.set_state(state["generator"])
