"""POSO — Personalized Cold Start Modules (Dai et al., arXiv 2108.04690, Kuaishou; docs/models.md "poso — POSO
(MLP-POSO and MMoE-POSO)").

Gates computed from user-group features x^pc rescale the main network, so rare user groups (new users)
are not submerged. x^pc = the dense features of ``pc_groups`` (raw scalars such as activity) ⊕, with
``pc_embeddings``, stop-gradient copies of their sparse embeddings (e.g. the uid). Gates are C·σ
(C = ``gamma`` = 2; dynarec uses no softmax), computed by ``σ(MLP_{d_pc→gate_hidden→w})``; the
last layer is zero-initialised so the model starts as its backbone.

One registered name, two forms (``form``):
* ``"mlp"`` (MLP-POSO, default): ``h_{l+1} = C·g_l(x^pc) ⊙ φ(h_l W_l + b_l)`` on every hidden layer, one
  linear logit per task.
* ``"mmoe"`` (MMoE-POSO): ``x̂_t = Σ_i softmax(xW_t)_i · (C·g_i(x^pc) ⊙ f_i(x))``, then the task's tower.
  ``expert_gate="vector"`` (default, NextRec) gives each expert a gate vector as wide as its output;
  ``"scalar"`` one scalar per expert (the paper's general form ``C Σ_i g(x^pc)_i f_i(x)``).
Defaults from NextRec: gate_hidden 32, num_experts 4."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dynarec.errors import ConfigError
from dynarec.checks import rule
from dynarec.models.base import COUNT, WIDTH, BaseModel, ModelConfig
from dynarec.models.gate_checks import GAMMA, GATE_INIT, check_gate_common
from dynarec.models.keys import when
from dynarec.models.gate_recorder import GateRecorder
from dynarec.models.heads import task_heads
from dynarec.models.registry import register
from dynarec.models.schema_index import dense_index
from dynarec.nn.gates import GatedMLP, GateNU
from dynarec.nn.mlp import MLP


@register("poso", paper="Dai et al., POSO: Personalized Cold Start Modules for Large-scale Recommender Systems, "
          "arXiv 2108.04690", needs=("user",), multi_task=True, multi_domain=False, tags=("gate",))
class POSO(GateRecorder, BaseModel):
    @dataclass
    class Config(ModelConfig):
        form: str = field(default="mlp", metadata=rule(choices=("mlp", "mmoe")))  # MLP-POSO | MMoE-POSO
        pc_groups: list[str] = field(default_factory=lambda: ["user"], metadata=rule(nonempty=True))
        pc_embeddings: bool = True  # add sg-copies of the pc groups' sparse embeddings to x^pc
        gate_hidden: int = field(default=32, metadata=WIDTH)
        num_experts: int = field(default=4, metadata=COUNT)  # mmoe form
        expert_gate: str = field(default="vector", metadata=rule(choices=("vector", "scalar")))  # mmoe form
        gamma: float = field(default=2.0, metadata=GAMMA)  # the paper's C
        gate_init: str = field(default="zero", metadata=GATE_INIT)

    no_effect = {k: when(form="mmoe") for k in ("tower_hidden", "num_experts", "expert_gate")}

    def __init__(self, schema, config):
        super().__init__(schema, config)
        c = config
        where = "model.poso"
        zero = check_gate_common(where, c)
        groups = self.require_groups(c.pc_groups, f"{where}.pc_groups")  # a group may be dense-only here
        n_sparse = len(schema.sparse)
        self.pc_fields = [i for i, f in enumerate(schema.fields) if f.group in groups and i < n_sparse] \
            if c.pc_embeddings else []
        pc_dense = dense_index(schema, groups)
        self.register_buffer("_pc_fields", torch.tensor(self.pc_fields, dtype=torch.long), persistent=False)
        self.register_buffer("_pc_dense", torch.tensor(pc_dense, dtype=torch.long), persistent=False)
        d_pc = len(self.pc_fields) * c.embed_dim + len(pc_dense)
        if d_pc == 0:
            raise ConfigError(f"{where}.pc_groups: groups {groups} give no dense feature and pc_embeddings is "
                              "false, so the gates would have no input")
        if c.form == "mlp":
            self.mlp = GatedMLP(self.input_dim, c.hidden, len(self.tasks), c.activation, c.dropout, c.batch_norm,
                                position="output")
            self.pc_gates = nn.ModuleList(GateNU(d_pc, w, c.gate_hidden, c.gamma, zero) for w in self.mlp.gate_dims)
        else:
            self.experts = nn.ModuleList(MLP(self.input_dim, c.hidden, None, c.activation, c.dropout, c.batch_norm)
                                         for _ in range(c.num_experts))
            d = self.experts[0].out_features
            w = d if c.expert_gate == "vector" else 1
            self.pc_gates = nn.ModuleList(GateNU(d_pc, w, c.gate_hidden, c.gamma, zero) for _ in range(c.num_experts))
            self.task_gates = nn.ModuleDict({t: nn.Linear(self.input_dim, c.num_experts) for t in self.tasks})
            self.towers = task_heads(d, self.tasks, c.tower_hidden, c.activation, c.dropout)

    def pc_input(self, emb, batch):
        """x^pc = dense pc features ⊕ sg(pc embeddings)."""
        parts = []
        if len(self._pc_dense):
            parts.append(batch.dense[:, self._pc_dense])
        if len(self._pc_fields):
            parts.append(emb[:, self._pc_fields].detach().flatten(1))
        return torch.cat(parts, 1)

    def compute(self, batch):
        self._start_record()
        emb = self.embed(batch)
        x = self.flat_input(batch, emb)
        xpc = self.pc_input(emb, batch)
        gates = [g(xpc) for g in self.pc_gates]
        for i, g in enumerate(gates):
            self._record(f"poso.{i}", g)
        if self.config.form == "mlp":
            out = self.mlp(x, gates)
            return {t: out[:, i] for i, t in enumerate(self.tasks)}
        ex = torch.stack([g * e(x) for g, e in zip(gates, self.experts)], 1)  # [B, n, d]
        return {t: self.towers[t](torch.einsum("bn,bnd->bd", torch.softmax(self.task_gates[t](x), -1), ex))
                .squeeze(-1) for t in self.tasks}
