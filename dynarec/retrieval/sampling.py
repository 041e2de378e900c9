"""Item sampling probabilities for the logQ correction.

* :class:`StreamingFrequency` — Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
  Recommendations", RecSys 2019, Algorithm 2 (streaming frequency estimation with hashed arrays A, B) and
  its multiple-hashing variant: the probability that an item occurs in a batch, without a vocabulary.
* :class:`NegativeSampler` — uniform or popularity (count^power) negatives with their log-probability.
"""
from __future__ import annotations

import torch
from torch import nn

from dynarec.errors import ConfigError

__all__ = ["StreamingFrequency", "NegativeSampler"]

_PRIME = 2_147_483_647  # 2^31 − 1: (a·y + b) mod p stays exact in int64 for ids < 2^31


class StreamingFrequency(nn.Module):
    """Streaming estimate of ``p(y)``, the probability that item y occurs in a batch (Yi et al. 2019, Alg. 2).

    For every batch t (1, 2, ...) and every distinct hashed item ``h(y)`` in it::

        B[h(y)] ← (1 − α)·B[h(y)] + α·(t − A[h(y)])      # moving average of the gap δ between occurrences
        A[h(y)] ← t

    and ``p̂(y) = 1 / B[h(y)]``. With ``num_hashes = H > 1`` there are H arrays (universal hashes with fixed
    seeds) and ``p̂ = 1 / max_h B_h`` — collisions only shorten gaps, so the max is the least biased (the paper's multiple hashings).
    ``B`` is read clipped at 1 (no item is in a batch more than once per batch), so p̂ ≤ 1; an item never
    seen reads p̂ = 1.

    The logQ correction needs the expected number of COPIES of an item per batch, ``E[n_y]``: in an in-batch
    softmax item y stands ``n_y`` times among the negatives, and the copies sum to ``n_y·exp(s − log q)``.
    Algorithm 2's p̂ is that only while no item repeats in a batch; once batches are large against the
    corpus (MovieLens-100K: 4,096 pairs over 1,675 items, a popular item ~40 times per batch) p̂ saturates
    at 1, popular items are under-corrected by up to their multiplicity and pushed down. So each bucket
    also keeps ``M``, a moving average (same α; the first occurrence sets it) of the item's count in the
    batches where it occurs, and :meth:`expected_count` ``= M / B`` (min over hashes: collisions only raise
    it) is what :meth:`log_q` returns; it equals p̂ when items never repeat.

    ``warm_start`` (dynarec choice): a bucket's first occurrence only records A (no gap is known yet: the
    time since the stream began is not one) and its second sets B to the observed gap instead of averaging
    it into B = 0, so p̂ does not read ~1 for every item during the first ~1/α occurrences
    (with α = 0.05 a rare item would otherwise be treated as frequent for most of a short training run).

    Args:
        num_buckets: size of each hashed array. alpha: moving-average step α. num_hashes: H. seed: hash seed.
        warm_start: see above (default off: Algorithm 2 as written)."""

    def __init__(self, num_buckets: int, alpha: float = 0.01, num_hashes: int = 1, seed: int = 0,
                 warm_start: bool = False):
        super().__init__()
        if num_buckets < 1 or num_hashes < 1 or not 0 < alpha <= 1:
            raise ValueError("StreamingFrequency needs num_buckets >= 1, num_hashes >= 1, 0 < alpha <= 1")
        self.num_buckets, self.alpha, self.warm_start = int(num_buckets), float(alpha), warm_start
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("hash_a", torch.randint(1, _PRIME, (num_hashes,), generator=g))
        self.register_buffer("hash_b", torch.randint(0, _PRIME, (num_hashes,), generator=g))
        self.register_buffer("last_step", torch.zeros(num_hashes, num_buckets))  # A
        self.register_buffer("gap", torch.zeros(num_hashes, num_buckets))        # B
        self.register_buffer("mult", torch.zeros(num_hashes, num_buckets))       # M: copies per occurrence
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def buckets(self, ids: torch.Tensor) -> torch.Tensor:
        """Hashed positions [H, N] of item ids ``ids`` (Long [N], ids ≥ 0)."""
        ids = ids.long().view(1, -1)
        return ((self.hash_a.view(-1, 1) * ids + self.hash_b.view(-1, 1)) % _PRIME) % self.num_buckets

    @torch.no_grad()
    def update(self, ids: torch.Tensor) -> None:
        """Record one batch of item ids (Long [N]; repeats within the batch count once in the gaps and are
        counted in ``M``)."""
        self.step += 1
        t = self.step.to(self.gap.dtype)
        offsets = torch.arange(self.gap.shape[0], device=ids.device).view(-1, 1) * self.num_buckets
        flat, copies = torch.unique((self.buckets(ids) + offsets).view(-1), return_counts=True)
        mult = self.mult.view(-1)
        k = copies.to(mult.dtype)
        mult[flat] = torch.where(mult[flat] == 0, k, (1 - self.alpha) * mult[flat] + self.alpha * k)
        gap, last = self.gap.view(-1), self.last_step.view(-1)
        delta = t - last[flat]
        new = (1 - self.alpha) * gap[flat] + self.alpha * delta
        if self.warm_start:  # first occurrence: no gap yet; second: the gap itself; then the average
            seen = last[flat] > 0
            new = torch.where(seen & (gap[flat] == 0), delta, torch.where(seen, new, torch.zeros_like(new)))
        gap[flat] = new
        last[flat] = t

    @torch.no_grad()
    def probability(self, ids: torch.Tensor) -> torch.Tensor:
        """p̂ [N] for item ids [N]."""
        pos = self.buckets(ids)
        gap = torch.gather(self.gap, 1, pos).amax(0)
        return 1.0 / gap.clamp_min(1.0)

    @torch.no_grad()
    def expected_count(self, ids: torch.Tensor) -> torch.Tensor:
        """``E[n]`` [N]: expected copies of each item per batch, ``M / B`` (an item never seen reads 1)."""
        pos = self.buckets(ids)
        rate = torch.gather(self.mult, 1, pos).clamp_min(1.0) / torch.gather(self.gap, 1, pos).clamp_min(1.0)
        return rate.amin(0)

    @torch.no_grad()
    def log_q(self, ids: torch.Tensor) -> torch.Tensor:
        """``log E[n]`` [N], the correction subtracted from the logits (``log p̂`` when items never repeat
        within a batch)."""
        return self.expected_count(ids).log()


class NegativeSampler:
    """Draws shared negatives for sampled softmax with their sampling log-probability.

    ``distribution="uniform"``: ``Q(j) = 1/num_items``; ``"popularity"``: ``Q(j) ∝ (count_j + smoothing)^power``.

    Args:
        num_items: corpus size. distribution: "uniform" | "popularity". counts: [num_items] item counts
        (popularity only). power: exponent on the counts. smoothing: added to every count."""

    def __init__(self, num_items: int, distribution: str = "uniform", counts: torch.Tensor | None = None,
                 power: float = 1.0, smoothing: float = 1.0):
        if distribution == "uniform":
            probs = torch.full((num_items,), 1.0 / num_items)
        elif distribution == "popularity":
            if counts is None or counts.numel() != num_items:
                raise ConfigError(f"model.negatives: 'popularity' needs item counts of length {num_items}")
            w = (counts.double() + smoothing).clamp_min(0).pow(power)
            probs = (w / w.sum()).float()
        else:
            raise ConfigError(f"model.negatives: expected 'uniform' or 'popularity', got '{distribution}'")
        self.probs = probs

    def sample(self, num: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``num`` item ids drawn with replacement and their ``log Q`` (both [num])."""
        ids = torch.multinomial(self.probs, num, replacement=True, generator=generator)
        return ids, self.log_q(ids)

    def log_q(self, ids: torch.Tensor) -> torch.Tensor:
        return self.probs[ids.cpu()].log().to(ids.device)
