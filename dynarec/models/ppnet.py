"""PPNet — Parameter Personalized Network (Kuaishou 2019; no paper, described in Kuaishou articles and
in PEPNet, KDD 2023; docs/models.md "ppnet — PPNet (Kuaishou 2019)").

Every layer of the DNN has its own Gate NU (Linear → ReLU → Linear → γσ, γ = 2). The gate input is
``sg(E) ⊕ E_g(priors)``: the id priors (by default every sparse feature of the groups user / item / author)
come from gate-only tables that train through the gates, while the general embeddings E are detached in the
gate input only — they still train through the main path (the Scenario-Wise-Rec bug detached the main path,
docs/models.md "Tests"). E here is the flat input (embeddings ⊕ dense features).

``gate_position="input"`` (dynarec default, as the articles write): ``H_{l+1} = f((δ_l ⊙ H_l)W_l + b_l)``
for every layer including the logit layer (one logit per task: a ``Linear(d, T)`` equals T linear heads).
``gate_position="output"`` (FuxiCTR / TF code): gates the hidden outputs, the logit layer is not gated.
Defaults follow FuxiCTR: hidden [64, 64, 64], gate_hidden_dim 64, gate_emb_dim 16.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dynarec.checks import rule
from dynarec.models.base import WIDTH, WIDTHS, BaseModel, ModelConfig
from dynarec.models.gate_checks import GAMMA, GATE_INIT, check_gate_common
from dynarec.models.keys import unless
from dynarec.models.gate_recorder import GateRecorder
from dynarec.models.registry import register
from dynarec.models.schema_index import default_prior_groups, sparse_fields
from dynarec.nn.gates import GatedMLP, LayerGates


@register("ppnet", paper="Kuaishou PPNet (2019), as described in Chang et al., PEPNet, KDD 2023",
          needs=("user", "item", "author"),
          optional=("user", "item", "author"), multi_task=True, multi_domain=False, tags=("gate",))
class PPNet(GateRecorder, BaseModel):
    @dataclass
    class Config(ModelConfig):
        hidden: list[int] = field(default_factory=lambda: [64, 64, 64], metadata=WIDTHS)
        gate_hidden_dim: int = field(default=64, metadata=WIDTH)
        gate_emb_dim: int = field(default=16, metadata=WIDTH)
        # None: the id-prior groups user / item / author that the schema has (an explicit list must all exist)
        gate_groups: list[str] | None = None
        gate_features: list[str] = field(default_factory=list)  # explicit prior features (overrides groups)
        gate_position: str = field(default="input", metadata=rule(choices=("input", "output")))
        gamma: float = field(default=2.0, metadata=GAMMA)
        gate_init: str = field(default="zero", metadata=GATE_INIT)  # zero (gates start at 1) | default

    no_effect = {"gate_groups": unless("gate_features", "gate_features is set and overrides it")}

    def __init__(self, schema, config):
        super().__init__(schema, config)
        c = config
        zero = check_gate_common("model.ppnet", c)
        self.prior_fields = sparse_fields(self, default_prior_groups(schema, c.gate_groups), c.gate_features,
                                          "model.ppnet gate_groups")
        self.priors = self.prior_embedding(self.prior_fields, c.gate_emb_dim)
        self.mlp = GatedMLP(self.input_dim, c.hidden, len(self.tasks), c.activation, c.dropout, c.batch_norm,
                            c.gate_position)
        self.gates = LayerGates(self.priors.out_dim + self.input_dim, self.mlp.gate_dims, c.gate_hidden_dim,
                                c.gamma, 1, zero)

    def compute(self, batch):
        self._start_record()
        x = self.flat_input(batch)
        gates = self.gates(torch.cat([x.detach(), self.priors(batch.sparse)], 1))
        for i, g in enumerate(gates):
            self._record(f"ppnet.{i}", g)
        out = self.mlp(x, gates)
        return {t: out[:, i] for i, t in enumerate(self.tasks)}
