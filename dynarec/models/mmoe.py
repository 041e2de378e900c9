"""MMoE (Ma et al., KDD 2018): n expert MLPs shared by all tasks; per task a softmax gate over experts
on the input, ``h_t = Σ_j softmax(x W_t)_j · expert_j(x)``, then the task's tower."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dynarec.models.base import BaseModel, ModelConfig, task_heads
from dynarec.models.registry import register
from dynarec.nn.mlp import MLP


@register("mmoe", paper="Ma et al., Modeling Task Relationships in Multi-task Learning with Multi-gate "
          "Mixture-of-Experts, KDD 2018", multi_task=True)
class MMoE(BaseModel):
    @dataclass
    class Config(ModelConfig):
        num_experts: int = 4

    def __init__(self, schema, config):
        super().__init__(schema, config)
        c = config
        self.experts = nn.ModuleList(MLP(self.input_dim, c.hidden, None, c.activation, c.dropout, c.batch_norm)
                                     for _ in range(c.num_experts))
        self.gates = nn.ModuleDict({t: nn.Linear(self.input_dim, c.num_experts) for t in self.tasks})
        d = self.experts[0].out_features
        self.towers = task_heads(d, self.tasks, c.tower_hidden, c.activation, c.dropout)
        self.last_gate_weights: dict[str, torch.Tensor] = {}

    def forward(self, batch):
        x = self.flat_input(batch)
        ex = torch.stack([e(x) for e in self.experts], 1)  # [B, n, d]
        out = {}
        for t in self.tasks:
            g = torch.softmax(self.gates[t](x), -1)  # [B, n]
            self.last_gate_weights[t] = g.detach()
            out[t] = self.towers[t](torch.einsum("bn,bnd->bd", g, ex)).squeeze(-1)
        return out
