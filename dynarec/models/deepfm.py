"""DeepFM (Guo et al., IJCAI 2017, eq. 1–4): ``logit_t = y_first,t + y_FM + head_t(MLP(E ⊕ dense))`` with
``y_FM = ½ Σ_k ((Σ_i e_ik)² − Σ_i e_ik²)`` on the shared embeddings. Multi-task: first-order and deep heads
per task, the FM term shared (dynarec choice)."""
from __future__ import annotations

from dataclasses import dataclass

from dynarec.models.base import ModelConfig
from dynarec.models.ctr_backbone import CTRBackbone
from dynarec.models.registry import register
from dynarec.nn.interaction import FM


@register("deepfm", paper="Guo et al., DeepFM: A Factorization-Machine based Neural Network for CTR Prediction, "
          "IJCAI 2017", multi_task=True)
class DeepFM(CTRBackbone):
    @dataclass
    class Config(ModelConfig):
        pass

    def __init__(self, schema, config):
        super().__init__(schema, config)
        self.build_first_order("first")
        self.fm = FM()
        self.mlp = self.build_deep(self.input_dim, config.hidden)
        self.build_heads(self.mlp.out_features)

    def represent(self, batch, emb):
        return self.deep(self.flat_input(batch, emb), batch, emb), self.first(batch) + self.fm(emb)
