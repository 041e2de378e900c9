"""STAR (Sheng et al., CIKM 2021, arXiv 2101.11427; docs/models.md "STAR — `star`").

``x = PN(E ⊕ dense; p)`` (partitioned normalisation of the concatenated input, per domain p),
``s_main = StarFCN(x; p)`` (STARLinear layers ``W_p ⊙ W``, ``b_p + b``; the LAST layer has no activation),
``s_aux = MLP(Emb(p) ⊕ x_aux)`` (auxiliary network), logit ``= s_main + s_aux``.

Multi-task: ``task_towers=False`` (default) makes the last STARLinear emit one logit per task (and the
auxiliary net one per task); ``task_towers=True`` gives every task its own star tower
(``tower_hidden`` then a STARLinear logit) over the shared star bottom ``hidden``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dynarec.errors import ConfigError
from dynarec.checks import rule
from dynarec.models.base import POSITIVE, WIDTHS, BaseModel, ModelConfig
from dynarec.models.keys import depends, when
from dynarec.models.registry import register
from dynarec.nn.mlp import MLP
from dynarec.nn.pn_stats import refresh_partitioned_norms
from dynarec.nn.star import MODES, PartitionedNorm, STARMLP


def _pn_unused(c) -> str | None:
    return None if c.partitioned_norm or c.pn_hidden else "only used with partitioned_norm or pn_hidden: true"


@register("star", paper="Sheng et al., One Model to Serve All: Star Topology Adaptive Recommender for "
          "Multi-Domain CTR Prediction, CIKM 2021", needs=("domain",), multi_task=True, multi_domain=True)
class STAR(BaseModel):
    @dataclass
    class Config(ModelConfig):
        # star FCN (the paper's widths)
        hidden: list[int] = field(default_factory=lambda: [256, 128, 64], metadata=rule(min=1, nonempty=True))
        tower_hidden: list[int] = field(default_factory=lambda: [32], metadata=WIDTHS)  # only with task_towers
        aux_hidden: list[int] = field(default_factory=lambda: [64], metadata=WIDTHS)
        aux_groups: list[str] = field(default_factory=lambda: ["domain"])  # x_aux: fields fed to the aux net
        aux: bool = True
        partitioned_norm: bool = True  # PN on the concatenated input
        pn_hidden: bool = False  # also PN after every hidden STARLinear (dynarec option)
        pn_decay: float = field(default=0.99, metadata=rule(min=0, max=1, max_open=True))
        pn_eps: float = field(default=1e-3, metadata=POSITIVE)
        # rows per epoch end over which PN's running statistics are recomputed exactly through the current
        # model (dynarec choice, issue 29); 0 = keep the moving average of the training batches (pn_decay)
        pn_stats_rows: int = field(default=1_000_000, metadata=rule(min=0))
        task_towers: bool = False
        # group | gather: two computations of the same outputs (speed only; benchmarks/star_gather_vs_group.py)
        star_mode: str = field(default="group", metadata=rule(choices=MODES))

    no_effect = {"tower_hidden": when(task_towers=True), "aux_hidden": when(aux=True), "aux_groups": when(aux=True),
                 "pn_decay": depends(_pn_unused), "pn_eps": depends(_pn_unused),
                 "pn_stats_rows": depends(_pn_unused)}

    def __init__(self, schema, config):
        super().__init__(schema, config)
        c = config
        if c.batch_norm:
            raise ConfigError("model.star.batch_norm: STAR normalises per domain; use partitioned_norm / "
                              "pn_hidden instead of batch_norm")
        D, T = self.num_domains, len(self.tasks)
        self.pn = PartitionedNorm(self.input_dim, D, c.pn_decay, c.pn_eps) if c.partitioned_norm else None
        star_kw = dict(num_domains=D, act=c.activation, dropout=c.dropout, norm=c.pn_hidden, mode=c.star_mode,
                       norm_decay=c.pn_decay, norm_eps=c.pn_eps)
        if c.task_towers:
            self.fcn = STARMLP(self.input_dim, c.hidden, None, **star_kw)
            self.towers = nn.ModuleDict({t: STARMLP(self.fcn.out_features, c.tower_hidden, 1, **star_kw)
                                         for t in self.tasks})
        else:
            self.fcn = STARMLP(self.input_dim, c.hidden, T, **star_kw)
            self.towers = None
        if c.aux:
            groups = list(dict.fromkeys(["domain", *c.aux_groups]))
            self.aux_fields = self.field_index(groups, "model.star.aux_groups")
            self.aux_net = MLP(len(self.aux_fields) * c.embed_dim, c.aux_hidden, T, c.activation, c.dropout)
        else:
            self.aux_net = None

    def refresh_statistics(self, batches) -> int:
        """The trainer's epoch-end hook (:class:`~dynarec.train.norm_stats.NormStatistics`): every partitioned
        norm's running statistics := its input's exact per-domain mean / variance over the first
        ``pn_stats_rows`` rows of ``batches()`` through this model in eval mode -> layers refreshed (0 when
        ``pn_stats_rows`` is 0 or there is no PN: the moving average of training then stays)."""
        if not self.config.pn_stats_rows:
            return 0
        return refresh_partitioned_norms(self, batches, self.config.pn_stats_rows)

    def main_logits(self, batch, emb: torch.Tensor | None = None) -> torch.Tensor:
        """s_main [B, T]."""
        x = self.flat_input(batch, emb)
        dom = batch.domain
        if self.pn is not None:
            x = self.pn(x, dom)
        h = self.fcn(x, dom)
        if self.towers is None:
            return h
        return torch.cat([self.towers[t](h, dom) for t in self.tasks], 1)

    def aux_logits(self, batch, emb: torch.Tensor) -> torch.Tensor | None:
        """s_aux [B, T] from Emb(p) ⊕ x_aux."""
        if self.aux_net is None:
            return None
        return self.aux_net(emb[:, self.aux_fields].flatten(1))

    def compute(self, batch):
        emb = self.embed(batch)
        s = self.main_logits(batch, emb)
        a = self.aux_logits(batch, emb)
        if a is not None:
            s = s + a
        return {t: s[:, i] for i, t in enumerate(self.tasks)}
