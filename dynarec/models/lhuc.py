"""LHUC on a DNN (Swietojanski, Li, Renals, "Learning Hidden Unit Contributions for Unsupervised Acoustic
Model Adaptation", TASLP 2016; docs/models.md "lhuc — LHUC on a DNN").

Each hidden layer's units are rescaled per group: ``h^l = 2σ(r_g^l) ⊙ φ(h^{l−1}W^l + b^l)``, r initialised
to 0 (the model starts as the plain DNN). The group is the value of a sparse feature, by default the
domain id (``group_feature=""``), so this is a multi-domain DNN with per-domain hidden-unit contributions.
One linear logit per task reads the last hidden layer."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from dynarec.errors import ConfigError
from dynarec.models.base import BaseModel, ModelConfig
from dynarec.models.gate_checks import GAMMA, GATE_INIT, check_gate_common
from dynarec.models.registry import register
from dynarec.nn.gates import LHUC, GatedMLP


@register("lhuc", paper="Swietojanski, Li, Renals, Learning Hidden Unit Contributions, IEEE/ACM TASLP 2016",
          multi_task=True, multi_domain=True, tags=("gate",))  # reads the schema's domain COLUMN, whatever its group
class LHUCModel(BaseModel):
    @dataclass
    class Config(ModelConfig):
        group_feature: str = ""  # sparse feature giving the group id ("" = the domain column)
        gamma: float = field(default=2.0, metadata=GAMMA)
        gate_init: str = field(default="zero", metadata=GATE_INIT)  # only "zero" (r = 0) is meaningful; "default" draws r ~ N(0, 0.1)

    def __init__(self, schema, config):
        super().__init__(schema, config)
        c = config
        zero = check_gate_common("model.lhuc", c)
        name = c.group_feature or schema.domain
        sparse = [f.name for f in schema.sparse]
        if name not in sparse:
            raise ConfigError(f"model.lhuc.group_feature: '{name}' is not a sparse feature of the schema "
                              f"(have: {', '.join(sparse)})")
        self.group_col = sparse.index(name)
        groups = max(schema.sparse[self.group_col].vocab_size, 1)
        self.mlp = GatedMLP(self.input_dim, c.hidden, len(self.tasks), c.activation, c.dropout, c.batch_norm,
                            position="output")
        self.lhuc = nn.ModuleList(LHUC(groups, w, c.gamma) for w in self.mlp.gate_dims)
        if not zero:
            for m in self.lhuc:
                nn.init.normal_(m.r, std=0.1)

    def compute(self, batch):
        g = batch.sparse[:, self.group_col]
        out = self.mlp(self.flat_input(batch), [m.gate(g) for m in self.lhuc])
        return {t: out[:, i] for i, t in enumerate(self.tasks)}
