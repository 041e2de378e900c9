"""Gramians and their stochastic estimates (Krichene et al., "Efficient Training on Very Large Corpora via
Gramian Estimation", ICLR 2019).

The all-pairs ("gravity") term ``g = (1/(n m)) Σ_i Σ_j ⟨u_i, v_j⟩²`` equals ``⟨G_u, G_v⟩_F`` with
``G_u = (1/n) Σ_i u_i u_iᵀ`` and ``G_v = (1/m) Σ_j v_j v_jᵀ`` (k×k), so it costs O((n + m) k²) instead of
O(n m k). Two estimators track Ĝ during training:

* :class:`SOGram` — stochastic online Gramian (eq. 11): ``Ĝ ← (1−α) Ĝ + α·mean_B u uᵀ``.
* :class:`SAGram` — stochastic average Gramian (eq. 9): caches of every row, ``Ĝ = Ŝ + β·mean_B(u uᵀ − û ûᵀ)``,
  ``Ŝ`` weighted by how often each row is drawn (unbiased under non-uniform sampling).

Both hold their state in buffers, so it travels with a model's ``state_dict``. Estimates never carry
gradient: the gradient surrogate (eq. 8, :func:`gram_surrogate`) treats Ĝ as a constant.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["gramian", "gram_penalty", "gram_surrogate", "psd_project", "relative_error", "SOGram", "SAGram"]


def gramian(x: torch.Tensor) -> torch.Tensor:
    """Batch Gramian ``G = (1/n) Σ_i x_i x_iᵀ``.

    Args:
        x: [n, k] embeddings. Returns [k, k]."""
    return x.T @ x / x.shape[0]


def gram_penalty(gram_u: torch.Tensor, gram_v: torch.Tensor) -> torch.Tensor:
    """Frobenius inner product ``⟨G_u, G_v⟩`` (scalar); with exact Gramians it is the mean of
    ``⟨u_i, v_j⟩²`` over all n·m pairs (the paper's ``g``)."""
    return (gram_u * gram_v).sum()


def gram_surrogate(u: torch.Tensor, v: torch.Tensor, gram_u: torch.Tensor, gram_v: torch.Tensor) -> torch.Tensor:
    """Gradient surrogate of eq. 8: ``mean_i ⟨u_i, Ĝ_v u_i⟩ + ⟨v_i, Ĝ_u v_i⟩`` with Ĝ detached.

    Its gradient in the tower parameters is an unbiased estimate of ``∇g`` when Ĝ is unbiased and
    independent of the batch (estimate Ĝ from another batch); its value estimates ``2g``.

    Args:
        u: [B, k] query embeddings of the observed pairs; v: [B, k] their items.
        gram_u, gram_v: [k, k] estimates (no gradient reaches them). Returns a scalar."""
    gu, gv = gram_u.detach(), gram_v.detach()
    return ((u @ gv) * u).sum(-1).mean() + ((v @ gu) * v).sum(-1).mean()


def psd_project(g: torch.Tensor) -> torch.Tensor:
    """Nearest positive semi-definite matrix in Frobenius norm: symmetrise, clip negative eigenvalues to 0
    (the projection the paper applies to SAGram's estimate with β = 1; O(k³)).

    Args:
        g: [k, k]. Returns [k, k], equal to ``g`` (up to rounding) when it already is symmetric PSD."""
    sym = (g + g.T) / 2
    evals, evecs = torch.linalg.eigh(sym)
    return (evecs * evals.clamp_min(0)) @ evecs.T


def relative_error(estimate: torch.Tensor, exact: torch.Tensor) -> float:
    """Gram estimation error ``‖Ĝ − G‖_F / ‖G‖_F`` (the quantity the paper plots for SAGram / SOGram)."""
    return float(torch.linalg.matrix_norm(estimate - exact) / torch.linalg.matrix_norm(exact).clamp_min(1e-30))


class SOGram(nn.Module):
    """Stochastic online Gramian (Krichene et al. 2019, eq. 11): ``Ĝ ← (1−α) Ĝ + α·G_B``.

    O(k²) memory and update, PSD without projection. α trades bias (∝ (1/α − 1)·drift of the embeddings)
    for variance (∝ α/(2−α)). ``warm_start`` (dynarec choice) sets Ĝ to the first batch's Gramian instead
    of decaying from 0; with ``warm_start=False`` the first update is ``α·G_B`` exactly as eq. 11 from Ĝ₀ = 0.

    Args:
        dim: embedding width k. alpha: step in (0, 1]."""

    def __init__(self, dim: int, alpha: float, warm_start: bool = True):
        super().__init__()
        if not 0 < alpha <= 1:
            raise ValueError(f"SOGram alpha must be in (0, 1], got {alpha}")
        self.alpha, self.warm_start = float(alpha), warm_start
        self.register_buffer("gram", torch.zeros(dim, dim))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> torch.Tensor:
        """Fold batch ``x`` [B, k] into the estimate; returns the new Ĝ [k, k] (no gradient)."""
        g = gramian(x.detach().to(self.gram.dtype))
        a = 1.0 if (self.warm_start and int(self.steps) == 0) else self.alpha
        self.gram.mul_(1 - a).add_(g, alpha=a)
        self.steps += 1
        return self.gram.clone()


class SAGram(nn.Module):
    """Stochastic average Gramian (Krichene et al. 2019, eq. 9) over ``num_rows`` cached embeddings.

    Keeps a cache ``û_r`` of every row (a training pair, or a distinct query / item id — the caller's
    choice of index) and ``Ŝ = Σ_r w_r û_r û_rᵀ``, where ``w_r`` is the probability that a batch position
    holds row r (``weights``; uniform ``1/N`` by default). The target is ``G = Σ_r w_r u_r u_rᵀ``: the
    Gramian of the rows *as they are sampled* (with per-query cache rows and batches of training pairs,
    ``w_r`` = the query's share of the pairs, so G is the pairs' query Gramian that SOGram also tracks).
    :meth:`estimate` returns ``Ĝ = Ŝ + β·mean_B(u_r u_rᵀ − û_r û_rᵀ)``; β = 1 (SAGA form) is unbiased,
    ``E[Ĝ] = G``, when each batch position is row r with probability ``w_r`` (a cache averaged uniformly
    over rows drawn non-uniformly is not: its error is the gap between the two weightings of the stale
    cache). The estimate is projected on the PSD cone (``project=None`` projects whenever β > min_r w_r,
    the bound below which Ĝ stays PSD); β = min w (1/N uniform) is the SAG form. :meth:`refresh` then
    replaces each batch row's contribution, ``Ŝ += Σ_{r ∈ B} w_r (u_r u_rᵀ − û_r û_rᵀ)``, and sets
    ``û_r ← u_r`` (a row repeated in the batch counts once). Caches start at 0 (Ŝ = 0) unless
    :meth:`refresh` is called on every row first (e.g. one pass over the corpus before training).

    Args:
        num_rows: N. dim: k. beta: the β of eq. 9. project: PSD projection of the estimate (None = auto).
        weights: [N] non-negative sampling frequencies of the rows (normalised here; None = uniform).

    Example::

        est = SAGram(3, 2, weights=torch.tensor([2.0, 1.0, 1.0]))  # row 0 holds half of the pairs
        g_hat = est.step(torch.tensor([0, 2]), torch.randn(2, 2))
    """

    def __init__(self, num_rows: int, dim: int, beta: float = 1.0, project: bool | None = None,
                 weights: torch.Tensor | None = None):
        super().__init__()
        if not beta > 0:
            raise ValueError(f"SAGram beta must be > 0, got {beta}")
        self.num_rows, self.beta = int(num_rows), float(beta)
        if weights is None:
            w = torch.full((self.num_rows,), 1.0 / self.num_rows)
        else:
            w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
            if len(w) != self.num_rows or not bool((w >= 0).all()) or not float(w.sum()) > 0:
                raise ValueError(f"SAGram weights: expected {self.num_rows} non-negative values with a positive sum")
            w = (w / w.sum()).float()
        self.project = (beta > float(w[w > 0].min())) if project is None else project
        self.register_buffer("weight", w, persistent=False)  # derived from the data, rebuilt with the estimator
        self.register_buffer("cache", torch.zeros(num_rows, dim))
        self.register_buffer("gram_avg", torch.zeros(dim, dim))

    @torch.no_grad()
    def estimate(self, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Ĝ [k, k] from the batch rows ``rows`` (Long [B]) and their fresh embeddings ``x`` [B, k]."""
        x = x.detach().to(self.cache.dtype)
        old = self.cache[rows]
        g = self.gram_avg + self.beta * (gramian(x) - gramian(old))
        return psd_project(g) if self.project else g

    @torch.no_grad()
    def refresh(self, rows: torch.Tensor, x: torch.Tensor) -> None:
        """Replace the cached rows by ``x`` [B, k] and update Ŝ by their change."""
        x = x.detach().to(self.cache.dtype)
        uniq, inv = torch.unique(rows, return_inverse=True)
        pick = torch.empty(len(uniq), dtype=torch.long, device=rows.device)
        pick.scatter_(0, inv, torch.arange(len(rows), device=rows.device))
        new, old, w = x[pick], self.cache[uniq], self.weight[uniq].to(self.cache.dtype).view(-1, 1)
        self.gram_avg += (new * w).T @ new - (old * w).T @ old
        self.cache[uniq] = new

    @torch.no_grad()
    def step(self, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """:meth:`estimate` then :meth:`refresh` on one batch; returns Ĝ."""
        g = self.estimate(rows, x)
        self.refresh(rows, x)
        return g

    @torch.no_grad()
    def exact(self) -> torch.Tensor:
        """``Σ_r w_r û_r û_rᵀ`` recomputed from the cache (equals Ŝ up to rounding drift)."""
        return (self.cache * self.weight.to(self.cache.dtype).view(-1, 1)).T @ self.cache

    @torch.no_grad()
    def resync(self) -> None:
        """Reset Ŝ to :meth:`exact`, removing the rounding drift of many incremental updates (O(N k²))."""
        self.gram_avg.copy_(self.exact())
