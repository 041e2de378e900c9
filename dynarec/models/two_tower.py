"""Two-tower retrieval model (kind "retrieval"): a query tower over the user and domain features, an item tower
over the item (and author) features, score ``⟨n(u)/τ, n(v)⟩`` (dot or cosine with a temperature; Yi et al.,
"Sampling-Bias-Corrected Neural Modeling for Large Corpus Item Recommendations", RecSys 2019).

``user_tower``: ``plain`` (an MLP on user ⊕ domain embeddings), ``pepnet`` (every layer input rescaled by a
Gate NU of the domain embedding, PEPNet, Chang et al., KDD 2023) or ``apg`` (hidden layers whose weights are
generated from the domain embedding, APG, Yan et al., NeurIPS 2022) — dynamic weights for multi-domain
retrieval. ``loss`` picks the training objective of :mod:`dynarec.retrieval.losses` (in-batch softmax + logQ,
sampled softmax, or the Gramian penalty with SOGram / SAGram of Krichene et al., ICLR 2019); it is trained by
:func:`dynarec.retrieval.train.train_retrieval`. Dense features are not tower inputs."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dynarec.checks import rule
from dynarec.models.base import BaseModel, ModelConfig, ModelInputs
from dynarec.models.keys import when
from dynarec.models.registry import register
from dynarec.retrieval.objectives import OBJECTIVES, family
from dynarec.retrieval.score import METRICS, prepare
from dynarec.retrieval.towers import GatedTower, Tower

LOSS_KINDS = tuple(OBJECTIVES)  # the registry of retrieval losses (dynarec/retrieval/objectives.py)
SOFTMAX_LOSSES, GRAM_LOSSES = family("softmax"), family("gramian")
QUERY_GROUPS, ITEM_GROUPS = ("user", "domain"), ("item", "author")


class APGTower(nn.Module):
    """Hidden layers generated from the condition (:class:`dynarec.nn.apg.APGMLP`), a static linear output."""

    def __init__(self, in_dim, hidden, dim, condition_dim, act="relu", dropout=0.0, batch_norm=False):
        super().__init__()
        from dynarec.errors import ConfigError
        from dynarec.nn.apg import APGMLP

        if not hidden:
            raise ConfigError("model.two_tower.user_tower: apg generates the hidden layers; give model.hidden "
                              "at least one width (or use pepnet)")
        rank = min(32, in_dim, *hidden)  # APG's low-rank K must fit every layer
        self.mlp = APGMLP(in_dim, list(hidden), condition_dim, out_dim=dim, act=act, dropout=dropout,
                          batch_norm=batch_norm, rank_k=rank, overparam_p=max(128, rank))
        self.dim = dim

    def forward(self, x, condition=None):
        return self.mlp(x, condition)


@register("two_tower", paper="Krichene et al., Efficient Training on Very Large Corpora via Gramian Estimation, "
          "ICLR 2019; Yi et al., Sampling-Bias-Corrected Neural Modeling, RecSys 2019",
          needs=("user", "item"), multi_task=False, multi_domain=True, kind="retrieval")
class TwoTowerModel(BaseModel):
    @dataclass
    class Config(ModelConfig):
        hidden: list[int] = field(default_factory=lambda: [128], metadata=rule(min=1))  # both towers
        dim: int = field(default=32, metadata=rule(min=1))  # output vector width k
        score: str = field(default="auto", metadata=rule(choices=("auto",) + METRICS))  # auto: cosine for softmax losses, dot for Gramian ones
        temperature: float | None = field(default=None, metadata=rule(min=0, min_open=True))  # None: 0.05 cosine, 1 dot
        user_tower: str = field(default="plain", metadata=rule(choices=("plain", "pepnet", "apg")))
        loss: str = field(default="inbatch", metadata=rule(choices=LOSS_KINDS))
        logq: bool = True  # inbatch: subtract log p̂ (streaming frequency) from the logits
        negatives: int = field(default=256, metadata=rule(min=1))  # sampled: shared negatives per batch
        sampler: str = field(default="uniform", metadata=rule(choices=("uniform", "popularity")))  # sampled
        # sogram: eq. 11 step. 1 = the other batch's Gramian alone: unbiased, no lag (0.1 lagged the towers:
        # ML-100K recall@50 0.20 vs 0.37 at the default trainer, docs/benchmarks.md "Defaults are the measured recipe")
        alpha: float = field(default=1.0, metadata=rule(min=0, min_open=True, max=1))
        beta: float = field(default=1.0, metadata=rule(min=0, min_open=True, max=1))  # sagram: eq. 9 (1 = SAGA)
        lam: float = field(default=10.0, metadata=rule(min=0))  # sogram / sagram: weight λ of the Gram penalty (1: 0.37, 10: 0.41)
        pair_loss: str = field(default="squared", metadata=rule(choices=("squared", "logistic")))  # sogram/sagram
        task: str = ""  # the binary task whose positive labels are the training pairs ("" = the first task)

    no_effect = {
        "tower_hidden": "both towers use hidden",
        "logq": when(loss="inbatch"),
        "negatives": when(loss="sampled"), "sampler": when(loss="sampled"),
        "alpha": when(loss="sogram"), "beta": when(loss="sagram"),
        "lam": when(loss=GRAM_LOSSES), "pair_loss": when(loss=GRAM_LOSSES),
    }

    def __init__(self, schema, config):
        super().__init__(schema, config)
        c = config
        self.metric = c.score if c.score != "auto" else ("cosine" if c.loss in SOFTMAX_LOSSES else "dot")
        self.temperature = c.temperature if c.temperature is not None else (0.05 if self.metric == "cosine" else 1.0)
        self.require_groups(["user", "item"], "model.two_tower")
        q_groups = [g for g in QUERY_GROUPS if g in schema.groups()]
        i_groups = [g for g in ITEM_GROUPS if g in schema.groups()]
        q_idx, i_idx = self.field_index(q_groups, "two_tower query tower"), self.field_index(i_groups, "two_tower item tower")
        self.register_buffer("_q_fields", torch.tensor(q_idx), persistent=False)
        self.register_buffer("_i_fields", torch.tensor(i_idx), persistent=False)
        d = c.embed_dim
        self.domain_field = [f.name for f in schema.fields].index(schema.domain)
        kw = dict(act=c.activation, dropout=c.dropout, batch_norm=c.batch_norm)
        if c.user_tower == "plain":
            self.query_tower = Tower(len(q_idx) * d, c.hidden, c.dim, **kw)
        elif c.user_tower == "pepnet":
            self.query_tower = GatedTower(len(q_idx) * d, c.hidden, c.dim, condition_dim=d, **kw)
        else:
            self.query_tower = APGTower(len(q_idx) * d, c.hidden, c.dim, condition_dim=d, **kw)
        self.item_tower = Tower(len(i_idx) * d, c.hidden, c.dim, **kw)

    # ---- the two sides (raw tower outputs; :meth:`prepared` applies the score's normalisation) ----------
    def query_vectors(self, x: ModelInputs) -> torch.Tensor:
        """Query vectors [B, dim] from the user and domain fields of the rows ``x``."""
        e = self.embedding(x.sparse, x.sequences)
        cond = e[:, self.domain_field]
        return self.query_tower(e[:, self._q_fields].flatten(1), cond)

    def item_vectors(self, x: ModelInputs) -> torch.Tensor:
        """Item vectors [B, dim] from the item (and author) fields of the rows ``x``."""
        e = self.embedding(x.sparse, x.sequences)
        return self.item_tower(e[:, self._i_fields].flatten(1))

    def prepared(self, u: torch.Tensor, v: torch.Tensor):
        """``(n(u)/τ, n(v))``: the score is their inner product (so losses, Gramians and the index see a dot)."""
        return prepare(u, v, self.metric, self.temperature)

    def compute(self, x: ModelInputs) -> dict[str, torch.Tensor]:
        """The score of each row's own (query, item) pair, under the first task's name: {task: [B]}."""
        u, v = self.prepared(self.query_vectors(x), self.item_vectors(x))
        return {self.tasks[0]: (u * v).sum(-1)}
