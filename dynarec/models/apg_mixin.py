"""APG's condition design and layers as a mixin for the CTR backbones (Yan et al., NeurIPS 2022,
arXiv 2203.16218; docs/models.md "apg_<backbone> — APG: Adaptive Parameter Generation"): :class:`APGOptions` (the
hyper-parameters) and
:class:`APGMixin`, which overrides a :class:`~dynarec.models.ctr_backbone.CTRBackbone`'s ``build_deep`` /
``deep`` hooks so its deep MLP becomes APG layers (:class:`dynarec.nn.apg.APGMLP`). Registers no model.

Condition design (config, resolved against the schema's groups):
  * ``condition_mode: group-wise`` — z = Emb(group id) for the single group in ``condition_groups``. For
    ``domain`` it is APG's own (undetached) table of the domain id (table ``apg_domain`` of the model's
    collection), width ``condition_dim``, ⊕ the shared embeddings of any other ``domain``-group features;
    for another group (``user``, ``item``, ...) it is the concatenated shared embeddings of that group's fields.
    The group's dense features (e.g. per-domain statistics of the ``domain`` group) join its condition
    (⊕ their raw values): they describe the group as its ids do (they were silently dropped before).
  * ``detach_condition: true`` stops the gradient from G into the SHARED embeddings of the condition only;
    APG's own domain table keeps training (it exists only for the condition). Rejected where the condition
    has no shared embedding (the default: the domain id alone), where it would have no effect.
  * ``condition_mode: mix-wise`` — one factor per group in ``condition_groups`` (≥ 2), combined
    ``aggregate_at: input`` by ``aggregation`` concat | mean | attention, or ``aggregate_at: output`` (one S^j
    per factor, outputs combined by mean | attention; concat is rejected).
  * ``condition_mode: self-wise`` — each layer's own input (FuxiCTR's default); no condition features.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dynarec.checks import rule
from dynarec.errors import ConfigError
from dynarec.models.keys import depends, when
from dynarec.models.schema_index import dense_index
from dynarec.nn.apg import APGMLP, INPUT_AGGREGATIONS, VERSIONS, InputAggregation, merge_for_inference
from dynarec.tables.spec import TableSpec

CONDITION_MODES = ("group-wise", "mix-wise", "self-wise")


@dataclass
class APGOptions:
    """APG hyper-parameters (defaults: docs/models.md "apg_<backbone> — APG: Adaptive Parameter Generation")."""

    version: str = field(default="v5", metadata=rule(choices=VERSIONS))
    rank_k: int = field(default=32, metadata=rule(min=1))
    overparam_p: int = field(default=128, metadata=rule(min=1))
    hypernet_hidden: list[int] = field(default_factory=lambda: [64], metadata=rule(min=1))
    generate_bias: bool = True
    condition_mode: str = field(default="group-wise", metadata=rule(choices=CONDITION_MODES))
    condition_groups: list[str] = field(default_factory=lambda: ["domain"], metadata=rule(nonempty=True))
    aggregation: str = field(default="concat", metadata=rule(choices=INPUT_AGGREGATIONS))  # mix-wise only
    aggregate_at: str = field(default="input", metadata=rule(choices=("input", "output")))  # mix-wise only
    condition_dim: int = field(default=16, metadata=rule(min=1))  # APG's own domain-id table width; mean/attention width
    detach_condition: bool = False  # stop the gradient from G into the SHARED embeddings (APG's own table trains)


def _condition_dim_reason(c) -> str | None:
    if c.condition_mode == "self-wise":
        return "self-wise has no condition embedding"
    if "domain" in c.condition_groups or (c.condition_mode == "mix-wise" and c.aggregate_at == "input"
                                          and c.aggregation != "concat"):
        return None
    return "only the width of APG's own domain table (condition_groups with domain) or of a mix-wise mean / attention"


def _detach_reason(c) -> str | None:
    if c.condition_mode == "self-wise":
        return "self-wise conditions each layer on its own input; there is no condition embedding to detach"
    return None


# keys of APGOptions without effect in some designs (merged into every apg_* model's no_effect)
APG_NO_EFFECT = {
    "rank_k": when(version=("v2", "v3", "v4", "v5")),
    "overparam_p": when(version="v5"),
    "condition_groups": when(condition_mode=("group-wise", "mix-wise")),
    "aggregation": when(condition_mode="mix-wise"),
    "aggregate_at": when(condition_mode="mix-wise"),
    "condition_dim": depends(_condition_dim_reason),
    "detach_condition": depends(_detach_reason),
}


class APGMixin:
    """Overrides a :class:`CTRBackbone`'s ``build_deep`` / ``deep`` hooks with APG layers."""

    no_effect = APG_NO_EFFECT

    def _apg_setup(self) -> None:
        c = self.config  # choices and ranges: declared on APGOptions (dynarec.checks)
        groups = list(dict.fromkeys(c.condition_groups))
        self._apg_mode = c.condition_mode
        self._apg_groups: list[str] = []
        self._apg_fields: dict[str, list[int]] = {}
        self._apg_dense: dict[str, list[int]] = {}
        self.apg_input_agg = None
        self.apg_per_group = False
        if c.condition_mode == "self-wise":
            self._apg_cond_dim = None
            return
        if c.condition_mode == "group-wise" and len(groups) != 1:
            raise ConfigError(f"model.{self.registry_name}.condition_groups: group-wise needs exactly one group, got "
                              f"{groups}; use condition_mode: mix-wise for several")
        if c.condition_mode == "mix-wise" and len(groups) < 2:
            raise ConfigError(f"model.{self.registry_name}.condition_groups: mix-wise needs >= 2 groups, got {groups}")
        if c.condition_mode == "mix-wise" and c.aggregate_at == "output" and c.aggregation == "concat":
            raise ConfigError(f"model.{self.registry_name}.aggregation: 'concat' cannot aggregate outputs "
                              "(aggregate_at: output); use mean or attention")
        dims = []
        for g in groups:
            if g == "domain":
                # APG's own condition table of the domain id (dense optimizer, never detached)
                self.tables.add(TableSpec("apg_domain", self.num_domains, c.condition_dim, 1.0, "dense",
                                          (self.schema.domain,)), legacy="apg_domain_table")
                dom_field = [f.name for f in self.schema.fields].index(self.schema.domain)
                idx = [i for i in self.field_index("domain", "apg condition") if i != dom_field]
                width = c.condition_dim + len(idx) * c.embed_dim
            else:
                idx = self.field_index(g, f"apg condition (model.{self.registry_name}.condition_groups)")
                width = len(idx) * c.embed_dim
            dense = dense_index(self.schema, [g])  # the group's dense features (e.g. per-domain statistics)
            self._apg_groups.append(g)
            self._apg_fields[g] = idx
            self._apg_dense[g] = dense
            dims.append(width + len(dense))
        if c.detach_condition and not any(self._apg_fields.values()):
            raise ConfigError(f"model.{self.registry_name}.detach_condition: the condition of {groups} has no shared "
                              "embedding to detach (APG's own domain table always trains); add a feature to the "
                              "group or drop the key")
        if c.condition_mode == "group-wise":
            self._apg_cond_dim = dims[0]
            # z = Emb(domain id) alone: run G once per domain row of the table, gather per sample (exact)
            self.apg_per_group = groups == ["domain"] and not self._apg_fields["domain"] and not self._apg_dense["domain"]
        elif c.aggregate_at == "input":
            self.apg_input_agg = InputAggregation(dims, c.aggregation, c.condition_dim)
            self._apg_cond_dim = self.apg_input_agg.out_dim
        else:
            self._apg_cond_dim = dims

    def _apg_kwargs(self) -> dict:
        c = self.config
        return dict(version=c.version, rank_k=c.rank_k, overparam_p=c.overparam_p,
                    hypernet_hidden=list(c.hypernet_hidden), generate_bias=c.generate_bias,
                    output_aggregation=c.aggregation if c.aggregate_at == "output" else "mean")

    def build_deep(self, in_dim: int, hidden) -> nn.Module:
        if not hasattr(self, "_apg_mode"):
            self._apg_setup()
        c = self.config
        if not hidden:
            raise ConfigError(f"model.{self.registry_name}.hidden: APG needs at least one hidden layer to generate")
        return APGMLP(in_dim, list(hidden), self._apg_cond_dim, None, c.activation, c.dropout, c.batch_norm,
                      **self._apg_kwargs())

    @property
    def apg_domain_table(self) -> nn.Embedding:
        """APG's condition table of the domain id (``group-wise`` / ``mix-wise`` with the domain group)."""
        if "apg_domain" not in self.tables:
            raise AttributeError("apg_domain_table")
        return self.tables["apg_domain"]

    def apg_condition(self, batch, emb: torch.Tensor):
        """The condition for this batch: None (self-wise), a tensor, or a list of factors (output aggregation)."""
        if self._apg_mode == "self-wise":
            return None
        factors = []
        for g in self._apg_groups:
            idx, dense = self._apg_fields[g], self._apg_dense[g]
            parts = [self.apg_domain_table(batch.domain)] if g == "domain" else []
            if idx:
                shared = emb[:, idx].flatten(1)
                parts.append(shared.detach() if self.config.detach_condition else shared)
            if dense:
                parts.append(batch.dense[:, dense])
            factors.append(torch.cat(parts, 1) if len(parts) > 1 else parts[0])
        if self._apg_mode == "group-wise":
            return factors[0]
        if self.apg_input_agg is not None:
            return self.apg_input_agg(factors)
        return factors

    def apg_condition_args(self, batch, emb) -> tuple:
        """(condition, index) for APGMLP: with ``apg_per_group`` the condition is the domain table itself."""
        if self.apg_per_group:
            return self.apg_domain_table.weight, batch.domain
        return self.apg_condition(batch, emb), None

    def deep(self, x, batch, emb):
        return self.mlp(x, *self.apg_condition_args(batch, emb))

    def merge_for_inference(self):
        """Fold every v5 layer's U_l U_r, V_l V_r into v4 form (exact, idempotent); returns self."""
        merge_for_inference(self)
        return self
