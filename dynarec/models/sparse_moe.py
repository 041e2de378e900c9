"""Sparsely-gated noisy top-k MoE (Shazeer et al., ICLR 2017; balance losses as in the paper) as the shared
bottom of a multi-task model."""
from __future__ import annotations

from dataclasses import dataclass

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
        num_experts: int = 8
        top_k: int = 2
        balance_coef: float = 1e-2
        noisy: bool = True

    def __init__(self, schema, config):
        super().__init__(schema, config)
        c = config
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
