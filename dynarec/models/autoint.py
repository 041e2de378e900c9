"""AutoInt (Song et al., CIKM 2019): stacked multi-head self-attention layers over the field embeddings
(eq. 5–8, with residual ReLU); ``use_dnn: true`` (default) adds the parallel MLP of AutoInt+ on E ⊕ dense.
The heads read ``flatten(attention output) ⊕ h``. Dense features enter only the MLP."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dynarec.models.base import COUNT, WIDTH, ModelConfig
from dynarec.models.keys import when
from dynarec.models.ctr_backbone import CTRBackbone
from dynarec.models.registry import register
from dynarec.nn.interaction import InteractingLayer


@register("autoint", paper="Song et al., AutoInt: Automatic Feature Interaction Learning via Self-Attentive "
          "Neural Networks, CIKM 2019", multi_task=True)
class AutoInt(CTRBackbone):
    @dataclass
    class Config(ModelConfig):
        attn_layers: int = field(default=3, metadata=COUNT)
        attn_dim: int = field(default=8, metadata=WIDTH)
        num_heads: int = field(default=2, metadata=COUNT)
        use_dnn: bool = True  # AutoInt+

    # the attention layers and the heads have no activation / dropout / norm of their own
    no_effect = {k: when(use_dnn=True) for k in ("hidden", "activation", "dropout", "batch_norm")}

    def __init__(self, schema, config):
        super().__init__(schema, config)
        c = config
        layers, d = [], c.embed_dim
        for _ in range(c.attn_layers):
            layers.append(InteractingLayer(d, c.attn_dim, c.num_heads))
            d = layers[-1].out_features
        self.attn = nn.Sequential(*layers)
        att_dim = self.num_fields * d
        self.mlp = self.build_deep(self.input_dim, c.hidden) if c.use_dnn else None
        self.build_heads(att_dim + (self.mlp.out_features if self.mlp is not None else 0))

    def represent(self, batch, emb):
        h = self.attn(emb).flatten(1)
        if self.mlp is not None:
            h = torch.cat([h, self.deep(self.flat_input(batch, emb), batch, emb)], 1)
        return h, None
