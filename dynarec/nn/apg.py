"""APG: Adaptive Parameter Generation (Yan et al., "APG: Adaptive Parameter Generation Network for Click-Through
Rate Prediction", NeurIPS 2022, arXiv 2203.16218; docs/models.md "apg_<backbone>").

Each instance gets its own weights generated from a condition z_i by a hyper-network G (an MLP whose last
hidden width is the paper's D). Convention (as FuxiCTR's APG.py): ``out_i = ((x_i U) S_i) V + b_i`` with
U: d_in×K, S_i: K×K, V: K×d_out (the paper's figure applies its V first, so this U is the paper's Vᵀ; the
costs are symmetric).

| version | generated per instance | forward                                                             |
|---------|------------------------|---------------------------------------------------------------------|
| v1      | W_i (d_in×d_out)       | ``x_i W_i`` (builds a (B, d_in, d_out) tensor; ablation only)       |
| v2      | U_i, S_i, V_i          | forms ``W_i = U_i S_i V_i`` then ``x_i W_i``                        |
| v3      | U_i, S_i, V_i          | ``((x_i U_i) S_i) V_i`` — equal to v2, never forms W_i              |
| v4      | S_i                    | U, V static and shared                                              |
| v5      | S_i                    | trains ``U = U_l U_r`` (d_in×P·P×K), ``V = V_l V_r`` (K×P·P×d_out); |
|         |                        | ``merge_for_inference()`` folds them once into v4's U, V (exact)    |

Conditions (all plain tensors, so the layer drops into any network):
  * one condition tensor ``[B, c]`` (group-wise ``Emb(group id)``, or a mix-wise *input* aggregation made by
    :class:`InputAggregation`),
  * ``condition_dim=None`` — self-wise: z = the layer's own input,
  * ``condition_dim=[c1, c2, ...]`` — mix-wise *output* aggregation: one generator per factor gives one
    S^j (and b^j) per factor, ``o^j = ((xU)S^j)V + b^j``; the o^j are combined by ``mean`` (identical to
    using S̄ = mean_j S^j, b̄) or ``attention`` ``Σ_j softmax_j(qᵀ tanh(W_a o^j)) o^j`` (dynarec choice: the
    paper's aggregator is unverified; scoring the outputs makes it differ from any input aggregation).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dynarec.errors import ConfigError
from dynarec.nn.mlp import MLP, activation

VERSIONS = ("v1", "v2", "v3", "v4", "v5")
INPUT_AGGREGATIONS = ("concat", "mean", "attention")
OUTPUT_AGGREGATIONS = ("mean", "attention")
GROUPED_MAX_COLS = 1024  # index= path: one [K, G·K] product for all groups while G·K stays this small


class APGLinear(nn.Module):
    """A linear layer whose weights are generated per instance (Yan et al., NeurIPS 2022, versions V1–V5).

    Args:
        in_dim, out_dim: the layer's widths.
        condition_dim: ``int`` width of the condition; ``None`` for self-wise (z = x); a list of widths for
            mix-wise output aggregation (one generator and one S^j per factor).
        version: ``v1`` ... ``v5`` (default ``v5``).
        rank_k: K (v2–v5); ConfigError if K > min(in_dim, out_dim).
        overparam_p: P (v5 only); ConfigError if P < K.
        hypernet_hidden: hidden widths of G (``[]`` = a single linear map); the last one is the paper's D.
        generate_bias: G also emits the bias (else a static bias).
        output_aggregation: ``mean`` | ``attention`` (only with several condition factors).
        detach_condition: stop the gradient into the condition (MLLRec's behaviour; default off).
    """

    def __init__(self, in_dim: int, out_dim: int, condition_dim: int | Sequence[int] | None = None, *,
                 version: str = "v5", rank_k: int = 32, overparam_p: int = 128,
                 hypernet_hidden: Sequence[int] = (64,), generate_bias: bool = True,
                 output_aggregation: str = "mean", hypernet_activation: str = "relu",
                 detach_condition: bool = False, attention_dim: int = 16):
        super().__init__()
        if version not in VERSIONS:
            raise ConfigError(f"apg.version: expected one of {', '.join(VERSIONS)}, got '{version}'")
        if version != "v1":
            if rank_k < 1 or rank_k > min(in_dim, out_dim):
                raise ConfigError(f"apg.rank_k: K={rank_k} must be in 1..min(d_in, d_out)={min(in_dim, out_dim)} "
                                  f"for a {in_dim}->{out_dim} layer")
        if version == "v5" and overparam_p < rank_k:
            raise ConfigError(f"apg.overparam_p: P={overparam_p} must be >= rank_k K={rank_k} (v5 over-parameterises "
                              "U = U_l U_r with an inner width P >= K)")
        if output_aggregation == "concat":
            raise ConfigError("apg.output_aggregation: 'concat' is not an output aggregation (the outputs are "
                              "combined before the activation); use 'mean' or 'attention', or aggregate at the input")
        if output_aggregation not in OUTPUT_AGGREGATIONS:
            raise ConfigError(f"apg.output_aggregation: expected one of {', '.join(OUTPUT_AGGREGATIONS)}, "
                              f"got '{output_aggregation}'")
        self.in_dim, self.out_dim, self.version = in_dim, out_dim, version
        self.rank_k = rank_k if version != "v1" else 0
        self.overparam_p = overparam_p if version == "v5" else 0
        self.generate_bias = generate_bias
        self.detach_condition = detach_condition
        self.output_aggregation = output_aggregation
        self.self_wise = condition_dim is None
        if condition_dim is None:
            dims = [in_dim]
        elif isinstance(condition_dim, int):
            dims = [condition_dim]
        else:
            dims = [int(d) for d in condition_dim]
            if not dims:
                raise ConfigError("apg: condition_dim list is empty")
        self.factor_dims = dims
        K = self.rank_k
        self.n_weight = {"v1": in_dim * out_dim, "v2": in_dim * K + K * K + K * out_dim,
                         "v3": in_dim * K + K * K + K * out_dim, "v4": K * K, "v5": K * K}[version]
        n_gen = self.n_weight + (out_dim if generate_bias else 0)
        self.hypernets = nn.ModuleList(MLP(d, list(hypernet_hidden), n_gen, hypernet_activation) for d in dims)
        if not generate_bias:
            self.bias = nn.Parameter(torch.zeros(out_dim))
        self.merged = False
        if version == "v4":
            self.U = nn.Parameter(nn.init.xavier_normal_(torch.empty(in_dim, K)))
            self.V = nn.Parameter(nn.init.xavier_normal_(torch.empty(K, out_dim)))
        elif version == "v5":
            P = overparam_p
            self.U_l = nn.Parameter(nn.init.xavier_normal_(torch.empty(in_dim, P)))
            self.U_r = nn.Parameter(nn.init.xavier_normal_(torch.empty(P, K)))
            self.V_l = nn.Parameter(nn.init.xavier_normal_(torch.empty(K, P)))
            self.V_r = nn.Parameter(nn.init.xavier_normal_(torch.empty(P, out_dim)))
        if len(dims) > 1 and output_aggregation == "attention":
            self.attn_proj = nn.Linear(out_dim, attention_dim)
            self.attn_q = nn.Linear(attention_dim, 1, bias=False)
        self.last_attention: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return (f"{self.in_dim}->{self.out_dim}, version={self.version}, K={self.rank_k}, P={self.overparam_p}, "
                f"factors={self.factor_dims}{' self-wise' if self.self_wise else ''}, merged={self.merged}")

    # ---- generated and static parameters -----------------------------------------------------------
    def generate(self, condition: torch.Tensor, factor: int = 0) -> dict[str, torch.Tensor]:
        """Run G for one condition factor; returns the generated tensors (``W`` | ``U``,``S``,``V`` | ``S``; ``b``)."""
        raw = self.hypernets[factor](condition)
        B, K, n, m = raw.shape[0], self.rank_k, self.in_dim, self.out_dim
        out: dict[str, torch.Tensor] = {}
        if self.generate_bias:
            out["b"], raw = raw[:, :m], raw[:, m:]
        if self.version == "v1":
            out["W"] = raw.reshape(B, n, m)
        elif self.version in ("v2", "v3"):
            out["U"] = raw[:, :n * K].reshape(B, n, K)
            out["S"] = raw[:, n * K:n * K + K * K].reshape(B, K, K)
            out["V"] = raw[:, n * K + K * K:].reshape(B, K, m)
        else:
            out["S"] = raw.reshape(B, K, K)
        return out

    def static_uv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The shared U (d_in×K) and V (K×d_out) of v4/v5. Unmerged v5 multiplies its factors at every call
        (never cached: an in-place optimiser step, e.g. torch's fused Adam, does not bump a tensor's version,
        so no cache key can see it); :meth:`merge_for_inference` folds them once for serving."""
        if self.version == "v4" or self.merged:
            return self.U, self.V
        return self.U_l @ self.U_r, self.V_l @ self.V_r

    def apply_generated(self, x: torch.Tensor, g: dict[str, torch.Tensor]) -> torch.Tensor:
        """The layer's output for input x [B, d_in] and generated tensors ``g`` (from :meth:`generate`)."""
        v = self.version
        if v == "v1":
            y = torch.bmm(x.unsqueeze(1), g["W"]).squeeze(1)
        elif v == "v2":
            W = torch.bmm(torch.bmm(g["U"], g["S"]), g["V"])  # [B, d_in, d_out]
            y = torch.bmm(x.unsqueeze(1), W).squeeze(1)
        elif v == "v3":
            h = torch.bmm(x.unsqueeze(1), g["U"])  # [B, 1, K]
            y = torch.bmm(torch.bmm(h, g["S"]), g["V"]).squeeze(1)
        else:
            U, V = self.static_uv()
            h = torch.bmm((x @ U).unsqueeze(1), g["S"]).squeeze(1)  # [B, K]
            y = h @ V
        return y + (g["b"] if self.generate_bias else self.bias)

    def apply_grouped(self, x: torch.Tensor, g: dict[str, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        """v4/v5 with one generated S per GROUP (``g["S"]`` [G, K, K], row i in group ``index[i]``): ``x U`` is
        multiplied by every group's S in ONE matmul (``[B, K] @ [K, G·K]``) and each row keeps its group's
        block. Same result as gathering S per row and a batched [1, K]×[K, K] product per row, but without the
        [B, K, K] gather and its scatter in backward (the cost that dominated group-wise APG's step)."""
        U, V = self.static_uv()
        S = g["S"]
        G, K = S.shape[0], S.shape[1]
        hs = (x @ U) @ S.transpose(0, 1).reshape(K, G * K)  # [B, G*K]: block j = (x U) S_j
        h = hs.view(-1, G, K)[torch.arange(x.shape[0], device=x.device), index]  # [B, K]
        return h @ V + (g["b"][index] if self.generate_bias else self.bias)

    # ---- forward -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, condition: torch.Tensor | Sequence[torch.Tensor] | None = None,
                index: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` [B, d_in]; ``condition`` [B, c] (or a list of factors, or None when self-wise).

        ``index`` (Long [B], optional): ``condition`` then holds one row per distinct group ([G, c]) and row i
        uses group ``index[i]``. G runs once per group instead of once per row (exact: equal ids give equal
        S_i), which is how a group-wise condition should be served."""
        if index is not None and (self.self_wise or not isinstance(condition, torch.Tensor)):
            raise ValueError("APGLinear: index= needs a single condition tensor with one row per group")
        if self.self_wise:
            conds = [x]
        elif condition is None:
            raise ValueError("APGLinear: this layer needs a condition (it was built with condition_dim "
                             f"{self.factor_dims}); pass condition=..., or build it with condition_dim=None (self-wise)")
        elif isinstance(condition, torch.Tensor):
            conds = [condition]
        else:
            conds = list(condition)
        if len(conds) != len(self.hypernets):
            raise ValueError(f"APGLinear: expected {len(self.hypernets)} condition factor(s), got {len(conds)}")
        if self.detach_condition:
            conds = [c.detach() for c in conds]
        gens = [self.generate(c, j) for j, c in enumerate(conds)]
        if index is not None and self.version in ("v4", "v5") and gens[0]["S"].shape[0] * self.rank_k <= GROUPED_MAX_COLS:
            outs = [self.apply_grouped(x, g, index) for g in gens]
        else:
            if index is not None:
                gens = [{k: v[index] for k, v in g.items()} for g in gens]
            outs = [self.apply_generated(x, g) for g in gens]
        if len(outs) == 1:
            return outs[0]
        o = torch.stack(outs, 1)  # [B, n_factors, d_out]
        if self.output_aggregation == "mean":
            return o.mean(1)
        a = torch.softmax(self.attn_q(torch.tanh(self.attn_proj(o))).squeeze(-1), 1)  # [B, n]
        self.last_attention = a.detach()
        return (a.unsqueeze(-1) * o).sum(1)

    # ---- inference merge ---------------------------------------------------------------------------
    @torch.no_grad()
    def merge_for_inference(self) -> APGLinear:
        """v5 -> v4 form: ``U = U_l U_r``, ``V = V_l V_r`` computed once, factors dropped. Exact (the training
        forward uses the same products) and idempotent; a no-op for other versions."""
        if self.version != "v5" or self.merged:
            return self
        U, V = self.U_l @ self.U_r, self.V_l @ self.V_r
        for name in ("U_l", "U_r", "V_l", "V_r"):
            delattr(self, name)
        self.U, self.V = nn.Parameter(U.contiguous()), nn.Parameter(V.contiguous())
        self.merged = True
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a merged checkpoint loads into an unmerged v5 layer (merging it) and vice versa
        if self.version == "v5":
            if not self.merged and prefix + "U" in state_dict and prefix + "U_l" not in state_dict:
                self.merge_for_inference()
            elif self.merged and prefix + "U_l" in state_dict:
                sd = state_dict
                sd[prefix + "U"] = sd.pop(prefix + "U_l") @ sd.pop(prefix + "U_r")
                sd[prefix + "V"] = sd.pop(prefix + "V_l") @ sd.pop(prefix + "V_r")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def merge_for_inference(module: nn.Module) -> int:
    """Merge every v5 :class:`APGLinear` inside ``module`` (idempotent). Returns how many were merged now."""
    n = 0
    for m in module.modules():
        if isinstance(m, APGLinear) and m.version == "v5" and not m.merged:
            m.merge_for_inference()
            n += 1
    return n


class InputAggregation(nn.Module):
    """Mix-wise input aggregation ``z = R(z^1..z^c)`` (Yan et al., NeurIPS 2022, mix-wise condition).

    ``concat``: z = z^1 ⊕ ... ⊕ z^c. ``mean``: each factor projected to ``width`` then averaged.
    ``attention``: projected factors p^j combined as ``Σ_j softmax_j(qᵀ tanh(W_a p^j)) p^j`` (dynarec choice).
    """

    def __init__(self, dims: Sequence[int], mode: str = "concat", width: int | None = None, attention_dim: int = 16):
        super().__init__()
        if mode not in INPUT_AGGREGATIONS:
            raise ConfigError(f"apg.aggregation: expected one of {', '.join(INPUT_AGGREGATIONS)}, got '{mode}'")
        self.mode, self.dims = mode, list(dims)
        if mode == "concat":
            self.out_dim = sum(self.dims)
        else:
            w = width or max(self.dims)
            self.proj = nn.ModuleList(nn.Linear(d, w) for d in self.dims)
            self.out_dim = w
            if mode == "attention":
                self.attn_proj = nn.Linear(w, attention_dim)
                self.attn_q = nn.Linear(attention_dim, 1, bias=False)
        self.last_attention: torch.Tensor | None = None

    def forward(self, factors: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(factors) != len(self.dims):
            raise ValueError(f"InputAggregation: expected {len(self.dims)} factors, got {len(factors)}")
        if self.mode == "concat":
            return torch.cat(list(factors), -1)
        p = torch.stack([f(z) for f, z in zip(self.proj, factors)], 1)  # [B, c, w]
        if self.mode == "mean":
            return p.mean(1)
        a = torch.softmax(self.attn_q(torch.tanh(self.attn_proj(p))).squeeze(-1), 1)
        self.last_attention = a.detach()
        return (a.unsqueeze(-1) * p).sum(1)


class APGMLP(nn.Module):
    """Hidden layers made of :class:`APGLinear` (each with its own generator), activation, optional batch norm
    and dropout; ``out_dim`` adds a final *static* linear layer (a logit; K ≤ 1 would make APG degenerate).
    Every layer gets the same ``condition`` (group-/mix-wise) or its own input (self-wise, condition_dim=None)."""

    def __init__(self, in_dim: int, hidden: Sequence[int], condition_dim: int | Sequence[int] | None,
                 out_dim: int | None = None, act: str = "relu", dropout: float = 0.0, batch_norm: bool = False,
                 **apg_kwargs):
        super().__init__()
        self.layers = nn.ModuleList()
        self.post = nn.ModuleList()
        d = in_dim
        for h in hidden:
            self.layers.append(APGLinear(d, h, condition_dim, **apg_kwargs))
            post: list[nn.Module] = []
            if batch_norm:
                post.append(nn.BatchNorm1d(h))
            post.append(activation(act))
            if dropout > 0:
                post.append(nn.Dropout(dropout))
            self.post.append(nn.Sequential(*post))
            d = h
        self.out = nn.Linear(d, out_dim) if out_dim is not None else None
        self.out_features = out_dim if out_dim is not None else d

    def forward(self, x: torch.Tensor, condition=None, index: torch.Tensor | None = None) -> torch.Tensor:
        for layer, post in zip(self.layers, self.post):
            x = post(layer(x, condition, index))
        return self.out(x) if self.out is not None else x

    def merge_for_inference(self) -> APGMLP:
        merge_for_inference(self)
        return self
