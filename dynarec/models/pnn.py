"""PNN (Qu et al., ICDM 2016): a product layer ``[z = E, p = products]`` feeding the MLP; ``product``
``inner`` (IPNN, p_ij = <e_i, e_j>), ``outer`` (OPNN, p_ij = e_i K_ij e_jᵀ) or ``both`` (PNN*). Dense
features join z. The paper's first hidden layer ``l_1 = φ(l_z + l_p + b)`` is a linear map of z ⊕ p, which is
what the MLP's first layer computes."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dynarec.checks import rule
from dynarec.models.base import ModelConfig
from dynarec.models.ctr_backbone import CTRBackbone
from dynarec.models.registry import register
from dynarec.nn.interaction import InnerProduct, OuterProduct


@register("pnn", paper="Qu et al., Product-based Neural Networks for User Response Prediction, ICDM 2016",
          multi_task=True)
class PNN(CTRBackbone):
    @dataclass
    class Config(ModelConfig):
        product: str = field(default="inner", metadata=rule(choices=("inner", "outer", "both")))

    def __init__(self, schema, config):
        super().__init__(schema, config)
        c = config
        F = self.num_fields
        self.inner = InnerProduct(F) if c.product in ("inner", "both") else None
        self.outer = OuterProduct(F, c.embed_dim) if c.product in ("outer", "both") else None
        n_prod = sum(m.out_features for m in (self.inner, self.outer) if m is not None)
        self.mlp = self.build_deep(self.input_dim + n_prod, c.hidden)
        self.build_heads(self.mlp.out_features)

    def represent(self, batch, emb):
        parts = [self.flat_input(batch, emb)]
        if self.inner is not None:
            parts.append(self.inner(emb))
        if self.outer is not None:
            parts.append(self.outer(emb))
        return self.deep(torch.cat(parts, 1), batch, emb), None
