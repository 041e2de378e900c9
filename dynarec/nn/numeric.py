"""Embeddings of numeric features (Gorishniy, Rubachev, Babenko, "On Embeddings for Numerical Features in
Tabular Deep Learning", NeurIPS 2022): piecewise-linear encoding (Sec. 3.2, eq. 1) and periodic embeddings
(Sec. 3.3, eq. 2), each followed by a per-feature linear map to ``d`` (their "PLE + Linear", "Q-LR" with
ReLU, and "PLR"). Both map ``x`` Float [B, n_features] to Float [B, n_features, d]."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


def pad_edges(edges: Sequence[torch.Tensor] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin edges per feature -> (padded edges Float [n_features, T_max + 1], bins per feature Long
    [n_features]). Padded rows repeat their last edge; bins past a feature's own T are masked out."""
    rows = [torch.as_tensor(e, dtype=torch.float32).flatten() for e in edges]
    if not rows:
        raise ValueError("edges: at least one feature is needed")
    for j, e in enumerate(rows):
        if e.numel() < 2:
            raise ValueError(f"edges of feature {j}: at least 2 edges (one bin) are needed, got {e.numel()}")
        if not bool((e[1:] > e[:-1]).all()):
            raise ValueError(f"edges of feature {j}: must be strictly increasing, got {e.tolist()}")
    width = max(e.numel() for e in rows)
    padded = torch.stack([torch.cat([e, e[-1:].expand(width - e.numel())]) for e in rows])
    return padded, torch.tensor([e.numel() - 1 for e in rows])


def piecewise_linear_encoding(x: torch.Tensor, edges: torch.Tensor, n_bins: torch.Tensor,
                              extrapolate: bool = True) -> torch.Tensor:
    """PLE (Gorishniy et al. 2022, eq. 1) with edges b_0 < ... < b_T per feature: component t (1..T) is
    0 for x < b_{t-1}, 1 for x >= b_t and (x - b_{t-1}) / (b_t - b_{t-1}) inside; as in the paper the first
    component is not clipped below b_0 and the last not above b_T (so the encoding stays informative
    outside the train range); ``extrapolate=False`` clips every component to [0, 1].

    Args:
        x: Float [B, n_features].
        edges: Float [n_features, T_max + 1], padded as by ``pad_edges``.
        n_bins: Long [n_features], each feature's own T.
    Returns:
        Float [B, n_features, T_max]; components t > T of a feature are 0.
    """
    left, right = edges[:, :-1], edges[:, 1:]  # [F, T]
    width = (right - left).clamp_min(1e-12)  # padded bins have width 0 and are masked below
    z = (x.unsqueeze(-1) - left) / width  # [B, F, T]
    t = torch.arange(edges.shape[1] - 1, device=x.device)
    first = (t == 0) & extrapolate  # [T]
    last = (t.unsqueeze(0) == (n_bins.to(x.device) - 1).unsqueeze(1)) & extrapolate  # [F, T]
    lo = torch.where(first, torch.full_like(left, -math.inf), torch.zeros_like(left))
    hi = torch.where(last, torch.full_like(left, math.inf), torch.ones_like(left))
    z = torch.maximum(torch.minimum(z, hi), lo)
    return z * (t.unsqueeze(0) < n_bins.to(x.device).unsqueeze(1))


class PerFeatureLinear(nn.Module):
    """A separate Linear(k, d) for each feature: [B, F, k] -> [B, F, d] (Gorishniy et al. 2022, Sec. 3.4:
    embedding parameters are not shared between features).

    Args:
        n_features: F.  in_dim: k.  d: output width.
    """

    def __init__(self, n_features: int, in_dim: int, d: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(n_features, in_dim, d).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_features, d).uniform_(-bound, bound))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bfk,fkd->bfd", v, self.weight) + self.bias


class PiecewiseLinearEmbedding(nn.Module):
    """PLE followed by a per-feature Linear to ``d`` ("PLE-Q + Linear"; with ``activation=True`` a ReLU
    after it, "Q-LR"), Gorishniy et al. 2022, Sec. 3.2 and 3.4. The edges (e.g. train quantiles, "-Q") are
    given, not fitted here; they are a buffer, saved with the model.

    Args:
        edges: per feature a 1-D tensor of strictly increasing edges b_0 < ... < b_T (T may differ between
            features), or one Float [n_features, T + 1] tensor.
        d: embedding width.
        activation: ReLU after the linear map.
        extrapolate: leave the first / last component unclipped outside [b_0, b_T] (the paper's eq. 1).
    Shapes: ``forward(x Float [B, n_features]) -> Float [B, n_features, d]``.
    """

    def __init__(self, edges: Sequence[torch.Tensor] | torch.Tensor, d: int, activation: bool = False,
                 extrapolate: bool = True):
        super().__init__()
        padded, n_bins = pad_edges(edges)
        self.register_buffer("edges", padded)
        self.register_buffer("n_bins", n_bins)
        self.n_features, self.d, self.extrapolate = padded.shape[0], d, extrapolate
        self.linear = PerFeatureLinear(self.n_features, padded.shape[1] - 1, d)
        self.activation = nn.ReLU() if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected x of shape [B, {self.n_features}], got {list(x.shape)}")
        return self.activation(self.linear(piecewise_linear_encoding(x, self.edges, self.n_bins, self.extrapolate)))


class PeriodicEmbedding(nn.Module):
    """Periodic embeddings "PLR" (Gorishniy et al. 2022, Sec. 3.3, eq. 2): v = concat(sin(2π c x),
    cos(2π c x)) with k trainable frequencies c per feature, initialised c ~ N(0, σ²), then a per-feature
    Linear(2k, d) and ReLU (``activation=False``: "PL").

    Args:
        n_features: F.  d: embedding width.  n_frequencies: k.
        sigma: σ of the frequencies' initialisation (a key hyper-parameter: the paper tunes it in
            [0.01, 100]).
        activation: ReLU after the linear map.
    Shapes: ``forward(x Float [B, F]) -> Float [B, F, d]``.
    """

    def __init__(self, n_features: int, d: int, n_frequencies: int = 16, sigma: float = 1.0,
                 activation: bool = True):
        super().__init__()
        if sigma <= 0 or n_frequencies < 1:
            raise ValueError(f"sigma must be > 0 and n_frequencies >= 1, got {sigma}, {n_frequencies}")
        self.n_features, self.d = n_features, d
        self.frequencies = nn.Parameter(torch.randn(n_features, n_frequencies) * sigma)
        self.linear = PerFeatureLinear(n_features, 2 * n_frequencies, d)
        self.activation = nn.ReLU() if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected x of shape [B, {self.n_features}], got {list(x.shape)}")
        a = 2 * math.pi * self.frequencies * x.unsqueeze(-1)  # [B, F, k]
        return self.activation(self.linear(torch.cat([torch.sin(a), torch.cos(a)], -1)))
