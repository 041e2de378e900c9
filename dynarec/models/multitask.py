"""Multi-task model base shared by ``mmoe``, ``ple`` and ``sparse_moe`` (registers no model).

:class:`MTLModel` adds to :class:`BaseModel`, configured through :class:`MTLConfig`:

* **position-bias tower** (``position_tower: true``; Zhao et al., RecSys 2019; docs/models.md "Shallow
  position-bias tower"): the schema's ``position`` feature is
  removed from the main input and fed to a :class:`~dynarec.nn.position.PositionBiasTower` whose logit is
  added to each task in ``position_tasks`` (default: all). Position dropout ``position_dropout`` (0.1) in
  training; at inference the position is always "missing", so predictions do not depend on it.
* **aleatoric heads** (``aleatoric: true``; Kendall & Gal, NeurIPS 2017; docs/models.md "Aleatoric and epistemic
  uncertainty"): every tower outputs (mean, s = log σ̂²). The
  forward contract is unchanged (``{task: mean logit / value}``); ``self.last_log_var`` holds s per task and
  :meth:`task_loss` uses the heteroscedastic loss (regression) or logit sampling (binary).
* **balance loss**: noisy top-k gates report theirs through ``extra_loss()``.
* **gate usage**: :meth:`gate_modules` names the gates that ``BaseModel.gate_usage`` summarises.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dynarec.errors import ConfigError
from dynarec.models.base import COUNT, DROPOUT, WIDTHS, BaseModel, ModelConfig
from dynarec.models.keys import when
from dynarec.models.heads import task_heads
from dynarec.nn.position import PositionBiasTower


@dataclass
class MTLConfig(ModelConfig):
    # shallow position-bias tower (Zhao et al., RecSys 2019)
    position_tower: bool = False
    position_feature: str = ""  # default: the schema's single sparse feature of group 'position'
    position_cross: list[str] = field(default_factory=list)  # sparse features crossed with position, e.g. [device]
    position_dropout: float = field(default=0.1, metadata=DROPOUT)
    position_hidden: list[int] = field(default_factory=list, metadata=WIDTHS)  # [] = linear shallow tower
    position_tasks: list[str] = field(default_factory=list)  # [] = every task
    # aleatoric heads (Kendall & Gal, NeurIPS 2017)
    aleatoric: bool = False
    logit_samples: int = field(default=10, metadata=COUNT)


class MTLModel(BaseModel):
    """Base of the multi-task expert models (see module docstring)."""

    Config = MTLConfig
    no_effect = {"tower_hidden": None, "logit_samples": when(aleatoric=True),
                 **{k: when(position_tower=True) for k in ("position_feature", "position_cross", "position_dropout",
                                                           "position_hidden", "position_tasks")}}

    def __init__(self, schema, config: MTLConfig):
        super().__init__(schema, config)
        c = config
        self.task_types = schema.task_types
        self.main_fields = list(range(self.num_fields))
        self.position_tower = None
        if c.position_tower:
            self._build_position_tower(c)
        self.input_dim = len(self.main_fields) * c.embed_dim + self.dense_dim
        self.last_log_var: dict[str, torch.Tensor] = {}

    # ---- position tower ------------------------------------------------------------------------
    def _build_position_tower(self, c: MTLConfig) -> None:
        sparse_names = [f.name for f in self.schema.sparse]
        if c.position_feature:
            if c.position_feature not in sparse_names:
                raise ConfigError(f"position_feature: '{c.position_feature}' is not a sparse feature of the "
                                  f"schema (have: {', '.join(sparse_names)})")
            pos_name = c.position_feature
        else:
            cands = [f.name for f in self.schema.sparse if f.group == "position"]
            if len(cands) != 1:
                raise ConfigError("position_tower needs exactly one sparse feature with group: position "
                                  f"(found {cands or 'none'}); or set position_feature")
            pos_name = cands[0]
        for n in c.position_cross:
            if n not in sparse_names or n == pos_name:
                raise ConfigError(f"position_cross: '{n}' is not a sparse feature of the schema (have: "
                                  f"{', '.join(sparse_names)})")
        for t in c.position_tasks:
            if t not in self.tasks:
                raise ConfigError(f"position_tasks: unknown task '{t}' (tasks: {', '.join(self.tasks)})")
        self.pos_col = sparse_names.index(pos_name)
        self.register_buffer("pos_cross_cols", torch.tensor([sparse_names.index(n) for n in c.position_cross],
                                                            dtype=torch.long), persistent=False)
        self.pos_tasks = list(c.position_tasks or self.tasks)
        sizes = [max(self.schema.feature(n).vocab_size, 1) for n in c.position_cross]
        self.position_tower = PositionBiasTower(max(self.schema.feature(pos_name).vocab_size, 2), len(self.pos_tasks),
                                                sizes, hidden=c.position_hidden, dropout=c.position_dropout,
                                                tables=self.tables, legacy="position_tower")
        # the main towers never see the position (it is explained by the shallow tower only)
        pos_groups = {f.name for f in self.schema.fields if f.group == "position"} | {pos_name}
        self.main_fields = [i for i, f in enumerate(self.schema.fields) if f.name not in pos_groups]

    def position_bias(self, batch) -> torch.Tensor | None:
        """Shallow-tower logits ``[B, len(position_tasks)]`` (position missing at inference)."""
        if self.position_tower is None:
            return None
        extra = batch.sparse[:, self.pos_cross_cols] if len(self.pos_cross_cols) else None
        return self.position_tower(batch.sparse[:, self.pos_col], extra)

    # ---- inputs / outputs ----------------------------------------------------------------------
    def main_input(self, batch) -> torch.Tensor:
        """[embeddings of the main fields ⊕ dense] — position features removed when the tower is on."""
        e = self.embed(batch)
        if len(self.main_fields) != self.num_fields:
            e = e[:, self.main_fields]
        return torch.cat([e.flatten(1), batch.dense], 1) if self.dense_dim else e.flatten(1)

    def make_towers(self, in_dim: int) -> nn.ModuleDict:
        c = self.config
        out = 2 if c.aleatoric else 1
        return task_heads(in_dim, self.tasks, c.tower_hidden, c.activation, c.dropout, out)

    def finish(self, batch, tower_out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Split (mean, log-variance) heads, add the position bias; ``{task: [B]}``."""
        out = {}
        self.last_log_var = {}
        for t, y in tower_out.items():
            out[t] = y[:, 0]
            if y.shape[1] > 1:
                self.last_log_var[t] = y[:, 1]
        bias = self.position_bias(batch)
        if bias is not None:
            for j, t in enumerate(self.pos_tasks):
                out[t] = out[t] + bias[:, j]
        return out

    # ---- losses --------------------------------------------------------------------------------
    def task_loss(self, outputs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor],
                  types: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
        """Per-task losses of the last forward: heteroscedastic / logit-sampling when ``aleatoric``."""
        from dynarec.losses import heteroscedastic_loss, sampled_logit_bce, task_losses

        types = types or self.task_types
        if not self.config.aleatoric:
            return task_losses(outputs, labels, types)
        out = {}
        for t, y in outputs.items():
            s = self.last_log_var[t]
            if types.get(t, "binary") == "binary":
                out[t] = sampled_logit_bce(y, s, labels[t], self.config.logit_samples)
            else:
                out[t] = heteroscedastic_loss(y, s, labels[t])
        return out

    def balance_modules(self) -> list[nn.Module]:
        return []

    def extra_loss(self) -> torch.Tensor | None:
        ls = [m.balance_loss for m in self.balance_modules() if m.balance_loss is not None]
        return torch.stack(ls).sum() if ls else None
