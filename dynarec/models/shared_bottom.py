"""Shared-Bottom (Caruana 1997): a shared MLP bottom, one MLP tower per task."""
from __future__ import annotations

from dataclasses import dataclass

from dynarec.models.base import BaseModel, ModelConfig
from dynarec.models.heads import task_heads
from dynarec.models.registry import register
from dynarec.nn.mlp import MLP


@register("shared_bottom", paper="Caruana, Multitask Learning, Machine Learning 1997", multi_task=True)
class SharedBottom(BaseModel):
    no_effect = {"tower_hidden": None}

    @dataclass
    class Config(ModelConfig):
        pass

    def __init__(self, schema, config):
        super().__init__(schema, config)
        c = config
        self.bottom = MLP(self.input_dim, c.hidden, None, c.activation, c.dropout, c.batch_norm)
        self.towers = task_heads(self.bottom.out_features, self.tasks, c.tower_hidden, c.activation, c.dropout)

    def compute(self, batch):
        h = self.bottom(self.flat_input(batch))
        return {t: tower(h).squeeze(-1) for t, tower in self.towers.items()}
