"""MMoE (Ma et al., KDD 2018) with the YouTube additions (Zhao et al., RecSys 2019; docs/models.md "MMoE (`mmoe`)").

``h_t = Σ_i g_t(x)_i f_i(x)``, ``g_t = softmax(x W_t)``; ``y_t = tower_t(h_t)``. Experts are MLPs
``hidden`` (default 4 × [256, 128]), towers ``tower_hidden`` ([64]).

* **Expert dropout** ``expert_dropout`` (default 0.1): in training each expert's gate weight is zeroed
  with that probability and the gate renormalised (a row never loses every expert). Off in eval.
* ``gate: noisy_topk`` replaces each task's softmax gate with a noisy top-k gate (Shazeer et al. 2017,
  ``top_k``, ``balance_coef``; balance loss via ``extra_loss()``); expert dropout then does not apply.
* The shallow position tower and aleatoric heads of :class:`~dynarec.models.multitask.MTLModel`.
* ``gate_usage(table)`` reports per-task gate statistics (mean weight, top-1 share, entropy, polarised).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from dynarec.checks import rule
from dynarec.errors import ConfigError
from dynarec.models.base import COUNT, DROPOUT
from dynarec.models.keys import when

from dynarec.models.multitask import MTLConfig, MTLModel
from dynarec.models.registry import register
from dynarec.nn.moe import MMoELayer


@register("mmoe", paper="Ma et al., Modeling Task Relationships in Multi-task Learning with Multi-gate "
          "Mixture-of-Experts, KDD 2018 (+ expert dropout, Zhao et al., RecSys 2019)", multi_task=True)
class MMoE(MTLModel):
    @dataclass
    class Config(MTLConfig):
        num_experts: int = field(default=4, metadata=COUNT)
        expert_dropout: float = field(default=0.1, metadata=DROPOUT)
        gate: str = field(default="softmax", metadata=rule(choices=("softmax", "noisy_topk")))
        top_k: int = field(default=2, metadata=COUNT)  # <= num_experts
        balance_coef: float = field(default=1e-2, metadata=rule(min=0))

    no_effect = {"expert_dropout": when(gate="softmax"), "top_k": when(gate="noisy_topk"),
                 "balance_coef": when(gate="noisy_topk")}

    def __init__(self, schema, config):
        super().__init__(schema, config)
        c = config
        if c.gate == "noisy_topk" and c.top_k > c.num_experts:
            raise ConfigError(f"model.mmoe.top_k: expected <= num_experts ({c.num_experts}), got {c.top_k}")
        self.mmoe = MMoELayer(self.input_dim, c.num_experts, len(self.tasks), c.hidden, c.activation, c.dropout,
                              c.batch_norm, c.expert_dropout, c.gate, c.top_k, c.balance_coef)
        self.towers = self.make_towers(self.mmoe.out_features)

    @property
    def last_gate_weights(self):
        """Gate weights of the last forward per task (detached)."""
        return {t: g.last for t, g in zip(self.tasks, self.mmoe.gates)}

    def balance_modules(self):
        return [self.mmoe]

    def gate_modules(self):
        return dict(zip(self.tasks, self.mmoe.gates))

    def compute(self, batch):
        hs = self.mmoe(self.main_input(batch))
        return self.finish(batch, {t: self.towers[t](h) for t, h in zip(self.tasks, hs)})
