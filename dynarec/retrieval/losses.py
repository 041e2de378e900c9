"""Retrieval losses, one function per ``model.loss`` value (:data:`LOSSES`), on plain tensors.

All take query vectors ``u`` [B, k] and positive item vectors ``v`` [B, k] of B observed pairs, already
passed through :func:`dynarec.retrieval.score.prepare` (so the score is ``⟨u, v⟩``), and return a scalar.

* :func:`inbatch_loss` — in-batch softmax with the logQ correction (Yi et al., RecSys 2019, the corrected logit s − log p).
* :func:`sampled_loss` — sampled softmax over shared negatives with the logQ correction of the sampler.
* :func:`sogram_loss`, :func:`sagram_loss` — observed-pairs loss plus ``λ·g`` with g estimated from Gramians
  (Krichene et al., ICLR 2019: the objective, gradient surrogate eq. 8, SAGram eq. 9, SOGram eq. 11);
  the Gram estimate comes from a separate batch, as in the paper.

A training step with a Gramian loss: draw the gradient batch B′ and a Gram batch B of observed pairs; embed
B′ with gradient and B under ``torch.no_grad()`` (or reuse the previous step's B′, detached); call
``sogram_loss(u_B′, v_B′, u_B, v_B, est_u, est_v, lam)``. The estimators are torch modules whose
buffers belong in the checkpoint.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dynarec.errors import ConfigError
from dynarec.retrieval.gramian import SAGram, SOGram, gram_surrogate

__all__ = ["LOSSES", "inbatch_loss", "sampled_loss", "gramian_loss", "sogram_loss", "sagram_loss"]

PAIR_LOSSES = ("squared", "logistic")


def inbatch_loss(u: torch.Tensor, v: torch.Tensor, log_q: torch.Tensor | None = None,
                 item_ids: torch.Tensor | None = None) -> torch.Tensor:
    """In-batch softmax: the other B − 1 positives are the negatives of each query.

    Logits ``s(u_i, v_j) − log q_j`` (Yi et al. 2019, the sampling-bias-corrected logit), cross-entropy on
    the diagonal. ``log_q=None`` is the plain in-batch softmax (a uniform q shifts every logit of a row by the
    same constant, which the softmax ignores).

    Args:
        u, v: [B, k]. log_q: [B] log sampling probability of each batch item (e.g.
        :meth:`StreamingFrequency.log_q`). item_ids: [B] optional; when given, an off-diagonal copy of a
        row's own positive item is masked (not a negative)."""
    logits = u @ v.T
    if log_q is not None:
        logits = logits - log_q.view(1, -1)
    if item_ids is not None:
        dup = item_ids.view(-1, 1) == item_ids.view(1, -1)
        dup.fill_diagonal_(False)
        logits = logits.masked_fill(dup, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(u), device=u.device))


def sampled_loss(u: torch.Tensor, v: torch.Tensor, v_neg: torch.Tensor, log_q_neg: torch.Tensor,
                 log_q_pos: torch.Tensor | None = None, pos_ids: torch.Tensor | None = None,
                 neg_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Sampled softmax over M shared negatives with the logQ correction (Bengio & Senécal 2008; Jean et
    al. 2015): every candidate's logit is ``s − log Q``, positive included.

    Args:
        u, v: [B, k]. v_neg: [M, k] negatives drawn from Q. log_q_neg: [M]. log_q_pos: [B] (None: the
        positive is not corrected — exact for uniform Q). pos_ids [B], neg_ids [M]: when both are given a
        negative equal to the row's positive (an accidental hit) is masked."""
    pos = (u * v).sum(-1, keepdim=True)
    if log_q_pos is not None:
        pos = pos - log_q_pos.view(-1, 1)
    neg = u @ v_neg.T - log_q_neg.view(1, -1)
    if pos_ids is not None and neg_ids is not None:
        neg = neg.masked_fill(pos_ids.view(-1, 1) == neg_ids.view(1, -1), float("-inf"))
    logits = torch.cat([pos, neg], 1)
    return F.cross_entropy(logits, torch.zeros(len(u), dtype=torch.long, device=u.device))


def _pair_loss(h: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "squared":
        return (h - target).pow(2).mean()
    if kind == "logistic":
        return F.binary_cross_entropy_with_logits(h, target)
    raise ConfigError(f"model.pair_loss: expected one of {', '.join(PAIR_LOSSES)}, got '{kind}'")


def gramian_loss(u: torch.Tensor, v: torch.Tensor, gram_u: torch.Tensor, gram_v: torch.Tensor, lam: float,
                 targets: torch.Tensor | None = None, pair_loss: str = "squared",
                 v_gravity: torch.Tensor | None = None) -> torch.Tensor:
    """``mean_i ℓ(⟨u_i, v_i⟩, s_i) + λ·g`` (Krichene et al. 2019, the training objective) with g replaced by the surrogate
    of eq. 8 on the estimates Ĝ (detached).

    The penalty is written ``ĝ − sg(ĝ)/2``: its value ``ĝ/2`` estimates g (the surrogate's value estimates
    2g) and its gradient is the surrogate's, an estimate of ``∇g``.

    Args:
        u, v: [B, k] observed pairs. gram_u, gram_v: [k, k] estimates from another batch. lam: λ.
        targets: [B] s_i (default 1). pair_loss: ℓ, "squared" ``(h − s)²`` or "logistic".
        v_gravity: [C, k] the item vectors of the penalty's item side ``⟨v_j, Ĝ_u v_j⟩`` (default ``v``; e.g.
        items drawn uniformly from the corpus, with ``gram_v`` their Gramian's estimate)."""
    h = (u * v).sum(-1)
    target = torch.ones_like(h) if targets is None else targets.to(h.dtype)
    sur = gram_surrogate(u, v if v_gravity is None else v_gravity, gram_u, gram_v)
    return _pair_loss(h, target, pair_loss) + lam * (sur - sur.detach() / 2)


def sogram_loss(u: torch.Tensor, v: torch.Tensor, u_gram: torch.Tensor, v_gram: torch.Tensor,
                est_u: SOGram, est_v: SOGram, lam: float, targets: torch.Tensor | None = None,
                pair_loss: str = "squared") -> torch.Tensor:
    """SOGram step: fold the Gram batch B (``u_gram``, ``v_gram`` [B, k], detached) into the estimates
    (eq. 11), then :func:`gramian_loss` on the gradient batch B′ (``u``, ``v`` [B′, k])."""
    gu, gv = est_u.update(u_gram), est_v.update(v_gram)
    return gramian_loss(u, v, gu, gv, lam, targets, pair_loss)


def sagram_loss(u: torch.Tensor, v: torch.Tensor, u_gram: torch.Tensor, v_gram: torch.Tensor,
                rows_u: torch.Tensor, rows_v: torch.Tensor, est_u: SAGram, est_v: SAGram, lam: float,
                targets: torch.Tensor | None = None, pair_loss: str = "squared") -> torch.Tensor:
    """SAGram step: estimate Ĝ from the Gram batch B and its cache rows (eq. 9; ``rows_u`` / ``rows_v``
    Long [B] index the caches), refresh the caches with B, then :func:`gramian_loss` on the gradient batch B′."""
    gu, gv = est_u.step(rows_u, u_gram), est_v.step(rows_v, v_gram)
    return gramian_loss(u, v, gu, gv, lam, targets, pair_loss)


LOSSES = {"inbatch": inbatch_loss, "sampled": sampled_loss, "sogram": sogram_loss, "sagram": sagram_loss}
