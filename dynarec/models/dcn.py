"""DCN (Wang et al., ADKDD 2017): cross network ``x_{l+1} = x_0 (x_lᵀ w_l) + b_l + x_l`` and a deep MLP in
parallel on ``x_0 = E ⊕ dense``; the heads read ``x_L ⊕ h``."""
from __future__ import annotations

from dataclasses import dataclass, field

from dynarec.models.base import COUNT, ModelConfig
from dynarec.models.ctr_backbone import CTRBackbone
from dynarec.models.registry import register
from dynarec.nn.interaction import CrossNetwork


@register("dcn", paper="Wang et al., Deep & Cross Network for Ad Click Predictions, ADKDD 2017", multi_task=True)
class DCN(CTRBackbone):
    @dataclass
    class Config(ModelConfig):
        cross_layers: int = field(default=3, metadata=COUNT)

    def __init__(self, schema, config):
        super().__init__(schema, config)
        self.cross = CrossNetwork(self.input_dim, config.cross_layers)
        self.mlp = self.build_deep(self.input_dim, config.hidden)
        self.build_heads(self.input_dim + self.mlp.out_features)

    def represent(self, batch, emb):
        import torch

        x0 = self.flat_input(batch, emb)
        return torch.cat([self.cross(x0), self.deep(x0, batch, emb)], 1), None
