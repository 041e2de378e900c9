"""STAR layers (Sheng et al., "One Model to Serve All: Star Topology Adaptive Recommender for
Multi-Domain CTR Prediction", CIKM 2021, arXiv 2101.11427; docs/models.md "STAR").

* :class:`STARLinear` — star-topology fully connected layer, ``W*_p = W_p ⊙ W``, ``b*_p = b_p + b``,
  ``out = x W*_p + b*_p`` for a row of domain ``p`` (no activation here; :class:`STARMLP` adds it).
* :class:`PartitionedNorm` — ``z' = (γ ⊙ γ_p)(z − μ_p)/sqrt(σ_p² + ε) + (β + β_p)`` with per-domain
  batch statistics in training and per-domain running statistics at inference.
* :class:`STARMLP` — a stack of STARLinear (+ optional PartitionedNorm) layers whose last layer has
  no activation, so a logit can take either sign (one public port puts a ReLU on the logit, so each domain
  could only emit a non-negative logit).

All layers take plain tensors: ``x [B, d]`` and ``domain Long [B]`` with ids in ``0..num_domains-1``.
Per-domain parameters are single registered tensors with a leading domain axis (one public port keeps them in
a plain list, where the optimiser never sees them).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from dynarec.nn.mlp import activation as make_activation

MODES = ("group", "gather")


class STARLinear(nn.Module):
    """Star-topology linear layer: shared ``W [in, out]``, ``b [out]`` and per-domain ``W_p [D, in, out]``
    (init 1), ``b_p [D, out]`` (init 0), combined as ``x (W_p ⊙ W) + (b_p + b)`` (Sheng et al., CIKM 2021,
    star topology FCN ``W*_p = W_p ⊙ W``, ``b*_p = b_p + b``: the product form, as MMLRec's
    ``SharedSpecificLinear``, not an additive ``W + ΔW_p``).

    ``mode="group"`` (default: a loop over the domains present in the batch) sorts the rows by
    domain and runs one matmul per present domain; ``mode="gather"`` gathers each row's ``[in, out]``
    weight and uses one ``bmm`` (materialises ``B × in × out``; see benchmarks/star_gather_vs_group.py).
    Only domains present in the batch receive gradient in ``W_p``/``b_p``.
    """

    def __init__(self, in_features: int, out_features: int, num_domains: int, mode: str = "group"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"STARLinear mode must be one of {MODES}, got '{mode}'")
        if num_domains < 1:
            raise ValueError(f"STARLinear needs num_domains >= 1, got {num_domains}")
        self.in_features, self.out_features, self.num_domains, self.mode = in_features, out_features, num_domains, mode
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.domain_weight = nn.Parameter(torch.ones(num_domains, in_features, out_features))
        self.domain_bias = nn.Parameter(torch.zeros(num_domains, out_features))
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)  # same as nn.Linear's default init
        nn.init.uniform_(self.bias, -bound, bound)

    def effective_weight(self, d: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(W*_d [in, out], b*_d [out]) of domain ``d``."""
        return self.domain_weight[d] * self.weight, self.domain_bias[d] + self.bias

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting():  # data-independent form for torch.export / ONNX (see _all_domains)
            return self._all_domains(x, domain)
        if self.mode == "gather":
            w = self.domain_weight[domain] * self.weight  # [B, in, out]
            return torch.bmm(x.unsqueeze(1), w).squeeze(1) + self.domain_bias[domain] + self.bias
        return self._grouped(x, domain)

    def _all_domains(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        """Every domain's output ``[B, D, out]`` from one product, then each row's own: D times the FLOPs of
        the grouped form but no data-dependent shapes, which is what an exported (serving) graph needs."""
        w = self.domain_weight * self.weight  # [D, in, out]
        y = torch.einsum("bi,dio->bdo", x, w)
        idx = domain.view(-1, 1, 1).expand(-1, 1, self.out_features)
        return y.gather(1, idx).squeeze(1) + self.domain_bias[domain] + self.bias

    def _grouped(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        counts = torch.bincount(domain, minlength=self.num_domains).tolist()
        if len(counts) > self.num_domains:
            raise IndexError(f"STARLinear: domain id {len(counts) - 1} >= num_domains {self.num_domains}")
        present = [d for d, c in enumerate(counts) if c]
        if len(present) == 1:  # the common case of a single-domain batch: no permutation
            w, b = self.effective_weight(present[0])
            return torch.addmm(b, x, w)
        order = torch.argsort(domain, stable=True)
        chunks = x[order].split(counts)
        outs = []
        for d in present:
            w, b = self.effective_weight(d)
            outs.append(torch.addmm(b, chunks[d], w))
        out_sorted = torch.cat(outs)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return out_sorted[inverse]

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, domains={self.num_domains}, mode={self.mode}"


class PartitionedNorm(nn.Module):
    """Partitioned normalisation (Sheng et al., CIKM 2021, section "Partitioned Normalization").

    ``z' = (γ ⊙ γ_p) (z − μ) / sqrt(σ² + ε) + (β + β_p)`` where, for a row of domain p,
    * training: μ, σ² are the (biased) statistics of domain p's rows in this batch, and they update the
      running ``E_p``/``Var_p`` with ``decay`` (Var_p from the unbiased estimate, as nn.BatchNorm does);
      the first ``1/(1-decay)`` updates of a domain are averaged plainly (bias-corrected EMA, dynarec
      choice), so eval after a short training already uses that domain's statistics, not the init 0/1;
      a domain with fewer than 2 rows in the batch uses its running statistics and does not update them;
    * eval: μ = E_p, σ² = Var_p — a row's output never depends on the other rows of its batch.
    The moving average is what this layer keeps by itself; the STAR model replaces it at every epoch's end
    by the exact statistics of the current model's input (:mod:`dynarec.nn.pn_stats`, model key
    ``pn_stats_rows``; a dynarec deviation, issue 29: the moving average mixed in stale epoch-1 statistics).
    Defaults decay 0.99 and ε 1e-3 follow MMLRec ``DomainBatchNorm``.
    """

    def __init__(self, num_features: int, num_domains: int, decay: float = 0.99, eps: float = 1e-3):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"PartitionedNorm decay must be in [0, 1), got {decay}")
        self.num_features, self.num_domains, self.decay, self.eps = num_features, num_domains, decay, eps
        self.weight = nn.Parameter(torch.ones(num_features))  # γ
        self.bias = nn.Parameter(torch.zeros(num_features))  # β
        self.domain_weight = nn.Parameter(torch.ones(num_domains, num_features))  # γ_p
        self.domain_bias = nn.Parameter(torch.zeros(num_domains, num_features))  # β_p
        self.register_buffer("running_mean", torch.zeros(num_domains, num_features))
        self.register_buffer("running_var", torch.ones(num_domains, num_features))
        self.register_buffer("num_batches_tracked", torch.zeros(num_domains, dtype=torch.long))

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        if self.training:
            D = self.num_domains
            counts = torch.bincount(domain, minlength=D)
            if counts.numel() > D:
                raise IndexError(f"PartitionedNorm: domain id {counts.numel() - 1} >= num_domains {D}")
            n = counts.to(x.dtype).clamp_min(1.0).unsqueeze(1)
            mean = x.new_zeros(D, x.shape[1]).index_add(0, domain, x) / n
            diff = x - mean[domain]
            var = x.new_zeros(D, x.shape[1]).index_add(0, domain, diff * diff) / n
            ok = (counts >= 2).unsqueeze(1)
            use_mean = torch.where(ok, mean, self.running_mean)
            use_var = torch.where(ok, var, self.running_var)
            with torch.no_grad():
                # bias-corrected EMA: the plain average of the first 1/(1-decay) updates, then decay
                m = torch.clamp(1.0 / (self.num_batches_tracked.to(x.dtype) + 1.0), min=1.0 - self.decay).unsqueeze(1)
                unbiased = var * n / (n - 1).clamp_min(1.0)
                self.running_mean.copy_(torch.where(ok, (1 - m) * self.running_mean + m * mean, self.running_mean))
                self.running_var.copy_(torch.where(ok, (1 - m) * self.running_var + m * unbiased, self.running_var))
                self.num_batches_tracked += ok.squeeze(1).long()
        else:
            use_mean, use_var = self.running_mean, self.running_var
        z = (x - use_mean[domain]) * torch.rsqrt(use_var[domain] + self.eps)
        return z * (self.weight * self.domain_weight[domain]) + (self.bias + self.domain_bias[domain])

    def extra_repr(self) -> str:
        return f"{self.num_features}, domains={self.num_domains}, decay={self.decay}, eps={self.eps}"


class STARMLP(nn.Module):
    """Star-topology FCN: ``[STARLinear -> (PartitionedNorm) -> act -> (dropout)] × len(hidden)`` then,
    if ``out_dim`` is given, a final STARLinear with NO activation (a logit layer, which must be able to take
    either sign)."""

    def __init__(self, in_dim: int, hidden: list[int], out_dim: int | None, num_domains: int,
                 act: str = "relu", dropout: float = 0.0, norm: bool = False, mode: str = "group",
                 norm_decay: float = 0.99, norm_eps: float = 1e-3):
        super().__init__()
        self.layers = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.acts = nn.ModuleList()
        self.drops = nn.ModuleList()  # nn.Dropout modules, so MC dropout (dynarec.uncertainty) can switch them on
        d = in_dim
        for h in hidden:
            self.layers.append(STARLinear(d, h, num_domains, mode))
            self.norms.append(PartitionedNorm(h, num_domains, norm_decay, norm_eps) if norm else nn.Identity())
            self.acts.append(make_activation(act))
            self.drops.append(nn.Dropout(dropout) if dropout > 0 else nn.Identity())
            d = h
        self.dropout = dropout
        self.out = STARLinear(d, out_dim, num_domains, mode) if out_dim is not None else None
        self.out_features = out_dim if out_dim is not None else d

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        for lin, norm, act, drop in zip(self.layers, self.norms, self.acts, self.drops):
            x = lin(x, domain)
            x = norm(x, domain) if isinstance(norm, PartitionedNorm) else x
            x = drop(act(x))
        return self.out(x, domain) if self.out is not None else x
