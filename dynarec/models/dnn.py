"""DNN: one shared MLP over [embeddings ⊕ dense], one linear logit per task."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dynarec.models.base import BaseModel, ModelConfig
from dynarec.models.registry import register
from dynarec.nn.mlp import MLP


@register("dnn", paper="Covington et al., Deep Neural Networks for YouTube Recommendations, RecSys 2016",
          multi_task=True, multi_domain=False)
class DNN(BaseModel):
    @dataclass
    class Config(ModelConfig):
        pass

    def __init__(self, schema, config):
        super().__init__(schema, config)
        c = config
        self.mlp = MLP(self.input_dim, c.hidden, None, c.activation, c.dropout, c.batch_norm)
        self.heads = nn.ModuleDict({t: nn.Linear(self.mlp.out_features, 1) for t in self.tasks})

    def forward(self, batch):
        h = self.mlp(self.flat_input(batch))
        return {t: head(h).squeeze(-1) for t, head in self.heads.items()}
