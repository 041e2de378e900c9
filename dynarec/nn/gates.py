"""Gate layers that rescale hidden units or embeddings by priors (LHUC, PPNet, PEPNet, POSO; docs/models.md
"Gate-based dynamic weights").

All layers take plain tensors, so they drop into any network:

* :class:`GateNU` — ``δ = γ·σ(ReLU(xW1 + b1)W2 + b2)`` (Chang et al., PEPNet, KDD 2023, Gate NU; also
  PPNet's and POSO's gate networks).
* :class:`LHUC` — ``2σ(r_g) ⊙ h`` with one learned vector per group (Swietojanski et al., TASLP 2016).
* :class:`EPNet` — ``O_ep = GateNU(E(F_d) ⊕ sg(E)) ⊙ E`` (Chang et al., KDD 2023, EPNet).
* :class:`LayerGates` — one GateNU per layer of a :class:`GatedMLP`, optionally split into per-task chunks
  (PPNet, Kuaishou 2019; PEPNet's PPNet, Chang et al., KDD 2023).
* :class:`GatedMLP` — an MLP whose layer inputs (``position="input"``) or hidden outputs (``"output"``) are
  multiplied by gates computed elsewhere.

Initialisation (dynarec choice): the last gate layer is zero-initialised, so every gate starts at
exactly 1 and a gated network starts as its backbone. For γ = 2 this is a zero weight and a zero bias; for
another γ > 1 the bias is set to ``logit(1/γ)`` so the gate still starts at 1. ``zero_init_last=False``
keeps PyTorch's default initialisation.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from dynarec.nn.mlp import activation

__all__ = ["GateNU", "LHUC", "EPNet", "LayerGates", "GatedMLP", "gate_start_bias"]


def gate_start_bias(gamma: float) -> float:
    """The pre-sigmoid value ``b`` with ``γ·σ(b) = 1`` (0 for γ = 2)."""
    if gamma <= 1.0:
        raise ValueError(f"gamma must be > 1 for a gate that starts at 1, got {gamma}")
    return math.log(1.0 / (gamma - 1.0))


class GateNU(nn.Module):
    """Gate Neural Unit (Chang et al., PEPNet, KDD 2023, Gate NU): ``γ·σ(ReLU(xW1+b1)W2+b2)`` in (0, γ).

    ``hidden_dim`` defaults to ``out_dim`` (as in the official-style code). ``zero_init_last`` makes the
    gate exactly 1 at initialisation (dynarec choice: a gated network starts as its backbone)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None, gamma: float = 2.0,
                 zero_init_last: bool = True):
        super().__init__()
        hidden_dim = out_dim if hidden_dim is None else hidden_dim
        self.in_dim, self.out_dim, self.gamma = in_dim, out_dim, float(gamma)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        if zero_init_last:
            nn.init.zeros_(self.fc2.weight)
            nn.init.constant_(self.fc2.bias, gate_start_bias(self.gamma))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * torch.sigmoid(self.fc2(torch.relu(self.fc1(x))))


class LHUC(nn.Module):
    """Learning Hidden Unit Contributions (Swietojanski, Li, Renals, IEEE/ACM TASLP 2016).

    ``forward(h, group) = γσ(r_group) ⊙ h`` with ``r ∈ R^{num_groups × dim}``, r initialised so the gate
    is 1 (r = 0 for γ = 2). Only the rows of groups present in the batch receive gradient."""

    def __init__(self, num_groups: int, dim: int, gamma: float = 2.0):
        super().__init__()
        self.gamma = float(gamma)
        self.r = nn.Parameter(torch.full((num_groups, dim), gate_start_bias(self.gamma)))

    def gate(self, group: torch.Tensor) -> torch.Tensor:
        """Gate values [B, dim] for group ids ``group`` (Long [B])."""
        return self.gamma * torch.sigmoid(self.r[group])

    def forward(self, h: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        return self.gate(group) * h


class EPNet(nn.Module):
    """Embedding Personalized Network (Chang et al., PEPNet, KDD 2023, EPNet).

    ``forward(emb [B,F,d], domain_x [B,d_dom]) -> O_ep [B,F,d]`` with
    ``O_ep = GateNU(domain_x ⊕ sg(E)) ⊙ E``, ``E = emb.flatten(1)``; the gate hidden width is d_E = F·d.

    ``granularity``: ``"field"`` (default) gives one gate per field, broadcast over its d dimensions — the
    paper writes δ_domain ∈ R^k with k the number of features and a feature-wise product (read from the
    paper through secondary sources, unverified); ``"dim"`` gives one gate per dimension of E, as the
    official-style fun-rec code does (a gate in (0,2)^{d_E}).
    ``gate_input``: ``"full"`` (default, the code's ``E(F_d) ⊕ sg(E)``) or ``"domain_only"`` (E(F_d)).
    The stop-gradient keeps the gate from pulling on E through its input; E itself still trains through
    the scaled output ``δ ⊙ E``."""

    def __init__(self, domain_dim: int, num_fields: int, embed_dim: int, granularity: str = "field",
                 gate_input: str = "full", hidden_dim: int | None = None, gamma: float = 2.0,
                 zero_init_last: bool = True):
        super().__init__()
        if granularity not in ("field", "dim"):
            raise ValueError(f"granularity must be 'field' or 'dim', got '{granularity}'")
        if gate_input not in ("full", "domain_only"):
            raise ValueError(f"gate_input must be 'full' or 'domain_only', got '{gate_input}'")
        self.granularity, self.gate_input = granularity, gate_input
        self.num_fields, self.embed_dim = num_fields, embed_dim
        d_e = num_fields * embed_dim
        in_dim = domain_dim + (d_e if gate_input == "full" else 0)
        out_dim = num_fields if granularity == "field" else d_e
        self.gate = GateNU(in_dim, out_dim, d_e if hidden_dim is None else hidden_dim, gamma, zero_init_last)

    def gates(self, emb: torch.Tensor, domain_x: torch.Tensor) -> torch.Tensor:
        """Gate values shaped to broadcast on ``emb``: [B, F, 1] (field) or [B, F, d] (dim)."""
        x = domain_x if self.gate_input == "domain_only" else torch.cat([domain_x, emb.detach().flatten(1)], 1)
        g = self.gate(x)
        return g.unsqueeze(-1) if self.granularity == "field" else g.view(-1, self.num_fields, self.embed_dim)

    def forward(self, emb: torch.Tensor, domain_x: torch.Tensor) -> torch.Tensor:
        return self.gates(emb, domain_x) * emb


class LayerGates(nn.Module):
    """One GateNU per gated layer (PPNet, Kuaishou 2019; PEPNet's PPNet, Chang et al., KDD 2023).

    ``forward(x) -> list`` of gates, one per width in ``widths``; with ``chunks = T > 1`` each GateNU
    emits ``T·w_l`` values returned as [B, T, w_l] (chunk t for task t)."""

    def __init__(self, in_dim: int, widths: Sequence[int], hidden_dim: int | None = None, gamma: float = 2.0,
                 chunks: int = 1, zero_init_last: bool = True):
        super().__init__()
        self.widths, self.chunks = list(widths), chunks
        self.gates = nn.ModuleList(
            GateNU(in_dim, chunks * w, (chunks * w if hidden_dim is None else hidden_dim), gamma, zero_init_last)
            for w in self.widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = [g(x) for g in self.gates]
        if self.chunks > 1:
            out = [o.view(o.shape[0], self.chunks, w) for o, w in zip(out, self.widths)]
        return out


class GatedMLP(nn.Module):
    """An MLP multiplied by externally computed gates.

    ``position="input"`` (PPNet / PEPNet as the PEPNet paper writes): ``H_{l+1} = f((δ_l ⊙ H_l)W_l + b_l)``
    for every layer including the output layer, so ``gate_dims = [in_dim, h_1, ..., h_{L}]`` (the last only
    with ``out_dim``). ``position="output"`` (LHUC, MLP-POSO, FuxiCTR's PPNet): ``h_{l+1} = δ_l ⊙ φ(h_l W_l + b_l)``
    on hidden layers only, the output layer is not gated: ``gate_dims = [h_1, ..., h_L]``.

    ``forward(x, gates)``: ``gates`` is a list aligned with ``gate_dims`` (an entry may be None = no gate).
    With all gates equal to 1 this is exactly :class:`dynarec.nn.mlp.MLP` with the same weights."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int | None = None, act: str = "relu",
                 dropout: float = 0.0, batch_norm: bool = False, position: str = "input"):
        super().__init__()
        if position not in ("input", "output"):
            raise ValueError(f"position must be 'input' or 'output', got '{position}'")
        self.position = position
        self.linears = nn.ModuleList()
        self.posts = nn.ModuleList()
        d = in_dim
        dims_in = []
        for h in hidden:
            dims_in.append(d)
            self.linears.append(nn.Linear(d, h))
            post: list[nn.Module] = ([nn.BatchNorm1d(h)] if batch_norm else []) + [activation(act)]
            if dropout > 0:
                post.append(nn.Dropout(dropout))
            self.posts.append(nn.Sequential(*post))
            d = h
        self.out = None
        if out_dim is not None:
            dims_in.append(d)
            self.out = nn.Linear(d, out_dim)
            d = out_dim
        self.out_features = d
        self.gate_dims = dims_in if position == "input" else list(hidden)

    def forward(self, x: torch.Tensor, gates: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        gates = list(gates) if gates is not None else [None] * len(self.gate_dims)
        if len(gates) != len(self.gate_dims):
            raise ValueError(f"expected {len(self.gate_dims)} gates, got {len(gates)}")
        h = x
        for i, (lin, post) in enumerate(zip(self.linears, self.posts)):
            if self.position == "input" and gates[i] is not None:
                h = gates[i] * h
            h = post(lin(h))
            if self.position == "output" and gates[i] is not None:
                h = gates[i] * h
        if self.out is not None:
            if self.position == "input" and gates[-1] is not None:
                h = gates[-1] * h
            h = self.out(h)
        return h
