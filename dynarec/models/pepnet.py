"""PEPNet — Parameter and Embedding Personalized Network (Chang et al., KDD 2023, arXiv 2302.01115; docs/models.md
"pepnet — PEPNet (multi-domain, multi-task)").

* EPNet: ``O_ep = GateNU(E(F_d) ⊕ sg(E)) ⊙ E`` (see :mod:`dynarec.models.epnet`).
* PPNet: ``O_prior = E_g(F_u) ⊕ E_g(F_i) ⊕ E_g(F_a)`` from gate-only tables (priors: sparse features of
  ``gate_groups``), ``δ^(l) = GateNU^(l)(O_prior ⊕ sg(O_ep)) ∈ (0,2)^{T·w_l}`` split into T chunks.
* Per-task towers shared across domains: ``H_t^(0) = O_ep ⊕ dense``,
  ``H_t^(l+1) = f((δ_t^(l) ⊙ H_t^(l))W_t^(l) + b_t^(l))``, the 1-unit logit layer's input gated too
  (``gate_position="input"``); ``"output"`` gates hidden outputs and leaves the logit layer ungated.

So the PPNet gates get no gradient from EPNet or the shared tables (both behind ``sg``); E and EPNet train
through the towers. Defaults: towers ``tower_hidden=[100, 64]`` (official-style code), γ = 2, GateNU hidden
width = its output width (PEPNet's Gate NU; docs/models.md "Layers"). ``hidden`` is rejected (there is no
shared bottom). The logit is
returned without the sigmoid (BCE-with-logits)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dynarec.checks import rule
from dynarec.models.base import WIDTH, WIDTHS, BaseModel, ModelConfig
from dynarec.models.epnet import DomainSide, EPNetOptions
from dynarec.models.gate_checks import check_gate_common
from dynarec.models.keys import unless
from dynarec.models.gate_recorder import GateRecorder
from dynarec.models.registry import register
from dynarec.models.schema_index import default_prior_groups, sparse_fields
from dynarec.nn.gates import GatedMLP, LayerGates


@register("pepnet", paper="Chang et al., PEPNet: Parameter and Embedding Personalized Network for Infusing with "
          "Personalized Prior Information, KDD 2023", needs=("domain", "user", "item", "author"),
          optional=("user", "item", "author"), multi_task=True, multi_domain=True, tags=("gate",))
class PEPNet(DomainSide, GateRecorder, BaseModel):
    @dataclass
    class Config(EPNetOptions, ModelConfig):
        tower_hidden: list[int] = field(default_factory=lambda: [100, 64], metadata=WIDTHS)
        # None: the id-prior groups user / item / author that the schema has (an explicit list must all exist)
        gate_groups: list[str] | None = None
        gate_features: list[str] = field(default_factory=list)
        gate_emb_dim: int = field(default=16, metadata=WIDTH)
        # 0 = the gate's output width (T·w_l), as in the official-style code
        gate_hidden_dim: int = field(default=0, metadata=rule(min=0))
        gate_position: str = field(default="input", metadata=rule(choices=("input", "output")))

    no_effect = {"tower_hidden": None, "hidden": "it has no shared MLP; its per-task towers use tower_hidden",
                 "gate_groups": unless("gate_features", "gate_features is set and overrides it")}

    def __init__(self, schema, config):
        super().__init__(schema, config)
        c = config
        where = "model.pepnet"
        zero = check_gate_common(where, c)
        self._build_epnet(c, where, zero)
        self.prior_fields = sparse_fields(self, default_prior_groups(schema, c.gate_groups), c.gate_features,
                                          f"{where} gate_groups")
        self.priors = self.prior_embedding(self.prior_fields, c.gate_emb_dim)
        self.towers = nn.ModuleDict({t: GatedMLP(self.input_dim, c.tower_hidden, 1, c.activation, c.dropout,
                                                 c.batch_norm, c.gate_position) for t in self.tasks})
        dims = self.towers[self.tasks[0]].gate_dims
        self.ppnet = LayerGates(self.priors.out_dim + self.input_dim, dims, c.gate_hidden_dim or None, c.gamma,
                                len(self.tasks), zero)

    def compute(self, batch):
        self._start_record()
        x = self.flat_input(batch, self.epnet_embed(batch))
        gates = self.ppnet(torch.cat([self.priors(batch.sparse), x.detach()], 1))  # each [B, T, w_l]
        if len(self.tasks) == 1:
            gates = [g.unsqueeze(1) for g in gates]
        for i, g in enumerate(gates):
            self._record(f"ppnet.{i}", g)
        return {t: self.towers[t](x, [g[:, k] for g in gates]).squeeze(-1) for k, t in enumerate(self.tasks)}
