"""EPNet — Embedding Personalized Network (Chang et al., PEPNet, KDD 2023, EPNet eq.; docs/models.md "epnet — EPNet
on a DNN"), on a DNN.

``O_ep = GateNU(E(F_d) ⊕ sg(E)) ⊙ E`` rescales the general embeddings per domain, then a shared MLP with
one logit per task reads ``flat(O_ep) ⊕ dense``. F_d = the embedded features of ``domain_groups`` (default:
the domain id) ⊕ their dense features (per-domain statistics, if the schema has them). E(F_d) comes from the
shared table and is not detached; E is detached in the gate input only.

Options: ``epnet_granularity`` "field" (default, one gate per field — the paper's feature-wise product,
unverified) | "dim" (one gate per embedding dimension, the fun-rec code and (0,2)^{d_E});
``epnet_input`` "full" (``E(F_d) ⊕ sg(E)``, dynarec default) | "domain_only" (``E(F_d)``)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dynarec.checks import rule
from dynarec.models.base import BaseModel, ModelConfig
from dynarec.models.gate_checks import GAMMA, GATE_INIT
from dynarec.models.gate_checks import check_gate_common
from dynarec.models.gate_recorder import GateRecorder
from dynarec.models.registry import register
from dynarec.models.schema_index import dense_index
from dynarec.nn.gates import EPNet as EPNetLayer
from dynarec.nn.mlp import MLP


@dataclass
class EPNetOptions:
    """EPNet's config keys, shared by ``epnet`` and ``pepnet`` (both Configs inherit them)."""

    domain_groups: list[str] = field(default_factory=lambda: ["domain"], metadata=rule(nonempty=True))
    epnet_granularity: str = field(default="field", metadata=rule(choices=("field", "dim")))
    epnet_input: str = field(default="full", metadata=rule(choices=("full", "domain_only")))
    gamma: float = field(default=2.0, metadata=GAMMA)
    gate_init: str = field(default="zero", metadata=GATE_INIT)


class DomainSide:
    """Mixin resolving F_d (``_setup_domain`` / ``domain_input``) and the EPNet step shared by ``epnet`` and
    ``pepnet`` (``_build_epnet`` in the constructor, ``epnet_embed`` in forward)."""

    def _build_epnet(self, c, where: str, zero: bool) -> None:
        d_dom = self._setup_domain(c.domain_groups, f"{where} domain_groups")
        self.epnet = EPNetLayer(d_dom, self.num_fields, c.embed_dim, c.epnet_granularity, c.epnet_input,
                                gamma=c.gamma, zero_init_last=zero)

    def epnet_embed(self, batch) -> torch.Tensor:
        """``O_ep = GateNU(E(F_d) ⊕ sg(E)) ⊙ E`` [B, F, d], its gates recorded as "epnet"."""
        emb = self.embed(batch)
        g_ep = self.epnet.gates(emb, self.domain_input(emb, batch))
        self._record("epnet", g_ep, self.domain_fields)
        return g_ep * emb

    def _setup_domain(self, groups, what):
        self.domain_fields = self.field_index(groups, what)
        self.register_buffer("_dom_fields", torch.tensor(self.domain_fields, dtype=torch.long), persistent=False)
        self.register_buffer("_dom_dense", torch.tensor(dense_index(self.schema, groups), dtype=torch.long),
                             persistent=False)
        return len(self.domain_fields) * self.config.embed_dim + len(self._dom_dense)

    def domain_input(self, emb, batch):
        x = emb[:, self._dom_fields].flatten(1)
        return torch.cat([x, batch.dense[:, self._dom_dense]], 1) if len(self._dom_dense) else x


@register("epnet", paper="Chang et al., PEPNet: Parameter and Embedding Personalized Network, KDD 2023 (EPNet)",
          needs=("domain",), multi_task=True, multi_domain=True, tags=("gate",))
class EPNetModel(DomainSide, GateRecorder, BaseModel):
    @dataclass
    class Config(EPNetOptions, ModelConfig):
        pass

    def __init__(self, schema, config):
        super().__init__(schema, config)
        c = config
        self._build_epnet(c, "model.epnet", check_gate_common("model.epnet", c))
        self.mlp = MLP(self.input_dim, c.hidden, len(self.tasks), c.activation, c.dropout, c.batch_norm)

    def compute(self, batch):
        self._start_record()
        out = self.mlp(self.flat_input(batch, self.epnet_embed(batch)))
        return {t: out[:, i] for i, t in enumerate(self.tasks)}
