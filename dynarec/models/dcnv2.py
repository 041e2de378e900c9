"""DCN-V2 (Wang et al., WWW 2021, eq. 1): cross layers ``x_{l+1} = x_0 ⊙ (x_l W_l + b_l) + x_l`` (full rank,
or ``low_rank: r`` for W = U V) with the deep MLP ``parallel`` (heads on x_L ⊕ h) or ``stacked`` (MLP on x_L)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dynarec.checks import rule
from dynarec.models.base import COUNT, WIDTH, ModelConfig
from dynarec.models.ctr_backbone import CTRBackbone
from dynarec.models.registry import register
from dynarec.nn.interaction import CrossNetworkV2


@register("dcnv2", paper="Wang et al., DCN V2: Improved Deep & Cross Network and Practical Lessons for "
          "Web-scale Learning to Rank Systems, WWW 2021", multi_task=True)
class DCNv2(CTRBackbone):
    @dataclass
    class Config(ModelConfig):
        cross_layers: int = field(default=3, metadata=COUNT)
        low_rank: int | None = field(default=None, metadata=WIDTH)
        structure: str = field(default="parallel", metadata=rule(choices=("parallel", "stacked")))

    def __init__(self, schema, config):
        super().__init__(schema, config)
        c = config
        self.cross = CrossNetworkV2(self.input_dim, c.cross_layers, c.low_rank)
        self.mlp = self.build_deep(self.input_dim, c.hidden)
        d = self.mlp.out_features
        self.build_heads(d if c.structure == "stacked" else self.input_dim + d)

    def represent(self, batch, emb):
        x0 = self.flat_input(batch, emb)
        xc = self.cross(x0)
        if self.config.structure == "stacked":
            return self.deep(xc, batch, emb), None
        return torch.cat([xc, self.deep(x0, batch, emb)], 1), None
