"""FiBiNET (Huang et al., RecSys 2019): SENET re-weights the field embeddings, a bilinear layer crosses both
the original and the re-weighted embeddings ``p_ij = (e_i W) ⊙ e_j``, the concatenation (⊕ dense) feeds the
MLP; plus the first-order linear part per task."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dynarec.checks import rule
from dynarec.models.base import COUNT, ModelConfig
from dynarec.models.ctr_backbone import CTRBackbone
from dynarec.models.registry import register
from dynarec.nn.interaction import BilinearInteraction, SENet


@register("fibinet", paper="Huang et al., FiBiNET: Combining Feature Importance and Bilinear feature Interaction "
          "for Click-Through Rate Prediction, RecSys 2019", multi_task=True)
class FiBiNET(CTRBackbone):
    @dataclass
    class Config(ModelConfig):
        senet_reduction: int = field(default=3, metadata=COUNT)
        bilinear_type: str = field(default="field_interaction",
                                   metadata=rule(choices=("field_all", "field_each", "field_interaction")))

    def __init__(self, schema, config):
        super().__init__(schema, config)
        c, F = config, self.num_fields
        self.build_first_order("first")
        self.senet = SENet(F, c.senet_reduction)
        self.bilinear = BilinearInteraction(F, c.embed_dim, c.bilinear_type)
        in_dim = 2 * self.bilinear.num_pairs * c.embed_dim + self.dense_dim
        self.mlp = self.build_deep(in_dim, c.hidden)
        self.build_heads(self.mlp.out_features)

    def represent(self, batch, emb):
        parts = [self.bilinear(emb).flatten(1), self.bilinear(self.senet(emb)).flatten(1)]
        if self.dense_dim:
            parts.append(batch.dense)
        return self.deep(torch.cat(parts, 1), batch, emb), self.first(batch)
