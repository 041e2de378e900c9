"""M2M (Zhang et al., WSDM 2022, arXiv 2201.06814; docs/models.md "M2M — `m2m`"): multi-scenario multi-task meta
learning.

* experts ``E_i = MLP_i(SelfAttn(X_seq) ⊕ X_other)`` (``hidden`` widths; X_other: the sparse fields, the
  numeric-embedding fields and the dense features; the attention runs over each sample's own behaviour
  tokens, never across the batch);
* task embedding ``T_t = MLP(Emb(t))``; scenario summary ``S̃ = MLP(S ⊕ A)`` with S = embedded fields of
  ``scenario_groups`` and A = those of ``user_groups``;
* per task: meta attention ``R_t = Σ_i softmax_i(vᵀMeta_t(E_i ⊕ T_t)) E_i``, meta tower
  ``L^j = act(Meta^j(L^{j-1}) + L^{j-1})`` (``tower_layers`` layers), then a linear head.
All Meta units generate per-sample weights from S̃ (``meta_widths``, K = len(meta_widths)).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dynarec.errors import ConfigError
from dynarec.checks import rule
from dynarec.models.base import ACTIVATION, COUNT, WIDTH, BaseModel, ModelConfig
from dynarec.models.heads import task_heads
from dynarec.models.registry import register
from dynarec.nn.meta import MetaAttention, MetaTower, SequenceSelfAttention
from dynarec.nn.mlp import MLP
from dynarec.tables.spec import TableSpec


NONEMPTY_WIDTHS = rule(min=1, nonempty=True)


@register("m2m", paper="Zhang et al., Leaving No One Behind: A Multi-Scenario Multi-Task Meta Learning Approach "
          "for Advertiser Modeling, WSDM 2022", needs=("domain",), multi_task=True, multi_domain=True)
class M2M(BaseModel):
    looks_up_tokens = True  # unpooled sequence tokens besides the pooled lookup (TorchRec refuses it)

    @dataclass
    class Config(ModelConfig):
        hidden: list[int] = field(default_factory=lambda: [128, 64], metadata=NONEMPTY_WIDTHS)  # each expert's MLP
        num_experts: int = field(default=4, metadata=COUNT)
        # K = 2 generated layers of width 64
        meta_widths: list[int] = field(default_factory=lambda: [64, 64], metadata=NONEMPTY_WIDTHS)
        tower_layers: int = field(default=2, metadata=rule(min=0))  # L
        # S̃ = MLP(S ⊕ A); cost ∝ its width
        scenario_hidden: list[int] = field(default_factory=lambda: [16], metadata=NONEMPTY_WIDTHS)
        task_embed_dim: int = field(default=16, metadata=WIDTH)
        task_hidden: list[int] = field(default_factory=lambda: [32], metadata=NONEMPTY_WIDTHS)  # T_t = MLP(Emb(t))
        scenario_groups: list[str] = field(default_factory=lambda: ["domain"], metadata=rule(nonempty=True))
        user_groups: list[str] = field(default_factory=lambda: ["user"])
        # the σ of the meta units (M2M); "sigmoid" stalls the residual tower (docs)
        meta_activation: str = field(default="relu", metadata=ACTIVATION)
        seq_heads: int = field(default=2, metadata=COUNT)

    def __init__(self, schema, config):
        super().__init__(schema, config)
        c = config
        d = c.embed_dim
        n_sparse = len(schema.sparse)
        self.n_sparse = n_sparse
        self.seq_names = [f.name for f in schema.sequences]
        if self.seq_names and d % c.seq_heads:
            raise ConfigError(f"model.m2m.seq_heads: embed_dim {d} is not divisible by seq_heads {c.seq_heads}")
        self.seq_attn = nn.ModuleList(SequenceSelfAttention(d, c.seq_heads) for _ in self.seq_names)
        # the numeric-embedding fields (after the id fields of embed()) join the sparse ones
        self.n_numeric = self.num_fields - self.embedding.num_fields
        expert_in = (n_sparse + self.n_numeric) * d + self.dense_dim + len(self.seq_names) * d
        self.experts = nn.ModuleList(MLP(expert_in, c.hidden, None, c.activation, c.dropout, c.batch_norm)
                                     for _ in range(c.num_experts))
        d_e = self.experts[0].out_features
        self.scen_fields = self.field_index(c.scenario_groups, "model.m2m.scenario_groups")
        self.user_fields = self.field_index(c.user_groups, "model.m2m.user_groups") if c.user_groups else []
        self.scenario_mlp = MLP((len(self.scen_fields) + len(self.user_fields)) * d, c.scenario_hidden, None,
                                c.activation)
        d_s = self.scenario_mlp.out_features
        T = len(self.tasks)
        # task embedding Emb(t): torch's default N(0, 1) init, dense optimizer
        self.tables.add(TableSpec("m2m_task", T, c.task_embed_dim), legacy="task_emb")
        self.task_mlp = MLP(c.task_embed_dim, c.task_hidden, None, c.activation)
        d_t = self.task_mlp.out_features
        act = c.meta_activation
        self.attention = nn.ModuleDict({t: MetaAttention(d_e, d_t, d_s, c.meta_widths, act) for t in self.tasks})
        self.meta_towers = nn.ModuleDict({t: MetaTower(d_e, d_s, c.tower_layers, c.meta_widths[:-1], act)
                                          for t in self.tasks})
        self.heads = task_heads(d_e, self.tasks)
        self.last_attention: dict[str, torch.Tensor] = {}

    def scenario_summary(self, emb: torch.Tensor) -> torch.Tensor:
        """S̃ = MLP(S ⊕ A) [B, d_s]."""
        return self.scenario_mlp(emb[:, self.scen_fields + self.user_fields].flatten(1))

    def expert_outputs(self, batch, emb: torch.Tensor) -> torch.Tensor:
        """[B, n_experts, d_e]."""
        parts = [emb[:, :self.n_sparse].flatten(1)]
        if self.n_numeric:
            parts.append(emb[:, self.embedding.num_fields:].flatten(1))
        if self.dense_dim:
            parts.append(batch.dense)
        for j, (name, attn) in enumerate(zip(self.seq_names, self.seq_attn)):
            ids = batch.sequences[name]
            tokens = self.embedding.tokens(j, ids)  # [B, L, d], per-sample tokens
            parts.append(attn(tokens, ids > 0))
        x = torch.cat(parts, 1)
        return torch.stack([e(x) for e in self.experts], 1)

    def compute(self, batch):
        emb = self.embed(batch)
        s = self.scenario_summary(emb)
        ex = self.expert_outputs(batch, emb)
        task_vecs = self.task_mlp(self.tables["m2m_task"].weight)  # [T, d_t]
        out = {}
        for i, t in enumerate(self.tasks):
            r, alpha = self.attention[t](ex, task_vecs[i], s)
            self.last_attention[t] = alpha.detach()
            out[t] = self.heads[t](self.meta_towers[t](r, s)).squeeze(-1)
        return out
