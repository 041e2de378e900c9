"""BaseModel: the contract every model follows (DESIGN.md "Contracts worth keeping stable").

A model is built from ``(schema, config)``; ``forward(batch) -> {task: logits [B]}``. Which schema
groups feed which part is configuration, resolved here with a clear error for a missing group."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dynarec.data.schema import Schema
from dynarec.data.table import Batch
from dynarec.errors import ConfigError
from dynarec.nn.embedding import FeatureEmbedding


@dataclass
class ModelConfig:
    """Hyper-parameters shared by all models; each model subclasses this with its own fields."""

    embed_dim: int = 16
    hidden: list[int] = field(default_factory=lambda: [256, 128])
    tower_hidden: list[int] = field(default_factory=lambda: [64])
    activation: str = "relu"
    dropout: float = 0.0
    batch_norm: bool = False
    embedding_init_std: float = 1e-2  # N(0, std) for the embedding tables (FuxiCTR / torch-rechub use 1e-4)


class BaseModel(nn.Module):
    Config = ModelConfig
    registry_name = "base"

    def __init__(self, schema: Schema, config: ModelConfig):
        super().__init__()
        self.schema = schema
        self.config = config
        self.tasks = schema.task_names
        self.num_domains = max(schema.num_domains, 1)
        self.embedding = FeatureEmbedding(schema, config.embed_dim, init_std=config.embedding_init_std)
        self.num_fields = self.embedding.num_fields
        self.dense_dim = schema.dense_dim
        self.input_dim = self.num_fields * config.embed_dim + self.dense_dim

    # ---- inputs ----------------------------------------------------------------------------------
    def embed(self, batch: Batch) -> torch.Tensor:
        """All embedded fields [B, F, d] in ``schema.fields`` order (sparse then sequences)."""
        return self.embedding(batch.sparse, batch.sequences)

    def require_groups(self, groups, what: str = "this model") -> list[str]:
        """``groups`` as a list; ConfigError naming the first group the schema has no feature in."""
        groups = [groups] if isinstance(groups, str) else list(groups)
        have = self.schema.groups()
        missing = [g for g in groups if g not in have]
        if missing:
            raise ConfigError(f"{what} needs feature group '{missing[0]}' but the schema has only "
                              f"{sorted(have)}; add a feature with group: {missing[0]} or change the config")
        return groups

    def field_index(self, groups, what: str = "this model") -> list[int]:
        """Positions in ``embed()``'s field axis of the fields whose group is in ``groups``."""
        groups = self.require_groups(groups, what)
        idx = [i for i, f in enumerate(self.schema.fields) if f.group in groups]
        if not idx:
            raise ConfigError(f"{what} needs an embedded (sparse/sequence) feature in groups {groups}")
        return idx

    def field_index_by_name(self, names, what: str = "this model") -> list[int]:
        pos = {f.name: i for i, f in enumerate(self.schema.fields)}
        for n in names:
            if n not in pos:
                raise ConfigError(f"{what}: feature '{n}' is not an embedded feature of the schema "
                                  f"(have: {', '.join(pos)})")
        return [pos[n] for n in names]

    def flat_input(self, batch: Batch, emb: torch.Tensor | None = None) -> torch.Tensor:
        """Flattened embeddings ⊕ dense features: [B, input_dim]."""
        e = self.embed(batch) if emb is None else emb
        return torch.cat([e.flatten(1), batch.dense], 1) if self.dense_dim else e.flatten(1)

    # ---- outputs ---------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_loss(self) -> torch.Tensor | None:
        """Auxiliary loss of the last forward (e.g. MoE balance); added to the task loss in training."""
        return None

    def predict(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Probabilities per task (binary) or values (regression), eval mode, no grad."""
        was = self.training
        self.eval()
        with torch.no_grad():
            out = self(batch)
        self.train(was)
        types = {t.name: t.type for t in self.schema.tasks}
        return {k: torch.sigmoid(v) if types.get(k, "binary") == "binary" else v for k, v in out.items()}


def task_heads(in_dim: int, tasks: list[str], hidden: list[int], act: str = "relu", dropout: float = 0.0) -> nn.ModuleDict:
    """One tower (MLP ending in a single logit) per task."""
    from dynarec.nn.mlp import MLP

    return nn.ModuleDict({t: MLP(in_dim, hidden, 1, act, dropout) for t in tasks})
