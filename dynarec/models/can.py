"""CAN (Bian et al., WSDM 2022, arXiv 2011.05625; docs/models.md "CAN — `can`"): co-action units next to a DNN.

For every induction field i (sparse fields of ``induction_groups``, default the item id and category)
and every feed field j (sparse and sequence fields of ``feed_groups``, default the user id, user
segment and the behaviour sequence), ``co_ij = CoActionUnit(θ_i, P_j, mask_j)`` (36 dims with the
defaults, sum-pooled over the sequence, padding masked). θ comes from CAN's own induction table
(``param_dim`` = 160 wide with the defaults) and P from CAN's own feed table (16 wide); both are
``nn.Embedding(sparse=True)`` separate from the fused feature embedding (the paper keeps
co-action parameters apart from the feature embeddings).
The DNN reads ``[E ⊕ dense ⊕ co_11 ⊕ ... ⊕ co_IJ]``: (BN →) ``hidden`` (PReLU) → one logit per task.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dynarec.errors import ConfigError
from dynarec.models.base import ACTIVATION, COUNT, POSITIVE, WIDTHS, BaseModel, ModelConfig
from dynarec.models.heads import task_heads
from dynarec.models.registry import register
from dynarec.nn.coaction import CoActionUnit, check_coaction_shapes
from dynarec.nn.mlp import MLP
from dynarec.tables.spec import TableSpec


@register("can", paper="Bian et al., CAN: Feature Co-Action Network for Click-Through Rate Prediction, WSDM 2022",
          needs=("user", "item"), multi_task=True, multi_domain=False)
class CAN(BaseModel):
    @dataclass
    class Config(ModelConfig):
        hidden: list[int] = field(default_factory=lambda: [200, 80], metadata=WIDTHS)
        activation: str = field(default="prelu", metadata=ACTIVATION)
        input_bn: bool = True  # BN on the DNN input, as the reference's final MLP
        induction_groups: list[str] = field(default_factory=lambda: ["item"])
        feed_groups: list[str] = field(default_factory=lambda: ["user"])
        weight_emb_w: list[list[int]] = field(default_factory=lambda: [[16, 8], [8, 4]])
        weight_emb_b: list[int] = field(default_factory=lambda: [0, 0])
        orders: int = field(default=3, metadata=COUNT)
        order_indep: bool = False
        coaction_init_std: float = field(default=0.1, metadata=POSITIVE)

    def __init__(self, schema, config):
        super().__init__(schema, config)
        c = config
        try:
            check_coaction_shapes(c.weight_emb_w, c.weight_emb_b, c.orders, "model.can")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.unit = CoActionUnit(c.weight_emb_w, c.weight_emb_b, c.orders, c.order_indep, "tanh")
        self.field_index(c.induction_groups, "model.can.induction_groups")  # clear error on a missing group
        self.field_index(c.feed_groups, "model.can.feed_groups")
        sparse_pos = {f.name: k for k, f in enumerate(schema.sparse)}
        ind = [f for f in schema.sparse if f.group in c.induction_groups]
        if not ind:
            raise ConfigError(f"model.can.induction_groups: no sparse feature in groups {c.induction_groups}")
        feed = [f for f in schema.fields if f.group in c.feed_groups]
        self.ind_cols = [sparse_pos[f.name] for f in ind]
        self.feed_specs = [(f.name, f.kind == "sequence", sparse_pos.get(f.name, -1)) for f in feed]
        ind_off = _offsets([max(f.vocab_size, 1) for f in ind])
        feed_off = _offsets([max(f.vocab_size, 1) for f in feed])
        self.register_buffer("ind_offsets", torch.tensor(ind_off[:-1], dtype=torch.long), persistent=False)
        self.feed_offsets = feed_off[:-1]
        # CAN's own tables, in the embedding optimizer group (sparse gradients), apart from the feature table.
        # Construction order kept (both built, then both initialised): same random draws as before.
        ind_spec = TableSpec("can_induction", ind_off[-1], self.unit.param_dim, None, "embedding",
                             tuple(f.name for f in ind), offsets=tuple(ind_off[:-1]))
        feed_spec = TableSpec("can_feed", feed_off[-1], self.unit.feed_dim, None, "embedding",
                              tuple(f.name for f in feed), offsets=tuple(feed_off[:-1]))
        for spec, legacy in ((ind_spec, "induction_table"), (feed_spec, "feed_table")):
            self.tables.add(spec, legacy)
        nn.init.normal_(self.induction_table.weight, std=c.coaction_init_std)
        nn.init.normal_(self.feed_table.weight, std=c.coaction_init_std)
        self.coaction_dim = len(ind) * len(feed) * self.unit.out_dim
        d_in = self.input_dim + self.coaction_dim
        self.input_norm = nn.BatchNorm1d(d_in) if c.input_bn else nn.Identity()
        self.mlp = MLP(d_in, c.hidden, None, c.activation, c.dropout, c.batch_norm)
        self.heads = task_heads(self.mlp.out_features, self.tasks)

    @property
    def induction_table(self) -> nn.Embedding:
        return self.tables["can_induction"]

    @property
    def feed_table(self) -> nn.Embedding:
        return self.tables["can_feed"]

    def coaction(self, batch) -> torch.Tensor:
        """All co-action outputs [B, I·J·out_dim] (induction-major, then feed field)."""
        theta = self.induction_table(batch.sparse[:, self.ind_cols] + self.ind_offsets)  # [B, I, P]
        ids, masks, lens = [], [], []
        for (name, is_seq, col), off in zip(self.feed_specs, self.feed_offsets):
            if is_seq:
                x = batch.sequences[name]
                ids.append(x + off)
                masks.append(x > 0)
            else:
                ids.append(batch.sparse[:, col:col + 1] + off)
                masks.append(torch.ones_like(ids[-1], dtype=torch.bool))
            lens.append(ids[-1].shape[1])
        p = self.feed_table(torch.cat(ids, 1))  # all feed fields side by side [B, ΣL, d]
        m = torch.cat(masks, 1)
        return torch.cat([self.unit(theta[:, i], p, m, lens) for i in range(theta.shape[1])], 1)

    def compute(self, batch):
        x = torch.cat([self.flat_input(batch), self.coaction(batch)], 1)
        h = self.mlp(self.input_norm(x))
        return {t: head(h).squeeze(-1) for t, head in self.heads.items()}


def _offsets(sizes: list[int]) -> list[int]:
    out = [0]
    for s in sizes:
        out.append(out[-1] + s)
    return out
