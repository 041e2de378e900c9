"""Sparsely-gated noisy top-k MoE (Shazeer et al., ICLR 2017; balance losses as in the paper) as the shared
bottom of a multi-task model."""
from __future__ import annotations

from dataclasses import dataclass, field

from dynarec.checks import rule
from dynarec.errors import ConfigError
from dynarec.models.base import COUNT

from dynarec.models.multitask import MTLConfig, MTLModel
from dynarec.models.registry import register
from dynarec.nn.moe import NoisyTopKMoE


@register("sparse_moe", paper="Shazeer et al., Outrageously Large Neural Networks: The Sparsely-Gated "
          "Mixture-of-Experts Layer, ICLR 2017", multi_task=True)
class SparseMoE(MTLModel):
    """Noisy top-k MoE as the shared bottom (an MLP replacement), then one tower per task (docs/models.md
    "Sparsely-gated noisy top-k MoE").
    Each expert is an MLP ``hidden``; the balance loss (importance + load, weight ``balance_coef``) is
    returned by ``extra_loss()``."""

    @dataclass
    class Config(MTLConfig):
        num_experts: int = field(default=8, metadata=COUNT)
        top_k: int = field(default=2, metadata=COUNT)  # <= num_experts
        balance_coef: float = field(default=1e-2, metadata=rule(min=0))
        noisy: bool = True

    def __init__(self, schema, config):
        super().__init__(schema, config)
        c = config
        if c.top_k > c.num_experts:
            raise ConfigError(f"model.sparse_moe.top_k: expected <= num_experts ({c.num_experts}), got {c.top_k}")
        self.moe = NoisyTopKMoE(self.input_dim, c.hidden, c.num_experts, c.top_k, c.activation, c.dropout,
                                c.batch_norm, c.noisy, c.balance_coef)
        self.towers = self.make_towers(self.moe.out_features)

    def balance_modules(self):
        return [self.moe]

    def gate_modules(self):
        return {"moe": self.moe.gate}

    def compute(self, batch):
        h = self.moe(self.main_input(batch))
        return self.finish(batch, {t: tw(h) for t, tw in self.towers.items()})
