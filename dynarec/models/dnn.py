"""DNN: one shared MLP over [embeddings ⊕ dense], one linear logit per task.

Option ``latent_cross`` (Beutel et al., WSDM 2018; docs/models.md "Latent Cross — the `latent_cross` option of
`dnn`"): the last hidden layer becomes
``(1 + Σ_c Emb_c(context_c)) ⊙ h`` over the sparse features of the ``context`` group (zero-initialised
context embeddings, so the option starts as the plain DNN)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dynarec.models.base import BaseModel, ModelConfig
from dynarec.models.heads import task_heads
from dynarec.models.registry import register
from dynarec.nn.mlp import MLP


@register("dnn", paper="Covington et al., Deep Neural Networks for YouTube Recommendations, RecSys 2016",
          multi_task=True, multi_domain=False)
class DNN(BaseModel):
    @dataclass
    class Config(ModelConfig):
        latent_cross: bool = False  # Latent Cross on the last hidden layer, fed by the 'context' group

    def __init__(self, schema, config):
        super().__init__(schema, config)
        c = config
        self.mlp = MLP(self.input_dim, c.hidden, None, c.activation, c.dropout, c.batch_norm)
        self.heads = task_heads(self.mlp.out_features, self.tasks)
        self.latent_cross = None
        if c.latent_cross:
            from dynarec.nn.cross import LatentCross

            n_sparse = len(schema.sparse)
            cols = [i for i in self.field_index("context", "model.dnn latent_cross") if i < n_sparse]
            if not cols:
                from dynarec.errors import ConfigError

                raise ConfigError("model.dnn.latent_cross: needs a sparse feature in group 'context'")
            self.register_buffer("_ctx_cols", torch.tensor(cols, dtype=torch.long), persistent=False)
            self.latent_cross = LatentCross([schema.sparse[i].vocab_size for i in cols], self.mlp.out_features,
                                            tables=self.tables, legacy="latent_cross",
                                            features=[schema.sparse[i].name for i in cols])

    def compute(self, batch):
        h = self.mlp(self.flat_input(batch))
        if self.latent_cross is not None:
            h = self.latent_cross(h, batch.sparse[:, self._ctx_cols])
        return {t: head(h).squeeze(-1) for t, head in self.heads.items()}
