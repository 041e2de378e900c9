"""Feature-interaction layers of the APG paper's base models, on plain tensors (``emb``: [B, F, d]).

* :class:`FM` — Rendle 2010 / DeepFM (Guo et al., IJCAI 2017): ``½ Σ_k ((Σ_i v_ik)² − Σ_i v_ik²)``.
* :class:`CrossNetwork` — DCN (Wang et al., ADKDD 2017): ``x_{l+1} = x_0 (x_lᵀ w_l) + b_l + x_l``.
* :class:`CrossNetworkV2` — DCN-V2 (Wang et al., WWW 2021): ``x_{l+1} = x_0 ⊙ (x_l W_l + b_l) + x_l``,
  optionally low-rank ``W_l = U_l V_l``.
* :class:`InnerProduct`, :class:`OuterProduct` — PNN (Qu et al., ICDM 2016): pairwise ``<e_i, e_j>`` and
  the kernel product ``e_i K_ij e_jᵀ`` (DeepCTR's ``kernel_type='mat'`` form of the outer product).
* :class:`SENet`, :class:`BilinearInteraction` — FiBiNET (Huang et al., RecSys 2019).
* :class:`InteractingLayer` — AutoInt (Song et al., CIKM 2019): multi-head self-attention over fields.

All act within a sample (attention runs over the field axis of ``[B, F, d]``), so outputs never depend
on other rows of the batch.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

from dynarec.errors import ConfigError


def _pairs(num_fields: int) -> tuple[list[int], list[int]]:
    rows, cols = zip(*itertools.combinations(range(num_fields), 2)) if num_fields > 1 else ((), ())
    return list(rows), list(cols)


class FM(nn.Module):
    """Second-order factorisation-machine term. ``[B, F, d] -> [B, 1]`` (or ``[B, d]`` with ``reduce_sum=False``)."""

    def __init__(self, reduce_sum: bool = True):
        super().__init__()
        self.reduce_sum = reduce_sum

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        s = emb.sum(1)
        out = 0.5 * (s * s - (emb * emb).sum(1))
        return out.sum(1, keepdim=True) if self.reduce_sum else out


class CrossNetwork(nn.Module):
    """DCN cross network (Wang et al. 2017, eq. 3): ``x_{l+1} = x_0 · (x_l · w_l) + b_l + x_l``, w_l ∈ R^d."""

    def __init__(self, in_dim: int, num_layers: int = 3):
        super().__init__()
        self.w = nn.Parameter(torch.randn(num_layers, in_dim) * (1.0 / in_dim ** 0.5))
        self.b = nn.Parameter(torch.zeros(num_layers, in_dim))
        self.out_features = in_dim

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for w, b in zip(self.w, self.b):
            x = x0 * (x @ w).unsqueeze(-1) + b + x
        return x


class CrossNetworkV2(nn.Module):
    """DCN-V2 cross layers (Wang et al. 2021, eq. 1): ``x_{l+1} = x_0 ⊙ (x_l W_l + b_l) + x_l``; with
    ``low_rank=r`` W_l = U_l V_l (d×r·r×d), the paper's DCN-Mix without experts."""

    def __init__(self, in_dim: int, num_layers: int = 3, low_rank: int | None = None):
        super().__init__()
        if low_rank is not None and not 1 <= low_rank <= in_dim:
            raise ConfigError(f"dcnv2.low_rank: expected 1..{in_dim} or null, got {low_rank}")
        self.layers = nn.ModuleList(
            nn.Linear(in_dim, in_dim) if low_rank is None
            else nn.Sequential(nn.Linear(in_dim, low_rank, bias=False), nn.Linear(low_rank, in_dim))
            for _ in range(num_layers))
        self.out_features = in_dim

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class InnerProduct(nn.Module):
    """PNN inner products ``p_ij = <e_i, e_j>`` for all field pairs i < j: ``[B, F, d] -> [B, F(F-1)/2]``."""

    def __init__(self, num_fields: int):
        super().__init__()
        r, c = _pairs(num_fields)
        self.register_buffer("rows", torch.tensor(r, dtype=torch.long), persistent=False)
        self.register_buffer("cols", torch.tensor(c, dtype=torch.long), persistent=False)
        self.out_features = len(r)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return (emb[:, self.rows] * emb[:, self.cols]).sum(-1)


class OuterProduct(nn.Module):
    """PNN outer products with a learned kernel per pair (DeepCTR's ``kernel_type='mat'``):
    ``p_ij = e_i K_ij e_jᵀ`` with K_ij ∈ R^{d×d}: ``[B, F, d] -> [B, F(F-1)/2]``."""

    def __init__(self, num_fields: int, embed_dim: int):
        super().__init__()
        r, c = _pairs(num_fields)
        self.register_buffer("rows", torch.tensor(r, dtype=torch.long), persistent=False)
        self.register_buffer("cols", torch.tensor(c, dtype=torch.long), persistent=False)
        self.kernel = nn.Parameter(nn.init.xavier_uniform_(torch.empty(len(r), embed_dim, embed_dim)))
        self.out_features = len(r)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bpd,pde,bpe->bp", emb[:, self.rows], self.kernel, emb[:, self.cols])


class SENet(nn.Module):
    """FiBiNET squeeze-excitation over fields: ``z = mean_d(e)``, ``a = φ(φ(z W1) W2)``, out ``e ⊙ a``."""

    def __init__(self, num_fields: int, reduction: int = 3):
        super().__init__()
        r = max(1, num_fields // reduction)
        self.net = nn.Sequential(nn.Linear(num_fields, r, bias=False), nn.ReLU(),
                                 nn.Linear(r, num_fields, bias=False), nn.ReLU())
        self.last_weights: torch.Tensor | None = None

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        a = self.net(emb.mean(-1))
        self.last_weights = a.detach()
        return emb * a.unsqueeze(-1)


class BilinearInteraction(nn.Module):
    """FiBiNET bilinear interaction ``p_ij = (e_i W) ⊙ e_j`` for pairs i < j; ``kind`` = ``field_all`` (one W),
    ``field_each`` (W_i per field) or ``field_interaction`` (W_ij per pair). ``[B, F, d] -> [B, pairs, d]``."""

    KINDS = ("field_all", "field_each", "field_interaction")

    def __init__(self, num_fields: int, embed_dim: int, kind: str = "field_interaction"):
        super().__init__()
        if kind not in self.KINDS:
            raise ConfigError(f"fibinet.bilinear_type: expected one of {', '.join(self.KINDS)}, got '{kind}'")
        r, c = _pairs(num_fields)
        self.kind = kind
        self.register_buffer("rows", torch.tensor(r, dtype=torch.long), persistent=False)
        self.register_buffer("cols", torch.tensor(c, dtype=torch.long), persistent=False)
        n = {"field_all": 1, "field_each": num_fields, "field_interaction": len(r)}[kind]
        self.W = nn.Parameter(nn.init.xavier_normal_(torch.empty(n, embed_dim, embed_dim)))
        self.num_pairs = len(r)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        vi, vj = emb[:, self.rows], emb[:, self.cols]
        if self.kind == "field_all":
            left = vi @ self.W[0]
        elif self.kind == "field_each":
            left = torch.einsum("bpd,pde->bpe", vi, self.W[self.rows])
        else:
            left = torch.einsum("bpd,pde->bpe", vi, self.W)
        return left * vj


class InteractingLayer(nn.Module):
    """AutoInt interacting layer (Song et al. 2019, eq. 5–8): per head h,
    ``α = softmax_k(<e_m W_Q^h, e_k W_K^h>)``, ``ẽ_m^h = Σ_k α e_k W_V^h``; heads concatenated, then
    ``φ(ẽ_m + e_m W_res)``. Attention runs over the field axis of each sample: ``[B, F, d] -> [B, F, H·d']``."""

    def __init__(self, in_dim: int, attn_dim: int = 8, num_heads: int = 2, residual: bool = True, scaled: bool = False):
        super().__init__()
        self.h, self.dk, self.scaled = num_heads, attn_dim, scaled
        out = attn_dim * num_heads
        self.q = nn.Linear(in_dim, out, bias=False)
        self.k = nn.Linear(in_dim, out, bias=False)
        self.v = nn.Linear(in_dim, out, bias=False)
        self.res = nn.Linear(in_dim, out, bias=False) if residual else None
        self.out_features = out

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        B, F, _ = e.shape
        q, k, v = (m(e).view(B, F, self.h, self.dk).transpose(1, 2) for m in (self.q, self.k, self.v))  # [B,H,F,dk]
        s = q @ k.transpose(-1, -2)
        if self.scaled:
            s = s / self.dk ** 0.5
        a = torch.softmax(s, -1)
        o = (a @ v).transpose(1, 2).reshape(B, F, -1)
        if self.res is not None:
            o = o + self.res(e)
        return torch.relu(o)
