"""Mixture-of-experts layers on plain tensors (MMoE, PLE, noisy top-k MoE; docs/models.md "Multi-task and
mixture-of-experts models").

* :class:`Experts` — ``n`` expert MLPs held as registered tensors with a leading expert axis (so the optimiser
  sees them), evaluated with one batched GEMM per layer (``addmm`` on a shared input, ``baddbmm`` over the
  expert axis after it, bias fused): ``x [B, d_in]`` (or ``[B, n, d_in]``) -> ``[B, n, d]``.
* :func:`expert_dropout` / :class:`SoftmaxGate` — the MMoE gate ``softmax(x W_g)`` (Ma et al., KDD 2018) with
  the YouTube "expert dropout" (Zhao et al., RecSys 2019): in training each expert's gate weight is zeroed
  with probability ``p`` and the row renormalised to sum to 1; a row that would lose every expert keeps
  its gates (dynarec choice).
* :class:`MMoELayer` — experts + one gate per task: ``h_t = Σ_i g_t(x)_i f_i(x)``.
* :class:`CGC` / :class:`PLELayer` — Customized Gate Control levels stacked into Progressive Layered
  Extraction (Tang et al., RecSys 2020).
* :class:`NoisyTopKGate` / :class:`NoisyTopKMoE` — sparsely-gated noisy top-k MoE (Shazeer et al., ICLR 2017,
  arXiv 1701.06538, following the tensor2tensor / davidmrau port): ``G = softmax(KeepTopK(H, k))``,
  ``H = xW_g + ε·(softplus(xW_noise) + 1e-2)`` (noise in training only), importance + load balance losses
  with the load estimated through the normal CDF.
* :func:`gate_usage_stats` — per-expert usage of a gate (mean weight, top-1 share, normalised entropy,
  polarisation flag).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dynarec.errors import ConfigError
from dynarec.nn.mlp import activation


# ------------------------------------------------------------------------------------------------
# experts
# ------------------------------------------------------------------------------------------------
class Experts(nn.Module):
    """``num_experts`` MLPs ``in_dim -> hidden`` (activation after every layer, like ``MLP`` without
    ``out_dim``). Weights are ``[n, d_in, d_out]`` parameters, so the optimiser sees every expert.

    forward: ``x [B, d_in]`` (the same input to all experts) or ``[B, n, d_in]`` (one input per expert)
    -> ``[B, n, hidden[-1]]``."""

    def __init__(self, in_dim: int, num_experts: int, hidden: list[int], act: str = "relu",
                 dropout: float = 0.0, batch_norm: bool = False):
        super().__init__()
        if num_experts < 1:
            raise ConfigError(f"num_experts: expected >= 1, got {num_experts}")
        if not hidden:
            raise ConfigError("experts need at least one hidden layer (hidden: [..] must be non-empty)")
        self.num_experts = num_experts
        dims = [in_dim] + list(hidden)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.norms = nn.ModuleList() if batch_norm else None
        for a, b in zip(dims[:-1], dims[1:]):
            bound = 1.0 / math.sqrt(a)  # nn.Linear's default init, per expert
            self.weights.append(nn.Parameter(torch.empty(num_experts, a, b).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(num_experts, b).uniform_(-bound, bound)))
            if batch_norm:
                self.norms.append(nn.BatchNorm1d(num_experts * b))
        self.act = activation(act)
        self.drop = nn.Dropout(dropout) if dropout > 0 else None
        self.out_features = dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One GEMM per layer with the bias fused (docs/benchmarks.md "Batched experts"): the shared first
        # input is one ``addmm`` against every expert's weights side by side ([d_in, n*d_out]); later layers
        # are one ``baddbmm`` over the expert axis, whose [n, B, d] output is returned as a [B, n, d] view
        # (no copy; the BLAS reads the [B, n, d] input through its leading dimension).
        h = x
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            n, d_in, d_out = w.shape
            if h.dim() == 2:
                h = torch.addmm(b.reshape(-1), h, w.transpose(0, 1).reshape(d_in, n * d_out))
                h = h.view(-1, n, d_out)
            else:
                h = torch.baddbmm(b.unsqueeze(1), h.transpose(0, 1), w).transpose(0, 1)
            if self.norms is not None:
                B = h.shape[0]
                h = self.norms[i](h.reshape(B, n * d_out)).view(B, n, d_out)
            h = self.act(h)
            if self.drop is not None:
                h = self.drop(h)
        return h


# ------------------------------------------------------------------------------------------------
# softmax gates with expert dropout
# ------------------------------------------------------------------------------------------------
def expert_dropout(gates: torch.Tensor, p: float, training: bool = True,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero each expert's gate weight with probability ``p`` (independently per row), renormalise each
    row to sum to 1. Rows that would lose every expert keep all their gates. Identity when not
    ``training`` or ``p == 0`` (Zhao et al., RecSys 2019, expert dropout)."""
    if not training or p <= 0:
        return gates
    if not 0 <= p < 1:
        raise ConfigError(f"expert_dropout: expected 0 <= p < 1, got {p}")
    u = torch.rand(gates.shape, generator=generator, device=gates.device)
    keep = u >= p
    keep = keep | ~keep.any(-1, keepdim=True)
    g = gates * keep
    return g / g.sum(-1, keepdim=True).clamp_min(1e-12)


class SoftmaxGate(nn.Module):
    """MMoE gate ``softmax(x W_g + b)`` over ``num_experts`` with expert dropout ``p`` in training.

    forward: ``x [B, d_in]`` -> ``[B, n]`` (rows sum to 1). The last (detached) gate weights are kept in
    ``self.last`` for usage statistics."""

    def __init__(self, in_dim: int, num_experts: int, dropout: float = 0.0):
        super().__init__()
        if not 0 <= dropout < 1:
            raise ConfigError(f"expert_dropout: expected 0 <= p < 1, got {dropout}")
        self.linear = nn.Linear(in_dim, num_experts)
        self.p = dropout
        self.last: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = expert_dropout(torch.softmax(self.linear(x), -1), self.p, self.training)
        self.last = g.detach()
        return g

    @property
    def mc_dropout(self) -> bool:
        """Whether MC dropout (:mod:`dynarec.uncertainty`) keeps this gate in training mode (expert dropout on)."""
        return self.p > 0


def mix(gates: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """``Σ_i gates[:, i] · experts[:, i, :]``: ``[B, n] × [B, n, d] -> [B, d]``."""
    return torch.einsum("bn,bnd->bd", gates, experts)


class MMoELayer(nn.Module):
    """Multi-gate mixture of experts (Ma et al., KDD 2018): ``h_t = Σ_i softmax(x W_t)_i f_i(x)``.

    ``gate="softmax"`` (dense, with expert dropout) or ``"noisy_topk"`` (each task gate is a
    :class:`NoisyTopKGate`; its balance loss is in ``self.balance_loss`` after a forward).
    forward: ``x [B, d_in]`` -> list of ``num_gates`` tensors ``[B, d]``."""

    def __init__(self, in_dim: int, num_experts: int, num_gates: int, hidden: list[int], act: str = "relu",
                 dropout: float = 0.0, batch_norm: bool = False, expert_dropout: float = 0.0,
                 gate: str = "softmax", k: int = 2, balance_coef: float = 1e-2):
        super().__init__()
        self.experts = Experts(in_dim, num_experts, hidden, act, dropout, batch_norm)
        if gate == "softmax":
            self.gates = nn.ModuleList(SoftmaxGate(in_dim, num_experts, expert_dropout) for _ in range(num_gates))
        elif gate == "noisy_topk":
            self.gates = nn.ModuleList(NoisyTopKGate(in_dim, num_experts, k, balance_coef=balance_coef)
                                       for _ in range(num_gates))
        else:
            raise ConfigError(f"gate: expected 'softmax' or 'noisy_topk', got '{gate}'")
        self.gate_type = gate
        self.out_features = self.experts.out_features
        self.balance_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        ex = self.experts(x)
        outs = []
        losses = []
        for g in self.gates:
            w = g(x)
            if self.gate_type == "noisy_topk":
                losses.append(g.balance_loss)
            outs.append(mix(w, ex))
        self.balance_loss = torch.stack(losses).sum() if losses else None
        return outs


# ------------------------------------------------------------------------------------------------
# PLE
# ------------------------------------------------------------------------------------------------
class CGC(nn.Module):
    """One Customized Gate Control level (PLE, Tang et al., RecSys 2020).

    Per task ``t``: ``n_specific`` experts on the task's input and a gate over [its own experts ⊕ the
    ``n_shared`` shared experts]. If ``shared_gate``: a gate over ALL experts on the shared input, whose
    output feeds the shared experts of the next level.

    forward: ``task_inputs`` (list of T tensors ``[B, d_in]``) and ``shared_input [B, d_in]`` ->
    (list of T ``[B, d]``, ``[B, d]`` or None). Gate weights of the last forward: ``self.gates[t].last``."""

    def __init__(self, in_dim: int, num_tasks: int, n_specific: int, n_shared: int, hidden: list[int],
                 act: str = "relu", dropout: float = 0.0, batch_norm: bool = False, shared_gate: bool = True,
                 expert_dropout: float = 0.0):
        super().__init__()
        if n_specific < 0 or n_shared < 0 or (n_specific == 0 and n_shared == 0):
            raise ConfigError(f"ple: need n_specific >= 0, n_shared >= 0 and at least one expert "
                              f"(got {n_specific}, {n_shared})")
        self.num_tasks, self.n_specific, self.n_shared = num_tasks, n_specific, n_shared
        self.specific = nn.ModuleList(Experts(in_dim, n_specific, hidden, act, dropout, batch_norm)
                                      for _ in range(num_tasks)) if n_specific else None
        self.shared = Experts(in_dim, n_shared, hidden, act, dropout, batch_norm) if n_shared else None
        self.gates = nn.ModuleList(SoftmaxGate(in_dim, n_specific + n_shared, expert_dropout)
                                   for _ in range(num_tasks))
        self.shared_gate = SoftmaxGate(in_dim, num_tasks * n_specific + n_shared, expert_dropout) \
            if shared_gate else None
        self.out_features = hidden[-1]

    def forward(self, task_inputs: list[torch.Tensor], shared_input: torch.Tensor):
        sh = self.shared(shared_input) if self.shared is not None else None  # [B, n_sh, d]
        spec = [self.specific[t](task_inputs[t]) for t in range(self.num_tasks)] if self.specific is not None else None
        outs = []
        for t in range(self.num_tasks):
            parts = ([spec[t]] if spec is not None else []) + ([sh] if sh is not None else [])
            outs.append(mix(self.gates[t](task_inputs[t]), torch.cat(parts, 1)))
        shared_out = None
        if self.shared_gate is not None:
            parts = (list(spec) if spec is not None else []) + ([sh] if sh is not None else [])
            shared_out = mix(self.shared_gate(shared_input), torch.cat(parts, 1))
        return outs, shared_out


class PLELayer(nn.Module):
    """``levels`` stacked CGC levels; the last level has no shared gate (PLE, Tang et al., RecSys 2020).

    forward: ``x [B, d_in]`` -> list of T tensors ``[B, hidden[-1]]``."""

    def __init__(self, in_dim: int, num_tasks: int, levels: int, n_specific: int, n_shared: int,
                 hidden: list[int], act: str = "relu", dropout: float = 0.0, batch_norm: bool = False,
                 expert_dropout: float = 0.0):
        super().__init__()
        if levels < 1:
            raise ConfigError(f"levels: expected >= 1, got {levels}")
        d = in_dim
        self.levels = nn.ModuleList()
        for i in range(levels):
            self.levels.append(CGC(d, num_tasks, n_specific, n_shared, hidden, act, dropout, batch_norm,
                                   shared_gate=i < levels - 1, expert_dropout=expert_dropout))
            d = hidden[-1]
        self.num_tasks = num_tasks
        self.out_features = d

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        task_in, shared_in = [x] * self.num_tasks, x
        for lvl in self.levels:
            task_in, shared_in = lvl(task_in, shared_in)
        return task_in


# ------------------------------------------------------------------------------------------------
# sparsely-gated noisy top-k
# ------------------------------------------------------------------------------------------------
def cv_squared(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Squared coefficient of variation ``var/(mean² + eps)`` (population variance, as in the port's
    balance loss on more than one expert; 0 for a single value)."""
    x = x.float()
    if x.numel() <= 1:
        return x.new_zeros(())
    return x.var(unbiased=False) / (x.mean() ** 2 + eps)


class NoisyTopKGate(nn.Module):
    """Noisy top-k gating (Shazeer et al., ICLR 2017, noisy top-k gating and the load-balancing losses).

    ``H = xW_g + ε·(softplus(xW_noise) + 1e-2)`` with ε ~ N(0,1) only in training (when ``noisy``);
    ``G = softmax(KeepTopK(H, k))`` — exactly k non-zero gates per row, summing to 1. W_g and W_noise start
    at zero. After each forward ``self.balance_loss = w·(CV²(Σ_x G) + CV²(load))`` where load is
    ``Σ_x Φ((xW_g − kth_excl(H))/noise_std)`` with noise in training, else the count of non-zero gates.
    ``self.last`` keeps the detached gates, ``self.last_importance`` / ``self.last_load`` the vectors.

    Deviation from the port: the top-k is taken on the raw noisy logits (not on a softmax of them);
    softmax over the kept k equals the port's renormalised top-k of the full softmax up to its 1e-6."""

    def __init__(self, in_dim: int, num_experts: int, k: int = 2, noisy: bool = True, balance_coef: float = 1e-2,
                 noise_eps: float = 1e-2):
        super().__init__()
        if not 1 <= k <= num_experts:
            raise ConfigError(f"top_k: expected 1 <= k <= num_experts ({num_experts}), got {k}")
        if balance_coef < 0:
            raise ConfigError(f"balance_coef: expected >= 0, got {balance_coef}")
        self.num_experts, self.k, self.noisy = num_experts, k, noisy
        self.balance_coef, self.noise_eps = balance_coef, noise_eps
        self.w_gate = nn.Parameter(torch.zeros(in_dim, num_experts))
        self.w_noise = nn.Parameter(torch.zeros(in_dim, num_experts))
        self.balance_loss: torch.Tensor | None = None
        self.last: torch.Tensor | None = None
        self.last_importance: torch.Tensor | None = None
        self.last_load: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clean = x @ self.w_gate
        use_noise = self.noisy and self.training
        if use_noise:
            noise_std = F.softplus(x @ self.w_noise) + self.noise_eps
            logits = clean + torch.randn_like(clean) * noise_std
        else:
            logits = clean
        m = min(self.k + 1, self.num_experts)
        top_vals, top_idx = logits.topk(m, dim=-1)
        kept = torch.full_like(logits, float("-inf")).scatter(-1, top_idx[:, :self.k], top_vals[:, :self.k])
        gates = torch.softmax(kept, -1)
        importance = gates.sum(0)
        if use_noise and self.k < self.num_experts:
            load = self._prob_in_top_k(clean, logits, noise_std, top_vals).sum(0)
        else:
            load = (gates > 0).sum(0).to(gates.dtype)
        self.balance_loss = self.balance_coef * (cv_squared(importance) + cv_squared(load))
        self.last, self.last_importance, self.last_load = gates.detach(), importance.detach(), load.detach()
        return gates

    def _prob_in_top_k(self, clean, noisy, noise_std, top_vals):
        """P(expert i is in the top k of row x, re-drawing only its own noise): Φ((clean_i − thr)/std_i),
        thr = the (k+1)-th noisy value if i is in the top k, else the k-th (``kth_excl`` of the
        tensor2tensor port)."""
        thr_in = top_vals[:, self.k:self.k + 1]
        thr_out = top_vals[:, self.k - 1:self.k]
        is_in = noisy > thr_in
        normal = torch.distributions.Normal(clean.new_zeros(()), clean.new_ones(()))
        p_in = normal.cdf((clean - thr_in) / noise_std)
        p_out = normal.cdf((clean - thr_out) / noise_std)
        return torch.where(is_in, p_in, p_out)


class NoisyTopKMoE(nn.Module):
    """Sparsely-gated MoE used as an MLP replacement: ``y = Σ_i G(x)_i E_i(x)`` with ``E_i`` an MLP
    ``in_dim -> hidden`` and G a :class:`NoisyTopKGate`. forward: ``x [B, d_in]`` -> ``[B, hidden[-1]]``;
    the balance loss of the last forward is ``self.balance_loss``.

    All experts are evaluated densely and weighted by the (sparse) gates: same output as dispatching each
    row to its k experts, simpler and fast at CTR widths on CPU (deviation from the paper's dispatch)."""

    def __init__(self, in_dim: int, hidden: list[int], num_experts: int = 8, k: int = 2, act: str = "relu",
                 dropout: float = 0.0, batch_norm: bool = False, noisy: bool = True, balance_coef: float = 1e-2):
        super().__init__()
        self.experts = Experts(in_dim, num_experts, hidden, act, dropout, batch_norm)
        self.gate = NoisyTopKGate(in_dim, num_experts, k, noisy, balance_coef)
        self.out_features = self.experts.out_features

    @property
    def balance_loss(self) -> torch.Tensor | None:
        return self.gate.balance_loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mix(self.gate(x), self.experts(x))


# ------------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------------
def gate_usage_stats(gates: torch.Tensor, polarised_at: float = 0.9) -> dict:
    """Usage of one gate over rows ``gates [N, n]``: mean weight per expert, share of rows whose
    largest weight is each expert, mean normalised entropy (1 = uniform, 0 = one-hot) and ``polarised``
    (one expert's mean weight ≥ ``polarised_at``, the failure expert dropout fights)."""
    g = gates.detach().float()
    n = g.shape[1]
    mean = g.mean(0)
    top1 = torch.bincount(g.argmax(1), minlength=n).float() / max(g.shape[0], 1)
    ent = -(g.clamp_min(1e-12).log() * g).sum(1).mean() / math.log(n) if n > 1 else torch.tensor(0.0)
    return {"mean_weight": [round(v, 4) for v in mean.tolist()],
            "top1_share": [round(v, 4) for v in top1.tolist()],
            "entropy": round(float(ent), 4),
            "polarised": bool(mean.max() >= polarised_at)}
