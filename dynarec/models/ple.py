"""PLE — Progressive Layered Extraction (Tang et al., RecSys 2020; docs/models.md "PLE (`ple`)").

``levels`` stacked CGC levels. In each level task t has ``n_specific`` own experts and a gate over
[own ⊕ ``n_shared`` shared experts]; a shared gate over all experts feeds the next level's shared
experts (none in the last level). Defaults (dynarec choice): 2 levels, 1 specific + 1 shared expert,
experts ``hidden``, towers ``tower_hidden``. Optional ``expert_dropout`` on every gate (default 0).
With one level and ``n_specific: 0`` it is exactly MMoE. Also: shallow position tower, aleatoric heads
(:class:`~dynarec.models.multitask.MTLModel`), ``gate_usage(table)`` per level and gate.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from dynarec.checks import rule
from dynarec.models.base import COUNT, DROPOUT

from dynarec.models.multitask import MTLConfig, MTLModel
from dynarec.models.registry import register
from dynarec.nn.moe import PLELayer


@register("ple", paper="Tang et al., Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) "
          "Model for Personalized Recommendations, RecSys 2020", multi_task=True)
class PLE(MTLModel):
    @dataclass
    class Config(MTLConfig):
        levels: int = field(default=2, metadata=COUNT)
        n_specific: int = field(default=1, metadata=rule(min=0))
        n_shared: int = field(default=1, metadata=rule(min=0))
        expert_dropout: float = field(default=0.0, metadata=DROPOUT)

    def __init__(self, schema, config):
        super().__init__(schema, config)
        c = config
        self.ple = PLELayer(self.input_dim, len(self.tasks), c.levels, c.n_specific, c.n_shared, c.hidden,
                            c.activation, c.dropout, c.batch_norm, c.expert_dropout)
        self.towers = self.make_towers(self.ple.out_features)

    def gate_modules(self):
        out = {}
        for i, lvl in enumerate(self.ple.levels):
            for t, g in zip(self.tasks, lvl.gates):
                out[f"level{i}/{t}"] = g
            if lvl.shared_gate is not None:
                out[f"level{i}/shared"] = lvl.shared_gate
        return out

    def compute(self, batch):
        hs = self.ple(self.main_input(batch))
        return self.finish(batch, {t: self.towers[t](h) for t, h in zip(self.tasks, hs)})
