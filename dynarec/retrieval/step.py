"""One optimisation step of a two-tower model, the retrieval counterpart of :class:`dynarec.train.step.TrainStep`
(same optimizer groups from :func:`dynarec.train.optim.build_optimizers`, same clipping, same ``step(batch) ->
float`` / ``state_dict`` contract, so :class:`dynarec.train.loop.Loop` drives it unchanged).

What differs from the ranking step: a batch is B observed (query, item) pairs and the loss is one of
``model.loss`` (:mod:`dynarec.retrieval.losses`), with the loss's own state kept here (and in resume points):

* ``inbatch``: the streaming item frequency p̂ (Yi et al., RecSys 2019, Alg. 2) for the logQ correction;
* ``sampled``: ``negatives`` shared items drawn uniformly or by popularity from the corpus;
* ``sogram`` / ``sagram``: Gram estimators of the query and item towers (Krichene et al., ICLR 2019, eq. 9, 11).
  ``gram_batch: separate`` draws a Gram batch B of |B′| queries and |B′| corpus items uniformly and embeds
  it without gradient (the paper's separate batch; Ĝ estimates the Gramians over all queries and items);
  ``previous`` folds the previous gradient batches' vectors instead (no extra forward; Ĝ then weights
  queries and items by their frequency among the pairs)."""
from __future__ import annotations

import torch
from torch import nn

from dynarec.retrieval.gramian import SAGram, SOGram
from dynarec.retrieval.losses import gramian_loss, inbatch_loss, sampled_loss
from dynarec.retrieval.sampling import NegativeSampler, StreamingFrequency
from dynarec.train.optim import build_optimizers

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
        dim, loss = self.c.dim, self.c.loss
        self.state = nn.ModuleDict()
        if loss == "inbatch":
            self.state["freq"] = StreamingFrequency(max(4 * len(data.item_ids), 1024), alpha=0.05)
        elif loss == "sampled":
            self.sampler = NegativeSampler(len(data.item_ids), self.c.sampler,
                                           data.item_counts() if self.c.sampler == "popularity" else None)
        elif loss == "sogram":
            self.state["u"], self.state["v"] = SOGram(dim, self.c.alpha), SOGram(dim, self.c.alpha)
        else:
            self.state["u"] = SAGram(len(data.query_user), dim, self.c.beta)
            self.state["v"] = SAGram(len(data.item_ids), dim, self.c.beta)
        self.pending = None  # gram_batch: previous — the last gradient batch (rows, vectors), detached

    def __call__(self, batch) -> float:
        return self.step(batch)

    def _rows(self, batch):
        key = batch.sparse[:, self.ucol] * self.n_dom + batch.domain
        return torch.searchsorted(self.qkeys, key), self.item_row[batch.sparse[:, self.icol]]

    @torch.no_grad()
    def _gram_batch(self, n: int):
        """(query rows, item rows, u, v) of a uniform Gram batch of n queries and n corpus items."""
        d = self.data
        qr = torch.randint(0, len(d.query_user), (n,), generator=self.gen)
        ir = torch.randint(0, len(d.item_ids), (n,), generator=self.gen)
        u, v = self.model.prepared(self.model.query_vectors(d.queries.take(qr)),
                                   self.model.item_vectors(d.items.take(ir)))
        return qr, ir, u, v

    def _gram_estimates(self, batch, u, v):
        c, est_u, est_v = self.c, self.state["u"], self.state["v"]
        if c.gram_batch == "separate":
            qr, ir, ug, vg = self._gram_batch(len(batch))
        else:
            if self.pending is None:  # first step: Ĝ from the batch itself (no earlier batch exists)
                self.pending = (*self._rows(batch), u.detach(), v.detach())
            qr, ir, ug, vg = self.pending
        if c.loss == "sogram":
            return est_u.update(ug), est_v.update(vg)
        return est_u.step(qr, ug), est_v.step(ir, vg)

    def loss(self, batch) -> torch.Tensor:
        m, c = self.model, self.c
        u, v = m.prepared(m.query_vectors(batch), m.item_vectors(batch))
        ids = batch.sparse[:, self.icol]
        if c.loss == "inbatch":
            freq = self.state["freq"]
            freq.update(ids)
            return inbatch_loss(u, v, freq.log_q(ids) if c.logq else None, item_ids=ids)
        if c.loss == "sampled":
            neg, log_q = self.sampler.sample(c.negatives, self.gen)
            v_neg = m.prepared(u[:1], m.item_vectors(self.data.items.take(neg)))[1]
            pos_rows = self.item_row[ids]
            return sampled_loss(u, v, v_neg, log_q, self.sampler.log_q(pos_rows), pos_rows, neg)
        gu, gv = self._gram_estimates(batch, u, v)
        if c.gram_batch == "previous":
            self.pending = (*self._rows(batch), u.detach(), v.detach())
        return gramian_loss(u, v, gu, gv, c.lam, pair_loss=c.pair_loss)

    def step(self, batch) -> float:
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)
        loss = self.loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} (lower trainer.lr or check the data)")
        loss.backward()
        if self.cfg.grad_clip and self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.clipped, self.cfg.grad_clip)
        for o in self.optimizers:
            o.step()
        return loss.item()

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers], "loss_state": self.state.state_dict(),
                "generator": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)
        self.state.load_state_dict(state["loss_state"])
        self.gen.set_state(state["generator"])
