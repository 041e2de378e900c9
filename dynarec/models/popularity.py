"""Popularity recommender (kind "retrieval"): every query gets the items with the most training positives, the
baseline of every retrieval table. "Training" counts the positives per item (no gradient step)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dynarec.models.registry import register


@register("popularity", paper="baseline: items ranked by their number of training positives",
          needs=("item",), multi_task=False, multi_domain=False, kind="retrieval")
class Popularity(nn.Module):
    """Score of (query, item) = log(1 + positives of the item in training), the same for every query.

    As a two-tower model with width 1: query vectors are 1, item vectors the scores (so the exact top-k,
    the metrics and the FAISS index treat both model kinds alike)."""

    @dataclass
    class Config:
        task: str = ""  # the binary task whose positive labels are counted ("" = the first task)

    no_effect: dict = {}

    def __init__(self, schema, config):
        super().__init__()
        self.schema, self.config = schema, config
        self.tasks = schema.task_names
        item = [f for f in schema.sparse if f.group == "item"]
        from dynarec.errors import ConfigError

        if not item:
            raise ConfigError("model.popularity needs a sparse feature in group 'item'")
        self.item_col = [f.name for f in schema.sparse].index(item[0].name)
        self.register_buffer("counts", torch.zeros(item[0].vocab_size))  # positives per encoded item id
        self.metric, self.temperature = "dot", 1.0

    def fit_counts(self, item_ids: torch.Tensor) -> None:
        """Count the training positives: ``item_ids`` Long [N] (encoded ids of the positive pairs)."""
        self.counts.zero_()
        self.counts += torch.bincount(item_ids.long().cpu(), minlength=len(self.counts)).float()[:len(self.counts)]

    def query_vectors(self, x) -> torch.Tensor:
        return torch.ones(x.sparse.shape[0], 1, device=self.counts.device)

    def item_vectors(self, x) -> torch.Tensor:
        return torch.log1p(self.counts[x.sparse[:, self.item_col]]).view(-1, 1)

    def prepared(self, u, v):
        return u, v

    def forward(self, batch):
        return {self.tasks[0]: self.item_vectors(batch).view(-1)}

    def prepare_for_load(self, state_dict) -> None:
        return None

    def merge_for_inference(self):
        return self
