"""Wide & Deep (Cheng et al., DLRS 2016): ``logit_t = w_tᵀ[x, φ(x)] + head_t(MLP(E ⊕ dense))``; the wide part
is the first-order term (one weight per id and task, a linear map of the dense features). dynarec does not
build hand-crafted cross-product features for the wide part (deviation: none are defined by a schema)."""
from __future__ import annotations

from dataclasses import dataclass

from dynarec.models.base import ModelConfig
from dynarec.models.ctr_backbone import CTRBackbone
from dynarec.models.registry import register


@register("wdl", paper="Cheng et al., Wide & Deep Learning for Recommender Systems, DLRS 2016", multi_task=True)
class WDL(CTRBackbone):
    @dataclass
    class Config(ModelConfig):
        pass

    def __init__(self, schema, config):
        super().__init__(schema, config)
        self.build_first_order("wide")
        self.mlp = self.build_deep(self.input_dim, config.hidden)
        self.build_heads(self.mlp.out_features)

    def represent(self, batch, emb):
        return self.deep(self.flat_input(batch, emb), batch, emb), self.wide(batch)
